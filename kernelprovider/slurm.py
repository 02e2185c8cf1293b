"""SlurmProvisioner: the container kernel as a step of a Slurm allocation on a GPU node."""

from __future__ import annotations

import asyncio
import getpass
import json
import os
import re
import shlex
import signal
import socket
import stat
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from jupyter_client.connect import KernelConnectionInfo
from jupyter_client.provisioning.provisioner_base import KernelProvisionerBase
from jupyter_core.paths import jupyter_data_dir
from traitlets import (
    Bool,
    CaselessStrEnum,
    Float,
    Int,
    List,
    TraitError,
    Unicode,
    default,
    validate,
)

from .apptainer import (
    Bind,
    build_exec_argv,
    check_bind_sources,
    check_image,
    container_env,
    find_runtime_async,
)
from .errors import (
    KernelStartError,
    KernelStartTimeout,
    SlurmError,
    SlurmJobFailed,
    SlurmQueueTimeout,
    SlurmSubmitError,
    StateDirError,
)
from .provisioner import ContainerProvisioner

__all__ = [
    "SlurmProvisioner",
    "JobInfo",
    "SlurmQueue",
    "LeaseKeeper",
    "parse_squeue",
    "parse_node_addr",
    "build_sbatch_argv",
    "build_srun_argv",
    "batch_script",
    "slurm_env",
    "ensure_state_dir",
    "tail_file",
]

#: Job states after which the allocation is gone for good.
FINISHED_STATES = frozenset(
    {
        "BOOT_FAIL",
        "CANCELLED",
        "COMPLETED",
        "DEADLINE",
        "FAILED",
        "NODE_FAIL",
        "OUT_OF_MEMORY",
        "PREEMPTED",
        "REVOKED",
        "SPECIAL_EXIT",
        "TIMEOUT",
    }
)
#: Pending reasons that no amount of waiting fixes: report them at once.
HOPELESS_REASONS = frozenset(
    {
        "BadConstraints",
        "InvalidAccount",
        "InvalidQOS",
        "PartitionNodeLimit",
        "PartitionTimeLimit",
        "QOSMaxGRESPerJob",
        "AssocMaxGRESPerJob",
        "JobHeldAdmin",
        "DependencyNeverSatisfied",
    }
)
_SQUEUE_FORMAT = "%i|%T|%r|%N|%S|%j|%u"
# Environment handed to srun: only what a kernel needs; tokens of the server (for example
# JUPYTERHUB_API_TOKEN) stay behind.
_ENV_KEEP = re.compile(
    r"^(PATH|HOME|USER|LOGNAME|LANG|LANGUAGE|LC_[A-Z]+|TZ|TMPDIR|TERM|SHELL|"
    r"(APPTAINER|SINGULARITY)[A-Z_]*|CUDA_VISIBLE_DEVICES|NVIDIA_[A-Z_]+)$"
)
_ENV_SECRET = re.compile(r"TOKEN|SECRET|PASSW|CREDENTIAL|_KEY$|^KEY", re.IGNORECASE)


@dataclass(frozen=True)
class JobInfo:
    """One row of squeue: job id, state, reason, node list, expected start, name, user."""

    job_id: str
    state: str
    reason: str
    nodes: str
    start: str
    name: str
    user: str

    @property
    def finished(self) -> bool:
        return self.state.split()[0] in FINISHED_STATES


def parse_squeue(text: str) -> dict[str, JobInfo]:
    """Parse ``squeue -h -o '%i|%T|%r|%N|%S|%j|%u'`` output; job names may contain '|'."""
    jobs = {}
    for line in text.splitlines():
        parts = line.strip().split("|")
        if len(parts) < 7:
            continue
        job_id, state, reason, nodes, start = parts[:5]
        user = parts[-1]
        name = "|".join(parts[5:-1])
        jobs[job_id] = JobInfo(job_id, state, reason, nodes, start, name, user)
    return jobs


def parse_node_addr(text: str) -> str | None:
    """NodeAddr from ``scontrol show node -o NODE``."""
    m = re.search(r"\bNodeAddr=(\S+)", text)
    return m.group(1) if m else None


