"""SlurmProvisioner: the container kernel as a step of a Slurm allocation on a GPU node."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import signal
import subprocess
from dataclasses import asdict
from typing import Any

from jupyter_client.connect import KernelConnectionInfo, port_names
from jupyter_client.provisioning.provisioner_base import KernelProvisionerBase
from jupyter_core.paths import jupyter_data_dir
from traitlets import (
    TraitError,
    default,
    validate,
)

from ..apptainer import Bind, RuntimeInfo, build_step_gpu_prelude, container_env, env_is_evaluated
from ..compat import HostFacts, ImageFacts
from ..container import ContainerMixin
from ..errors import (
    KernelStartError,
    KernelStartTimeout,
    KernelUnreachable,
    SlurmError,
    named_hook,
)
from ..launch import LaunchContext, LaunchPlan
from ..offloop import in_thread, unlink_quietly
from ..options import (
    SLURM_OPTIONS,
    options_mixin,
)
from ..provisioner import explain_exit
from ..transport import TransportMixin  # transport: SSH tunnel and CurveZMQ (issue 11)
from .allocation import SlurmAllocation, _facts_from_record
from .commands import _REFUSED_GRACE, build_srun_argv, slurm_env, unreachable_message
from .queue import run
from .state import (
    _read_connection_file,
    _signal_group,
    _write_connection_file,
    check_state_files,
    ensure_state_dir,
    prune_old_logs,
    tail_file,
)

#: The Slurm options of :data:`kernelprovider.options.SLURM_OPTIONS` as traits.
SlurmOptions: Any = options_mixin(
    "SlurmOptions",
    SLURM_OPTIONS,
    "The Slurm settings of a kernel (partition, gpus, time limit, ...), as traits.",
)


class SlurmProvisioner(  # type: ignore[misc]
    TransportMixin, SlurmAllocation, SlurmOptions, ContainerMixin, KernelProvisionerBase
):
    """Runs the container kernel on a node that Slurm allocates, as a step of a held job.

    Lifecycle: pre_launch submits (or reuses) an allocation and waits for it; launch_kernel
    starts ``srun --jobid=J --overlap ... apptainer exec ... ipykernel -f F --ip=ADDR`` and
    returns what F says; restarts start a new step in the same job; the final cleanup
    cancels the job and confirms it is gone. Select it with provisioner_name
    ``slurm-apptainer-provisioner``; every trait is settable per kernelspec or site-wide as
    ``c.SlurmProvisioner.<name>``; the Slurm traits come from the option table
    (:mod:`kernelprovider.options`).
    """

    @classmethod
    def section_names(cls) -> list[str]:
        """Config sections that apply, lowest priority first: ``c.ContainerProvisioner.*``
        (site-wide container settings, documented to reach Slurm kernels too) just before
        ``c.SlurmProvisioner.*``. Called by traitlets when config is loaded."""
        names = [n for n in super().section_names() if n != "ContainerProvisioner"]
        at = names.index(cls.__name__) if cls.__name__ in names else len(names)
        return [*names[:at], "ContainerProvisioner", *names[at:]]

    @default("state_dir")
    def _state_dir_default(self) -> str:
        return os.path.join(jupyter_data_dir(), "kernelprovider")

    @validate("state_dir")
    def _validate_state_dir(self, proposal: dict[str, Any]) -> str:
        value = os.path.expanduser(proposal["value"])
        if not os.path.isabs(value):
            raise TraitError(
                f"state_dir must be an absolute path on a filesystem the GPU nodes share, not "
                f"{proposal['value']!r}."
            )
        return value

    @validate("lease_seconds")
    def _validate_lease(self, proposal: dict[str, Any]) -> int:
        if proposal["value"] < 10:
            raise TraitError("lease_seconds must be at least 10.")
        return proposal["value"]

    # --- launch ---------------------------------------------------------------------------

    @named_hook
    async def pre_launch(self, **kwargs: Any) -> dict[str, Any]:
        """Get the allocation and build the kernel step's argv; called by KernelManager.

        Runs on every start and restart, before :meth:`launch_kernel`. Checks what can be
        checked on this host first (image, runtime, binds, state directory), then submits
        the job or reuses the one this kernel already holds (restart), waits until it runs
        and learns its node and address. A start that fails here gives back the job it
        submitted (cancelled, confirmed gone) and its lease before the error propagates.
        """
        cwd = os.path.abspath(kwargs.pop("cwd", None) or os.getcwd())
        extra_arguments = kwargs.pop("extra_arguments", [])
        kwargs = await super().pre_launch(**kwargs)
        self._cwd = cwd
        await self._in_state_dir(ensure_state_dir, self.state_dir)
        await self._in_state_dir(check_state_files, self.files.values())
        await self.check_launch(cwd)
        await self.prepare_transport()  # transport: decide CurveZMQ before a job is queued
        await self._in_state_dir(prune_old_logs, self.state_dir)

        self._new_job = False
        self._stopping = False
        self._enter_queue()
        loop_ends = False
        try:
            check, self._usable_check = self._usable_check, None
            if not await (check if check is not None else self._job_usable()):
                await self._requeue_or_stop()
                await self._submit()
                self._new_job = True
            await self._wait_running()
            await self._locate_node()
        except (KeyboardInterrupt, SystemExit, GeneratorExit):
            # The server's loop ends under this start (Ctrl-C without a terminal lands here
            # when it interrupts this coroutine): no await can finish any more, so the job
            # stays marked as queued for cancel_queued_at_exit, which runs without a loop.
            loop_ends = True
            raise
        except BaseException as e:
            # Nobody calls cleanup() after a failed start: give the allocation back here.
            if self._new_job or isinstance(e, SlurmError):
                await self._release()
            raise
        finally:
            if not loop_ends:
                self._set_reason("")
                self._waiting = False

        # The kernel on the node writes F itself (its own ports and key); the manager reads
        # it from there, so the key never travels through argv, Slurm or the environment.
        km = self.parent
        conn = self.files["connection"]
        km.connection_file = conn
        kernel_cmd = km.format_kernel_cmd(extra_arguments=extra_arguments)
        inner = [a.replace(os.path.realpath(conn), conn) for a in kernel_cmd]
        try:
            # The GPU pre-flight probes the allocated node, so it runs here, in the job.
            plan = await self.plan_start(self.inner_command(inner), cwd, kwargs["env"])
        except BaseException:
            if self._new_job:
                await self._release()
            raise
        self.verdicts = plan.verdicts
        if self._connection:
            # A restart: ipykernel removed F when the last kernel exited. Writing it back
            # makes the new kernel bind the same ports with the same key, so clients stay.
            await self._in_state_dir(_write_connection_file, conn, self._connection)
        else:
            # A new allocation: an F left by a kernel that Slurm killed (scancel, time limit)
            # names the old node's address and ports; ipykernel would load it and fail to
            # bind them on another node. The new kernel writes its own.
            await self._in_state_dir(unlink_quietly, conn)
            # transport: the Curve pair (and the bind address), never a key
            await self.seed_connection_file(conn, self.kernel_bind_ip(self.node_ip or ""))
        argv = plan.argv
        # srun hands its own environment to the step, so it gets a short allowlist plus
        # the plan's variables.
        kwargs["env"] = slurm_env(kwargs["env"], plan.env)
        kwargs["cmd"] = argv
        kwargs["cwd"] = cwd
        self.log.debug("Kernel %s: step argv %s", self.kernel_id, argv)
        return kwargs

    def launch_context(
        self,
        inner: list[str],
        cwd: str,
        env: dict[str, str],
        host: HostFacts | None,
        image: ImageFacts | None,
        runtime: RuntimeInfo | None = None,
    ) -> LaunchContext:
        """The container context plus this kernel's job, node address and kernelspec env.

        The kernelspec's "env" (already substituted by the base class) travels into the
        container the same way container_env does: srun passes on only an allowlist.
        """
        spec_env = {k: env[k] for k in (getattr(self.kernel_spec, "env", None) or {}) if k in env}
        spec_env.update(self.clock_env())  # the allocation's clock, for the in-kernel hook
        return dataclasses.replace(
            super().launch_context(inner, cwd, env, host, image, runtime),
            job_id=self.job_id or "JOB_ID",
            node_addr=self.node_ip or "NODE_ADDR",
            spec_env=spec_env,
        )

    def launch_plan(self, ctx: LaunchContext, *, strict: bool = True) -> LaunchPlan:
        """The container plan as a step of the job: ``srun --jobid=J ... [GPU prelude]
        runtime exec ... IMAGE inner --ip=ADDR``, with the kernelspec's env in the container.

        Called by pre_launch (through plan_start) once the job runs, and by ``doctor`` with
        placeholders for the job and the node address.
        """
        plan = super().launch_plan(
            dataclasses.replace(
                ctx,
                inner=[
                    *ctx.inner,
                    f"--ip={self.kernel_bind_ip(ctx.node_addr)}",
                    *self.clock_argv(ctx.inner),
                ],
            ),
            strict=strict,
        )
        plan.argv = [
            *build_srun_argv(ctx.job_id, self.step_name, ctx.cwd, self.srun_args),
            *build_step_gpu_prelude(ctx.runtime.flavor, self.gpu, self.cleanenv),
            *plan.argv,
        ]
        spec_vars = container_env(
            ctx.runtime.flavor,
            dict(ctx.spec_env),
            evaluated=env_is_evaluated(self.extra_args, ctx.env),
        )
        plan.env = {**spec_vars, **plan.env}
        plan.container_env = {**ctx.spec_env, **plan.container_env}
        return plan

    def gpu_selection(self, env: dict[str, str]) -> tuple[dict[str, str], dict[str, str]]:
        """Nothing from the server: Slurm chooses the node's GPUs (the step's
        CUDA_VISIBLE_DEVICES and, where configured, its device cgroup)."""
        return {}, {}

    def connection_binds(self, cwd: str) -> list[Bind]:
        """Slurm kernels read their connection file from the state directory."""
        return [Bind(self.state_dir, self.state_dir), Bind(cwd, cwd)]

    @named_hook
    async def launch_kernel(self, cmd: list[str], **kwargs: Any) -> KernelConnectionInfo:
        """Start the kernel step and return the connection info the kernel wrote.

        Called by KernelManager after pre_launch. The srun process runs on this host with
        its output in the kernel's log file; the kernel on the node picks its own ports and
        key and writes them to F, which is read here. On restart F is kept, so the new
        kernel binds the same ports with the same key and clients stay connected. If the
        kernel does not come up, its step is ended, and a job submitted for this start is
        given back.
        """
        log_path = self.files["log"]
        log_fd = await in_thread(
            os.open,
            log_path,
            os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW,
            0o600,
            timeout=self.fs_timeout,
            what=f"Log file {log_path}",
        )
        try:
            self.process = subprocess.Popen(  # noqa: ASYNC220 - Popen returns at once
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=log_fd,
                stderr=log_fd,
                env=kwargs.get("env"),
                cwd=kwargs.get("cwd"),
                start_new_session=True,
            )
        finally:
            os.close(log_fd)
        self.pid = self.process.pid
        self.pgid = self.pid
        self.step_id = None
        self.log.info(
            "Kernel %s: starting in %s as a step of Slurm job %s on %s (%s)",
            self.kernel_id,
            self.image,
            self.job_id,
            self.node,
            self.node_ip,
        )
        try:
            self._connection = await self._wait_for_kernel()
        except BaseException:
            await self.kill()
            self.process = None
            if self._new_job:
                await self._release()
            raise
        self.connection_info = self.server_connection(self._connection)  # transport: tunnel ports
        self.connection_info["key"] = self._connection["key"].encode()
        # KernelManager keeps F as its connection file: load it so its reconcile step finds
        # the manager, the file and this info in agreement (and writes nothing itself). Its
        # ports are cleared first: load_connection_info keeps ports already set, and a kernel
        # in a new allocation (a requeue) has new ones.
        if self.parent is not None:
            for name in port_names:
                setattr(self.parent, name, 0)
            self.parent.load_connection_info(self.connection_info)
        self._new_job = False
        self._kernel_started()
        return self.connection_info

    async def _wait_for_kernel(self) -> dict[str, Any]:
        """Wait until the server can connect to the kernel's shell port on the node.

        ipykernel writes F only after it has bound its ports, so once a new kernel's F is
        there, a port that gives no answer at all (twice) or keeps refusing (for
        ``_REFUSED_GRACE`` s) is a firewall between this host and the node: that fails at once
        with :class:`KernelUnreachable` instead of waiting out boot_timeout. On a restart F is
        the old kernel's (rewritten before the step starts), so only silence counts there.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.boot_timeout
        conn_file = self.files["connection"]
        new_file = self._connection is None
        silent = 0
        refused_since: float | None = None
        while True:
            info = await in_thread(
                _read_connection_file,
                conn_file,
                timeout=self.fs_timeout,
                what=f"Connection file {conn_file}",
            )
            if info:
                answer = await self.probe_kernel(info)  # transport: direct or through ssh
                if answer == "open":
                    return info
                silent = silent + 1 if answer == "silent" else 0
                if answer == "refused" and new_file and refused_since is None:
                    refused_since = loop.time()
                if silent >= 2 or (
                    refused_since is not None and loop.time() - refused_since > _REFUSED_GRACE
                ):
                    raise KernelUnreachable(
                        unreachable_message(
                            self.job_id, self.node, info, answer, cancelled=self._new_job
                        )
                    )
            code = self.process.poll() if self.process else 0
            if code is not None:
                await asyncio.sleep(0.2)  # let srun flush its last lines into the log
                raise KernelStartError(
                    f"Slurm job {self.job_id} on {self.node}: "
                    + explain_exit(code, await self._in_state_dir(tail_file, self.files["log"]))
                    + f"\n(full log: {self.files['log']})"
                )
            if loop.time() > deadline:
                raise KernelStartTimeout(
                    f"The kernel in Slurm job {self.job_id} on {self.node} did not start within "
                    f"{self.boot_timeout:.0f} s. Raise SlurmProvisioner.boot_timeout if the image "
                    f"is slow to load.{await self._log_note()}"
                )
            await asyncio.sleep(0.05)

    # --- running kernel -------------------------------------------------------------------

    async def poll(self) -> int | None:
        """None while the kernel runs; called by KernelManager.is_alive and the restarter.

        The local srun process answers for free (it lives exactly as long as the step). A
        kernel re-attached from a record (no srun here) looks for its step in the shared,
        batched squeue: one call per poll_interval serves every kernel of the process, and
        a controller error counts as alive.
        """
        self._tick_clock()
        if self.process is not None:
            return self.process.poll()
        if not self._attached:
            return 0
        # After a shutdown_request, look more often so the shutdown does not wait out the
        # interval; the answer is still shared.
        steps = await self.queue.steps(max_age=0.5 if self._stopping else None, need=self.job_id)
        if steps is None:
            return None
        mine = steps.get(self.job_id, {})
        if any(sid == self.step_id or name == self.step_name for sid, name in mine.items()):
            return None
        self._attached = False
        return 0

    async def wait(self) -> int | None:
        """Wait for the kernel step to end; called by KernelManager during shutdown."""
        while await self.poll() is None:
            await asyncio.sleep(0.1)
        code = self.process.returncode if self.process else 0
        self.process = None
        return code

    async def shutdown_requested(self, restart: bool = False) -> None:
        """Note that a shutdown_request went out; called by KernelManager.request_shutdown.

        On a restart, the check that the allocation still stands starts now, while the old
        kernel winds down, instead of after it (pre_launch then only collects the answer).
        """
        await super().shutdown_requested(restart=restart)
        self._stopping = True
        if restart and self.job_id:
            self._usable_check = asyncio.ensure_future(self._job_usable())

    async def send_signal(self, signum: int) -> None:
        """Signal the kernel on the node; called by KernelManager (interrupt_mode 'signal').

        srun would treat SIGINT as "print status", so the signal goes to the step through
        ``scancel --signal=SIG J.S``, which delivers it to the kernel process in the
        container. If the step cannot be found, every step of the job gets it (never the
        holder script). Every scancel is filtered by this kernel's job name, so a stale
        record cannot signal someone else's job.
        """
        if signum == 0 or not self.job_id:
            return
        target = await self._step() or self.job_id
        name = signal.Signals(signum).name.removeprefix("SIG")
        rc, _, err = await run(
            ["scancel", f"--signal={name}", f"--name={self.job_name}", target], timeout=30
        )
        if rc != 0:
            self.log.warning(
                "Kernel %s: scancel --signal=%s %s failed: %s",
                self.kernel_id,
                name,
                target,
                err.strip(),
            )

    async def kill(self, restart: bool = False) -> None:
        """End the kernel step (not the allocation); called by KernelManager.

        The step is killed through Slurm; the local srun gets SIGTERM (which also cancels
        the step; SIGKILL would leave it running) and SIGKILL only if it hangs.
        """
        step = await self._step()
        if step:
            await run(["scancel", "--signal=KILL", f"--name={self.job_name}", step], timeout=30)
        if self.process is not None and self.process.poll() is None:
            _signal_group(self.pid, signal.SIGTERM)
            for _ in range(30):
                if self.process.poll() is not None:
                    break
                await asyncio.sleep(0.1)
            else:
                _signal_group(self.pid, signal.SIGKILL)
        self._attached = False

    async def terminate(self, restart: bool = False) -> None:
        """Ask the kernel step to end (SIGTERM); called by KernelManager."""
        await self.send_signal(signal.SIGTERM)

    async def cleanup(self, restart: bool = False) -> None:
        """Release what the kernel held; called by KernelManager after the kernel ended.

        On restart only the step is gone and the allocation, lease and connection file stay
        for the next step. On final shutdown: cancel the job, confirm Slurm dropped it, and
        remove the connection file, lease and (unless keep_logs) log.
        """
        self.step_id = None
        self._stopping = False
        if restart:
            return
        if self._usable_check is not None:
            self._usable_check.cancel()
            self._usable_check = None
        await self._release()
        if not self.keep_logs:
            await self._remove_quietly(self.files["log"])

    # --- persistence, timing --------------------------------------------------------------

    async def get_provisioner_info(self) -> dict[str, Any]:
        """What a restarted server needs to re-attach; called by the kernel manager's owner.

        JSON-serializable and without the key: the key stays in the connection file (0600,
        in the 0700 state directory), where :meth:`load_provisioner_info` reads it again.
        """
        info = await super().get_provisioner_info()
        conn = {k: v for k, v in (info.get("connection_info") or {}).items() if k != "key"}
        info["connection_info"] = conn
        info.update(
            {
                "job_id": self.job_id,
                "step_id": await self._step() if self.job_id else None,
                "node": self.node,
                "node_ip": self.node_ip,
                "state_dir": self.state_dir,
                "job_name": self.job_name,
                "connection_file": self.files["connection"],
                "cwd": self._cwd,
                # the local srun of the step (what LocalProvisioner records for its process)
                "pid": self.pid,
                "pgid": self.pgid,
                # the node's driver and GPUs: a restart after re-attaching needs no probe step
                "node_facts": asdict(self._facts[1])
                if self._facts is not None and self._facts[0] == self.job_id
                else None,
            }
        )
        return info

    async def load_provisioner_info(self, provisioner_info: dict) -> None:
        """Re-attach to a running kernel from a record; called by a restarted server.

        Attaches only when Slurm still lists the record's job under this kernel's name and
        user (a stale record whose job id now belongs to another job is ignored, and that
        job is never touched); then resumes refreshing the lease and reads the connection
        info, key included, from the kernel's connection file.
        """
        await super().load_provisioner_info(provisioner_info)
        self.pid = self.pgid = None
        self.process = None
        self._attached = False
        if not await self._adopt_job(provisioner_info):
            return
        self._attached = True
        self._cwd = provisioner_info.get("cwd") or self._cwd
        facts = provisioner_info.get("node_facts")
        if isinstance(facts, dict):
            self._facts = (self.job_id, _facts_from_record(facts))
        km = self.parent
        if km is not None and not getattr(km, "_launch_args", None):
            # KernelManager restarts with the arguments of its last start_kernel, which this
            # server never called: give it the record's, so a re-attached kernel restarts
            # as a new step in the same job.
            km._launch_args = {"cwd": self._cwd} if self._cwd else {}
            # ...and count that start as attempted, so the restart gets a fresh "ready".
            km._attempted_start = True
        await self.lease_keeper.add(self.files["lease"], self.fs_timeout)
        info = await in_thread(
            _read_connection_file,
            self.files["connection"],
            timeout=self.fs_timeout,
            what=f"Connection file {self.files['connection']}",
        )
        if info:
            self._connection = info
            info = await self.reattach_transport(info)  # transport: a new tunnel, same kernel
            self.connection_info = dict(info, key=info["key"].encode())
        else:
            self.log.warning(
                "Kernel %s: connection file %s is missing; the kernel can be polled and shut "
                "down but not reached.",
                self.kernel_id,
                self.files["connection"],
            )
        self.log.info(
            "Kernel %s: re-attached to Slurm job %s (step %s on %s)",
            self.kernel_id,
            self.job_id,
            self.step_id,
            self.node,
        )

    def get_shutdown_wait_time(self, recommended: float = 5.0) -> float:
        """Seconds KernelManager waits for a clean exit before terminate/kill; srun and
        scancel need a few seconds more than a local process."""
        return max(super().get_shutdown_wait_time(recommended), 15.0)

    def get_stable_start_time(self, recommended: float = 10.0) -> float:
        """Seconds a kernel must stay up before the restarter counts its start as stable
        (the restarter starts after the queue wait, so that wait is not part of it)."""
        return max(super().get_stable_start_time(recommended), 30.0)
