"""SlurmProvisioner: the container kernel as a step of a Slurm allocation on a GPU node."""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import json
import os
import pwd
import re
import shlex
import signal
import socket
import stat
import subprocess
import threading
import time
import weakref
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from jupyter_client.connect import KernelConnectionInfo, port_names
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

from .apptainer import Bind, build_step_gpu_prelude, container_env, env_is_evaluated
from .compat import HostFacts
from .errors import (
    KernelStartError,
    KernelStartTimeout,
    KernelUnreachable,
    SlurmError,
    SlurmJobEnded,
    SlurmJobFailed,
    SlurmQueueTimeout,
    SlurmStartCancelled,
    SlurmSubmitError,
    StateDirError,
)
from .gpu import PROBE_SCRIPT, parse_probe_output
from .provisioner import ContainerProvisioner, explain_exit
from .transport import TransportMixin  # transport: SSH tunnel and CurveZMQ (issue 11)
from .walltime import (
    END_ENV,
    KERNEL_HOOK,
    NOTE_ENV,
    WARNING_ENV,
    ended_message,
    format_duration,
    format_end,
    parse_duration,
)

__all__ = [
    "SlurmProvisioner",
    "JobInfo",
    "SlurmQueue",
    "LeaseKeeper",
    "parse_squeue",
    "parse_squeue_steps",
    "parse_node_addr",
    "build_sbatch_argv",
    "build_srun_argv",
    "batch_script",
    "slurm_env",
    "rejection_message",
    "ensure_state_dir",
    "check_state_files",
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
_SQUEUE_FORMAT = "%i|%T|%r|%N|%S|%l|%L|%j|%u"
# Seconds a new kernel's port may refuse connections after its connection file appeared
# (ipykernel writes that file after binding) before the start fails as unreachable.
_REFUSED_GRACE = 3.0
# Environment handed to srun: only what a kernel needs; tokens of the server (for example
# JUPYTERHUB_API_TOKEN) stay behind.
_ENV_KEEP = re.compile(
    r"^(PATH|HOME|USER|LOGNAME|LANG|LANGUAGE|LC_[A-Z]+|TZ|TMPDIR|TERM|SHELL|"
    r"(APPTAINER|SINGULARITY)[A-Z_]*|CUDA_VISIBLE_DEVICES|NVIDIA_[A-Z_]+|SLURM_CONF)$"
)
_ENV_SECRET = re.compile(r"TOKEN|SECRET|PASSW|CREDENTIAL|_KEY$|^KEY", re.IGNORECASE)


@dataclass(frozen=True)
class JobInfo:
    """One row of squeue: job id, state, reason, node list, expected start, name, user, time
    limit and time left (Slurm durations such as '8:00:00')."""

    job_id: str
    state: str
    reason: str
    nodes: str
    start: str
    name: str
    user: str
    time_limit: str = ""
    time_left: str = ""

    @property
    def finished(self) -> bool:
        return self.state.split()[0] in FINISHED_STATES


def parse_squeue(text: str) -> dict[str, JobInfo]:
    """Parse ``squeue -h -o '%i|%T|%r|%N|%S|%l|%L|%j|%u'`` output; job names may contain '|'."""
    jobs = {}
    for line in text.splitlines():
        parts = line.strip().split("|")
        if len(parts) < 9:
            continue
        job_id, state, reason, nodes, start, limit, left = parts[:7]
        user = parts[-1]
        name = "|".join(parts[7:-1])
        jobs[job_id] = JobInfo(job_id, state, reason, nodes, start, name, user, limit, left)
    return jobs


def parse_squeue_steps(text: str) -> dict[str, dict[str, str]]:
    """Parse ``squeue -h -s -o '%i|%j'``: job id -> {step id: step name}.

    Step ids are ``J.S`` (``J.batch`` for the holder script); array and het-job suffixes
    stay part of the job id.
    """
    steps: dict[str, dict[str, str]] = {}
    for line in text.splitlines():
        step, sep, name = line.strip().partition("|")
        job_id, dot, _ = step.rpartition(".")
        if sep and dot:
            steps.setdefault(job_id, {})[step] = name
    return steps


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
    An ``output`` other than /dev/null is opened in append mode.
    """
    argv = ["sbatch", "--parsable", f"--job-name={job_name}", "--export=NONE", "--nodes=1"]
    argv.append(f"--output={output}")
    if output != "/dev/null":
        # The kernel step appends to the same log; Slurm's own last words (time limit,
        # cancellation) land after the kernel's instead of truncating them.
        argv.append("--open-mode=append")
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


def rejection_message(
    slurm_says: str, settings: Mapping[str, Any], partitions: Sequence[str] = ()
) -> str:
    """One sentence for a job sbatch refused: Slurm's own words, the settings involved, a next step.

    ``slurm_says`` is sbatch's stderr; ``settings`` the kernel's Slurm values by option name
    (empty ones are left out); ``partitions`` the partitions sinfo lists, named when the
    partition was the problem.
    """
    lines = [
        line.strip().removeprefix("sbatch: error: ").strip()
        for line in slurm_says.splitlines()
        if line.strip()
    ]
    final = [line for line in lines if line.startswith("Batch job submission failed")]
    quote = final[-1] if final else " ".join(lines) or "(sbatch said nothing)"
    # Lines before the final one sometimes say more ("Memory specification can not be
    # satisfied"); the one that only repeats the partition name adds nothing.
    also = [
        line
        for line in lines
        if line not in final and final and not line.startswith("invalid partition specified")
    ]
    low = quote.lower()
    if "partition" in low:
        keys = ["partition"]
    elif "time limit" in low:
        keys = ["time_limit", "partition"]
    elif "account" in low or "association" in low:
        keys = ["account", "partition"]
    elif "qos" in low:
        keys = ["qos", "partition"]
    elif "node configuration" in low or "gres" in low or "generic resource" in low:
        keys = ["gpus", "partition", "constraint", "mem", "cpus_per_task"]
    else:
        keys = list(settings)
    where = ", ".join(f"{k}={settings[k]}" for k in keys if settings.get(k))
    msg = f'Slurm rejected the job: "{quote}"' + (f" ({where})." if where else ".")
    if also:
        msg += f" Slurm also said: {'; '.join(also)}."
    if "partition" in low and partitions:
        msg += f" Partitions here: {', '.join(partitions)}."
    elif "controller" in low:
        msg += " The Slurm controller is not answering; try again or tell your admins."
    else:
        msg += (
            " Check the kernel's Slurm settings (partition, gpus, time_limit, account, qos) "
            "against 'sinfo' and your site's limits."
        )
    return msg


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
        try:
            os.chmod(path, 0o700)
        except OSError as e:
            raise StateDirError(
                f"State directory {path} has mode {stat.S_IMODE(st.st_mode):o}, not 700, and "
                f"cannot be changed ({e.strerror}); fix its permissions."
            ) from e
    # A real write, not os.access: root passes access() on a read-only or full filesystem.
    # One name per thread: starts run this check concurrently, each in a thread of its own.
    probe = os.path.join(path, f".write-test-{os.getpid()}-{threading.get_ident()}")
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        try:
            os.write(fd, b"kernelprovider state directory write test\n" * 4)
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as e:
        raise StateDirError(
            f"Cannot write to the state directory {path}: {e.strerror}. Free space there or "
            "set SlurmProvisioner.state_dir to a writable directory the GPU nodes share."
        ) from e
    finally:
        with contextlib.suppress(OSError):  # EROFS, not ENOENT, on a read-only filesystem
            os.unlink(probe)
    return path


def check_state_files(paths: Iterable[str]) -> None:
    """Refuse to use a kernel's state file that someone planted as a symlink or non-file.

    Called before a job is submitted: sbatch's --output follows symlinks, so a planted
    kernel-<id>.log link would let Slurm write into another user's file.
    """
    for path in paths:
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            continue
        if stat.S_ISLNK(st.st_mode) or not stat.S_ISREG(st.st_mode) or st.st_uid != os.getuid():
            raise StateDirError(
                f"{path} is a symlink, not a regular file, or not yours; refusing to use it. "
                "Remove it (someone may be trying to make Slurm write into their file)."
            )


def tail_file(path: str, lines: int = 30) -> str:
    """The last lines of a log file ('' if it does not exist)."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 16384))
            data = f.read().decode(errors="replace")
    except OSError:
        return ""
    # blank lines (srun and apptainer end with some) must not use up the budget
    return "\n".join([line for line in data.splitlines() if line.strip()][-lines:])


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

    Provisioners ask :meth:`job` (job rows: state, reason, node) or :meth:`steps` (the steps
    of each job, for kernels re-attached from a record); whoever asks first after the
    interval runs the single squeue for all registered jobs, the others share its answer.
    An answer that predates a job's registration is not used for that job. A controller
    error is "unknown" (``None``), never "gone". :attr:`calls` counts squeue invocations.
    """

    _instances: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, SlurmQueue] = (
        weakref.WeakKeyDictionary()
    )

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self.calls = 0
        self._ids: dict[str, int] = {}
        self._jobs = _Snapshot()
        self._steps = _Snapshot()
        self._lock: asyncio.Lock | None = None

    @classmethod
    def instance(cls, interval: float | None = None) -> SlurmQueue:
        """The queue of the running event loop (created on first use, default interval
        5 s); the shortest interval any kernel asks for wins."""
        loop = asyncio.get_running_loop()
        queue = cls._instances.get(loop)
        if queue is None:
            queue = cls._instances[loop] = cls(5.0 if interval is None else interval)
        elif interval is not None:
            queue.interval = min(queue.interval, interval)
        return queue

    def register(self, job_id: str) -> None:
        """Include ``job_id`` in every squeue from now on; called when a job is ours."""
        self._ids[job_id] = self._ids.get(job_id, 0) + 1

    def unregister(self, job_id: str) -> None:
        """Stop asking about ``job_id`` (once per :meth:`register`)."""
        if self._ids.get(job_id, 0) <= 1:
            self._ids.pop(job_id, None)
        else:
            self._ids[job_id] -= 1

    async def jobs(
        self, fresh: bool = False, max_age: float | None = None, need: str | None = None
    ) -> dict[str, JobInfo] | None:
        """Registered jobs still known to Slurm (absent = gone); None when Slurm is unreachable.

        ``max_age`` shortens the interval for callers that wait on a state change (a pending
        start); they still share one squeue per ``max_age`` among them. ``need``: a job id the
        answer must cover (one registered after the last squeue forces a new one).
        """
        return await self._get(self._jobs, self._query_jobs, fresh, max_age, need)

    async def steps(
        self, fresh: bool = False, max_age: float | None = None, need: str | None = None
    ) -> dict[str, dict[str, str]] | None:
        """Running steps of the registered jobs, job id -> {step id: step name}; None unknown."""
        return await self._get(self._steps, self._query_steps, fresh, max_age, need)

    async def job(
        self, job_id: str, fresh: bool = False, max_age: float | None = None
    ) -> JobInfo | None | bool:
        """The job's row; False when Slurm no longer knows it; None when unknown."""
        jobs = await self.jobs(fresh=fresh, max_age=max_age, need=job_id)
        if jobs is None:
            return None
        return jobs.get(job_id, False)

    async def _get(
        self, snap: _Snapshot, query: Any, fresh: bool, max_age: float | None, need: str | None
    ) -> Any:
        age = self.interval if max_age is None else max_age
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            stale = time.monotonic() - snap.stamp >= age
            if fresh or stale or not snap.valid or (need is not None and need not in snap.ids):
                ids = list(self._ids)
                if need is not None and need not in ids:
                    ids.append(need)
                snap.value = await query(ids) if ids else {}
                snap.ids = frozenset(ids)
                snap.stamp = time.monotonic()
                snap.valid = True
            return snap.value

    async def _squeue(self, args: list[str], ids: list[str]) -> str | None:
        self.calls += 1
        rc, out, err = await run(["squeue", "-h", *args, "-j", ",".join(ids)], timeout=30)
        if rc != 0:
            if "Invalid job id" in err:
                return ""  # every job asked for is long gone
            return None
        return out

    async def _query_jobs(self, ids: list[str]) -> dict[str, JobInfo] | None:
        out = await self._squeue(["-t", "all", "-o", _SQUEUE_FORMAT], ids)
        return None if out is None else parse_squeue(out)

    async def _query_steps(self, ids: list[str]) -> dict[str, dict[str, str]] | None:
        out = await self._squeue(["-s", "-o", "%i|%j"], ids)
        return None if out is None else parse_squeue_steps(out)


@dataclass
class _Snapshot:
    """The last answer of one kind of squeue, when it was taken and which jobs it covers."""

    value: Any = None
    stamp: float = 0.0
    ids: frozenset[str] = frozenset()
    valid: bool = False


class LeaseKeeper:
    """Touches every registered lease file on one timer for the whole process.

    One per event loop; its task stops when the last lease is discarded.
    """

    _instances: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, LeaseKeeper] = (
        weakref.WeakKeyDictionary()
    )

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self.paths: set[str] = set()
        self._task: asyncio.Task[None] | None = None

    @classmethod
    def instance(cls, interval: float) -> LeaseKeeper:
        """The keeper of the running loop; the shortest interval asked for wins."""
        loop = asyncio.get_running_loop()
        keeper = cls._instances.get(loop)
        if keeper is None:
            keeper = cls._instances[loop] = cls(interval)
        keeper.interval = min(keeper.interval, interval)
        return keeper

    def add(self, path: str) -> None:
        """Create or refresh ``path`` now and keep refreshing it."""
        touch(path)
        self.paths.add(path)
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run())

    def discard(self, path: str) -> None:
        """Stop refreshing ``path`` (the allocation that watches it may then end)."""
        self.paths.discard(path)
        if not self.paths and self._task is not None:
            self._task.cancel()
            self._task = None

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


