"""Shared by the Slurm GPU tests: what a kernel sees (as JSON), the GPUs Slurm gave a job,
small squeue/nvidia-smi helpers, and the fixtures (registered for tests/gpu by its conftest):
the cluster with real GPUs, the PyTorch image, its kernelspecs, a jupyter_server."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from integration.test_server import Server, ws_execute
from jupyter_client import AsyncKernelManager
from kernel_helpers import run_cell
from slurm_cluster import squeue_jobs

from kernelprovider.kernelspec import SLURM_PROVISIONER_NAME

__all__ = [
    "SLURM_GPU_MARKS",
    "MATMUL",
    "OUT",
    "REQUIRE",
    "WHO_AM_I",
    "compute_apps",
    "gpu_cluster",
    "gpu_spec",
    "server",
    "started_kernel",
    "torch_image",
    "fail_or_skip",
    "job_of",
    "kernel_view",
    "run_cmd",
    "slurm_gpu_uuids",
    "wait_job",
    "who_am_i",
]

REQUIRE = os.environ.get("KP_GPU_REQUIRE_SLURM") == "1"
#: The marks of every Slurm GPU test module: GPU and Slurm, skipped where no driver is loaded.
SLURM_GPU_MARKS = [
    pytest.mark.gpu,
    pytest.mark.slurm,
    pytest.mark.skipif(
        not os.path.exists("/proc/driver/nvidia/version"),
        reason="no NVIDIA driver on this host (no /proc/driver/nvidia/version)",
    ),
    pytest.mark.timeout(300),
]
OUT = os.environ.get("KP_GPU_OUT", "")

# What the kernel sees, printed as one JSON line: its host, the GPUs through the CUDA driver
# API (UUIDs as nvidia-smi writes them) and through PyTorch.
WHO_AM_I = r"""
import ctypes, json, os, socket
import torch
cuda = ctypes.CDLL("libcuda.so.1")
assert cuda.cuInit(0) == 0, "cuInit failed"
n = ctypes.c_int()
assert cuda.cuDeviceGetCount(ctypes.byref(n)) == 0
uuids = []
for i in range(n.value):
    dev = ctypes.c_int()
    assert cuda.cuDeviceGet(ctypes.byref(dev), i) == 0
    raw = ctypes.create_string_buffer(16)
    assert cuda.cuDeviceGetUuid(raw, dev) == 0
    h = raw.raw.hex()
    uuids.append("GPU-%s-%s-%s-%s-%s" % (h[:8], h[8:12], h[12:16], h[16:20], h[20:]))