def build_sbatch_argv(
    job_name: str,
    *,
    partition: str = "",
    gpus: str = "",
    gpu_option: str = "gres",
    time_limit: str = "",
    account: str = "",
    qos: str = "",
    constraint: str = "",
    cpus_per_task: int = 0,
    mem: str = "",
    output: str = "/dev/null",
    chdir: str = "",
    extra_args: Sequence[str] = (),
) -> list[str]:
    """``sbatch --parsable ...`` for the allocation; the script itself comes on stdin.

    ``--export=NONE``: the holder script needs nothing from the server's environment, and
    the server's environment may hold tokens that have no business in a job record.
    """
    argv = ["sbatch", "--parsable", f"--job-name={job_name}", "--export=NONE", "--nodes=1"]
    argv.append(f"--output={output}")
    if chdir:
        argv.append(f"--chdir={chdir}")
    if partition:
        argv.append(f"--partition={partition}")
    if gpus:
        argv.append(f"--gres=gpu:{gpus}" if gpu_option == "gres" else f"--gpus={gpus}")
    if time_limit:
        argv.append(f"--time={time_limit}")
    if account:
        argv.append(f"--account={account}")
    if qos:
        argv.append(f"--qos={qos}")
    if constraint:
        argv.append(f"--constraint={constraint}")
    if cpus_per_task:
        argv.append(f"--cpus-per-task={cpus_per_task}")
    if mem:
        argv.append(f"--mem={mem}")
    argv += list(extra_args)
    return argv


def build_srun_argv(
    job_id: str, step_name: str, cwd: str, extra_args: Sequence[str] = ()
) -> list[str]:
    """``srun`` prefix that runs one task as a new step inside allocation ``job_id``.

    ``--overlap`` lets the step share the resources the holder script has; ``--kill-on-bad-exit``
    and ``--wait=0`` keep a dead kernel from lingering.
    """
    return [
        "srun",
        f"--jobid={job_id}",
        "--overlap",
        "--nodes=1",
        "--ntasks=1",
        f"--job-name={step_name}",
        f"--chdir={cwd}",
        "--quiet",
        *extra_args,
    ]


def batch_script(lease_file: str, lease_seconds: int, check_every: int = 5) -> str:
    """The POSIX sh holder script: it keeps the allocation while the lease file is fresh.

    The provisioner touches the lease file; if the server dies, the file goes stale and the
    script exits, which ends the job and every kernel step in it (dead-man switch). It holds
    no key and no environment from the server.
    """
    lease = shlex.quote(lease_file)
    return f"""#!/bin/sh
# kernelprovider: holds this allocation for one Jupyter kernel while its lease is fresh.
lease={lease}
max_age={int(lease_seconds)}
while :; do
    now=$(date +%s)
    mtime=$(stat -c %Y "$lease" 2>/dev/null) || {{ echo "lease file gone; ending"; exit 0; }}
    if [ $((now - mtime)) -gt "$max_age" ]; then
        echo "lease older than $max_age s (Jupyter server gone?); ending allocation"
        exit 0
    fi
    sleep {int(check_every)}
done
"""


def slurm_env(env: Mapping[str, str], extra: Mapping[str, str]) -> dict[str, str]:
    """The environment srun gets: a short allowlist of ``env`` plus ``extra``, never secrets."""
    kept = {k: v for k, v in env.items() if _ENV_KEEP.match(k) and not _ENV_SECRET.search(k)}
    kept.update({k: v for k, v in extra.items() if not _ENV_SECRET.search(k.split("ENV_", 1)[-1])})
    return kept


def ensure_state_dir(path: str) -> str:
    """Create or check the per-user state directory: a real directory, ours, mode 0700.

    Refuses a symlink or a directory another user owns or can read, since the kernel's
    connection file (with its key) is written there.
    """
    try:
        os.makedirs(path, mode=0o700, exist_ok=True)
        st = os.lstat(path)
    except OSError as e:
        raise StateDirError(
            f"Cannot create the state directory {path}: {e.strerror}. Set "
            "SlurmProvisioner.state_dir to a writable directory on a filesystem the GPU "
            "nodes share."
        ) from e
    if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode):
        raise StateDirError(f"State directory {path} is a symlink or not a directory; refusing.")
    if st.st_uid != os.getuid():
        raise StateDirError(
            f"State directory {path} belongs to uid {st.st_uid}, not to you; refusing. "
            "Remove it or set SlurmProvisioner.state_dir."
        )
    if stat.S_IMODE(st.st_mode) & 0o7777 != 0o700:
        os.chmod(path, 0o700)
    if not os.access(path, os.W_OK):
        raise StateDirError(f"State directory {path} is not writable; fix its permissions.")
    return path


