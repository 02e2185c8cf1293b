"""The clock of a Slurm kernel's allocation: time left, end time, the warning in the notebook,
and why the allocation ended, in words."""

from __future__ import annotations

import re
import time

__all__ = [
    "END_ENV",
    "NOTE_ENV",
    "WARNING_ENV",
    "KERNEL_HOOK",
    "parse_duration",
    "format_duration",
    "format_end",
    "ended_message",
]

#: Environment variables the kernel gets (inside the container): the job's end as Unix
#: seconds (code can checkpoint before it), the warning margin in seconds, and a note the
#: kernel prints once, in the output of the first cell it runs.
END_ENV = "KP_SLURM_JOB_END"
WARNING_ENV = "KP_SLURM_END_WARNING"
NOTE_ENV = "KP_SLURM_NOTE"

_DURATION = re.compile(r"^(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?$")


def parse_duration(text: str) -> int | None:
    """Seconds of a Slurm duration (squeue %l/%L, sbatch --time); None for UNLIMITED & co.

    Slurm's forms: ``M``, ``M:S``, ``H:M:S``, ``D-H``, ``D-H:M``, ``D-H:M:S``.
    """
    m = _DURATION.match(text.strip())
    if not m:
        return None
    days, a, b, c = m.groups()
    if days is not None:  # D-H[:M[:S]]
        h, mi, s = int(a), int(b or 0), int(c or 0)
        return ((int(days) * 24 + h) * 60 + mi) * 60 + s
    if c is not None:  # H:M:S
        return (int(a) * 60 + int(b)) * 60 + int(c)
    if b is not None:  # M:S
        return int(a) * 60 + int(b)
    return int(a) * 60  # M


def format_duration(seconds: float) -> str:
    """``H:MM:SS``, or ``D-HH:MM:SS`` from a day on (as sinfo prints time limits)."""
    seconds = max(0, int(seconds))
    days, rest = divmod(seconds, 86400)
    h, rest = divmod(rest, 3600)
    m, s = divmod(rest, 60)
    return f"{days}-{h:02d}:{m:02d}:{s:02d}" if days else f"{h}:{m:02d}:{s:02d}"


def format_end(end: float) -> str:
    """An end time as the server's users read it: local date and time with its zone."""
    return time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(end))


def ended_message(job_id: str, state: str, reason: str, time_limit: str, node: str) -> str:
    """Why Slurm ended a job, in words, from squeue's final state and reason.

    ``state`` is squeue's %T ("TIMEOUT", "CANCELLED by 0" ...), ``time_limit`` its %l.
    """
    word = state.split()[0] if state else "GONE"
    limit = parse_duration(time_limit)
    limit_text = format_duration(limit) if limit is not None else time_limit
    on_node = f" {node}" if node else ""
    why = {
        "TIMEOUT": f"at its time limit of {limit_text}",
        "DEADLINE": "at its deadline",
        "CANCELLED": "because it was cancelled (scancel by its owner or an admin)",
        "PREEMPTED": "because it was preempted (a job with a higher priority needed the node)",
        "NODE_FAIL": f"because its node{on_node} failed",
        "BOOT_FAIL": f"because its node{on_node} failed to boot",
        "OUT_OF_MEMORY": "because it ran out of memory",
        "GONE": "(it is no longer in squeue; 'sacct -j " + job_id + "' may say why)",
    }.get(word)
    if why is None:
        extra = f", reason: {reason}" if reason and reason != "None" else ""
        why = f"(state {word}{extra})"
    return f"Slurm ended job {job_id} {why}"


# Runs inside the image, in the kernel's user namespace at startup (ipykernel's
# --IPKernelApp.code_to_run, which every ipykernel since 4 honours). It must work on Python
# 3.5 with the standard library and IPython only: no f-strings, no imports from outside. It
# prints, in the output of the next cell run: the note of KP_SLURM_NOTE once, and one warning
# when less than KP_SLURM_END_WARNING seconds are left before KP_SLURM_JOB_END.
KERNEL_HOOK = r"""
def _kernelprovider_hook():
    import os, sys, time
    env = os.environ
    seen = {"note": env.get("KP_SLURM_NOTE", ""), "warned": None}

    def before_cell(*args):
        lines = []
        if seen["note"]:
            lines.append("kernelprovider: " + seen["note"])
            seen["note"] = ""
        try:
            end = int(env["KP_SLURM_JOB_END"])
            margin = float(env.get("KP_SLURM_END_WARNING", "600"))
        except (KeyError, ValueError):
            end, margin = None, 0
        if end is not None and margin > 0 and seen["warned"] != end:
            left = end - time.time()
            if left < margin:
                seen["warned"] = end
                if left >= 120:
                    when = "in %d min" % (left // 60)
                elif left > 0:
                    when = "in %d s" % left
                else:
                    when = "now"
                lines.append(
                    "kernelprovider: Slurm job %s ends at %s (%s): save the notebook and "
                    "checkpoint your work now; the kernel stops then."
                    % (env.get("SLURM_JOB_ID", "?"),
                       time.strftime("%H:%M:%S", time.localtime(end)), when))
        if lines:
            sys.stderr.write("\n".join(lines) + "\n")
            sys.stderr.flush()

    get_ipython().events.register("pre_run_cell", before_cell)

_kernelprovider_hook()
del _kernelprovider_hook
"""
