"""The option table: every container and Slurm setting, written once.

The provisioners' traits (:func:`options_mixin`), the sbatch argv (:func:`sbatch_option_argv`),
the settings quoted when Slurm rejects a job (:func:`rejection_keys`) and the ``install``/
``scan`` command line (:func:`cli_traits`, :func:`cli_aliases`, :func:`cli_flags`,
:func:`spec_values`) all derive from :data:`CONTAINER_OPTIONS` and :data:`SLURM_OPTIONS`.
Adding a setting is one row here.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from traitlets import (
    Bool,
    CaselessStrEnum,
    Dict,
    Float,
    HasTraits,
    Int,
    List,
    TraitError,
    TraitType,
    Unicode,
    validate,
)

__all__ = [
    "Option",
    "CONTAINER_OPTIONS",
    "SLURM_OPTIONS",
    "options_mixin",
    "sbatch_option_argv",
    "sbatch_settings",
    "rejection_keys",
    "cli_traits",
    "cli_aliases",
    "cli_flags",
    "spec_values",
    "check_slurm_value",
]

#: An argv builder: (this option's value, every option's value) -> sbatch arguments.
ArgvBuilder = Callable[[Any, Mapping[str, Any]], list[str]]


@dataclass(frozen=True)
class Option:
    """One setting: its trait, how sbatch gets it, and how ``install`` spells it.

    ``kind`` is one of str, int, float, bool, list, dict, enum. ``sbatch`` is a flag
    (``--partition``: passed as ``--partition=VALUE`` when the value is set) or an argv
    builder. ``cli`` is the install flag (``--time``), ``cli_attr`` the install app's trait
    when the option's own name is taken there. ``hint`` holds words of an sbatch refusal
    that point at this option. ``slurm_value``: refuse newlines, NUL and a leading '-'.
    """

    name: str
    kind: str
    default: Any
    help: str
    cli: str | None = None
    cli_help: str = ""
    cli_attr: str | None = None
    sbatch: str | ArgvBuilder | None = None
    hint: tuple[str, ...] = ()
    values: tuple[str, ...] = ()
    slurm_value: bool = False

    def trait(self) -> TraitType:
        """The provisioner trait (configurable per kernelspec and site-wide)."""
        kind, default, help_text = self.kind, self.default, self.help
        if kind == "str":
            t: TraitType = Unicode(default, help=help_text)
        elif kind == "int":
            t = Int(default, help=help_text)
        elif kind == "float":
            t = Float(default, help=help_text)
        elif kind == "bool":
            t = Bool(default, help=help_text)
        elif kind == "list":
            t = List(Unicode(), help=help_text)
        elif kind == "dict":
            t = Dict(value_trait=Unicode(), help=help_text)
        else:
            t = CaselessStrEnum(list(self.values), default_value=default, help=help_text)
        return t.tag(config=True)

    def cli_trait(self) -> TraitType:
        """The install app's trait: unset by default, so only given values are written."""
        kind, help_text = self.kind, self.cli_help or self.help
        if kind == "str":
            t: TraitType = Unicode("", help=help_text)
        elif kind == "int":
            t = Int(0, help=help_text)
        elif kind == "float":
            t = Float(None, allow_none=True, help=help_text)
        elif kind == "bool":
            t = Bool(False, help=help_text)
        elif kind == "list":
            t = List(Unicode(), help=help_text)
        elif kind == "dict":
            t = Dict(value_trait=Unicode(), help=help_text)
        else:
            t = CaselessStrEnum(
                list(self.values), default_value=None, allow_none=True, help=help_text
            )
        return t.tag(config=True)

    @property
    def attr(self) -> str:
        """The install app's trait name for this option."""
        return self.cli_attr or self.name

    def spec_value(self, value: Any) -> Any:
        """What ``install`` writes for a command-line value (None: not written)."""
        if self.kind == "list":
            return list(value)
        if self.kind == "dict":
            return dict(value)
        if self.kind in ("float", "enum"):
            return value
        return value or None

    def argv(self, value: Any, values: Mapping[str, Any]) -> list[str]:
        """This option's sbatch arguments for ``value``."""
        if self.sbatch is None:
            return []
        if callable(self.sbatch):
            return self.sbatch(value, values)
        return [f"{self.sbatch}={value}"] if value else []


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


def check_slurm_value(name: str, value: str) -> str:
    """Refuse a value that could smuggle another option into sbatch's argv (TraitError)."""
    if any(c in value for c in "\n\0") or value.startswith("-"):
        raise TraitError(f"{name}: {value!r} is not a valid Slurm value.")
    return value


def options_mixin(name: str, options: Sequence[Option], doc: str) -> type[HasTraits]:
    """A HasTraits class with one trait per option (and the Slurm-value check)."""
    namespace: dict[str, Any] = {o.name: o.trait() for o in options}
    namespace["__doc__"] = doc
    checked = [o.name for o in options if o.slurm_value]
    if checked:

        def _validate_slurm_value(self: HasTraits, proposal: dict[str, Any]) -> str:
            return check_slurm_value(proposal["trait"].name, proposal["value"])

        namespace["_validate_slurm_value"] = validate(*checked)(_validate_slurm_value)
    return type(name, (HasTraits,), namespace)


def sbatch_option_argv(values: Mapping[str, Any]) -> list[str]:
    """The sbatch arguments of every Slurm option in ``values``, in table order."""
    argv: list[str] = []
    for option in SLURM_OPTIONS:
        if option.name in values:
            argv += option.argv(values[option.name], values)
    return argv


def sbatch_settings(prov: Any) -> dict[str, Any]:
    """The values of the options that reach sbatch's argv, by name, from a provisioner."""
    return {o.name: getattr(prov, o.name) for o in SLURM_OPTIONS if o.sbatch is not None}


def rejection_keys(slurm_says: str, settings: Mapping[str, Any]) -> list[str]:
    """The settings to quote for a job sbatch refused with ``slurm_says``.

    The options whose hint words the refusal contains, then the partition (where the
    limits live); every setting when no option matches.
    """
    low = slurm_says.lower()
    keys = [o.name for o in SLURM_OPTIONS if any(word in low for word in o.hint)]
    if not keys:
        return list(settings)
    if "partition" not in keys:
        keys.append("partition")
    return keys


def _install_options() -> list[Option]:
    return [o for o in (*CONTAINER_OPTIONS, *SLURM_OPTIONS) if o.cli]


def cli_traits() -> dict[str, TraitType]:
    """The install app's traits, one per option with a command-line flag."""
    return {o.attr: o.cli_trait() for o in _install_options()}


def cli_aliases(app: str) -> dict[str, str]:
    """``--flag=VALUE`` aliases of ``app`` (the class name) for the valued options."""
    return {o.cli: f"{app}.{o.attr}" for o in _install_options() if o.kind != "bool" and o.cli}


def cli_flags(app: str) -> dict[str, tuple[dict[str, dict[str, Any]], str]]:
    """``--flag`` switches of ``app`` for the boolean options."""
    return {
        o.cli: ({app: {o.attr: True}}, o.cli_help)
        for o in _install_options()
        if o.kind == "bool" and o.cli
    }


def spec_values(app: Any, slurm: bool) -> dict[str, Any]:
    """The provisioner config values an install app stands for (None: not given).

    Slurm options are written only for a Slurm kernel.
    """
    options = [*CONTAINER_OPTIONS, *(SLURM_OPTIONS if slurm else ())]
    return {o.name: o.spec_value(getattr(app, o.attr)) for o in options if o.cli}
