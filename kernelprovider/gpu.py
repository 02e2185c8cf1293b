"""Host NVIDIA driver and GPU discovery, GPU selection, and driver-directory selection.

The parsers are pure; the functions that look at the host (:func:`host_driver_version`,
:func:`list_gpus`, :func:`host_facts`) block for at most a few seconds and are meant to be run
in a thread by async callers (``asyncio.to_thread``). On a Slurm node the same facts come from
:data:`PROBE_SCRIPT`, run as a job step, and :func:`parse_probe_output`.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import socket
import subprocess
from collections.abc import Callable, Mapping
from typing import TypeVar

from .compat import GpuInfo, HostFacts, parse_version

__all__ = [
    "GpuInfo",
    "HostFacts",
    "PROBE_SCRIPT",
    "SMI_QUERY",
    "driver_dir_for",
    "host_driver_version",
    "host_facts",
    "list_gpus",
    "parse_nvidia_smi_gpus",
    "parse_probe_output",
    "parse_proc_driver_version",
    "visible_gpus",
]

#: nvidia-smi's query for :func:`list_gpus` (``compute_cap`` needs a driver from 2021 or later).
SMI_QUERY = "index,name,uuid,compute_cap"
_SMI_QUERY_OLD = "index,name,uuid"
_TIMEOUT = 10.0
_T = TypeVar("_T")


# --------------------------------------------------------------------------------------------
# Pure parsers


def _looks_like_version(token: str) -> bool:
    parts = token.split(".")
    return len(parts) >= 2 and all(p.isdigit() for p in parts)


def parse_proc_driver_version(text: str) -> str | None:
    """The driver version in ``/proc/driver/nvidia/version``; None when the text has none.

    Both formats in the field are read::

        NVRM version: NVIDIA UNIX x86_64 Kernel Module  535.104.05  Sat Aug 19 01:15:15 UTC 2023
        NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  580.159.04  Release Build ...
    """
    for line in text.splitlines():
        if not line.startswith("NVRM version:"):
            continue
        _, _, rest = line.partition("Module")
        for token in rest.split():
            if _looks_like_version(token):
                return token
    return None


def _none_if_na(value: str) -> str | None:
    value = value.strip()
    if not value or value.startswith("[") or value.upper() in ("N/A", "NA"):
        return None  # nvidia-smi writes "[N/A]" or "[Not Supported]"
    return value


def parse_nvidia_smi_gpus(text: str, with_compute_cap: bool = True) -> list[GpuInfo]:
    """GPUs from ``nvidia-smi --query-gpu=index,name,uuid[,compute_cap] --format=csv,noheader``.

    Lines that are not GPU rows (a header, "No devices were found", an NVML error) are
    skipped. A comma inside a GPU name is kept: the fixed columns are counted from both ends.
    """
    tail = 2 if with_compute_cap else 1  # columns after the name
    gpus: list[GpuInfo] = []
    for line in text.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) < 2 + tail or not parts[0].isdigit():
            continue
        name = ", ".join(parts[1 : len(parts) - tail])
        uuid = _none_if_na(parts[len(parts) - tail])
        cc = _none_if_na(parts[-1]) if with_compute_cap else None
        if cc is not None and not _looks_like_version(cc):
            cc = None
        gpus.append(GpuInfo(name=name, compute_capability=cc, index=int(parts[0]), uuid=uuid))
    return gpus


# --------------------------------------------------------------------------------------------
# Host I/O


def _read_first_line(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.readline().strip() or None
    except OSError:
        return None


def _run_smi(args: list[str], timeout: float) -> str | None:
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None
    try:
        proc = subprocess.run(
            [exe, *args], capture_output=True, text=True, timeout=timeout, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return proc.stdout if proc.returncode == 0 else None


def _with_nvml(fn: Callable[[ctypes.CDLL], _T]) -> _T | None:
    # NVML ships with the driver, not with Python: absent, old or failing, it is simply skipped.
    try:
        lib = ctypes.CDLL("libnvidia-ml.so.1")
        init = getattr(lib, "nvmlInit_v2", None) or lib.nvmlInit
        if init() != 0:
            return None
    except (OSError, AttributeError):
        return None
    try:
        return fn(lib)
    except (OSError, AttributeError, UnicodeDecodeError):
        return None
    finally:
        try:
            lib.nvmlShutdown()
        except (OSError, AttributeError):
            pass


def _nvml_driver(lib: ctypes.CDLL) -> str | None:
    buf = ctypes.create_string_buffer(96)
    if lib.nvmlSystemGetDriverVersion(buf, ctypes.c_uint(len(buf))) != 0:
        return None
    return buf.value.decode() or None


def _nvml_gpus(lib: ctypes.CDLL) -> list[GpuInfo] | None:
    count = ctypes.c_uint(0)
    get_count = getattr(lib, "nvmlDeviceGetCount_v2", None) or lib.nvmlDeviceGetCount
    if get_count(ctypes.byref(count)) != 0:
        return None
    by_index = getattr(lib, "nvmlDeviceGetHandleByIndex_v2", None) or lib.nvmlDeviceGetHandleByIndex
    gpus = []
    for i in range(count.value):
        handle = ctypes.c_void_p()
        if by_index(ctypes.c_uint(i), ctypes.byref(handle)) != 0:
            continue
        name = ctypes.create_string_buffer(96)
        uuid = ctypes.create_string_buffer(96)
        major, minor = ctypes.c_int(0), ctypes.c_int(0)
        got_name = lib.nvmlDeviceGetName(handle, name, ctypes.c_uint(len(name))) == 0
        got_uuid = lib.nvmlDeviceGetUUID(handle, uuid, ctypes.c_uint(len(uuid))) == 0
        got_cc = (
            lib.nvmlDeviceGetCudaComputeCapability(handle, ctypes.byref(major), ctypes.byref(minor))
            == 0
        )
        gpus.append(
            GpuInfo(
                name=name.value.decode() if got_name else f"GPU {i}",
                compute_capability=f"{major.value}.{minor.value}" if got_cc else None,
                index=i,
                uuid=uuid.value.decode() if got_uuid else None,
            )
        )
    return gpus


def host_driver_version(root: str = "/", timeout: float = _TIMEOUT) -> str | None:
    """This host's NVIDIA driver version, or None when no driver is loaded.

    Tries ``/proc/driver/nvidia/version``, ``/sys/module/nvidia/version``, then (only when
    ``root`` is "/", the running system) NVML and ``nvidia-smi``. ``root`` lets tests and
    ``doctor`` read a copied tree. Blocking: async callers run it in a thread.
    """
    line = _read_first_line(os.path.join(root, "proc/driver/nvidia/version"))
    found = parse_proc_driver_version(line) if line else None
    if found:
        return found
    sys_version = _read_first_line(os.path.join(root, "sys/module/nvidia/version"))
    if sys_version and _looks_like_version(sys_version):
        return sys_version
    if os.path.realpath(root) != "/":
        return None
    found = _with_nvml(_nvml_driver)
    if found:
        return found
    out = _run_smi(["--query-gpu=driver_version", "--format=csv,noheader"], timeout)
    first = out.strip().splitlines()[0].strip() if out and out.strip() else ""
    return first if _looks_like_version(first) else None


def list_gpus(timeout: float = _TIMEOUT) -> list[GpuInfo]:
    """This host's GPUs from nvidia-smi, else NVML; empty when there is no driver.

    Blocking (one or two nvidia-smi runs): async callers run it in a thread.
    """
    out = _run_smi([f"--query-gpu={SMI_QUERY}", "--format=csv,noheader"], timeout)
    if out is not None:
        gpus = parse_nvidia_smi_gpus(out)
    else:
        # Drivers before compute_cap existed reject the whole query.
        out = _run_smi([f"--query-gpu={_SMI_QUERY_OLD}", "--format=csv,noheader"], timeout)
        gpus = parse_nvidia_smi_gpus(out, with_compute_cap=False) if out is not None else []
    if gpus and all(g.compute_capability for g in gpus):
        return gpus
    from_nvml = _with_nvml(_nvml_gpus) or []
    if not gpus:
        return from_nvml
    cc_by_uuid = {g.uuid: g.compute_capability for g in from_nvml if g.uuid}
    return [
        GpuInfo(g.name, g.compute_capability or cc_by_uuid.get(g.uuid), g.index, g.uuid)
        for g in gpus
    ]


def host_facts(node: str | None = None, timeout: float = _TIMEOUT) -> HostFacts:
    """Driver and GPUs of this host, for a kernel that runs here (local mode, ``doctor``).

    ``node`` defaults to this host's name. Blocking: async callers run it in a thread.
    """
    driver = host_driver_version(timeout=timeout)
    return HostFacts(
        node=node or socket.gethostname(),
        driver=driver,
        gpus=list_gpus(timeout=timeout) if driver else [],
    )


# --------------------------------------------------------------------------------------------
# GPU selection and driver directories

# Where the GPUs a kernel may use are named, most specific first: what CUDA in this process
# would see, then Slurm's step and job allocation, then Slurm's generic ordinal.
_SELECTION_VARS = (
    "CUDA_VISIBLE_DEVICES",
    "SLURM_STEP_GPUS",
    "SLURM_JOB_GPUS",
    "GPU_DEVICE_ORDINAL",
)
# Values meaning "no GPU at all": Slurm and Grid Engine write NoDevFiles, CUDA reads -1 as none.
_NO_GPU = {"", "nodevfiles", "none", "-1", "void"}


def visible_gpus(env: Mapping[str, str] | None = None) -> str | None:
    """The GPUs a kernel may see, as a value for ``NVIDIA_VISIBLE_DEVICES`` (or, inside the
    container, ``CUDA_VISIBLE_DEVICES``); None when nothing restricts them.

    Read from CUDA_VISIBLE_DEVICES, SLURM_STEP_GPUS, SLURM_JOB_GPUS, GPU_DEVICE_ORDINAL, the
    first one set winning. The provisioner calls this with the kernel's environment and passes
    the result into the container explicitly, so the selection also holds under --cleanenv.
    ``"none"`` means "no GPU": the variable was set to an empty list, NoDevFiles or -1.
    """
    source = os.environ if env is None else env
    for var in _SELECTION_VARS:
        raw = source.get(var)
        if raw is None:
            continue
        value = ",".join(p.strip() for p in raw.split(",") if p.strip())
        if value.lower() in _NO_GPU:
            return "none"
        if value.lower() == "all":
            return None
        return value
    return None


def driver_dir_for(template: str, driver_version: str) -> str:
    """The host directory of driver libraries for ``driver_version``, from ``template``.

    ``{driver_version}`` becomes e.g. ``535.104.05`` and ``{driver_major}`` ``535``; the
    provisioner calls this in driver_dir mode and binds the result into the container.
    """
    try:
        major = str(parse_version(driver_version)[0])
    except ValueError as e:
        raise ValueError(
            f"Cannot choose a driver directory: {driver_version!r} is not a driver version."
        ) from e
    try:
        return template.format_map(
            {"driver_version": driver_version.strip(), "driver_major": major}
        )
    except (KeyError, IndexError, ValueError) as e:
        raise ValueError(
            f"Driver directory template {template!r} is not valid ({e}); use only the "
            "placeholders {driver_version} and {driver_major}, e.g. "
            "'/opt/nvidia/{driver_version}/lib64'."
        ) from e


# --------------------------------------------------------------------------------------------
# The probe the Slurm provisioner runs on the allocated node

_BEGIN = "kernelprovider-probe-begin"
_END = "kernelprovider-probe-end"

#: POSIX sh, run as ``sh -c PROBE_SCRIPT`` in a step of the kernel's allocation; prints
#: key=value lines between two markers for :func:`parse_probe_output`. It only reads: the raw
#: /proc line is parsed here, not by sed there, so both driver formats stay in one place.
PROBE_SCRIPT = f"""\
echo {_BEGIN}
echo "node=$(uname -n)"
seen=
if [ -r /proc/driver/nvidia/version ]; then
  echo "proc_version=$(head -n 1 /proc/driver/nvidia/version)"
  seen=1
