"""Apptainer/Singularity: pure argv builders, bind parsing, image checks and runtime detection."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import subprocess
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from .aio import shared
from .errors import (
    BindSourceNotFound,
    ImageNotFound,
    ImageNotReadable,
    InvalidBind,
    NotAContainerImage,
    RuntimeNotFound,
)

__all__ = [
    "GPU_MODES",
    "Bind",
    "RuntimeInfo",
    "parse_bind",
    "gpu_flags",
    "build_exec_argv",
    "build_step_gpu_prelude",
    "container_env",
    "env_is_evaluated",
    "env_prefix",
    "image_kind",
    "check_image",
    "check_bind_sources",
    "is_image_uri",
    "parse_runtime_version",
    "find_runtime",
    "find_runtime_async",
]

#: GPU modes the provisioner accepts, mapped to the runtime flags that implement them.
GPU_MODES: dict[str, tuple[str, ...]] = {
    "nv": ("--nv",),
    # --nvccli is a variant of --nv: apptainer wants both.
    "nvccli": ("--nv", "--nvccli"),
    "rocm": ("--rocm",),
    "none": (),
}

_BIND_OPTIONS = {"ro", "rw"}
_SIF_MAGIC = b"SIF_MAGIC"
_SQUASHFS_MAGIC = b"hsqs"
_EXT_MAGIC = b"\x53\xef"


@dataclass(frozen=True)
class Bind:
    """One bind mount: host ``src`` at container ``dst`` with optional ``opts`` (ro/rw)."""

    src: str
    dst: str
    opts: str = ""

    def spec(self) -> str:
        """The ``--bind`` value apptainer reads: ``src[:dst[:opts]]``."""
        if self.opts:
            return f"{self.src}:{self.dst}:{self.opts}"
        if self.dst != self.src:
            return f"{self.src}:{self.dst}"
        return self.src


def _check_path_text(path: str, what: str, value: str) -> None:
    # apptainer splits --bind on ',' and ':' with no quoting, so such a path would silently
    # become two binds or a wrong destination; refuse it instead of guessing.
    if "," in path or ":" in path:
        raise InvalidBind(
            f"Bind {value!r}: the {what} path {path!r} contains ',' or ':', which apptainer "
            "reads as separators. Bind a parent directory or a symlink without them."
        )
    if "\n" in path or "\0" in path:
        raise InvalidBind(f"Bind {value!r}: the {what} path contains a newline or NUL byte.")
    if not path.startswith("/"):
        raise InvalidBind(
            f"Bind {value!r}: the {what} path {path!r} is relative. Use an absolute path."
        )


def _check_separators(bind: Bind) -> None:
    # Binds the provisioner makes from paths (working directory, connection directory) skip
    # parse_bind; apptainer would split them just the same.
    for path in (bind.src, bind.dst):
        if "," in path or ":" in path:
            raise InvalidBind(
                f"Cannot bind {path!r} into the container: it contains ',' or ':', which "
                "apptainer reads as separators. Use a directory without them (for a "
                "notebook: rename or move its folder)."
            )


def parse_bind(value: str) -> Bind:
    """Parse ``SRC[:DST[:OPTS]]`` the way apptainer does, refusing what it would misread.

    Called by the provisioner's trait validation and by the CLI's ``--bind``; ``~`` in the
    source is expanded for this user, nothing else (no shell, no variables).
    """
    if not value or not value.strip():
        raise InvalidBind("Empty bind specification. Use SRC[:DST[:ro|rw]].")
    if "\0" in value:  # before expanduser, which raises a bare ValueError on it
        raise InvalidBind(f"Bind {value!r} contains a NUL byte.")
    parts = value.split(":")
    if len(parts) > 3:
        raise InvalidBind(
            f"Bind {value!r} has {len(parts) - 1} ':' separators; use SRC[:DST[:ro|rw]] "
            "and paths without ':'."
        )
    src = os.path.expanduser(parts[0])
    dst = parts[1] if len(parts) > 1 and parts[1] else src
    opts = parts[2] if len(parts) > 2 else ""
    if opts and opts not in _BIND_OPTIONS:
        raise InvalidBind(f"Bind {value!r}: option {opts!r} is not one of ro, rw.")
    _check_path_text(src, "source", value)
    _check_path_text(dst, "destination", value)
    return Bind(src=src, dst=dst, opts=opts)


def gpu_flags(mode: str) -> list[str]:
    """The runtime flags for a GPU mode (nv | nvccli | rocm | none)."""
    try:
        return list(GPU_MODES[mode])
    except KeyError:
        raise ValueError(f"GPU mode {mode!r} is not one of {', '.join(GPU_MODES)}.") from None


def build_exec_argv(
    runtime: str,
    image: str,
    command: Sequence[str],
    *,
    gpu: str = "nv",
    binds: Iterable[Bind] = (),
    pwd: str | None = None,
    cleanenv: bool = False,
    contain: bool = False,
    extra_args: Sequence[str] = (),
) -> list[str]:
    """Build ``runtime exec [flags] IMAGE COMMAND...`` as a list; never a shell string.

    Every option stands before the image (apptainer stops reading its own options there),
    GPU flags first so ``--nv`` is never lost behind a site's extra arguments. Duplicate
    binds (same source and destination) are given once. A bind path with ',' or ':' (the
    working directory, say) raises InvalidBind: apptainer would split it.
    """
    argv = [runtime, "exec", *gpu_flags(gpu)]
    if cleanenv:
        argv.append("--cleanenv")
    if contain:
        argv.append("--contain")
    seen: set[tuple[str, str]] = set()
    for bind in binds:
        key = (bind.src, bind.dst)
        if key in seen:
            continue
        seen.add(key)
        _check_separators(bind)
        argv += ["--bind", bind.spec()]
    if pwd:
        argv += ["--pwd", pwd]
    argv += list(extra_args)
    argv.append(image)
    argv += list(command)
    return argv


def env_prefix(flavor: str) -> str:
    """The prefix that passes a variable into the container for this runtime flavor."""
    return "SINGULARITYENV_" if flavor == "singularity" else "APPTAINERENV_"


def env_is_evaluated(extra_args: Sequence[str], environ: Mapping[str, str]) -> bool:
    """False when the runtime runs with ``--no-eval`` (flag or ``*_NO_EVAL`` variable).

    Without it, apptainer (and SingularityCE >= 3.6) expand ``{APPTAINER,SINGULARITY}ENV_``
    values like a double-quoted shell word as the container starts.
    """
    if any(a == "--no-eval" or a.lower() in ("--no-eval=true", "--no-eval=1") for a in extra_args):
        return False
    for name in ("APPTAINER_NO_EVAL", "SINGULARITY_NO_EVAL"):
        if environ.get(name, "").strip().lower() in ("1", "t", "true"):
            return False
    return True


def _escape_for_eval(value: str) -> str:
    # The runtime writes `export KEY="value"` (escaping only '"') and sources it: '$', '`'
    # and '\' would run commands or expand variables, so they are escaped to stay literal.
    return value.replace("\\", "\\\\").replace("$", "\\$").replace("`", "\\`")


def container_env(flavor: str, env: Mapping[str, str], *, evaluated: bool = True) -> dict[str, str]:
    """Map variables meant for the container to the ``{APPTAINER,SINGULARITY}ENV_`` form.

    Those survive ``--cleanenv`` and keep values out of argv (where ``ps`` shows them).
    Values arrive literally: escaped for the runtime's shell evaluation unless
    ``evaluated`` is False (``--no-eval``, see :func:`env_is_evaluated`).
    """
    prefix = env_prefix(flavor)
    return {
        prefix + name: _escape_for_eval(str(value)) if evaluated else str(value)
        for name, value in env.items()
    }


def build_step_gpu_prelude(flavor: str, gpu: str, cleanenv: bool) -> list[str]:
    """``sh -c SCRIPT NAME`` to put in front of the runtime in a Slurm step; [] when none is needed.

    The GPUs of a step are chosen on the node by slurmstepd (CUDA_VISIBLE_DEVICES,
    SLURM_STEP_GPUS): the server never knows them, so it cannot pass them in as it does for
    a local kernel. ``--cleanenv`` drops CUDA_VISIBLE_DEVICES, so on a site without device
    cgroups (ConstrainDevices=no) the kernel would see every GPU of the node; ``--nvccli``
    mounts the devices NVIDIA_VISIBLE_DEVICES names, "all" by default. The script, fixed
    text with no configured value in it, copies the step's choice into the form the runtime
    hands to the container and then execs the runtime with the argv that follows it.
    """
    if gpu == "none" or not (cleanenv or gpu == "nvccli"):
        return []
    lines = ['g="${CUDA_VISIBLE_DEVICES-}"']
    if cleanenv:
        name = env_prefix(flavor) + "CUDA_VISIBLE_DEVICES"
        lines.append(f'if [ -n "$g" ]; then export {name}="$g"; fi')
    if gpu == "nvccli":
        # nvidia-container-cli counts GPUs as nvidia-smi does (the node's numbering), which
        # is SLURM_STEP_GPUS; CUDA_VISIBLE_DEVICES is renumbered under device cgroups.
        lines.append(
            'if [ -z "${NVIDIA_VISIBLE_DEVICES-}" ]; then '
            'export NVIDIA_VISIBLE_DEVICES="${SLURM_STEP_GPUS:-${g:-all}}"; fi'
        )
    lines.append('exec "$@"')
    return ["/bin/sh", "-c", "; ".join(lines), "kp-step-gpus"]


def is_image_uri(image: str) -> bool:
    """True for ``docker://``, ``oras://``, ``library://`` and similar: nothing to stat."""
    return re.match(r"^[a-z][a-z0-9+.-]*://", image) is not None