def tail_file(path: str, lines: int = 30) -> str:
    """The last lines of a log file ('' if it does not exist)."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 16384))
            data = f.read().decode(errors="replace")
    except OSError:
        return ""
    return "\n".join(line for line in data.splitlines()[-lines:] if line.strip())


async def run(
    argv: Sequence[str],
    *,
    timeout: float = 60,
    input: bytes | None = None,
    env: Mapping[str, str] | None = None,
) -> tuple[int, str, str]:
    """Run a Slurm command without blocking the loop; (exit code, stdout, stderr)."""
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=dict(env) if env is not None else None,
        )
    except FileNotFoundError as e:
        raise SlurmError(
            f"{argv[0]} not found on PATH. Slurm mode needs the Slurm client commands "
            "(sbatch, srun, squeue, scancel) on the Jupyter server's host."
        ) from e
    try:
        out, err = await asyncio.wait_for(proc.communicate(input), timeout)
    except asyncio.TimeoutError:
        proc.kill()
        await proc.wait()
        return 124, "", f"{argv[0]} did not answer within {timeout:.0f} s"
    return proc.returncode or 0, out.decode(errors="replace"), err.decode(errors="replace")


class SlurmQueue:
    """One batched ``squeue`` per interval for every kernel of this process.

    Provisioners ask :meth:`jobs`; whoever asks first after the interval runs the single
    squeue for all registered jobs, the others share its answer. A controller error is
    "unknown" (``None``), never "gone".
    """

    _instances: dict[int, SlurmQueue] = {}

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self.calls = 0
        self._ids: dict[str, int] = {}
        self._last: dict[str, JobInfo] | None = None
        self._stamp = 0.0
        self._lock = asyncio.Lock()

    @classmethod
    def instance(cls, interval: float = 5.0) -> SlurmQueue:
        """The queue of the running event loop (created on first use)."""
        key = id(asyncio.get_running_loop())
        if key not in cls._instances:
            cls._instances[key] = cls(interval)
        return cls._instances[key]

    def register(self, job_id: str) -> None:
        self._ids[job_id] = self._ids.get(job_id, 0) + 1

    def unregister(self, job_id: str) -> None:
        if self._ids.get(job_id, 0) <= 1:
            self._ids.pop(job_id, None)
        else:
            self._ids[job_id] -= 1

    async def jobs(
        self, fresh: bool = False, max_age: float | None = None
    ) -> dict[str, JobInfo] | None:
        """Registered jobs still known to Slurm (absent = gone); None when Slurm is unreachable.

        ``max_age`` shortens the interval for callers that wait on a state change (a pending
        start); they still share one squeue per ``max_age`` among them.
        """
        age = self.interval if max_age is None else max_age
        async with self._lock:
            now = time.monotonic()
            if fresh or self._last is None or now - self._stamp >= age:
                self._last = await self._query(list(self._ids))
                self._stamp = time.monotonic()
            return self._last

    async def _query(self, ids: list[str]) -> dict[str, JobInfo] | None:
        if not ids:
            return {}
        self.calls += 1
        rc, out, err = await run(
            ["squeue", "-h", "-t", "all", "-o", _SQUEUE_FORMAT, "-j", ",".join(ids)], timeout=30
        )
        if rc != 0:
            if "Invalid job id" in err:
                return {}  # every job asked for is long gone
            return None
        return parse_squeue(out)

    async def job(
        self, job_id: str, fresh: bool = False, max_age: float | None = None
    ) -> JobInfo | None | bool:
        """The job's row; False when Slurm no longer knows it; None when unknown."""
        jobs = await self.jobs(fresh=fresh, max_age=max_age)
        if jobs is None:
            return None
        return jobs.get(job_id, False)


