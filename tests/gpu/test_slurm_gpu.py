"""The headline path on real hardware: Slurm allocates the real GPU, the kernel runs as a step
of that job inside an image with a real CUDA framework (PyTorch), through a real
jupyter_server, and everything is given back at shutdown.

Needs an NVIDIA driver, a Slurm cluster whose gres.conf names the real device files
(``scripts/gpu-run.sh run`` starts one with ``scripts/slurm-cluster.sh`` and
KP_SLURM_GPU_FILES) and the PyTorch image that script builds on the GPU machine
(KP_GPU_TORCH_IMAGE). Skipped where no driver is loaded; on a GPU machine where the script
set KP_GPU_REQUIRE_SLURM=1 a missing cluster or image fails instead.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from integration.test_server import Server, ws_execute
from jupyter_client import AsyncKernelManager
from kernel_helpers import run_cell
from slurm_cluster import squeue_jobs, wait_job_state

from kernelprovider.kernelspec import SLURM_PROVISIONER_NAME

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.slurm,
    pytest.mark.skipif(
        not os.path.exists("/proc/driver/nvidia/version"),
        reason="no NVIDIA driver on this host (no /proc/driver/nvidia/version)",
    ),
    pytest.mark.timeout(300),
]

REQUIRE = os.environ.get("KP_GPU_REQUIRE_SLURM") == "1"
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


def _fail_or_skip(why: str) -> None:
    if REQUIRE:
        pytest.fail(why)
    pytest.skip(why)


def _run(argv: list[str], timeout: float = 30) -> str:
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    return proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def gpu_cluster() -> dict[str, Any]:
    """The running Slurm cluster whose node offers the real GPUs (gres.conf File=/dev/nvidiaN)."""
    if not shutil.which("sbatch"):
        _fail_or_skip("no Slurm here (no sbatch): scripts/gpu-run.sh run starts one")
    gres = Path("/etc/slurm/gres.conf")
    files = re.findall(r"File=(/dev/nvidia\d+)", gres.read_text()) if gres.exists() else []
    if not files:
        _fail_or_skip("the Slurm cluster's gres.conf names no /dev/nvidiaN (fake GPUs)")
    rows = _run(["sinfo", "-h", "-p", "gpu", "-o", "%N %T"], timeout=15).split()
    if len(rows) < 2 or rows[1].rstrip("*~#$@+") not in {"idle", "mixed", "allocated"}:
        _fail_or_skip(f"the Slurm cluster's GPU node is not usable (sinfo: {' '.join(rows)!r})")
    node = rows[0]
    show = _run(["scontrol", "-o", "show", "node", node])
    assert f"Gres=gpu:{len(files)}" in show, show
    return {"node": node, "files": files, "gpus": len(files)}


@pytest.fixture(scope="module")
def torch_image() -> Path:
    path = os.environ.get("KP_GPU_TORCH_IMAGE", "")
    if not path or not Path(path).exists():
        _fail_or_skip(
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
    show = _run(["scontrol", "-d", "show", "job", job_id])
    m = re.search(r"GRES=gpu(?::[^(]*)?\(IDX:([\d,\-]+)\)", show)
    assert m, f"no GPU index in scontrol -d show job {job_id}:\n{show}"
    indexes: list[str] = []
    for part in m.group(1).split(","):
        lo, _, hi = part.partition("-")
        indexes += [str(i) for i in range(int(lo), int(hi or lo) + 1)]
    uuids = []
    for idx in indexes:
        out = _run(["nvidia-smi", "-i", idx, "--query-gpu=uuid", "--format=csv,noheader"])
        uuids.append(out.strip())
    print(f"Slurm job {job_id}: GRES index {','.join(indexes)} -> {', '.join(uuids)}")
    return uuids


def compute_apps() -> str:
    return _run(
        ["nvidia-smi", "--query-compute-apps=pid,process_name,used_memory", "--format=csv,noheader"]
    ).strip()


def job_of(kernel_id: str) -> dict[str, str]:
    rows = squeue_jobs(f"kp-{kernel_id}")
    assert rows, f"no Slurm job for kernel {kernel_id}"
    return rows[0]


async def who_am_i(server: Server, kernel_id: str) -> dict[str, Any]:
    status, out = await ws_execute(server, kernel_id, WHO_AM_I)
    assert status == "ok", out
    seen = json.loads(out.strip().splitlines()[-1])
    print(f"kernel {kernel_id}: {json.dumps(seen)}")
    return seen


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


async def test_gpu_kernel_through_jupyter_server_runs_on_the_gpu_slurm_gave_it(
    gpu_cluster: dict[str, Any], gpu_spec: Any, server: Server
) -> None:
    name = gpu_spec()
    kernel = await server.request("POST", "/api/kernels", {"name": name})
    kid = kernel["id"]
    seen = await who_am_i(server, kid)
    job = job_of(kid)
    assert job["state"] == "RUNNING"
    # a step of its own job, on the allocated node
    steps = _run(["squeue", "-h", "-s", "-j", job["id"], "-o", "%i|%j"])
    assert f"kp-{kid}-kernel" in steps, steps
    assert seen["host"] == job["node"] == gpu_cluster["node"]
    # exactly the GPU Slurm gave the job: driver API UUID == Slurm's GRES index -> UUID
    given = slurm_gpu_uuids(job["id"])
    assert seen["uuids"] == given
    assert seen["torch_devices"] == len(given) == 1
    assert "H200" in seen["torch_name"] or seen["torch_name"].startswith("NVIDIA")

    # the node probe read the real driver and GPU on the node, and the verdicts used them
    log = server.log.read_text()
    probe = re.search(rf"node {job['node']} has NVIDIA driver (\S+), GPUs: (.*)", log)
    assert probe, log[-3000:]
    driver = Path("/proc/driver/nvidia/version").read_text()
    assert probe.group(1) in driver
    cc = _run(["nvidia-smi", "--query-gpu=compute_cap", "--format=csv,noheader"]).split()[0]
    assert f"compute capability {cc}" in probe.group(2)
    assert re.search(rf"compatibility ok: .*{re.escape(probe.group(1))}", log), log[-3000:]

    # restart: a new step in the same job, on the same GPU
    await server.request("POST", f"/api/kernels/{kid}/restart")
    again = await who_am_i(server, kid)
    assert job_of(kid)["id"] == job["id"]
    assert again["uuids"] == given
    assert again["pid"] != seen["pid"]

    # shutdown: the job ends and nothing is left on the GPU
    await server.request("DELETE", f"/api/kernels/{kid}")
    assert wait_job_state(job["id"], {"GONE"}, timeout=60) is not None
    deadline = time.monotonic() + 30
    while compute_apps() and time.monotonic() < deadline:
        await asyncio.sleep(0.5)
    assert compute_apps() == ""
    # with pending kernels the server drops the kernel once its shutdown has returned
    deadline = time.monotonic() + 30
    while await server.request("GET", "/api/kernels") and time.monotonic() < deadline:
        await asyncio.sleep(0.5)
    assert await server.request("GET", "/api/kernels") == []


async def test_second_gpu_kernel_waits_for_resources_and_starts_when_the_first_ends(
    gpu_cluster: dict[str, Any], gpu_spec: Any, server: Server
) -> None:
    name = gpu_spec(gpus=str(gpu_cluster["gpus"]))  # every GPU of the node: B must wait
    a = await server.request("POST", "/api/kernels", {"name": name})
    seen_a = await who_am_i(server, a["id"])
    b = await server.request("POST", "/api/kernels", {"name": name})
    assert b["execution_state"] == "starting"
    pending = await wait_job(b["id"], "PENDING")
    deadline = time.monotonic() + 30
    while pending["reason"] != "Resources" and time.monotonic() < deadline:
        await asyncio.sleep(0.5)
        pending = job_of(b["id"])
    print(f"kernel B: Slurm job {pending['id']} {pending['state']} (reason: {pending['reason']})")
    assert pending["reason"] == "Resources"
    deadline = time.monotonic() + 30
    model = await server.request("GET", f"/api/kernels/{b['id']}")
    while "Resources" not in (model.get("reason") or "") and time.monotonic() < deadline:
        await asyncio.sleep(0.5)
        model = await server.request("GET", f"/api/kernels/{b['id']}")
    print(f"/api/kernels/{b['id']}: execution_state={model['execution_state']!r} "
          f"reason={model.get('reason')!r}")  # fmt: skip
    assert f"Slurm job {pending['id']} PENDING: Resources" in model["reason"]
    assert f"Slurm job {pending['id']} PENDING (reason: Resources" in server.log.read_text()

    # A ends: B starts on the GPU A had, without anyone asking
    await server.request("DELETE", f"/api/kernels/{a['id']}")
    seen_b = await who_am_i(server, b["id"])
    assert seen_b["uuids"] == seen_a["uuids"]
    assert job_of(b["id"])["state"] == "RUNNING"
    await server.request("DELETE", f"/api/kernels/{b['id']}")
    assert wait_job_state(pending["id"], {"GONE"}, timeout=60) is not None


@pytest.mark.parametrize("cleanenv", [False, True], ids=["env", "cleanenv"])
@pytest.mark.parametrize("gpu", ["nv", "nvccli"])
async def test_kernel_sees_only_its_allocated_gpu(
    gpu_cluster: dict[str, Any], gpu_spec: Any, jupyter_dirs: dict[str, Path], gpu: str,
    cleanenv: bool,
) -> None:  # fmt: skip
    if gpu == "nvccli" and not shutil.which("nvidia-container-cli"):
        pytest.skip("--nvccli needs nvidia-container-cli, which this machine does not have")
    name = gpu_spec(f"torch-{gpu}-{int(cleanenv)}", gpu=gpu, cleanenv=cleanenv)
    km = AsyncKernelManager(kernel_name=name)
    await km.start_kernel(cwd=str(jupyter_dirs["work"]))
    kc = km.client()
    kc.start_channels()
    try:
        await kc.wait_for_ready(timeout=120)
        reply, out = await run_cell(kc, WHO_AM_I, timeout=120)
        assert reply["status"] == "ok", out
        seen = json.loads(out.strip().splitlines()[-1])
        print(f"gpu={gpu} cleanenv={cleanenv}: {json.dumps(seen)}")
        given = slurm_gpu_uuids(km.provisioner.job_id)
        assert seen["uuids"] == given
        assert seen["torch_devices"] == len(given)
        # Slurm's choice reached the container, also past --cleanenv
        assert seen["cuda_visible_devices"] is not None
    finally:
        kc.stop_channels()
        await km.shutdown_kernel(now=True)


async def test_framework_cuda_matches_the_verdict_and_computes_on_the_gpu(
    gpu_cluster: dict[str, Any], gpu_spec: Any, jupyter_dirs: dict[str, Path]
) -> None:
    name = gpu_spec("torch-verdict")
    km = AsyncKernelManager(kernel_name=name)
    await km.start_kernel(cwd=str(jupyter_dirs["work"]))
    kc = km.client()
    kc.start_channels()
    try:
        await kc.wait_for_ready(timeout=120)
        reply, out = await run_cell(kc, WHO_AM_I, timeout=120)
        assert reply["status"] == "ok", out
        seen = json.loads(out.strip().splitlines()[-1])
        prov = km.provisioner
        # the CUDA the verdicts judged is the CUDA PyTorch was built with
        assert prov.image_facts is not None
        assert prov.image_facts.cuda == seen["torch_cuda"]
        driver = [v for v in prov.verdicts if v.check == "driver"]
        print("verdicts:", [(v.check, v.level, v.reason) for v in prov.verdicts])
        assert driver and driver[0].level == "ok"
        reply, out = await run_cell(kc, MATMUL, timeout=120)
        print(out)
        assert reply["status"] == "ok", out
        assert "max abs error" in out
    finally:
        kc.stop_channels()
        await km.shutdown_kernel(now=True)


async def test_notebook_through_nbclient_on_the_slurm_gpu_kernel(
    gpu_cluster: dict[str, Any], gpu_spec: Any, jupyter_dirs: dict[str, Path]
) -> None:
    import nbformat
    from nbclient import NotebookClient

    name = gpu_spec("torch-nbclient")
    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_code_cell(
            "import os, socket, torch\n"
            "print('host', socket.gethostname(), 'job', os.environ.get('SLURM_JOB_ID'))\n"
            "print('torch', torch.__version__, 'CUDA', torch.version.cuda)\n"
            "print('GPU', torch.cuda.get_device_name(0))"
        ),
        nbformat.v4.new_code_cell(MATMUL),
    ]
    client = NotebookClient(
        nb,
        kernel_name=name,
        timeout=240,
        startup_timeout=240,
        resources={"metadata": {"path": str(jupyter_dirs["work"])}},
    )
    await client.async_execute()
    texts = [
        "".join(o.get("text", "") for o in cell.outputs if o.output_type == "stream")
        for cell in nb.cells
    ]
    print("\n".join(texts))
    if OUT:
        nbformat.write(nb, os.path.join(OUT, "slurm-gpu-notebook.ipynb"))
    assert "GPU NVIDIA" in texts[0]
    assert "job " in texts[0] and "job None" not in texts[0]
    assert "max abs error" in texts[1]
    # nbclient shut the kernel down at the end: its job is gone too (this test's kernel was
    # the only one running)
    deadline = time.monotonic() + 60
    while squeue_jobs("kp-") and time.monotonic() < deadline:
        await asyncio.sleep(0.5)
    assert squeue_jobs("kp-") == []