def image_kind(path: str) -> str | None:
    """Tell a SIF, squashfs or ext3 image file or a sandbox directory apart; None otherwise."""
    if os.path.isdir(path):
        return "sandbox"
    with open(path, "rb") as f:
        head = f.read(1082)
    if head[32:41] == _SIF_MAGIC:
        return "sif"
    if head[:4] == _SQUASHFS_MAGIC:
        return "squashfs"
    if head[1080:1082] == _EXT_MAGIC:
        return "ext3"
    return None


def check_image(image: str, kernel_name: str = "") -> str | None:
    """Check that ``image`` can be started; return its kind (None for URIs).

    Called by the provisioner before launch and by ``list``/``doctor``; raises the named
    error a user can act on instead of letting the runtime fail later.
    """
    if is_image_uri(image):
        return None
    where = f" (kernel {kernel_name})" if kernel_name else ""
    if not os.path.exists(image):
        if os.path.islink(image):
            raise ImageNotFound(
                f"Image {image} is a symlink that leads nowhere (dangling, or a loop){where}. "
                "Fix the link or point the kernelspec at the image file itself."
            )
        raise ImageNotFound(
            f"Image {image} not found{where}. Check the path in the kernelspec or run "
            "'jupyter kernelprovider list'."
        )
    if not os.access(image, os.R_OK):
        raise ImageNotReadable(
            f"Image {image} is not readable by this user{where}. Ask the image's owner to "
            "make it world-readable (chmod a+r) or pick another image."
        )
    try:
        kind = image_kind(image)
    except OSError as e:
        raise ImageNotReadable(f"Image {image} could not be read{where}: {e}.") from e
    if kind is None:
        raise NotAContainerImage(
            f"{image} is not a container image (no SIF, squashfs or ext3 header){where}. "
            "Rebuild it with 'apptainer build' or point the kernelspec at the right file."
        )
    if kind == "sandbox" and not os.path.isdir(os.path.join(image, ".singularity.d")):
        raise NotAContainerImage(
            f"{image} is a directory but not an apptainer sandbox (no .singularity.d){where}. "
            "Build one with 'apptainer build --sandbox'."
        )
    return kind