class LeaseKeeper:
    """Touches every registered lease file on one timer for the whole process."""

    _instances: dict[int, LeaseKeeper] = {}

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self.paths: set[str] = set()
        self._task: asyncio.Task[None] | None = None

    @classmethod
    def instance(cls, interval: float) -> LeaseKeeper:
        key = id(asyncio.get_running_loop())
        if key not in cls._instances:
            cls._instances[key] = cls(interval)
        keeper = cls._instances[key]
        keeper.interval = min(keeper.interval, interval)
        return keeper

    def add(self, path: str) -> None:
        touch(path)
        self.paths.add(path)
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run())

    def discard(self, path: str) -> None:
        self.paths.discard(path)

    async def _run(self) -> None:
        while self.paths:
            await asyncio.sleep(self.interval)
            for path in list(self.paths):
                try:
                    os.utime(path)
                except OSError:
                    self.paths.discard(path)


def touch(path: str) -> None:
    """Create (0600) or refresh a file's mtime."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    os.close(fd)
    os.utime(path)


class SlurmProvisioner(ContainerProvisioner):
    """Runs the container kernel on a node that Slurm allocates, as a step of a held job.

    Lifecycle: pre_launch submits (or reuses) an allocation and waits for it; launch_kernel
    starts ``srun --jobid=J --overlap ... apptainer exec ... ipykernel -f F --ip=ADDR`` and
    returns what F says; restarts start a new step in the same job; the final cleanup
    cancels the job and confirms it is gone. Select it with provisioner_name
    ``slurm-apptainer-provisioner``; every trait is settable per kernelspec or site-wide as
    ``c.SlurmProvisioner.<name>``.
    """

    partition = Unicode("", help="Slurm partition (--partition).").tag(config=True)
    gpus = Unicode("1", help="GPUs to allocate, e.g. '1' or 'a100:2' ('' or '0' for none).").tag(
        config=True
    )
    gpu_option = CaselessStrEnum(
        ["gres", "gpus"],
        default_value="gres",
        help="Ask for GPUs with --gres=gpu:N ('gres') or --gpus=N ('gpus').",
    ).tag(config=True)
    time_limit = Unicode("8:00:00", help="Allocation time limit (--time): the last backstop.").tag(
        config=True
    )
    account = Unicode("", help="Slurm account (--account).").tag(config=True)
    qos = Unicode("", help="Slurm QOS (--qos).").tag(config=True)
    constraint = Unicode("", help="Node features (--constraint).").tag(config=True)
    cpus_per_task = Int(0, help="CPUs for the allocation (--cpus-per-task); 0 = default.").tag(
        config=True
    )
    mem = Unicode("", help="Memory for the allocation (--mem), e.g. '32G'.").tag(config=True)
    sbatch_args = List(Unicode(), help="Extra sbatch arguments.").tag(config=True)
    srun_args = List(Unicode(), help="Extra srun arguments for the kernel step.").tag(config=True)
    state_dir = Unicode(
        help="Per-user 0700 directory on a filesystem the GPU nodes share; holds each "
        "kernel's connection file, lease and log. Default: <jupyter data dir>/kernelprovider."
    ).tag(config=True)
    queue_timeout = Float(
        3600.0, help="Seconds to wait for the allocation to start; 0 waits forever."
    ).tag(config=True)
    boot_timeout = Float(
        180.0, help="Seconds from allocation start until the kernel must be listening."
    ).tag(config=True)
    lease_seconds = Int(
        90,
        help="If the server stops refreshing the lease for this long, the allocation ends by "
        "itself (dead-man switch).",
    ).tag(config=True)
    poll_interval = Float(
        5.0, help="Seconds between the batched squeue calls shared by all kernels."
    ).tag(config=True)
    pending_log_interval = Float(
        10.0, help="Seconds between INFO lines while the job is pending."
    ).tag(config=True)
    kernel_ip = Unicode(
        "",
        help="Address the kernel binds on the node; default: the node's NodeAddr from Slurm.",
    ).tag(config=True)
    keep_logs = Bool(
        False, help="Keep the kernel's log file in the state directory after a clean shutdown."
    ).tag(config=True)

    @default("state_dir")
    def _state_dir_default(self) -> str:
        return os.path.join(jupyter_data_dir(), "kernelprovider")

    @validate("lease_seconds")
    def _validate_lease(self, proposal: dict[str, Any]) -> int:
        if proposal["value"] < 10:
            raise TraitError("lease_seconds must be at least 10.")
        return proposal["value"]

    @validate("time_limit", "partition", "account", "qos", "constraint", "mem", "gpus")
    def _validate_slurm_value(self, proposal: dict[str, Any]) -> str:
        value = proposal["value"]
        if any(c in value for c in "\n\0") or value.startswith("-"):
            raise TraitError(f"{proposal['trait'].name}: {value!r} is not a valid Slurm value.")
        return value

    # --- state of this kernel (persisted by get_provisioner_info) -------------------------
    job_id: str | None = None
    step_id: str | None = None
    node: str | None = None
    node_ip: str | None = None
    _attached = False
    _connection: dict[str, Any] | None = None

    @property
    def files(self) -> dict[str, str]:
        """Paths of this kernel's connection file, lease and log in the state directory."""
        base = os.path.join(self.state_dir, f"kernel-{self.kernel_id}")
        return {"connection": base + ".json", "lease": base + ".lease", "log": base + ".log"}

    @property
    def job_name(self) -> str:
        return f"kp-{self.kernel_id}"

    @property
    def has_process(self) -> bool:
        return self.process is not None or self._attached

    @property
    def queue(self) -> SlurmQueue:
        return SlurmQueue.instance(self.poll_interval)

    # --- launch ---------------------------------------------------------------------------

    async def pre_launch(self, **kwargs: Any) -> dict[str, Any]:
        """Get the allocation and build the kernel step's argv; called by KernelManager.

        Checks what can be checked on this host first (image, runtime, binds, state
        directory), then submits the job or reuses the one this kernel already holds
        (restart), waits until it runs and learns its node and address.
        """
        cwd = os.path.abspath(kwargs.pop("cwd", None) or os.getcwd())
        extra_arguments = kwargs.pop("extra_arguments", [])
        kwargs = await KernelProvisionerBase.pre_launch(self, **kwargs)
        if not self.image:
            raise TraitError(
                f"Kernel {self.kernel_name or '?'} has no image configured. Set 'image' in "
                "the kernelspec's kernel_provisioner config."
            )
        check_image(self.image, self.kernel_name)
        self.runtime_info = await find_runtime_async(self.runtime)
        ensure_state_dir(self.state_dir)
        binds = [*self.connection_binds(cwd), *self.user_binds()]
        check_bind_sources(binds)
        self._prune_old_logs()

        if not await self._job_usable():
            await self._submit()
        await self._wait_running()
        await self._locate_node()

        # The kernel on the node writes F itself (its own ports and key); the manager reads
        # it from there, so the key never travels through argv, Slurm or the environment.
        km = self.parent
        conn = self.files["connection"]
        km.connection_file = conn
        if self._connection:
            # A restart: ipykernel removed F when the last kernel exited. Writing it back
            # makes the new kernel bind the same ports with the same key, so clients stay.
            _write_connection_file(conn, self._connection)
        kernel_cmd = km.format_kernel_cmd(extra_arguments=extra_arguments)
        inner = [a.replace(os.path.realpath(conn), conn) for a in kernel_cmd]
        inner = self.inner_command(inner) + [f"--ip={self.node_ip}"]
        argv = build_srun_argv(self.job_id, f"{self.job_name}-kernel", cwd, self.srun_args)
        argv += build_exec_argv(
            self.runtime_info.path,
            self.image,
            inner,
            gpu=self.gpu,
            binds=binds,
            pwd=cwd,
            cleanenv=self.cleanenv,
            contain=self.contain,
            extra_args=self.extra_args,
        )
        kwargs["env"] = slurm_env(
            kwargs["env"], container_env(self.runtime_info.flavor, self.container_variables())
        )
        kwargs["cmd"] = argv
        kwargs["cwd"] = cwd
        return kwargs

    def connection_binds(self, cwd: str) -> list[Bind]:
        """Slurm kernels read their connection file from the state directory."""
        return [Bind(self.state_dir, self.state_dir), Bind(cwd, cwd)]

    async def launch_kernel(self, cmd: list[str], **kwargs: Any) -> KernelConnectionInfo:
        """Start the kernel step and return the connection info the kernel wrote.

        Called by KernelManager after pre_launch. The srun process runs on this host with
        its output in the kernel's log file; the kernel on the node picks its own ports and
        key and writes them to F, which is read here. On restart F is kept, so the new
        kernel binds the same ports with the same key and clients stay connected.
        """
        log_path = self.files["log"]
        log_fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW, 0o600)
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
        except Exception:
            await self.kill()
            raise
        self.connection_info = dict(self._connection)
        self.connection_info["key"] = self._connection["key"].encode()
        # KernelManager keeps F as its connection file: load it so its reconcile step finds
        # the manager, the file and this info in agreement (and writes nothing itself).
        if self.parent is not None:
            self.parent.load_connection_info(self.connection_info)
        return self.connection_info

    async def _wait_for_kernel(self) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.boot_timeout
        conn_file = self.files["connection"]
        while True:
            info = _read_connection_file(conn_file)
            if info and await _listening_at(info["ip"], info["shell_port"]):
                return info
            code = self.process.poll() if self.process else 0
            if code is not None:
                await asyncio.sleep(0.2)  # let srun flush its last lines into the log
                raise KernelStartError(
                    f"The kernel exited before it was ready (exit {code}) in Slurm job "
                    f"{self.job_id} on {self.node}. Last lines of its log "
                    f"({self.files['log']}):\n{tail_file(self.files['log']) or '(empty)'}"
                )
            if loop.time() > deadline:
                raise KernelStartTimeout(
                    f"The kernel in Slurm job {self.job_id} on {self.node} did not start within "
                    f"{self.boot_timeout:.0f} s. Raise SlurmProvisioner.boot_timeout if the image "
                    f"is slow to load. Last lines of its log:\n{tail_file(self.files['log'])}"
                )
            await asyncio.sleep(0.1)

    # --- the allocation -------------------------------------------------------------------

    async def _job_usable(self) -> bool:
        """True when this kernel already holds a live allocation (a restart)."""
        if not self.job_id:
            return False
        job = await self.queue.job(self.job_id, fresh=True)
        if job is None:
            return True  # controller unreachable: assume it still stands
        return bool(job) and not job.finished

    async def _submit(self) -> None:
        self.job_id = self.step_id = self.node = None
        self._connection = None  # a new allocation means a new node: new ports, new key
        lease = self.files["lease"]
        LeaseKeeper.instance(self.lease_seconds / 3).add(lease)
        argv = build_sbatch_argv(
            self.job_name,
            partition=self.partition,
            gpus="" if self.gpus in ("", "0") else self.gpus,
            gpu_option=self.gpu_option,
            time_limit=self.time_limit,
            account=self.account,
            qos=self.qos,
            constraint=self.constraint,
            cpus_per_task=self.cpus_per_task,
            mem=self.mem,
            chdir=self.state_dir,
            extra_args=self.sbatch_args,
        )
        script = batch_script(lease, self.lease_seconds).encode()
        rc, out, err = await run(argv, input=script, timeout=60)
        if rc != 0:
            LeaseKeeper.instance(self.lease_seconds / 3).discard(lease)
            _unlink(lease)
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
        text = slurm_says.replace("sbatch: error: ", "").replace("\n", " ").strip()
        where = ", ".join(
            f"{k}={v}"
            for k, v in [
                ("partition", self.partition),
                ("gpus", self.gpus),
                ("account", self.account),
                ("qos", self.qos),
                ("constraint", self.constraint),
            ]
            if v
        )
        msg = f'Slurm rejected the job: "{text}"' + (f" ({where})." if where else ".")
        if "partition" in text.lower():
            rc, out, _ = await run(["sinfo", "-h", "-o", "%R"], timeout=20)
            if rc == 0 and out.strip():
                msg += f" Partitions here: {', '.join(sorted(set(out.split())))}."
        elif "controller" in text.lower():
            msg += " The Slurm controller is not answering; try again or tell your admins."
        else:
            msg += " Check the kernel's Slurm settings (partition, gpus, account, qos)."
        return msg

    async def _wait_running(self) -> None:
        loop = asyncio.get_running_loop()
        started = loop.time()
        last_log = -1e9
        last_reason = ""
        while True:
            job = await self.queue.job(self.job_id, max_age=0.25)
            if job is False:
                raise SlurmJobFailed(
                    f"Slurm job {self.job_id} for kernel {self.kernel_name} ended before it "
                    f"started (no longer in squeue). Check 'sacct -j {self.job_id}'."
                )
            if job:
                state = job.state.split()[0]
                if state == "RUNNING":
                    return
                if job.finished:
                    raise SlurmJobFailed(
                        f"Slurm job {self.job_id} for kernel {self.kernel_name} is {state} "
                        f"(reason: {job.reason}) before the kernel started."
                    )
                if job.reason in HOPELESS_REASONS:
                    await self._cancel_job()
                    raise SlurmJobFailed(
                        f"Slurm job {self.job_id} cannot start: {job.reason}. Fix the kernel's "
                        "Slurm settings (partition, gpus, time, account, qos); the job was "
                        "cancelled."
                    )
                now = loop.time()
                if job.reason != last_reason or now - last_log >= self.pending_log_interval:
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
                    await self._cancel_job()
                    raise SlurmQueueTimeout(
                        f"Slurm job {self.job_id} waited {self.queue_timeout:.0f} s in the "
                        f"queue ({job.reason}) and was cancelled. Try another partition or "
                        "fewer GPUs, or raise SlurmProvisioner.queue_timeout."
                    )
            await asyncio.sleep(0.25)

    async def _locate_node(self) -> None:
        job = await self.queue.job(self.job_id)
        if job and job.nodes:
            self.node = job.nodes
        if not self.node:
            rc, out, _ = await run(["squeue", "-h", "-j", self.job_id, "-o", "%N"], timeout=30)
            self.node = out.strip() if rc == 0 else None
        if not self.node:
            raise SlurmError(f"Slurm did not say which node job {self.job_id} runs on.")
        if self.kernel_ip:
            self.node_ip = self.kernel_ip
            return
        rc, out, _ = await run(["scontrol", "show", "node", "-o", self.node], timeout=30)
        addr = parse_node_addr(out) if rc == 0 else None
        addr = addr or self.node
        infos = await asyncio.get_running_loop().getaddrinfo(addr, None, family=socket.AF_INET)
        self.node_ip = infos[0][4][0]

    async def _cancel_job(self) -> None:
        if self.job_id:
            await run(["scancel", self.job_id], timeout=30)

    async def _step(self) -> str | None:
        """The Slurm step id of the running kernel (found by its step name)."""
        if self.step_id or not self.job_id:
            return self.step_id
        rc, out, _ = await run(["squeue", "-h", "-s", "-j", self.job_id, "-o", "%i|%j"], timeout=30)
        for line in out.splitlines() if rc == 0 else []:
            sid, _, name = line.partition("|")
            if name.strip() == f"{self.job_name}-kernel":
                self.step_id = sid.strip()
        return self.step_id

    # --- running kernel -------------------------------------------------------------------

    async def poll(self) -> int | None:
        """None while the kernel runs; called by KernelManager.is_alive and the restarter.

        The local srun process answers for free; a re-attached kernel (no srun here) asks
        the shared, batched squeue. A controller error counts as alive.
        """
        if self.process is not None:
            return self.process.poll()
        if not self._attached:
            return 0
        job = await self.queue.job(self.job_id)
        if job is None:
            return None
        if job is False or job.finished:
            self._attached = False
            return 0
        return None

    async def wait(self) -> int | None:
        """Wait for the kernel step to end; called by KernelManager during shutdown."""
        while await self.poll() is None:
            await asyncio.sleep(0.1)
        code = self.process.wait() if self.process else 0
        self.process = None
        return code

    async def send_signal(self, signum: int) -> None:
        """Signal the kernel on the node; called by KernelManager (interrupt_mode 'signal').

        srun would treat SIGINT as "print status", so the signal goes to the step through
        scancel, which delivers it to the kernel process in the container.
        """
        if signum == 0:
            return
        step = await self._step()
        if step:
            name = signal.Signals(signum).name.replace("SIG", "")
            rc, _, err = await run(["scancel", f"--signal={name}", step], timeout=30)
            if rc != 0:
                self.log.warning("Kernel %s: scancel --signal failed: %s", self.kernel_id, err)

    async def kill(self, restart: bool = False) -> None:
        """End the kernel step (not the allocation); called by KernelManager."""
        step = await self._step()
        if step:
            await run(["scancel", "--signal=KILL", step], timeout=30)
        if self.process is not None and self.process.poll() is None:
            try:
                os.killpg(self.pid, signal.SIGKILL)
            except OSError:
                pass
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
        if restart:
            return
        LeaseKeeper.instance(self.lease_seconds / 3).discard(self.files["lease"])
        if self.job_id and await self._owns_job():
            await self._cancel_job()
            await self._confirm_gone()
            self.queue.unregister(self.job_id)
        for key in ("connection", "lease") + (() if self.keep_logs else ("log",)):
            _unlink(self.files[key])
        self.job_id = None
        self._connection = None

    async def _owns_job(self) -> bool:
        """A job id from a record is cancelled only if it still carries this kernel's name."""
        job = await self.queue.job(self.job_id, fresh=True)
        if job is None or job is False:
            return job is None  # unknown: cancel by id is still the safe default for our job
        return job.name == self.job_name and job.user == getpass.getuser()

    async def _confirm_gone(self, timeout: float = 30) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while loop.time() < deadline:
            job = await self.queue.job(self.job_id, fresh=True)
            if job is False or (job and job.state.split()[0] in FINISHED_STATES):
                return
            await asyncio.sleep(0.5)
        self.log.warning(
            "Kernel %s: Slurm job %s still listed %.0f s after scancel.",
            self.kernel_id,
            self.job_id,
            timeout,
        )

    # --- persistence, timing --------------------------------------------------------------

    async def get_provisioner_info(self) -> dict[str, Any]:
        """What a restarted server needs to re-attach; called by the kernel manager."""
        info = await super().get_provisioner_info()
        info.update(
            {
                "job_id": self.job_id,
                "step_id": await self._step() if self.job_id else None,
                "node": self.node,
                "node_ip": self.node_ip,
                "state_dir": self.state_dir,
                "job_name": self.job_name,
            }
        )
        return info

    async def load_provisioner_info(self, provisioner_info: dict) -> None:
        """Re-attach to a running kernel from a record; resumes refreshing its lease."""
        await KernelProvisionerBase.load_provisioner_info(self, provisioner_info)
        self.pid = self.pgid = None
        self.job_id = provisioner_info.get("job_id")
        self.step_id = provisioner_info.get("step_id")
        self.node = provisioner_info.get("node")
        self.node_ip = provisioner_info.get("node_ip")
        self.state_dir = provisioner_info.get("state_dir") or self.state_dir
        if not self.job_id or provisioner_info.get("job_name") != self.job_name:
            return
        self.queue.register(self.job_id)
        if not await self._owns_job():
            self.log.warning(
                "Kernel %s: Slurm job %s is not this kernel's; not attaching.",
                self.kernel_id,
                self.job_id,
            )
            self.queue.unregister(self.job_id)
            self.job_id = None
            return
        self._attached = True
        LeaseKeeper.instance(self.lease_seconds / 3).add(self.files["lease"])
        info = _read_connection_file(self.files["connection"])
        if info:
            self.connection_info = dict(info, key=info["key"].encode())

    def get_shutdown_wait_time(self, recommended: float = 5.0) -> float:
        """srun and scancel need a few seconds more than a local process."""
        return max(recommended, 15.0)

    def get_stable_start_time(self, recommended: float = 10.0) -> float:
        """A kernel counts as started once the queue wait and boot are over."""
        return max(recommended, 30.0)

    def _prune_old_logs(self, days: float = 7) -> None:
        cutoff = time.time() - days * 86400
        try:
            for entry in os.scandir(self.state_dir):
                if entry.name.endswith(".log") and entry.stat().st_mtime < cutoff:
                    _unlink(entry.path)
        except OSError:
            pass


def _read_connection_file(path: str) -> dict[str, Any] | None:
    """The connection info a kernel wrote, or None while it is absent or half-written."""
    try:
        with open(path) as f:
            info = json.load(f)
    except (OSError, ValueError):
        return None
    needed = ("key", "ip", "shell_port", "iopub_port", "stdin_port", "control_port", "hb_port")
    return info if all(k in info for k in needed) else None


def _write_connection_file(path: str, info: Mapping[str, Any]) -> None:
    """Write connection info as the kernel would (0600, no symlink followed)."""
    _unlink(path)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(dict(info), f, indent=2)


async def _listening_at(ip: str, port: int) -> bool:
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(ip, int(port)), timeout=0.5)
    except (OSError, asyncio.TimeoutError):
        return False
    writer.close()
    return True


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
