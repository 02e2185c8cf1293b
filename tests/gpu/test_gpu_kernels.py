"""On a real NVIDIA GPU: kernels started through the provisioner use the GPU from inside a SIF
image (--nv and driver directory mode), a CPU-only kernel fails fast and clearly, and doctor
and the launch-time verdicts report the real driver.

Run with scripts/gpu-run.sh (it builds the images and installs Apptainer on a GPU machine);
skipped wherever no NVIDIA driver is loaded.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from typing import Any

import pytest
from jupyter_client import AsyncKernelManager
from kernel_helpers import run_cell, start_kernel

from kernelprovider.compat import version_at_least
from kernelprovider.errors import DriverIncompatible

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(
        not os.path.exists("/proc/driver/nvidia/version"),
        reason="no NVIDIA driver on this host (no /proc/driver/nvidia/version)",
    ),
    pytest.mark.timeout(150),
]

# The CUDA driver API through ctypes: which libcuda was loaded, and the first GPU's name.
DRIVER_API = r"""
import ctypes, os
cuda = ctypes.CDLL("libcuda.so.1")
assert cuda.cuInit(0) == 0, "cuInit failed"
count = ctypes.c_int()
assert cuda.cuDeviceGetCount(ctypes.byref(count)) == 0
dev = ctypes.c_int()
assert cuda.cuDeviceGet(ctypes.byref(dev), 0) == 0
name = ctypes.create_string_buffer(256)
assert cuda.cuDeviceGetName(name, 256, dev) == 0
maps = open("/proc/self/maps").read().split()
print("libcuda", next(p for p in maps if "/libcuda.so" in p))
print("devices", count.value)
print("name", name.value.decode())
print("LD_LIBRARY_PATH", os.environ.get("LD_LIBRARY_PATH"))
"""

# The CUDA runtime that ships inside the image: allocate, copy host->device, set and copy
# device->device, copy back, compare.
RUNTIME_API = r"""
import ctypes, os
rt = ctypes.CDLL("libcudart.so.12")
rt.cudaMalloc.argtypes = [ctypes.POINTER(ctypes.c_void_p), ctypes.c_size_t]
rt.cudaMemcpy.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
rt.cudaMemset.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t]
rt.cudaFree.argtypes = [ctypes.c_void_p]
H2D, D2H, D2D = 1, 2, 3
version = ctypes.c_int()
assert rt.cudaRuntimeGetVersion(ctypes.byref(version)) == 0
size = 64 << 20
a, b = ctypes.c_void_p(), ctypes.c_void_p()
assert rt.cudaMalloc(ctypes.byref(a), size) == 0, "cudaMalloc a"
assert rt.cudaMalloc(ctypes.byref(b), size) == 0, "cudaMalloc b"
data = os.urandom(size)
src = ctypes.create_string_buffer(data, size)
back = ctypes.create_string_buffer(size)
assert rt.cudaMemcpy(a, src, size, H2D) == 0
assert rt.cudaMemcpy(b, a, size, D2D) == 0
assert rt.cudaMemcpy(back, b, size, D2H) == 0
roundtrip = back.raw == data
assert rt.cudaMemset(a, 0xAB, size) == 0
assert rt.cudaMemcpy(back, a, size, D2H) == 0
memset = back.raw == b"\xab" * size
assert rt.cudaFree(a) == 0 and rt.cudaFree(b) == 0
maps = open("/proc/self/maps").read().split()
print("libcudart", next(p for p in maps if "/libcudart.so" in p))
print("cudart", version.value)
print("roundtrip", roundtrip, size)
print("memset", memset)
"""


def printed(out: str) -> dict[str, str]:
    """``key value`` lines of a cell's output as a dict."""
    found = {}
    for line in out.splitlines():
        key, _, value = line.partition(" ")
        found.setdefault(key, value)
    return found


async def stop(km: AsyncKernelManager, kc: Any) -> None:
    kc.stop_channels()
    if await km.is_alive():
        await km.shutdown_kernel(now=True)