fi
if [ -r /sys/module/nvidia/version ]; then
  echo "sys_version=$(head -n 1 /sys/module/nvidia/version)"
  seen=1
fi
if command -v nvidia-smi >/dev/null 2>&1; then
  if out=$(nvidia-smi --query-gpu={SMI_QUERY} --format=csv,noheader 2>/dev/null); then
    printf '%s\\n' "$out" | sed 's/^/gpu=/'
  elif out=$(nvidia-smi --query-gpu={_SMI_QUERY_OLD} --format=csv,noheader 2>/dev/null); then
    printf '%s\\n' "$out" | sed 's/^/gpu_nocc=/'
  fi
  if [ -z "$seen" ]; then
    echo "smi_driver=$(nvidia-smi --query-gpu=driver_version --format=csv,noheader 2>/dev/null \
| head -n 1)"
  fi
fi
echo {_END}
"""


def parse_probe_output(text: str, node: str | None = None) -> HostFacts:
    """Host facts from :data:`PROBE_SCRIPT`'s output; ``node`` (Slurm's name for the node)
    overrides the probe's ``uname -n``. Lines outside the markers (srun notices, MOTD) are
    ignored; raises ValueError when the probe's output is missing.
    """
    lines = text.splitlines()
    try:
        start = next(i for i, ln in enumerate(lines) if ln.strip() == _BEGIN)
    except StopIteration:
        first = next((ln.strip() for ln in lines if ln.strip()), "")
        raise ValueError(
            f"The GPU probe printed no facts (first line: {first[:200]!r}); check that the "
            "job step could start 'sh' on the node, e.g. with 'srun --jobid=JOB --overlap "
            "hostname'."
        ) from None
    values: dict[str, str] = {}
    gpu_rows: list[str] = []
    nocc_rows: list[str] = []
    for ln in lines[start + 1 :]:
        if ln.strip() == _END:
            break
        key, sep, value = ln.partition("=")
        if not sep:
            continue
        if key == "gpu":
            gpu_rows.append(value)
        elif key == "gpu_nocc":
            nocc_rows.append(value)
        else:
            values.setdefault(key, value.strip())
    driver = parse_proc_driver_version(values.get("proc_version", ""))
    for key in ("sys_version", "smi_driver"):
        if driver is None and _looks_like_version(values.get(key, "")):
            driver = values[key]
    gpus = parse_nvidia_smi_gpus("\n".join(gpu_rows))
    gpus += parse_nvidia_smi_gpus("\n".join(nocc_rows), with_compute_cap=False)
    return HostFacts(node=node or values.get("node") or "unknown", driver=driver, gpus=gpus)
