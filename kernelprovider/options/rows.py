"""The option table itself: one row per container, Slurm and transport setting."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .model import Option


def _gpus_argv(value: Any, values: Mapping[str, Any]) -> list[str]:
    if value in ("", "0", None):
        return []
    if values.get("gpu_option", "gres") == "gres":
        return [f"--gres=gpu:{value}"]
    return [f"--gpus={value}"]


_PLACEMENT = ("node configuration", "gres", "generic resource")

CONTAINER_OPTIONS: tuple[Option, ...] = (
    Option(
        "image",
        "str",
        "",
        "Path of the SIF/squashfs image or sandbox directory (or a docker://, oras:// URI) "
        "that the kernel runs in.",
    ),
    Option(
        "runtime",
        "str",
        "auto",
        "Container runtime: 'auto' (apptainer, then singularity, from PATH), a command "
        "name, or an absolute path.",
        cli="runtime",
        cli_help="Runtime: apptainer, singularity or a path (default auto).",
    ),
    Option(
        "gpu",
        "enum",
        "nv",
        "GPU passthrough: 'nv' (--nv), 'nvccli' (--nv --nvccli), 'rocm' (--rocm) or 'none'.",
        cli="gpu",
        cli_help="GPU mode.",
        values=("nv", "nvccli", "rocm", "none"),
    ),
    Option(
        "binds",
        "list",
        [],
        "Extra bind mounts, each 'SRC[:DST[:ro|rw]]' with absolute paths. The connection "
        "file's directory and the working directory are always bound.",
        cli="bind",
        cli_help="Extra binds SRC[:DST[:ro|rw]] (repeatable).",
    ),
    Option(
        "container_env",
        "dict",
        {},
        "Variables set inside the container, passed as APPTAINERENV_*/SINGULARITYENV_* so "
        "they survive --cleanenv and never appear in argv.",
        cli="env",
        cli_help="Variables inside the container, --env KEY=VALUE.",
    ),
    Option(
        "cleanenv",
        "bool",
        False,
        "Pass --cleanenv: start the container without the server's environment.",
        cli="cleanenv",
        cli_help="Start the container with --cleanenv.",
    ),
    Option(
        "contain",
        "bool",
        False,
        "Pass --contain: no home, /tmp or site binds; only the binds kernelprovider adds.",
        cli="contain",
        cli_help="Start the container with --contain.",
    ),
    Option(
        "extra_args",
        "list",
        [],
        "Extra arguments to 'exec', placed after kernelprovider's own and before the image "
        "(for example ['--writable-tmpfs']).",
        cli="extra-arg",
        cli_help="Extra arguments for 'exec' (repeatable).",
        # Not extra_args on the app: traitlets keeps the positional arguments under that name.
        cli_attr="exec_args",
    ),
    Option(
        "no_user_site",
        "bool",
        True,
        "Set PYTHONNOUSERSITE=1 in the container so packages in ~/.local do not shadow "
        "the image's own.",
    ),
    Option(
        "compat_check",
        "enum",
        "enforce",
        "Check the image's CUDA/TensorFlow against the node's driver and GPUs before "
        "start: 'enforce' stops a launch that cannot work, 'warn' only logs, 'off' skips.",
        cli="compat-check",
        cli_help="CUDA/driver check before start (default enforce).",
        values=("enforce", "warn", "off"),
    ),
    Option(
        "driver_dir",
        "str",
        "",
        "Driver directory mode: a template such as '/software/nvidia/{driver_version}' "
        "(also {driver_major}) naming host directories of NVIDIA driver libraries (lib/ and "
        "bin/, or libraries directly); the one for the detected driver is bound at "
        "driver_lib_path/driver_bin_path and put first on LD_LIBRARY_PATH and PATH.",
        cli="driver-dir",
        cli_help="Driver directory template, e.g. /software/nvidia/{driver_version}.",
    ),
    Option(
        "driver_lib_path",
        "str",
        "/nvlib",
        "Container path of the driver libraries in driver directory mode.",
    ),
    Option(
        "driver_bin_path",
        "str",
        "/nvbin",
        "Container path of the driver programs in driver directory mode.",
    ),
    Option(
        "cuda_dir",
        "str",
        "",
        "A host CUDA toolkit (for example /software/cuda/9.2) bound read-only at "
        "/usr/local/cuda, for images built without one.",
        cli="cuda-dir",
        cli_help="Host CUDA toolkit bound at /usr/local/cuda.",
    ),
    Option(
        "fs_timeout",
        "float",
        30.0,
        "Seconds a filesystem check of a start (image, binds, state directory, connection "
        "file, lease) may take; past that the start fails instead of freezing the server on "
        "a hung shared filesystem.",
    ),
    Option(
        "ready_timeout",
        "float",
        120.0,
        "Seconds the kernel may take to open its ports after the container starts; past "
        "that the start fails with its log.",
    ),
)

SLURM_OPTIONS: tuple[Option, ...] = (
    Option(
        "partition",
        "str",
        "",
        "Slurm partition (--partition).",
        cli="partition",
        cli_help="Slurm partition.",
        sbatch="--partition",
        hint=("partition",),
        slurm_value=True,
    ),
    Option(
        "gpus",
        "str",
        "1",
        "GPUs to allocate, e.g. '1' or 'a100:2' ('' or '0' for none).",
        cli="gpus",
        cli_help="GPUs per kernel, e.g. 1 or a100:2 (Slurm mode).",
        sbatch=_gpus_argv,
        hint=_PLACEMENT,
        slurm_value=True,
    ),
    Option(
        "gpu_option",
        "enum",
        "gres",
        "Ask for GPUs with --gres=gpu:N ('gres') or --gpus=N ('gpus').",
        cli="gpu-option",
        cli_help="'gres' (--gres=gpu:N) or 'gpus' (--gpus=N).",
        values=("gres", "gpus"),
    ),
    Option(
        "time_limit",
        "str",
        "8:00:00",
        "Allocation time limit (--time): the last backstop.",
        cli="time",
        cli_help="Allocation time limit, e.g. 8:00:00.",
        sbatch="--time",
        hint=("time limit",),
        slurm_value=True,
    ),
    Option(
        "account",
        "str",
        "",
        "Slurm account (--account).",
        cli="account",
        cli_help="Slurm account.",
        sbatch="--account",
        hint=("account", "association"),
        slurm_value=True,
    ),
    Option(
        "qos",
        "str",
        "",
        "Slurm QOS (--qos).",
        cli="qos",
        cli_help="Slurm QOS.",
        sbatch="--qos",
        hint=("qos",),
        slurm_value=True,
    ),
    Option(
        "constraint",
        "str",
        "",
        "Node features (--constraint).",
        cli="constraint",
        cli_help="Slurm node features (--constraint).",
        sbatch="--constraint",
        hint=_PLACEMENT,
        slurm_value=True,
    ),
    Option(
        "cpus_per_task",
        "int",
        0,
        "CPUs for the allocation (--cpus-per-task); 0 = default.",
        cli="cpus-per-task",
        cli_help="CPUs for the allocation.",
        sbatch="--cpus-per-task",
        hint=_PLACEMENT,
    ),
    Option(
        "mem",
        "str",
        "",
        "Memory for the allocation (--mem), e.g. '32G'.",
        cli="mem",
        cli_help="Memory for the allocation, e.g. 32G.",
        sbatch="--mem",
        hint=_PLACEMENT,
        slurm_value=True,
    ),
    Option(
        "reservation",
        "str",
        "",
        "Slurm reservation the allocation runs in (--reservation).",
        cli="reservation",
        cli_help="Slurm reservation.",
        sbatch="--reservation",
        hint=("reservation",),
        slurm_value=True,
    ),
    Option(
        "sbatch_args",
        "list",
        [],
        "Extra sbatch arguments.",
        cli="sbatch-arg",
        cli_help="Extra sbatch arguments (repeatable).",
    ),
    Option(
        "srun_args",
        "list",
        [],
        "Extra srun arguments for the kernel step.",
        cli="srun-arg",
        cli_help="Extra srun arguments (repeatable).",
    ),
    Option(
        "state_dir",
        "str",
        "",
        "Per-user 0700 directory on a filesystem the GPU nodes share; holds each "
        "kernel's connection file, lease and log. Default: <jupyter data dir>/kernelprovider.",
        cli="state-dir",
        cli_help="Shared per-user state directory (Slurm mode).",
    ),
    Option(
        "queue_timeout",
        "float",
        3600.0,
        "Seconds to wait for the allocation to start; 0 waits forever.",
        cli="queue-timeout",
        cli_help="Seconds to wait in the queue (0 = forever).",
    ),
    Option(
        "boot_timeout",
        "float",
        180.0,
        "Seconds from allocation start until the kernel must be listening.",
    ),
    Option(
        "lease_seconds",
        "int",
        90,
        "If the server stops refreshing the lease for this long, the allocation ends by "
        "itself (dead-man switch).",
    ),
    Option(
        "poll_interval",
        "float",
        5.0,
        "Seconds between the batched squeue calls shared by all kernels.",
    ),
    Option(
        "pending_log_interval",
        "float",
        10.0,
        "Seconds between INFO lines while the job is pending.",
    ),
    Option(
        "kernel_ip",
        "str",
        "",
        "Address the kernel binds on the node; default: the node's NodeAddr from Slurm.",
    ),
    Option(
        "keep_logs",
        "bool",
        False,
        "Keep the kernel's log file in the state directory after a clean shutdown.",
    ),
    Option(
        "end_warning",
        "float",
        600.0,
        "Seconds before the job's end from which the notebook's next cell run prints a "
        "one-line warning (save, checkpoint); 0 = never. The end is also in the kernel's "
        "environment as KP_SLURM_JOB_END (Unix seconds).",
    ),
    Option(
        "on_job_end",
        "enum",
        "requeue",
        "When Slurm ends the job under a running kernel (time limit, preemption, node "
        "failure, scancel): 'requeue' queues one new allocation for the kernel's automatic "
        "restart, 'stop' lets the kernel die.",
        values=("requeue", "stop"),
    ),
)

#: How the server reaches a Slurm kernel privately (see kernelprovider.transport).
TRANSPORT_OPTIONS: tuple[Option, ...] = (
    Option(
        "tunnel",
        "enum",
        "none",
        "'ssh': reach the kernel's five ports through an SSH tunnel (for nodes that accept "
        "SSH but no other inbound connections); the kernel then listens on the node's "
        "loopback only. 'none': connect to the node's address directly.",
        cli="tunnel",
        cli_help="'ssh' to reach the kernel through an SSH tunnel.",
        values=("none", "ssh"),
    ),
    Option(
        "tunnel_host",
        "str",
        "",
        "SSH destination of the tunnel ([user@]host). Empty: the kernel's node itself (its "
        "NodeAddr). A login or gateway host must reach the nodes and see state_dir; the "
        "kernel then listens on the node's address.",
        cli="tunnel-host",
        cli_help="SSH destination of the tunnel (default: the kernel's node).",
    ),
    Option(
        "ssh_command",
        "list",
        ("ssh",),
        "The ssh client, as argv (e.g. ['/usr/bin/ssh']).",
    ),
    Option(
        "ssh_options",
        "list",
        (),
        "Extra ssh arguments for the tunnel, e.g. ['-i', '/home/u/.ssh/id_ed25519', '-p', "
        "'2222', '-o', 'UserKnownHostsFile=/etc/ssh/cluster_known_hosts']. ssh runs with "
        "BatchMode=yes: keys and known hosts must be in place, no prompt is answered.",
    ),
    Option(
        "encryption",
        "enum",
        "auto",
        "CurveZMQ transport encryption of the kernel's ZeroMQ traffic. 'auto': on when this "
        "server's pyzmq and the image's ipykernel support it; 'curve': required (a start "
        "fails where it is missing); 'off': never. KernelManager.transport_encryption="
        "'required' also makes it required.",
        cli="encryption",
        cli_help="CurveZMQ: auto, curve (required) or off.",
        values=("auto", "curve", "off"),
    ),
)