def check_bind_sources(binds: Iterable[Bind]) -> None:
    """Raise BindSourceNotFound for the first bind whose source is missing on this host.

    Also InvalidBind for a path apptainer would split (',' or ':'): both provisioners call
    this before anything starts (or is submitted to Slurm).
    """
    for bind in binds:
        _check_separators(bind)
        if not os.path.exists(bind.src):
            raise BindSourceNotFound(
                f"Bind source {bind.src} does not exist on this host (bind {bind.spec()}). "
                "Create it or remove it from the kernelspec's binds."
            )


@dataclass(frozen=True)
class RuntimeInfo:
    """The container runtime found: absolute path, flavor (apptainer|singularity), version."""

    path: str
    flavor: str
    version: str


def parse_runtime_version(text: str) -> tuple[str, str]:
    """Parse ``apptainer version 1.4.5`` / ``singularity-ce version 4.1.0`` -> (flavor, version).

    Apptainer installs a ``singularity`` alias that still says "apptainer", so the flavor
    comes from this output, not from the binary's name.
    """
    text = text.strip()
    m = re.match(r"^(apptainer|singularity(?:-ce|-pro)?)\s+version\s+(\S+)", text)
    if m:
        flavor = "apptainer" if m.group(1) == "apptainer" else "singularity"
        return flavor, m.group(2)
    m = re.match(r"^(\d+\.\d+\S*)$", text)
    if m:  # very old singularity prints only the number
        return "singularity", m.group(1)
    raise ValueError(f"Cannot read a runtime version from {text!r}.")


