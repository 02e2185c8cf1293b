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
import time
from pathlib import Path
from typing import Any

import pytest
from integration.test_server import Server
from kernel_helpers import run_cell
from slurm_cluster import squeue_jobs, wait_job_state
from slurm_gpu import (
    MATMUL,
    OUT,
    SLURM_GPU_MARKS,
    compute_apps,
    job_of,
    kernel_view,
    run_cmd,
    slurm_gpu_uuids,
    started_kernel,
    wait_job,
    who_am_i,
)

pytestmark = SLURM_GPU_MARKS


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
    steps = run_cmd(["squeue", "-h", "-s", "-j", job["id"], "-o", "%i|%j"])
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
    cc = run_cmd(["nvidia-smi", "--query-gpu=compute_cap", "--format=csv,noheader"]).split()[0]
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
    async with started_kernel(name, jupyter_dirs["work"]) as (km, kc):
        seen = await kernel_view(kc)
        print(f"gpu={gpu} cleanenv={cleanenv}: {json.dumps(seen)}")
        given = slurm_gpu_uuids(km.provisioner.job_id)
        assert seen["uuids"] == given
        assert seen["torch_devices"] == len(given)
        # Slurm's choice reached the container, also past --cleanenv
        assert seen["cuda_visible_devices"] is not None


async def test_framework_cuda_matches_the_verdict_and_computes_on_the_gpu(
    gpu_cluster: dict[str, Any], gpu_spec: Any, jupyter_dirs: dict[str, Path]
) -> None:
    name = gpu_spec("torch-verdict")
    async with started_kernel(name, jupyter_dirs["work"]) as (km, kc):
        seen = await kernel_view(kc)
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