def doctor(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "kernelprovider.app", "doctor", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


# --------------------------------------------------------------------------------------------


async def test_cuda_through_nv_in_a_sif(gpu_images, install_kernel, jupyter_dirs) -> None:
    install_kernel(
        "kp-cuda", gpu_images.cuda, display_name="CUDA 12.4 (GPU)", gpu="nv", compat_check="warn"
    )
    km, kc = await start_kernel("kp-cuda", jupyter_dirs["work"], timeout=120)
    try:
        argv = list(km.provisioner.process.args)
        assert "--nv" in argv
        reply, out = await run_cell(kc, DRIVER_API, timeout=120)
        print(out)
        assert reply["status"] == "ok", out
        facts = printed(out)
        assert "NVIDIA" in facts["name"]
        assert int(facts["devices"]) >= 1
        assert facts["libcuda"].startswith("/.singularity.d/libs/")
        # the driver's libraries first, the image's own runtime directory after them
        assert facts["LD_LIBRARY_PATH"].startswith("/.singularity.d/libs:/opt/cudart/lib")

        reply, out = await run_cell(kc, RUNTIME_API, timeout=120)
        print(out)
        assert reply["status"] == "ok", out
        facts = printed(out)
        assert facts["libcudart"] == "/opt/cudart/lib/libcudart.so.12"
        assert facts["cudart"] == "12040"
        assert facts["roundtrip"] == f"True {64 << 20}"
        assert facts["memset"] == "True"
        assert {v.level for v in km.provisioner.verdicts} == {"ok"}, km.provisioner.verdicts
    finally:
        await stop(km, kc)


async def test_cpu_only_kernel_fails_fast_and_clearly(
    gpu_images, install_kernel, jupyter_dirs
) -> None:
    install_kernel("kp-cuda-cpu", gpu_images.cuda, gpu="none", compat_check="warn")
    km, kc = await start_kernel("kp-cuda-cpu", jupyter_dirs["work"], timeout=120)
    try:
        assert "--nv" not in list(km.provisioner.process.args)
        code = (
            "import ctypes\n"
            "rt = ctypes.CDLL('libcudart.so.12')\n"
            "n = ctypes.c_int()\n"
            "print('cudaGetDeviceCount', rt.cudaGetDeviceCount(ctypes.byref(n)))\n"
        )
        t0 = time.monotonic()
        reply, out = await run_cell(kc, code, timeout=60)
        print(out)
        assert reply["status"] == "ok", out
        # 35 = cudaErrorInsufficientDriver: the runtime found no libcuda to talk to
        assert printed(out)["cudaGetDeviceCount"] == "35"
        reply, out = await run_cell(kc, "import ctypes\nctypes.CDLL('libcuda.so.1')", timeout=60)
        print(out)
        assert reply["status"] == "error"
        assert reply["ename"] == "OSError"
        assert "libcuda.so.1: cannot open shared object file" in reply["evalue"]
        assert time.monotonic() - t0 < 30
    finally:
        await stop(km, kc)


@pytest.mark.parametrize("gpu", ["none", "nv"])
async def test_driver_directory_mode(
    gpu, gpu_images, install_kernel, jupyter_dirs, driver_dir, driver_version
) -> None:
    """driver_dir=.../nvidia/{driver_version}: the host's driver libraries, copied into a
    directory as a site keeps them, bound at /nvlib and first on LD_LIBRARY_PATH."""
    install_kernel(
        f"kp-cuda-drvdir-{gpu}",
        gpu_images.cuda,
        gpu=gpu,
        compat_check="warn",
        driver_dir=str(driver_dir / "{driver_version}"),
    )
    km, kc = await start_kernel(f"kp-cuda-drvdir-{gpu}", jupyter_dirs["work"], timeout=120)
    try:
        argv = list(km.provisioner.process.args)
        lib = driver_dir / driver_version / "lib"
        assert ("--nv" in argv) == (gpu == "nv")
        assert f"{lib}:/nvlib:ro" in argv, argv
        reply, out = await run_cell(kc, DRIVER_API + RUNTIME_API, timeout=120)
        print(out)
        assert reply["status"] == "ok", out
        facts = printed(out)
        assert facts["libcuda"].startswith("/nvlib/libcuda.so")
        assert facts["LD_LIBRARY_PATH"].startswith("/nvlib:")
        assert "NVIDIA" in facts["name"]
        assert facts["roundtrip"] == f"True {64 << 20}"
    finally:
        await stop(km, kc)


async def test_enforce_starts_a_matching_image(gpu_images, install_kernel, jupyter_dirs) -> None:
    install_kernel("kp-cuda-enforce", gpu_images.cuda, compat_check="enforce")
    km, kc = await start_kernel("kp-cuda-enforce", jupyter_dirs["work"], timeout=120)
    try:
        assert await km.is_alive()
        assert [v.level for v in km.provisioner.verdicts] == ["ok", "ok"]
    finally:
        await stop(km, kc)


async def test_enforce_refuses_an_image_the_driver_cannot_serve(
    gpu_images, install_kernel, jupyter_dirs, driver_version
) -> None:
    install_kernel("kp-future", gpu_images.future, compat_check="enforce")
    km = AsyncKernelManager(kernel_name="kp-future")
    t0 = time.monotonic()
    with pytest.raises(DriverIncompatible) as e:
        await km.start_kernel(cwd=str(jupyter_dirs["work"]))
    message = str(e.value)
    print(message)
    assert time.monotonic() - t0 < 30
    # the facts a user acts on: which image, its CUDA, the node's driver, what to pick instead
    assert "kp-cuda-future.sif" in message and "CUDA 14.0" in message
    assert f"has {driver_version}" in message
    assert "Pick an image with CUDA <= 13.0" in message
    assert "set compat_check to 'warn'" in message
    assert list(jupyter_dirs["runtime"].glob("kernel-*.json")) == []


def test_doctor_reports_the_real_driver(gpu_images, jupyter_dirs, driver_version) -> None:
    runs = {}
    for img in (gpu_images.cuda92, gpu_images.cuda, gpu_images.cuda132):
        runs[img.name] = doctor(str(img))
        print(f"$ jupyter kernelprovider doctor {img.name}  [exit {runs[img.name].returncode}]")
        print(runs[img.name].stdout, runs[img.name].stderr)
    for run in runs.values():
        assert f"NVIDIA driver: {driver_version}" in run.stdout
        assert "NVIDIA" in run.stdout and "compute capability" in run.stdout

    ok = runs["kp-cuda.sif"]
    assert ok.returncode == 0, ok.stdout
    assert "CUDA: 12.4 (label CUDA_VERSION)" in ok.stdout
    assert "Result: ok" in ok.stdout
    assert "ok    driver  kp-cuda.sif needs NVIDIA driver >= 550.54.14 (CUDA 12.4)" in ok.stdout

    new = runs["kp-cuda132.sif"]
    if not version_at_least(driver_version, "595.45.04"):
        # e.g. driver 580: CUDA 13.2 runs only through 13.x minor-version compatibility
        assert "Result: warn" in new.stdout, new.stdout
        assert "kp-cuda132.sif needs NVIDIA driver >= 595.45.04 (CUDA 13.2)" in new.stdout
        assert "minor-version compatibility" in new.stdout

    old = runs["kp-cuda92.sif"]
    assert "CUDA: 9.2 (label CUDA_VERSION)" in old.stdout
    assert "TensorFlow: 1.8 (label TENSORFLOW_VERSION)" in old.stdout

    planned = doctor(str(gpu_images.cuda92), "--driver-version", "390.46")
    print(planned.stdout, planned.stderr)
    assert planned.returncode == 1
    assert "kp-cuda92.sif needs NVIDIA driver >= 396.26 (CUDA 9.2); node " in planned.stdout
    assert "has 390.46. Pick an image with CUDA <= 9.1 or another partition." in planned.stdout

    as_json = doctor(str(gpu_images.cuda), "--json")
    doc = json.loads(as_json.stdout)
    assert doc["host"]["driver"] == driver_version
    assert doc["verdict"] == "ok"
    assert doc["reports"][0]["image_facts"]["cuda"] == "12.4"
