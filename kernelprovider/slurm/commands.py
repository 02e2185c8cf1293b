"""Slurm's commands and what they print, as pure functions: sbatch/srun argv, the batch
script, squeue/scontrol parsers, the environment a step gets, the rejection message.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..options import (
    rejection_keys,
    sbatch_option_argv,
)

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
    output: str = "/dev/null",
    chdir: str = "",
    extra_args: Sequence[str] = (),
    **values: Any,
) -> list[str]:
    """``sbatch --parsable ...`` for the allocation; the script itself comes on stdin.

    ``values`` are Slurm options by trait name (partition, gpus, gpu_option, time_limit,
    ...; see :data:`~kernelprovider.options.SLURM_OPTIONS`), turned into sbatch arguments
    in the table's order; ``extra_args`` (sbatch_args) come last.
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
    argv += sbatch_option_argv(values)
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
    keys = rejection_keys(quote, settings)
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


def unreachable_message(
    job_id: str | None, node: str | None, info: Mapping[str, Any], answer: str, cancelled: bool
) -> str:
    """What a user reads when the kernel listens on its node but the server cannot connect
    (``answer`` from :func:`~kernelprovider.provisioner.probe_port`: 'silent' or 'refused')."""
    why = (
        "no answer within 3 s: a firewall drops the connection"
        if answer == "silent"
        else "connection refused although the kernel listens: a firewall rejects it"
    )
    then = f", then start the kernel again (job {job_id} was cancelled)."
    return (
        f"The kernel in Slurm job {job_id} runs on node {node}, but this server "
        f"cannot connect to it at {info['ip']}:{info['shell_port']} ({why}); ask your "
        f"admins to allow TCP connections from this host to ports 1024-65535 of {node} "
        "(the kernel picks random ones), set SlurmProvisioner.kernel_ip to an address "
        "of the node that this host can reach, or, where the node accepts SSH, set "
        "SlurmProvisioner.tunnel='ssh'" + (then if cancelled else ".")
    )