print(json.dumps({
    "host": socket.gethostname(),
    "pid": os.getpid(),
    "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
    "uuids": uuids,
    "torch_devices": torch.cuda.device_count(),
    "torch_name": torch.cuda.get_device_name(0),
    "torch_cuda": torch.version.cuda,
    "torch": torch.__version__,
}))
"""

# A matrix product on the GPU against the same product on the CPU.
MATMUL = r"""
import torch
torch.manual_seed(0)
a = torch.randn(2048, 2048, dtype=torch.float64)
b = torch.randn(2048, 2048, dtype=torch.float64)
on_gpu = (a.cuda() @ b.cuda()).cpu()
on_cpu = a @ b
err = (on_gpu - on_cpu).abs().max().item()
print("device:", torch.cuda.get_device_name(0))
print("matmul 2048x2048 float64 on the GPU vs the CPU: max abs error %.3e" % err)
assert err < 1e-8, err
"""


def fail_or_skip(why: str) -> None:
    if REQUIRE:
        pytest.fail(why)
    pytest.skip(why)


def run_cmd(argv: list[str], timeout: float = 30) -> str:
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    return proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def gpu_cluster() -> dict[str, Any]:
    """The running Slurm cluster whose node offers the real GPUs (gres.conf File=/dev/nvidiaN)."""
    if not shutil.which("sbatch"):
        fail_or_skip("no Slurm here (no sbatch): scripts/gpu-run.sh run starts one")
    gres = Path("/etc/slurm/gres.conf")
    files = re.findall(r"File=(/dev/nvidia\d+)", gres.read_text()) if gres.exists() else []
    if not files:
        fail_or_skip("the Slurm cluster's gres.conf names no /dev/nvidiaN (fake GPUs)")
    rows = run_cmd(["sinfo", "-h", "-p", "gpu", "-o", "%N %T"], timeout=15).split()
    if len(rows) < 2 or rows[1].rstrip("*~#$@+") not in {"idle", "mixed", "allocated"}:
        fail_or_skip(f"the Slurm cluster's GPU node is not usable (sinfo: {' '.join(rows)!r})")
    node = rows[0]
    show = run_cmd(["scontrol", "-o", "show", "node", node])
    assert f"Gres=gpu:{len(files)}" in show, show
    return {"node": node, "files": files, "gpus": len(files)}


@pytest.fixture(scope="module")
def torch_image() -> Path:
    path = os.environ.get("KP_GPU_TORCH_IMAGE", "")
    if not path or not Path(path).exists():
        fail_or_skip(
            "no PyTorch image (KP_GPU_TORCH_IMAGE): scripts/gpu-run.sh run builds one from "
            "the GPU machine's own PyTorch"
        )
    return Path(path)


@pytest.fixture
def gpu_spec(install_kernel: Any, torch_image: Path, tmp_path: Path) -> Any:
    """Install a Slurm kernelspec for the PyTorch image that asks for one GPU."""

    def make(name: str = "torch-slurm-gpu", **config: Any) -> str:
        config.setdefault("state_dir", str(tmp_path / "state"))
        config.setdefault("partition", "gpu")
        config.setdefault("gpus", "1")
        config.setdefault("time_limit", "15:00")
        config.setdefault("compat_check", "enforce")
        config.setdefault("queue_timeout", 240.0)
        return install_kernel(
            name,
            torch_image,
            display_name="PyTorch / CUDA (GPU, Slurm)",
            interrupt_mode="message",
            provisioner=SLURM_PROVISIONER_NAME,
            **config,
        )

    return make


def slurm_gpu_uuids(job_id: str) -> list[str]:
    """The UUIDs of the GPUs Slurm gave job ``job_id``: the GRES indexes ``scontrol -d`` shows,
    mapped to UUIDs by nvidia-smi on the node."""
    show = run_cmd(["scontrol", "-d", "show", "job", job_id])
    m = re.search(r"GRES=gpu(?::[^(]*)?\(IDX:([\d,\-]+)\)", show)
    assert m, f"no GPU index in scontrol -d show job {job_id}:\n{show}"
    indexes: list[str] = []
    for part in m.group(1).split(","):
        lo, _, hi = part.partition("-")
        indexes += [str(i) for i in range(int(lo), int(hi or lo) + 1)]
    uuids = []
    for idx in indexes:
        out = run_cmd(["nvidia-smi", "-i", idx, "--query-gpu=uuid", "--format=csv,noheader"])
        uuids.append(out.strip())
    print(f"Slurm job {job_id}: GRES index {','.join(indexes)} -> {', '.join(uuids)}")
    return uuids


def compute_apps() -> str:
    return run_cmd(
        ["nvidia-smi", "--query-compute-apps=pid,process_name,used_memory", "--format=csv,noheader"]
    ).strip()


def job_of(kernel_id: str) -> dict[str, str]:
    rows = squeue_jobs(f"kp-{kernel_id}")
    assert rows, f"no Slurm job for kernel {kernel_id}"
    return rows[0]


async def who_am_i(server: Server, kernel_id: str) -> dict[str, Any]:
    """What kernel ``kernel_id`` sees, asked over ``server``'s websocket."""
    status, out = await ws_execute(server, kernel_id, WHO_AM_I)
    assert status == "ok", out
    seen = json.loads(out.strip().splitlines()[-1])
    print(f"kernel {kernel_id}: {json.dumps(seen)}")
    return seen


async def kernel_view(kc: Any) -> dict[str, Any]:
    """What the kernel behind client ``kc`` sees (WHO_AM_I's JSON line)."""
    reply, out = await run_cell(kc, WHO_AM_I, timeout=120)
    assert reply["status"] == "ok", out
    return json.loads(out.strip().splitlines()[-1])


@contextlib.asynccontextmanager
async def started_kernel(name: str, cwd: Path) -> AsyncIterator[tuple[Any, Any]]:
    """Start kernelspec ``name`` as jupyter_client does; (manager, ready client); shut down
    on exit, also when it never became ready (a Slurm kernel holds a job)."""
    km = AsyncKernelManager(kernel_name=name)
    await km.start_kernel(cwd=str(cwd))
    kc = km.client()
    kc.start_channels()
    try:
        await kc.wait_for_ready(timeout=120)
        yield km, kc
    finally:
        kc.stop_channels()
        await km.shutdown_kernel(now=True)


@pytest.fixture
def server(jupyter_dirs: dict[str, Path], tmp_path: Path) -> Any:
    srv = Server(
        jupyter_dirs["work"],
        tmp_path / "server.log",
        ["--MappingKernelManager.use_pending_kernels=True"],
    )
    yield srv
    srv.stop()
    print(f"----- server log ({srv.log}) -----")
    print("\n".join(srv.log.read_text().splitlines()[-60:]))


async def wait_job(kernel_id: str, state: str, timeout: float = 60) -> dict[str, str]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rows = squeue_jobs(f"kp-{kernel_id}")
        if rows and rows[0]["state"] == state:
            return rows[0]
        await asyncio.sleep(0.2)
    raise AssertionError(f"kernel {kernel_id}: no {state} job after {timeout} s: {rows}")
