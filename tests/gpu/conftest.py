"""Fixtures for the GPU tests: the GPU test images and a driver directory made from this
host's driver libraries. Every test module here is marked ``gpu`` and skipped where no NVIDIA
driver is loaded (no /proc/driver/nvidia/version), also under ``make test``.

The images come from ``scripts/gpu-run.sh prepare`` (build/gpu-carry/images, or the directory
in KP_GPU_IMAGES); ``scripts/gpu-run.sh run`` runs these tests on a GPU machine.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

# The Slurm GPU tests' fixtures live with their helpers.
from slurm_gpu import gpu_cluster, gpu_spec, server, torch_image  # noqa: F401

ROOT = Path(__file__).resolve().parents[2]

#: Driver libraries a driver directory needs for CUDA (NVML for nvidia-smi-like queries, the
#: PTX JIT for code built for older GPUs); apptainer's nvliblist.conf names more.
DRIVER_LIBS = ("libcuda.so", "libnvidia-ml.so", "libnvidia-ptxjitcompiler.so")


class GpuImages:
    """The images scripts/gpu-run.sh builds (a directory of that name may be a sandbox)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.cuda = root / "kp-cuda.sif"  # python3 + ipykernel + libcudart 12.4
        self.cuda92 = root / "kp-cuda92.sif"  # labels only: CUDA 9.2, TF 1.8, cuDNN 7.1
        self.cuda132 = root / "kp-cuda132.sif"  # labels only: CUDA 13.2
        self.future = root / "kp-cuda-future.sif"  # labels only: CUDA 14.0


@pytest.fixture(scope="session")
def gpu_images() -> GpuImages:
    root = Path(os.environ.get("KP_GPU_IMAGES", ROOT / "build" / "gpu-carry" / "images"))
    imgs = GpuImages(root)
    every = (imgs.cuda, imgs.cuda92, imgs.cuda132, imgs.future)
    missing = [p.name for p in every if not p.exists()]
    if missing:
        pytest.fail(
            f"GPU test images missing in {root}: {', '.join(missing)}. Build them with "
            "'sudo scripts/gpu-run.sh prepare' or set KP_GPU_IMAGES."
        )
    return imgs


@pytest.fixture(scope="session")
def driver_version() -> str:
    from kernelprovider.gpu import host_driver_version

    version = host_driver_version()
    assert version, "a driver is loaded (/proc/driver/nvidia/version) but its version is unread"
    return version


def _libcuda_dir() -> Path:
    out = subprocess.run(["ldconfig", "-p"], capture_output=True, text=True, check=False).stdout
    m = re.search(r"^\s*libcuda\.so\.1 \(libc6,x86-64\) => (\S+)$", out, re.M)
    if not m:
        pytest.fail(
            "libcuda.so.1 is not in the loader cache (ldconfig -p), so neither --nv nor a "
            "driver directory can be made; add the driver's lib dir to /etc/ld.so.conf.d."
        )
    return Path(os.path.realpath(m.group(1))).parent


@pytest.fixture
def driver_dir(tmp_path: Path, driver_version: str) -> Path:
    """TMP/nvidia/<driver_version>/lib holding copies of this host's driver libraries, as a
    site would keep them for driver directory mode; returns TMP/nvidia (the template's base).
    """
    src = _libcuda_dir()
    lib = tmp_path / "nvidia" / driver_version / "lib"
    lib.mkdir(parents=True)
    for entry in sorted(src.iterdir()):
        if not entry.name.startswith(DRIVER_LIBS):
            continue
        target = lib / entry.name
        if entry.is_symlink():
            # Keep the soname links relative so they resolve inside the container too.
            os.symlink(os.path.basename(os.readlink(entry)), target)
        else:
            shutil.copy2(entry, target)
    assert (lib / "libcuda.so.1").exists(), f"no libcuda.so.1 copied from {src}"
    return tmp_path / "nvidia"
