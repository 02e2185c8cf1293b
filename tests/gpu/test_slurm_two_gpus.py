"""Two GPUs, two kernels: per-kernel GPU isolation on a node with two or more GPUs, through
SlurmProvisioner and a real jupyter_server (``scripts/gpu-run.sh run`` on the 2-GPU machine).

Skipped where no driver is loaded or the node has fewer than two GPUs (the one-GPU H200
machine): what they check cannot be shown with one GPU.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import time
from pathlib import Path
from typing import Any

import pytest
from integration.test_server import Server, ws_execute
from slurm_gpu import (
    SLURM_GPU_MARKS,
    job_of,
    kernel_view,
    run_cmd,
    slurm_gpu_uuids,
    started_kernel,
    wait_job,
    who_am_i,
)

pytestmark = SLURM_GPU_MARKS

# A matrix product on every visible GPU, each against the CPU.
MATMUL_EACH = r"""
import torch
torch.manual_seed(0)
a = torch.randn(1024, 1024, dtype=torch.float64)
b = torch.randn(1024, 1024, dtype=torch.float64)
ref = a @ b
for i in range(torch.cuda.device_count()):
    dev = torch.device("cuda", i)
    err = ((a.to(dev) @ b.to(dev)).cpu() - ref).abs().max().item()
    print("cuda:%d %s max abs error %.3e" % (i, torch.cuda.get_device_name(i), err))
    assert err < 1e-8, err
"""


@pytest.fixture
def two_gpus(gpu_cluster: dict[str, Any]) -> dict[str, Any]:
    if gpu_cluster["gpus"] < 2:
        pytest.skip(
            f"the node has {gpu_cluster['gpus']} GPU; these tests need two "
            "(device kind nvidia-h200-x2)"
        )
    return gpu_cluster


def all_uuids() -> list[str]:
    out = run_cmd(["nvidia-smi", "--query-gpu=uuid", "--format=csv,noheader"])
    return [line.strip() for line in out.splitlines() if line.strip()]


async def test_two_kernels_get_one_gpu_each(two_gpus: Any, gpu_spec: Any, server: Server) -> None:
    name = gpu_spec()
    a = await server.request("POST", "/api/kernels", {"name": name})
    b = await server.request("POST", "/api/kernels", {"name": name})
    seen_a, seen_b = await asyncio.gather(who_am_i(server, a["id"]), who_am_i(server, b["id"]))
    for kernel, seen in ((a, seen_a), (b, seen_b)):
        given = slurm_gpu_uuids(job_of(kernel["id"])["id"])
        assert seen["uuids"] == given and len(given) == 1
        assert seen["torch_devices"] == 1
    assert seen_a["uuids"] != seen_b["uuids"]
    for kernel in (a, b):
        await server.request("DELETE", f"/api/kernels/{kernel['id']}")


@pytest.mark.parametrize("cleanenv", [False, True], ids=["env", "cleanenv"])
@pytest.mark.parametrize("gpu", ["nv", "nvccli"])
async def test_each_kernel_sees_only_its_gpu(
    two_gpus: Any, gpu_spec: Any, jupyter_dirs: dict[str, Path], gpu: str, cleanenv: bool
) -> None:
    """The step's GPU is the only one the kernel's CUDA sees, also where no device cgroup
    holds it (the test cluster runs task/none, as a site without ConstrainDevices)."""
    if gpu == "nvccli" and not shutil.which("nvidia-container-cli"):
        pytest.skip("--nvccli needs nvidia-container-cli, which this machine does not have")
    name = gpu_spec(f"torch2-{gpu}-{int(cleanenv)}", gpu=gpu, cleanenv=cleanenv)
    cwd = jupyter_dirs["work"]
    async with started_kernel(name, cwd) as one, started_kernel(name, cwd) as two:
        seen = []
        for km, kc in (one, two):
            view = await kernel_view(kc)
            print(f"gpu={gpu} cleanenv={cleanenv}: {json.dumps(view)}")
            assert view["uuids"] == slurm_gpu_uuids(km.provisioner.job_id)
            assert view["torch_devices"] == 1
            seen.append(view["uuids"][0])
        assert seen[0] != seen[1]


async def test_local_kernel_with_a_gpu_selection_sees_only_that_gpu(
    two_gpus: Any,
    install_kernel: Any,
    torch_image: Path,
    jupyter_dirs: dict[str, Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    uuids = all_uuids()
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")
    for cleanenv in (False, True):
        name = install_kernel(f"torch-local-{int(cleanenv)}", torch_image, cleanenv=cleanenv)
        async with started_kernel(name, jupyter_dirs["work"]) as (_, kc):
            view = await kernel_view(kc)
            print(f"local cleanenv={cleanenv}: {json.dumps(view)}")
            assert view["uuids"] == [uuids[1]]


async def test_a_two_gpu_kernel_computes_on_both(
    two_gpus: Any, gpu_spec: Any, server: Server
) -> None:
    name = gpu_spec("torch-two", gpus="2")
    kernel = await server.request("POST", "/api/kernels", {"name": name})
    seen = await who_am_i(server, kernel["id"])
    assert sorted(seen["uuids"]) == sorted(slurm_gpu_uuids(job_of(kernel["id"])["id"]))
    assert seen["torch_devices"] == 2
    status, out = await ws_execute(server, kernel["id"], MATMUL_EACH)
    print(out)
    assert status == "ok", out
    assert "cuda:0" in out and "cuda:1" in out
    await server.request("DELETE", f"/api/kernels/{kernel['id']}")


async def test_a_third_kernel_waits_until_a_gpu_is_free(
    two_gpus: Any, gpu_spec: Any, server: Server
) -> None:
    name = gpu_spec()
    holders = [await server.request("POST", "/api/kernels", {"name": name}) for _ in range(2)]
    views = [await who_am_i(server, k["id"]) for k in holders]
    third = await server.request("POST", "/api/kernels", {"name": name})
    pending = await wait_job(third["id"], "PENDING")
    deadline = time.monotonic() + 30
    while pending["reason"] != "Resources" and time.monotonic() < deadline:
        await asyncio.sleep(0.5)
        pending = job_of(third["id"])
    print(f"third kernel: Slurm job {pending['id']} PENDING (reason: {pending['reason']})")
    assert pending["reason"] == "Resources"
    await server.request("DELETE", f"/api/kernels/{holders[0]['id']}")
    seen = await who_am_i(server, third["id"])
    assert seen["uuids"] == views[0]["uuids"]
    for k in (holders[1], third):
        await server.request("DELETE", f"/api/kernels/{k['id']}")
