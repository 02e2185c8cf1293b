"""The server's kernel manager for Slurm kernels: what a provisioner cannot do from inside
jupyter_client's MultiKernelManager (leave the queue on shutdown, answer interrupt and restart
of a waiting kernel at once, list waiting kernels, cancel queued jobs when the server stops).

One line of Jupyter server config turns it on::

    c.ServerApp.kernel_manager_class = "kernelprovider.manager.SlurmAwareKernelManager"

It is jupyter_server's AsyncMappingKernelManager with a few overrides; kernels of other
provisioners behave exactly as before.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import weakref
from typing import Any

from jupyter_core.utils import ensure_async
from jupyter_server._tz import utcnow
from jupyter_server.services.kernels.kernelmanager import (
    AsyncMappingKernelManager,
    ServerKernelManager,
)
from traitlets import default

from .errors import KernelPending
from .slurm import SlurmProvisioner

__all__ = ["SlurmAwareKernelManager", "SlurmServerKernelManager"]


class SlurmServerKernelManager(ServerKernelManager):
    """jupyter_server's per-kernel manager whose ``ready`` can be held pending by
    SlurmAwareKernelManager while an automatic restart runs (see its _hold_clients)."""

    restart_hold: asyncio.Future[None] | None = None

    @property
    def ready(self) -> Any:
        """The start (or restart) outcome clients wait for before they connect."""
        if self.restart_hold is not None and not self.restart_hold.done():
            return self.restart_hold
        return super().ready


class SlurmAwareKernelManager(AsyncMappingKernelManager):
    """AsyncMappingKernelManager that knows a Slurm kernel can wait hours in the queue.

    - Shutdown (DELETE /api/kernels/ID, a session's delete, culling, server stop) of a kernel
      whose job is pending cancels the job within seconds instead of waiting for the start.
    - Interrupt of a waiting kernel is refused at once (HTTP 409, with the job and reason);
      a restart of one is answered at once and changes nothing (it has not started yet).
    - Without use_pending_kernels a starting kernel is listed in /api/kernels (state
      "starting", the pending reason in "reason"), so it can be seen and shut down.
    - The kernel model gains "slurm": job id, state, node, reason, end time, seconds left.
    """

    @default("kernel_manager_class")
    def _default_kernel_manager_class(self) -> str:
        return "kernelprovider.manager.SlurmServerKernelManager"

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._hold_tasks: set[asyncio.Task[None]] = set()
        # The last resort for queued jobs when the server skips its shutdown (see
        # SlurmProvisioner.cancel_queued_at_exit); a normal stop has cancelled them already.
        atexit.register(_cancel_queued_at_exit, weakref.ref(self))

    def _queued(self, kernel_id: str) -> SlurmProvisioner | None:
        """The provisioner of ``kernel_id`` if that kernel waits for its Slurm allocation."""
        prov = getattr(self._kernels.get(kernel_id), "provisioner", None)
        if isinstance(prov, SlurmProvisioner) and prov.waiting_in_queue:
            return prov
        return None

    # --- starting -------------------------------------------------------------------------

    def pre_start_kernel(self, kernel_name: str | None, kwargs: Any) -> tuple[Any, str, str]:
        """Create the kernel's manager; called by MultiKernelManager at the start of a start.

        Without use_pending_kernels jupyter_client lists a kernel only once it runs; a
        Slurm kernel may wait for hours, so it is listed (and can be shut down) from now on.
        """
        km, name, kernel_id = super().pre_start_kernel(kernel_name, kwargs)
        if not self._using_pending_kernels():
            km.execution_state = "starting"
            km.reason = ""
            km.last_activity = utcnow()
            self._kernels[kernel_id] = km
        return km, name, kernel_id

    async def _add_kernel_when_ready(self, kernel_id: str, km: Any, kernel_awaitable: Any) -> None:
        """Wait for a start (MultiKernelManager's task); a failed one is unlisted again in
        the default mode, as jupyter_client does, and a waiting kernel's idle time starts
        when it runs, not when it was queued."""
        await super()._add_kernel_when_ready(kernel_id, km, kernel_awaitable)
        ready = km.ready
        if ready.done() and not ready.cancelled() and ready.exception() is not None:
            if not self._using_pending_kernels():
                # (and forgotten: shutdown_all would otherwise trip over its id)
                self._kernels.pop(kernel_id, None)
                self._pending_kernels.pop(kernel_id, None)
        else:
            km.last_activity = utcnow()

    # --- shutdown -------------------------------------------------------------------------

    async def _async_shutdown_kernel(
        self, kernel_id: str, now: bool = False, restart: bool = False
    ) -> None:
        """Shut a kernel down; called by the REST handlers, the session manager, the culler
        and shutdown_all. A kernel waiting in the queue leaves it first (its job is
        cancelled and confirmed gone), so nothing waits for a start that may take hours."""
        prov = self._queued(kernel_id)
        if prov is not None:
            km = self._kernels[kernel_id]
            self.log.info(
                "Kernel %s: shut down while %s waits in the queue; cancelling the job",
                kernel_id,
                prov.queue_status(),
            )
            km.stop_restarter()  # a requeue after the end of a job is waiting: no retry
            prov.leave_queue()
            ready = km.ready
            if not isinstance(ready, asyncio.Future):
                ready = asyncio.wrap_future(ready)
            with contextlib.suppress(Exception):
                await ready  # the start fails within a second: SlurmStartCancelled
            if kernel_id not in self._kernels:
                return  # a default-mode start: unlisted with its failure, nothing left
        await super()._async_shutdown_kernel(kernel_id, now=now, restart=restart)

    shutdown_kernel = _async_shutdown_kernel  # type: ignore[assignment]

    async def _async_shutdown_all(self, now: bool = False) -> None:
        """Shut every kernel down; called when the server stops (SIGTERM, Ctrl-C twice, the
        shutdown API). Queued jobs are cancelled first, all at once."""
        queued = [k for k in self.list_kernel_ids() if self._queued(k) is not None]
        if queued:
            self.log.info("Cancelling the queued Slurm jobs of %d kernel(s)", len(queued))
        await super()._async_shutdown_all(now=now)

    shutdown_all = _async_shutdown_all  # type: ignore[assignment]

    # --- interrupt, restart ---------------------------------------------------------------

    def interrupt_kernel(self, kernel_id: str) -> Any:
        """Interrupt a kernel; called by the REST handler. A kernel waiting in the queue runs
        nothing yet: refused at once with HTTP 409 and what it waits for."""
        self._check_kernel_id(kernel_id)
        prov = self._queued(kernel_id)
        if prov is not None:
            raise KernelPending(
                f"Kernel {kernel_id} has not started: {prov.queue_status()} is still waiting "
                "in the queue, so there is nothing to interrupt. Shut the kernel down to leave "
                "the queue."
            )
        return super().interrupt_kernel(kernel_id)

    async def _async_restart_kernel(self, kernel_id: str, now: bool = False) -> Any:
        """Restart a kernel; called by the REST handler. A kernel waiting in the queue has
        not started, so it already starts fresh: answered at once, nothing is done, and the
        kernel model's "reason" says so."""
        self._check_kernel_id(kernel_id)
        prov = self._queued(kernel_id)
        if prov is not None:
            message = (
                f"Not restarted: {prov.queue_status()} is still waiting in the queue; the "
                "kernel starts fresh when the job runs."
            )
            self.log.info("Kernel %s: %s", kernel_id, message)
            self._kernels[kernel_id].reason = message
            return None
        return await super()._async_restart_kernel(kernel_id, now=now)

    restart_kernel = _async_restart_kernel  # type: ignore[assignment]

    # --- automatic restarts: clients wait for the new kernel ---------------------------------

    async def _finish_kernel_start(self, kernel_id: str) -> None:
        """jupyter_server's bookkeeping once a kernel runs; for Slurm kernels, also hold the
        clients that reconnect during an automatic restart (see _hold_clients)."""
        await super()._finish_kernel_start(kernel_id)
        km = self._kernels.get(kernel_id)
        if km is not None and isinstance(getattr(km, "provisioner", None), SlurmProvisioner):
            km.add_restart_callback(lambda: self._hold_clients(kernel_id), "restart")

    def _hold_clients(self, kernel_id: str) -> None:
        """Called by jupyter_client's restarter just before it restarts a dead Slurm kernel.

        JupyterLab reconnects its websocket as soon as it hears "restarting"; jupyter_server
        waits for the kernel manager's ``ready`` and then wires the websocket to the ports the
        manager has at that moment: 0 after "new random ports", or those of a job Slurm has
        ended. jupyter_client's own ``ready`` resolves at the end of the restart's shutdown,
        long before a new step (seconds) or a new job (a queue wait) runs the new kernel.
        So the kernel's ``ready`` (SlurmServerKernelManager) stays pending until the
        restart's start has ended, and clients connect to the new kernel.
        """
        km = self._kernels.get(kernel_id)
        if not isinstance(km, SlurmServerKernelManager) or km.restart_hold is not None:
            return
        held: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        km.restart_hold = held
        before = km._ready

        async def follow() -> None:
            # jupyter_client puts a new future in _ready at the restart's shutdown and again
            # at its start (in_pending_state); follow them until one stays: the outcome.
            loop = asyncio.get_running_loop()
            deadline = loop.time() + km.shutdown_wait_time + 60
            current = before
            try:
                while True:
                    while km._ready is current and loop.time() < deadline:
                        await asyncio.sleep(0.05)
                    if km._ready is current:  # nothing came after: the restart gave up
                        held.set_result(None)
                        return
                    current = km._ready
                    with contextlib.suppress(Exception):
                        await current
                    await asyncio.sleep(0)
                    if km._ready is current and km._attempted_start and not km.shutting_down:
                        if current.exception() is not None:
                            held.set_exception(current.exception())
                        else:
                            held.set_result(None)
                        return
                    deadline = loop.time() + km.shutdown_wait_time + 60
            finally:
                km.restart_hold = None
                if not held.done():
                    held.set_result(None)

        task = asyncio.ensure_future(follow())
        self._hold_tasks.add(task)
        task.add_done_callback(self._hold_tasks.discard)

    # --- a kernel in a new allocation -----------------------------------------------------

    def kernel_moved(self, kernel_id: str) -> None:
        """Called by SlurmProvisioner when a restart put the kernel into a new Slurm job (new
        node, address, ports, key) after Slurm ended the old one.

        jupyter_server gives a reconnecting websocket new ZMQ channels only when the kernel's
        ports differ from those it noted; the address is not compared. Marking the ports as
        changed makes the clients held by _hold_clients connect to the new job's kernel.
        """
        if kernel_id in self._kernel_ports:
            self._kernel_ports[kernel_id] = []

    # --- model, culling -------------------------------------------------------------------

    def kernel_model(self, kernel_id: str) -> dict[str, Any]:
        """The REST model; for a Slurm kernel with a job, plus "slurm" (see
        SlurmProvisioner.slurm_model)."""
        model = super().kernel_model(kernel_id)
        prov = getattr(self._kernels[kernel_id], "provisioner", None)
        if isinstance(prov, SlurmProvisioner) and prov.job_id:
            model["slurm"] = prov.slurm_model()
        return model

    async def cull_kernel_if_idle(self, kernel_id: str) -> None:
        """Culling check; a kernel waiting in the queue is not idle, it waits."""
        if self._queued(kernel_id) is None:
            await ensure_async(super().cull_kernel_if_idle(kernel_id))


def _cancel_queued_at_exit(ref: weakref.ref[SlurmAwareKernelManager]) -> None:
    manager = ref()
    if manager is None:
        return
    for kernel_id in list(manager._kernels):
        prov = manager._queued(kernel_id)
        if prov is not None:
            prov.cancel_queued_at_exit()
