"""The clock of a kernel's job: its end, the warning before it, and what the kernel is told."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from ..walltime import (
    END_ENV,
    KERNEL_HOOK,
    NOTE_ENV,
    WARNING_ENV,
    format_duration,
    format_end,
    parse_duration,
)
from .commands import JobInfo


class JobClock:
    """The end of a kernel's allocation, as the server and the kernel see it; a mixin of
    :class:`~kernelprovider.slurm.allocation.SlurmAllocation`.

    The allocation notes the end when the job runs (:meth:`_note_clock`); the launch plan
    hands it to the kernel (:meth:`clock_env`, :meth:`clock_argv`: the in-kernel hook warns
    the notebook); :meth:`_tick_clock`, from each poll, keeps the kernel model's reason
    current and warns once in the server's log.
    """

    job_end: float | None = None
    job_time_limit: str = ""
    _end_note: str = ""
    _requeued = False
    _end_warned: str | None = None
    # set by the allocation and the provisioner this class is mixed into
    kernel_id: Any
    job_id: str | None
    node: str | None
    end_warning: float
    _waiting: bool
    _attached: bool
    process: Any
    parent: Any
    log: Any

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
