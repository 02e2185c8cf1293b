"""One squeue for all kernels of a server (SlurmQueue), the lease keeper, the command runner."""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
import weakref
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import (
    FilesystemTimeout,
    SlurmError,
)
from ..offloop import in_thread
from .commands import _SQUEUE_FORMAT, JobInfo, parse_squeue, parse_squeue_steps


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


#: The shape of :func:`run`: (argv, timeout=...) -> (exit code, stdout, stderr).
Runner = Callable[..., Awaitable[tuple[int, str, str]]]


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

    def __init__(self, interval: float, runner: Runner | None = None) -> None:
        self.interval = interval
        #: Runs squeue: :func:`run`, or a stand-in object with the same call in unit tests.
        self.runner: Runner = runner or run
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
        rc, out, err = await self.runner(["squeue", "-h", *args, "-j", ",".join(ids)], timeout=30)
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
        self._busy: set[str] = set()  # leases whose refresh thread has not returned yet
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

    async def add(self, path: str, timeout: float = 30.0) -> None:
        """Create or refresh ``path`` now (in a thread, FilesystemTimeout past ``timeout``)
        and keep refreshing it."""
        await in_thread(touch, path, timeout=timeout, what=f"Lease file {path}")
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
            # all leases at once: one on a hung filesystem does not delay the others
            await asyncio.gather(*(self._refresh(p) for p in list(self.paths)))

    async def _refresh(self, path: str) -> None:
        # A hung filesystem costs this round (the lease keeps its age; the next round tries
        # again), never the loop; and while a refresh still waits in its thread, no second
        # thread is sent after it.
        if path in self._busy:
            return
        self._busy.add(path)
        try:
            await in_thread(self._utime, path, timeout=self.interval, what=f"Lease {path}")
        except FilesystemTimeout:
            return
        except OSError:
            self.paths.discard(path)

    def _utime(self, path: str) -> None:
        """Refresh one lease; runs in a thread and marks the lease free when it returns."""
        try:
            os.utime(path)
        finally:
            self._busy.discard(path)


def touch(path: str) -> None:
    """Create (0600) or refresh a file's mtime."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    os.close(fd)
    os.utime(path)
