"""The allocation of one kernel: its job from sbatch to scancel, the queue, the clock."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import subprocess
import time
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from ..compat import GpuInfo, HostFacts
from ..errors import (
    FilesystemTimeout,
    SlurmError,
    SlurmJobEnded,
    SlurmJobFailed,
    SlurmQueueTimeout,
    SlurmStartCancelled,
    SlurmSubmitError,
)
from ..gpu import PROBE_SCRIPT, parse_probe_output
from ..offloop import in_thread, unlink_quietly
from ..options import (
    sbatch_settings,
)
from ..walltime import (
    ended_message,
)
from .clock import JobClock
from .commands import (
    HOPELESS_REASONS,
    batch_script,
    build_sbatch_argv,
    build_srun_argv,
    parse_node_addr,
    rejection_message,
    slurm_env,
)
from .queue import LeaseKeeper, SlurmQueue, run
from .state import _user, tail_file

T = TypeVar("T")


class SlurmAllocation(JobClock):
    """The allocation of one kernel: submit, wait in the queue, locate the node, cancel,
    the job's clock and its end. A mixin of :class:`SlurmProvisioner`; it needs only the
    provisioner's traits (options), ``kernel_id``, ``kernel_name``, ``log`` and ``parent``.
    """

    # --- state of this kernel (persisted by get_provisioner_info) -------------------------
    #: The local srun of the kernel step (None for a kernel re-attached from a record).
    process: subprocess.Popen[bytes] | None = None
    pid: int | None = None
    pgid: int | None = None
    _cwd: str | None = None
    job_id: str | None = None
    step_id: str | None = None
    node: str | None = None
    node_ip: str | None = None
    _attached = False
    _stopping = False
    _new_job = False
    _connection: dict[str, Any] | None = None
    _facts: tuple[str | None, HostFacts] | None = None
    _usable_check: asyncio.Future[bool] | None = None
    # the queue (see "Leaving the queue, the clock, the end of an allocation")
    _waiting = False
    _queued_reason: str = ""
    _leave: asyncio.Event | None = None
    _leave_reason: str = ""

    @property
    def files(self) -> dict[str, str]:
        """Paths of this kernel's connection file, lease and log in the state directory."""
        base = os.path.join(self.state_dir, f"kernel-{self.kernel_id}")
        return {"connection": base + ".json", "lease": base + ".lease", "log": base + ".log"}

    @property
    def job_name(self) -> str:
        return f"kp-{self.kernel_id}"

    @property
    def step_name(self) -> str:
        """The name every kernel step of this kernel's job carries (restarts included)."""
        return f"{self.job_name}-kernel"

    @property
    def has_process(self) -> bool:
        return self.process is not None or self._attached

    @property
    def queue(self) -> SlurmQueue:
        return SlurmQueue.instance(self.poll_interval)

    @property
    def lease_keeper(self) -> LeaseKeeper:
        return LeaseKeeper.instance(self.lease_seconds / 3)

    async def node_facts(self) -> HostFacts:
        """Driver and GPUs of the allocated node, from a probe step; cached per allocation.

        Called by the GPU pre-flight (plan_start) once the job runs: the server's own host
        says nothing about the GPU node.
        """
        if self._facts is not None and self._facts[0] == self.job_id:
            return self._facts[1]
        argv = [
            *build_srun_argv(self.job_id, f"{self.job_name}-probe", "/", self.srun_args),
            "sh",
            "-c",
            PROBE_SCRIPT,
        ]
        rc, out, err = await run(argv, timeout=60, env=slurm_env(os.environ, {}))
        try:
            facts = parse_probe_output(out, node=self.node)
        except ValueError as e:
            raise SlurmError(
                f"Could not read the GPU driver on node {self.node} (Slurm job {self.job_id}, "
                f"probe exit {rc}): {e} {err.strip()[-300:]}"
            ) from e
        self._facts = (self.job_id, facts)
        self.log.info(
            "Kernel %s: node %s has NVIDIA driver %s, GPUs: %s",
            self.kernel_id,
            self.node,
            facts.driver or "none",
            ", ".join(
                f"{g.name} (compute capability {g.compute_capability or '?'})" for g in facts.gpus
            )
            or "none",
        )
        return facts

    def _set_reason(self, reason: str) -> None:
        # jupyter_server shows a kernel manager's `reason` in /api/kernels; while the job is
        # pending it says why (with use_pending_kernels the model is visible meanwhile).
        km = self.parent
        if km is not None and hasattr(km, "reason"):
            km.reason = reason

    async def _log_note(self) -> str:
        """' Last lines of its log (path): ...' when the kernel's log has any, else ''."""
        try:
            tail = await self._in_state_dir(tail_file, self.files["log"])
        except FilesystemTimeout:
            return f" Its log {self.files['log']} could not be read (the filesystem hangs)."
        return f" Last lines of its log ({self.files['log']}):\n{tail}" if tail else ""

    async def _remove_quietly(self, path: str) -> None:
        """Remove one of this kernel's files at its end; a hung filesystem leaves it there
        with a warning (the job is gone already; an error would only stop the shutdown)."""
        try:
            await self._in_state_dir(unlink_quietly, path)
        except FilesystemTimeout as e:
            self.log.warning("Kernel %s: %s is left behind: %s", self.kernel_id, path, e)

    async def _in_state_dir(self, func: Callable[..., T], *args: Any) -> T:
        """``func(*args)`` on the shared state directory, in a thread with fs_timeout: a hung
        filesystem fails this kernel's step (FilesystemTimeout), not the server's loop."""
        return await in_thread(
            func, *args, timeout=self.fs_timeout, what=f"State directory {self.state_dir}"
        )

    # --- the allocation -------------------------------------------------------------------

    async def _adopt_job(self, record: Mapping[str, Any]) -> bool:
        """Take over the job a server's record names; called by load_provisioner_info.

        True only when Slurm still lists that job under this kernel's name and user: a
        stale record whose job id now belongs to another job is ignored (never touched).
        """
        self.job_id = record.get("job_id")
        self.step_id = record.get("step_id")
        self.node = record.get("node")
        self.node_ip = record.get("node_ip")
        self.state_dir = record.get("state_dir") or self.state_dir
        if not self.job_id or record.get("job_name") != self.job_name:
            self.log.warning(
                "Kernel %s: the record names no Slurm job of this kernel; not attaching.",
                self.kernel_id,
            )
            self.job_id = None
            return False
        self.queue.register(self.job_id)
        if not await self._owns_job():
            self.log.warning(
                "Kernel %s: Slurm job %s has ended or is not this kernel's; not attaching.",
                self.kernel_id,
                self.job_id,
            )
            self.queue.unregister(self.job_id)
            self.job_id = self.step_id = None
            return False
        return True

    async def _job_usable(self) -> bool:
        """True when this kernel already holds a live allocation (a restart)."""
        if not self.job_id:
            return False
        job = await self.queue.job(self.job_id, fresh=True)
        if job is None:
            return True  # controller unreachable: assume it still stands
        return bool(job) and not job.finished and not job.state.startswith("COMPLETING")

    async def _submit(self) -> None:
        self.job_id = self.step_id = self.node = None
        self._connection = None  # a new allocation means a new node: new ports, new key
        lease = self.files["lease"]
        await self.lease_keeper.add(lease, self.fs_timeout)
        argv = build_sbatch_argv(
            self.job_name,
            output=self.files["log"],
            chdir=self.state_dir,
            extra_args=self.sbatch_args,
            gpu_option=self.gpu_option,
            **sbatch_settings(self),
        )
        script = batch_script(lease, self.lease_seconds).encode()
        rc, out, err = await run(argv, input=script, timeout=60)
        if rc != 0:
            self.lease_keeper.discard(lease)
            await self._in_state_dir(unlink_quietly, lease)
            raise SlurmSubmitError(await self._rejection_message(err.strip() or out.strip()))
        self.job_id = out.strip().split(";")[0]
        self.queue.register(self.job_id)
        self.log.info(
            "Kernel %s: submitted Slurm job %s (%s)",
            self.kernel_id,
            self.job_id,
            " ".join(argv[2:]),
        )

    async def _rejection_message(self, slurm_says: str) -> str:
        partitions: list[str] = []
        if "partition" in slurm_says.lower():
            rc, out, _ = await run(["sinfo", "-h", "-o", "%R"], timeout=20)
            if rc == 0:
                partitions = list(dict.fromkeys(out.split()))
        settings = {k: v or "" for k, v in sbatch_settings(self).items()}
        return rejection_message(slurm_says, settings, partitions)

    async def _wait_running(self) -> None:
        """Wait until the job runs; report a job that cannot or did not start at once.

        INFO lines while pending (job id, state, reason, expected start) every
        pending_log_interval or when the reason changes; a controller that does not answer
        only delays, it does not fail the start (queue_timeout still applies).
        """
        loop = asyncio.get_running_loop()
        started = loop.time()
        last_log = -1e9
        last_reason: str | None = None
        # Look often at first (a free node starts the job within about a second, and every
        # tenth of a second shows in the user's start time), then back off to one look per
        # second for a job that really queues; kernels waiting together share each squeue.
        delay = 0.05
        while True:
            self._check_leave()
            job = await self.queue.job(self.job_id, max_age=delay)
            now = loop.time()
            self._check_leave()
            if job is False:
                raise SlurmJobFailed(
                    f"Slurm job {self.job_id} for kernel {self.kernel_name} ended before it "
                    f"started (no longer in squeue). Check 'sacct -j {self.job_id}'."
                    f"{await self._log_note()}"
                )
            if job is None:
                if now - last_log >= self.pending_log_interval:
                    self.log.warning(
                        "Kernel %s: the Slurm controller is not answering; still waiting for "
                        "job %s",
                        self.kernel_id,
                        self.job_id,
                    )
                    last_log, last_reason = now, None
            else:
                state = job.state.split()[0]
                if state == "RUNNING":
                    self._note_clock(job)
                    self.log.info(
                        "Kernel %s: Slurm job %s running on %s after %.1f s",
                        self.kernel_id,
                        self.job_id,
                        job.nodes,
                        now - started,
                    )
                    return
                reason = "" if job.reason in ("", "None") else f" (reason: {job.reason})"
                if job.finished:
                    raise SlurmJobFailed(
                        f"Slurm job {self.job_id} for kernel {self.kernel_name} ended as "
                        f"{state}{reason} before the kernel started. Check the job with "
                        f"'sacct -j {self.job_id}' or start the kernel again."
                        f"{await self._log_note()}"
                    )
                if job.reason in HOPELESS_REASONS:
                    raise SlurmJobFailed(
                        f"Slurm job {self.job_id} for kernel {self.kernel_name} cannot start: "
                        f"{job.reason}. Fix the kernel's Slurm settings (partition, gpus, "
                        "time_limit, account, qos) or ask your admins; the job was cancelled."
                    )
                self._queued_reason = job.reason
                if job.reason != last_reason or now - last_log >= self.pending_log_interval:
                    self._set_reason(
                        f"Slurm job {self.job_id} {state}: {job.reason} "
                        f"(expected start: {job.start})"
                    )
                    self.log.info(
                        "Kernel %s: Slurm job %s %s (reason: %s, expected start: %s)",
                        self.kernel_id,
                        self.job_id,
                        state,
                        job.reason,
                        job.start,
                    )
                    last_log, last_reason = now, job.reason
            if self.queue_timeout and now - started > self.queue_timeout:
                why = f" ({job.reason})" if job else " (controller not answering)"
                raise SlurmQueueTimeout(
                    f"Slurm job {self.job_id} for kernel {self.kernel_name} waited "
                    f"{self.queue_timeout:.0f} s in the queue{why} and was cancelled. Try "
                    "another partition or fewer GPUs, or raise SlurmProvisioner.queue_timeout "
                    "(0 waits forever)."
                )
            await self._queue_pause(delay)
            if now - started > 3.0:
                delay = min(delay * 1.5, 1.0)

    async def _locate_node(self) -> None:
        """Node name (from squeue) and the address the kernel binds (its NodeAddr)."""
        if self.node and self.node_ip and not self._new_job:
            return  # a restart in the same allocation: same node
        job = await self.queue.job(self.job_id)
        if job and job.nodes:
            self.node = job.nodes
        if not self.node:
            rc, out, _ = await run(["squeue", "-h", "-j", self.job_id, "-o", "%N"], timeout=30)
            self.node = out.strip() if rc == 0 else None
        if not self.node:
            raise SlurmError(
                f"Slurm did not say which node job {self.job_id} runs on; is the controller "
                "answering ('scontrol ping')? Start the kernel again."
            )
        if self.kernel_ip:
            self.node_ip = self.kernel_ip
            return
        rc, out, _ = await run(["scontrol", "show", "node", "-o", self.node], timeout=30)
        addr = parse_node_addr(out) if rc == 0 else None
        addr = addr or self.node
        infos = await asyncio.get_running_loop().getaddrinfo(addr, None, family=socket.AF_INET)
        self.node_ip = infos[0][4][0]

    async def _cancel_job(self) -> None:
        """scancel this kernel's job, filtered by its name: a job id that Slurm has since
        given to another job is left alone."""
        if self.job_id:
            rc, _, err = await run(["scancel", f"--name={self.job_name}", self.job_id], timeout=30)
            if rc != 0 and "already completing or completed" not in err:
                self.log.warning(
                    "Kernel %s: scancel %s failed: %s", self.kernel_id, self.job_id, err.strip()
                )

    async def _release(self) -> None:
        """Give back the allocation and the files of this kernel (not its log).

        Called by :meth:`cleanup` on final shutdown and by a start that failed: stop the
        lease, cancel the job, wait until Slurm lists it as ended, forget it.
        """
        self.lease_keeper.discard(self.files["lease"])
        await self.close_tunnel()  # transport: the ssh process ends with the allocation
        if self.job_id:
            await self._cancel_job()
            await self._confirm_gone()
            self.queue.unregister(self.job_id)
        for key in ("connection", "lease"):
            await self._remove_quietly(self.files[key])
        self.job_id = self.step_id = None
        self._connection = None
        self._attached = False
        self._new_job = False

    async def _step(self, fresh: bool = True) -> str | None:
        """The Slurm step id of the running kernel (the newest step with its step name)."""
        if self.step_id or not self.job_id:
            return self.step_id
        steps = await self.queue.steps(fresh=fresh, need=self.job_id)
        mine = [
            s for s, name in (steps or {}).get(self.job_id, {}).items() if name == self.step_name
        ]
        if mine:
            # a restart's previous step may still be listed while it ends: take the newest
            self.step_id = max(mine, key=lambda s: int("0" + s.rpartition(".")[2].strip("+")))
        return self.step_id

    async def _owns_job(self) -> bool:
        """Whether the job id of a record is still this kernel's live job.

        True when Slurm lists it with this kernel's job name and user and it has not ended,
        or when Slurm cannot be asked (the record is then trusted; cancelling is filtered
        by name anyway).
        """
        job = await self.queue.job(self.job_id, fresh=True)
        if job is None or job is False:
            return job is None
        return job.name == self.job_name and job.user == _user() and not job.finished

    async def _confirm_gone(self, timeout: float = 30) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        delay = 0.05
        while loop.time() < deadline:
            # max_age instead of fresh: kernels shutting down together share each squeue.
            job = await self.queue.job(self.job_id, max_age=delay)
            # a job id that (now) carries another name is not ours to wait for
            if job is False or (job and (job.finished or job.name != self.job_name)):
                return
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.5)
        self.log.warning(
            "Kernel %s: Slurm job %s still listed %.0f s after scancel; check 'squeue -j %s'.",
            self.kernel_id,
            self.job_id,
            timeout,
            self.job_id,
        )

    # --- Leaving the queue, the clock, the end of an allocation ---------------------------

    @property
    def waiting_in_queue(self) -> bool:
        """True while a start, or a restart that needs a new job, waits for its allocation.

        kernelprovider.manager asks this before a shutdown, interrupt or restart: a waiting
        kernel is taken out of the queue (:meth:`leave_queue`) instead of waited for.
        """
        return self._waiting

    def queue_status(self) -> str:
        """'Slurm job 4242 (reason: Resources)' for messages about a waiting kernel."""
        job = f"Slurm job {self.job_id}" if self.job_id else "its Slurm job (being submitted)"
        return job + (f" (reason: {self._queued_reason})" if self._queued_reason else "")

    def leave_queue(self, why: str = "shut down") -> None:
        """Stop waiting for the allocation; called by kernelprovider.manager when a kernel
        whose job is still pending is shut down (REST, culling, server stop).

        The waiting start wakes up at once and fails with :class:`SlurmStartCancelled`;
        pre_launch then cancels the job and confirms it is gone, as for any failed start.
        """
        self._leave_reason = why
        if self._leave is not None:
            self._leave.set()

    def slurm_model(self) -> dict[str, Any]:
        """This kernel's job for the REST kernel model (kernelprovider.manager adds it as
        "slurm"): id, state, node, pending reason, end (ISO 8601, UTC), seconds left."""
        left = None if self.job_end is None else max(0, int(self.job_end - time.time()))
        end = (
            None
            if self.job_end is None
            else time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.job_end))
        )
        return {
            "job_id": self.job_id,
            "state": "PENDING" if self._waiting else "RUNNING",
            "reason": self._queued_reason if self._waiting else "",
            "node": None if self._waiting else self.node,
            "end": None if self._waiting else end,
            "seconds_left": None if self._waiting else left,
        }

    def cancel_queued_at_exit(self) -> None:
        """scancel this kernel's pending job, blocking; called by kernelprovider.manager at
        interpreter exit when the server skipped its own shutdown (a plain Ctrl-C without a
        terminal ends jupyter_server's loop with KeyboardInterrupt and no cleanup). No event
        loop runs any more, so this is a plain subprocess call."""
        if not (self._waiting and self.job_id):
            return
        subprocess.run(
            ["scancel", f"--name={self.job_name}", self.job_id],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=15,
            check=False,
        )
        self.log.info(
            "Kernel %s: the server exits without its shutdown; cancelled %s",
            self.kernel_id,
            self.queue_status(),
        )
        unlink_quietly(self.files["lease"])

    def _enter_queue(self) -> None:
        self._waiting = True
        self._queued_reason = ""
        self._leave = asyncio.Event()

    def _check_leave(self) -> None:
        if self._leave is not None and self._leave.is_set():
            raise SlurmStartCancelled(
                f"Kernel {self.kernel_name} was {self._leave_reason} while "
                f"{self.queue_status()} waited in the queue; the job was cancelled."
            )

    async def _queue_pause(self, delay: float) -> None:
        """Sleep between two looks at a pending job; a :meth:`leave_queue` ends it early."""
        if self._leave is None:
            await asyncio.sleep(delay)
            return
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._leave.wait(), delay)

    async def _why_ended(self, job_id: str, settle: float = 30) -> str:
        """Why Slurm ended ``job_id``, in words (waits out COMPLETING for the final state)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + settle
        while True:
            job = await self.queue.job(job_id, fresh=True)
            if job is None:
                return f"Slurm job {job_id} ended (the controller does not answer, so not why)"
            if job is False:
                return ended_message(job_id, "", "", "", self.node or "")
            if job.finished or loop.time() > deadline:
                return ended_message(job_id, job.state, job.reason, job.time_limit, job.nodes)
            await asyncio.sleep(0.5)

    async def _requeue_or_stop(self) -> None:
        """Called by pre_launch when the kernel needs a new job: nothing on a first start.

        After Slurm ended the job under a running kernel (the restarter restarts it), say
        why, then queue one new allocation (on_job_end 'requeue'; the new kernel prints the
        reason in its first cell's output) or stop ('stop'). A requeued job that did not
        start is not followed by another: the restarter does not loop on the queue.
        """
        if self._end_note and not self._requeued:
            raise SlurmJobEnded(self._end_note)  # stopped before: never a new job
        old = self.job_id
        if old is None and not self._requeued:
            return
        if old is None:
            why = (
                f"The new Slurm job queued for kernel {self.kernel_name} did not start; not "
                "queueing another. Start the kernel again when you need it."
            )
            self._end_note = why
            self._requeued = False
            self._give_up_restarts()
            raise SlurmJobEnded(why)
        said = await self._why_ended(old)
        await self.close_tunnel()  # transport: the tunnel to the ended job's node goes too
        self.queue.unregister(old)
        self.job_id = self.step_id = None
        self.job_end = None
        if self.on_job_end == "stop" or self._requeued:
            self._end_note = (
                f"{said}. Kernel {self.kernel_name} stopped (SlurmProvisioner.on_job_end = "
                f"'{self.on_job_end}'); start it again to queue a new job."
            )
            self._requeued = False
            self.log.warning("Kernel %s: %s", self.kernel_id, self._end_note)
            self._give_up_restarts()
            raise SlurmJobEnded(self._end_note)
        self.log.warning(
            "Kernel %s: %s. Queueing one new allocation for it (SlurmProvisioner.on_job_end = "
            "'requeue').",
            self.kernel_id,
            said,
        )
        self._end_note = (
            f"{said}. This is a new kernel in a new job: variables from before are gone, "
            "re-run the cells you need."
        )
        self._requeued = True

    def _give_up_restarts(self) -> None:
        """Stop jupyter_client's restarter and tell its 'dead' listeners (the server drops the
        kernel, JupyterLab shows it dead) instead of letting it retry a start that cannot
        help."""
        km = self.parent
        restarter = getattr(km, "_restarter", None)
        if km is None or restarter is None:
            return
        km.stop_restarter()
        for callback in list(restarter.callbacks.get("dead", [])):
            try:
                callback()
            except Exception:
                self.log.exception("Kernel %s: a 'dead' callback failed", self.kernel_id)


def _facts_from_record(record: Mapping[str, Any]) -> HostFacts:
    """The node facts a record stored (``asdict`` of :class:`HostFacts`), read back."""
    gpus = [GpuInfo(**g) for g in record.get("gpus") or [] if isinstance(g, dict)]
    return HostFacts(node=str(record.get("node") or ""), driver=record.get("driver"), gpus=gpus)
