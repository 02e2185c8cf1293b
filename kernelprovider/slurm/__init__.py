"""Slurm kernels: the container kernel as a step of a Slurm allocation on a GPU node.

The package, from the bottom up: :mod:`.commands` (Slurm's commands and their output, pure),
:mod:`.state` (the shared state directory and the kernel's files in it), :mod:`.queue` (one
squeue for all kernels, the lease keeper, the command runner), :mod:`.allocation` (one
kernel's job from sbatch to scancel, the queue and the clock) and :mod:`.provisioner` (the
jupyter_client provisioner that puts them together).
"""

from __future__ import annotations

from .allocation import SlurmAllocation
from .commands import (
    FINISHED_STATES,
    HOPELESS_REASONS,
    JobInfo,
    batch_script,
    build_sbatch_argv,
    build_srun_argv,
    parse_node_addr,
    parse_squeue,
    parse_squeue_steps,
    rejection_message,
    slurm_env,
)
from .provisioner import SlurmOptions, SlurmProvisioner
from .queue import LeaseKeeper, SlurmQueue, run, touch
from .state import check_state_files, ensure_state_dir, tail_file

__all__ = [
    "FINISHED_STATES",
    "HOPELESS_REASONS",
    "SlurmProvisioner",
    "SlurmOptions",
    "SlurmAllocation",
    "JobInfo",
    "SlurmQueue",
    "LeaseKeeper",
    "run",
    "touch",
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