_runtime_cache: dict[tuple[str, float], RuntimeInfo] = {}


def _which_runtime(runtime: str) -> str:
    if runtime in ("", "auto"):
        for name in ("apptainer", "singularity"):
            found = shutil.which(name)
            if found:
                return found
        raise RuntimeNotFound(
            "Neither apptainer nor singularity is on PATH. Install Apptainer (see the README) "
            "or set ContainerProvisioner.runtime to its full path."
        )
    found = shutil.which(runtime)
    if not found:
        raise RuntimeNotFound(
            f"Container runtime {runtime!r} not found or not executable. Fix "
            "ContainerProvisioner.runtime or install Apptainer."
        )
    return os.path.abspath(found)


def _runtime_from_output(path: str, rc: int, out: str) -> RuntimeInfo:
    if rc != 0:
        raise RuntimeNotFound(
            f"{path} --version failed (exit {rc}): {out.strip()[-300:]}. "
            "Check the runtime's installation."
        )
    try:
        flavor, version = parse_runtime_version(out)
    except ValueError as e:
        raise RuntimeNotFound(f"{path} is not an apptainer/singularity binary: {e}") from e
    return RuntimeInfo(path=path, flavor=flavor, version=version)


def find_runtime(runtime: str = "auto") -> RuntimeInfo:
    """Find the runtime and its version (blocking; for the CLI). Cached by path and mtime."""
    key = _runtime_key(runtime)
    path = key[0]
    if key not in _runtime_cache:
        proc = subprocess.run(
            [path, "--version"], capture_output=True, text=True, timeout=30, check=False
        )
        _runtime_cache[key] = _runtime_from_output(path, proc.returncode, proc.stdout + proc.stderr)
    return _runtime_cache[key]


def _runtime_key(runtime: str) -> tuple[str, float]:
    path = _which_runtime(runtime)
    return path, os.stat(path).st_mtime


async def find_runtime_async(runtime: str = "auto") -> RuntimeInfo:
    """Like :func:`find_runtime`, for the provisioner's event loop (never blocks it).

    PATH search and stat run in a thread; concurrent first calls share one ``--version``.
    """
    key = await asyncio.to_thread(_runtime_key, runtime)
    hit = _runtime_cache.get(key)
    if hit is not None:
        return hit
    return await shared(("runtime", key), lambda: _runtime_version(key))


async def _runtime_version(key: tuple[str, float]) -> RuntimeInfo:
    path = key[0]
    proc = await asyncio.create_subprocess_exec(
        path, "--version", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), timeout=30)
    except asyncio.TimeoutError as e:
        proc.kill()
        raise RuntimeNotFound(f"{path} --version did not answer within 30 s.") from e
    info = _runtime_from_output(path, proc.returncode or 0, out.decode(errors="replace"))
    _runtime_cache[key] = info
    return info