class SlurmProvisioner(TransportMixin, ContainerProvisioner):  # transport: mixin
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
    end_warning = Float(
        600.0,
        help="Seconds before the job's end from which the notebook's next cell run prints a "
        "one-line warning (save, checkpoint); 0 = never. The end is also in the kernel's "
        "environment as KP_SLURM_JOB_END (Unix seconds).",
    ).tag(config=True)
    on_job_end = CaselessStrEnum(
        ["requeue", "stop"],
        default_value="requeue",
        help="When Slurm ends the job under a running kernel (time limit, preemption, node "
        "failure, scancel): 'requeue' queues one new allocation for the kernel's automatic "
        "restart, 'stop' lets the kernel die.",
    ).tag(config=True)

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
    _stopping = False
    _new_job = False
    _connection: dict[str, Any] | None = None
    _facts: tuple[str | None, HostFacts] | None = None
    _usable_check: asyncio.Future[bool] | None = None
    # the queue and the clock (see "Leaving the queue, the clock, the end of an allocation")
    job_end: float | None = None
    job_time_limit: str = ""
    _waiting = False
    _queued_reason: str = ""
    _leave: asyncio.Event | None = None
    _leave_reason: str = ""
    _end_note: str = ""
    _requeued = False
    _end_warned: str | None = None

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

    # --- launch ---------------------------------------------------------------------------

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
        kwargs = await KernelProvisionerBase.pre_launch(self, **kwargs)

        def state_files() -> None:
            # Filesystem work on the shared state directory (often NFS): not on the loop.
            ensure_state_dir(self.state_dir)
            check_state_files(self.files.values())
            self._prune_old_logs()

        await asyncio.to_thread(state_files)
        binds = await self.check_launch(cwd)
        await self.prepare_transport()  # transport: decide CurveZMQ before a job is queued

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
        bind_ip = self.kernel_bind_ip(self.node_ip or "")  # transport: loopback when tunnelled
        inner = self.inner_command(inner) + [f"--ip={bind_ip}"] + self.clock_argv(inner)
        # srun hands its own environment to the step, so it gets a short allowlist; the
        # kernelspec's "env" (already substituted by the base class) travels into the
        # container the same way container_env does.
        spec_env = {
            k: kwargs["env"][k]
            for k in (getattr(self.kernel_spec, "env", None) or {})
            if k in kwargs["env"]
        }
        spec_env.update(self.clock_env())
        try:
            # The GPU pre-flight probes the allocated node, so it runs here, in the job.
            container_argv, variables = await self.container_command(
                inner, cwd, binds, kwargs["env"]
            )
        except BaseException:
            if self._new_job:
                await self._release()
            raise
        if self._connection:
            # A restart: ipykernel removed F when the last kernel exited. Writing it back
            # makes the new kernel bind the same ports with the same key, so clients stay.
            await asyncio.to_thread(_write_connection_file, conn, self._connection)
        else:
            # A new allocation: an F left by a kernel that Slurm killed (scancel, time limit)
            # names the old node's address and ports; ipykernel would load it and fail to
            # bind them on another node. The new kernel writes its own.
            await asyncio.to_thread(_unlink, conn)
            await self.seed_connection_file(conn, bind_ip)  # transport: Curve pair, no key
        assert self.runtime_info is not None
        argv = [
            *build_srun_argv(self.job_id, self.step_name, cwd, self.srun_args),
            *build_step_gpu_prelude(self.runtime_info.flavor, self.gpu, self.cleanenv),
            *container_argv,
        ]
        kwargs["env"] = slurm_env(
            kwargs["env"],
            {
                **container_env(
                    self.runtime_info.flavor,
                    spec_env,
                    evaluated=env_is_evaluated(self.extra_args, kwargs["env"]),
                ),
                **variables,
            },
        )
        kwargs["cmd"] = argv
        kwargs["cwd"] = cwd
        self.log.debug("Kernel %s: step argv %s", self.kernel_id, argv)
        return kwargs

    async def node_facts(self) -> HostFacts:
        """Driver and GPUs of the allocated node, from a probe step; cached per allocation.

        Called by the GPU pre-flight (gpu_setup) once the job runs: the server's own host
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

    def gpu_selection(self, env: dict[str, str]) -> tuple[dict[str, str], dict[str, str]]:
        """Nothing from the server: Slurm chooses the node's GPUs (the step's
        CUDA_VISIBLE_DEVICES and, where configured, its device cgroup)."""
        return {}, {}

    def _set_reason(self, reason: str) -> None:
        # jupyter_server shows a kernel manager's `reason` in /api/kernels; while the job is
        # pending it says why (with use_pending_kernels the model is visible meanwhile).
        km = self.parent
        if km is not None and hasattr(km, "reason"):
            km.reason = reason

    def connection_binds(self, cwd: str) -> list[Bind]:
        """Slurm kernels read their connection file from the state directory."""
        return [Bind(self.state_dir, self.state_dir), Bind(cwd, cwd)]

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
            info = _read_connection_file(conn_file)
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
                    raise KernelUnreachable(self._unreachable_message(info, answer))
            code = self.process.poll() if self.process else 0
            if code is not None:
                await asyncio.sleep(0.2)  # let srun flush its last lines into the log
                raise KernelStartError(
                    f"Slurm job {self.job_id} on {self.node}: "
                    + explain_exit(code, tail_file(self.files["log"]))
                    + f"\n(full log: {self.files['log']})"
                )
            if loop.time() > deadline:
                raise KernelStartTimeout(
                    f"The kernel in Slurm job {self.job_id} on {self.node} did not start within "
                    f"{self.boot_timeout:.0f} s. Raise SlurmProvisioner.boot_timeout if the image "
                    f"is slow to load.{self._log_note()}"
                )
            await asyncio.sleep(0.05)

    def _unreachable_message(self, info: Mapping[str, Any], answer: str) -> str:
        why = (
            "no answer within 3 s: a firewall drops the connection"
            if answer == "silent"
            else "connection refused although the kernel listens: a firewall rejects it"
        )
        then = f", then start the kernel again (job {self.job_id} was cancelled)."
        return (
            f"The kernel in Slurm job {self.job_id} runs on node {self.node}, but this server "
            f"cannot connect to it at {info['ip']}:{info['shell_port']} ({why}); ask your "
            f"admins to allow TCP connections from this host to ports 1024-65535 of {self.node} "
            "(the kernel picks random ones), set SlurmProvisioner.kernel_ip to an address "
            "of the node that this host can reach, or, where the node accepts SSH, set "
            "SlurmProvisioner.tunnel='ssh'" + (then if self._new_job else ".")
        )

    def _log_note(self) -> str:
        """' Last lines of its log (path): ...' when the kernel's log has any, else ''."""
        tail = tail_file(self.files["log"])
        return f" Last lines of its log ({self.files['log']}):\n{tail}" if tail else ""

    # --- the allocation -------------------------------------------------------------------

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
        self.lease_keeper.add(lease)
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
            output=self.files["log"],
            chdir=self.state_dir,
            extra_args=self.sbatch_args,
        )
        script = batch_script(lease, self.lease_seconds).encode()
        rc, out, err = await run(argv, input=script, timeout=60)
        if rc != 0:
            self.lease_keeper.discard(lease)
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
        partitions: list[str] = []
        if "partition" in slurm_says.lower():
            rc, out, _ = await run(["sinfo", "-h", "-o", "%R"], timeout=20)
            if rc == 0:
                partitions = list(dict.fromkeys(out.split()))
        settings = {
            "partition": self.partition,
            "gpus": self.gpus,
            "time_limit": self.time_limit,
            "account": self.account,
            "qos": self.qos,
            "constraint": self.constraint,
            "mem": self.mem,
            "cpus_per_task": self.cpus_per_task or "",
        }
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
                    f"{self._log_note()}"
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
                        f"{self._log_note()}"
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
            _unlink(self.files[key])
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
            _unlink(self.files["log"])

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
        _unlink(self.files["lease"])

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

    def _note_clock(self, job: JobInfo) -> None:
        """Remember the job's end (now + squeue's time left) when it runs."""
        left = parse_duration(job.time_left)
        self.job_end = time.time() + left if left is not None else None
        self.job_time_limit = job.time_limit

    def clock_env(self) -> dict[str, str]:
        """Variables for the kernel: the job's end (Unix seconds), the warning margin and a
        one-time note (why a requeued kernel is new); read by :data:`KERNEL_HOOK`."""
        env = {WARNING_ENV: str(int(self.end_warning))}
        if self.job_end is not None:
            env[END_ENV] = str(int(self.job_end))
        if self._end_note:
            env[NOTE_ENV] = self._end_note
        return env

    def clock_argv(self, inner: Sequence[str]) -> list[str]:
        """The in-kernel hook as ipykernel's startup code, for ipykernel kernels only."""
        if not any("ipykernel" in a for a in inner) or any(
            a == "-c" or "code_to_run" in a for a in inner
        ):
            return []
        return [f"--IPKernelApp.code_to_run={KERNEL_HOOK}"]

    def _kernel_started(self) -> None:
        """Called when a kernel step is up: log the job's end, forget a requeue note, and
        tell the server's kernel manager when the kernel now lives in a new job (new node,
        ports and key: see kernelprovider.manager's kernel_moved)."""
        moved, self._requeued = self._requeued, False
        self._end_note = ""
        if self.job_end is not None:
            self.log.info(
                "Kernel %s: Slurm job %s ends at %s (time limit %s, %s left)",
                self.kernel_id,
                self.job_id,
                format_end(self.job_end),
                self.job_time_limit,
                format_duration(self.job_end - time.time()),
            )
        self._tick_clock()
        mapping = getattr(self.parent, "parent", None)
        if moved and callable(getattr(mapping, "kernel_moved", None)):
            mapping.kernel_moved(self.kernel_id)

    def _tick_clock(self) -> None:
        """Refresh the time left in the kernel model and warn once in the log; called from
        :meth:`poll` (no I/O: a clock comparison)."""
        if self.job_end is None or self._waiting or not self.job_id:
            return
        if self.process is None and not self._attached:
            return
        if self.process is not None and self.process.poll() is not None:
            return  # the step ended: the restart (or the shutdown) says what comes next
        left = self.job_end - time.time()
        self._set_reason(
            f"Slurm job {self.job_id} RUNNING on {self.node}: {format_duration(left)} left "
            f"(ends {format_end(self.job_end)})"
        )
        if self.end_warning > 0 and left < self.end_warning and self._end_warned != self.job_id:
            self._end_warned = self.job_id
            self.log.warning(
                "Kernel %s: Slurm job %s ends in %s (at %s); the notebook's next cell run "
                "warns the user.",
                self.kernel_id,
                self.job_id,
                format_duration(left),
                format_end(self.job_end),
            )

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
        await KernelProvisionerBase.load_provisioner_info(self, provisioner_info)
        self.pid = self.pgid = None
        self.process = None
        self._attached = False
        self.job_id = provisioner_info.get("job_id")
        self.step_id = provisioner_info.get("step_id")
        self.node = provisioner_info.get("node")
        self.node_ip = provisioner_info.get("node_ip")
        self.state_dir = provisioner_info.get("state_dir") or self.state_dir
        if not self.job_id or provisioner_info.get("job_name") != self.job_name:
            self.log.warning(
                "Kernel %s: the record names no Slurm job of this kernel; not attaching.",
                self.kernel_id,
            )
            self.job_id = None
            return
        self.queue.register(self.job_id)
        if not await self._owns_job():
            self.log.warning(
                "Kernel %s: Slurm job %s has ended or is not this kernel's; not attaching.",
                self.kernel_id,
                self.job_id,
            )
            self.queue.unregister(self.job_id)
            self.job_id = self.step_id = None
            return
        self._attached = True
        self.lease_keeper.add(self.files["lease"])
        info = _read_connection_file(self.files["connection"])
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
        return max(recommended, 15.0)

    def get_stable_start_time(self, recommended: float = 10.0) -> float:
        """Seconds a kernel must stay up before the restarter counts its start as stable
        (the restarter starts after the queue wait, so that wait is not part of it)."""
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


def _user() -> str:
    """The user Slurm sees for this process (by uid, not by $USER)."""
    try:
        return pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        return getpass.getuser()


def _signal_group(pid: int | None, signum: int) -> None:
    if pid:
        try:
            os.killpg(pid, signum)
        except OSError:
            pass


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
