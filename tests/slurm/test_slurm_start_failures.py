"""Starts that cannot succeed, on the real cluster: a job that pends past queue_timeout, one
cancelled or held while pending, submissions sbatch rejects, and a kernel that exits in its
step. Each is reported at once with Slurm's (or the kernel's) own words, and leaves no job
and no lease behind."""

from __future__ import annotations

import asyncio
import logging
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from jupyter_client import AsyncKernelManager
from kp_slurm import job_prefix, new_kernel_id
from slurm_cluster import squeue_jobs

from kernelprovider.errors import (
    KernelStartError,
    SlurmJobFailed,
    SlurmQueueTimeout,
    SlurmSubmitError,
)

pytestmark = [pytest.mark.slurm, pytest.mark.integration, pytest.mark.timeout(90)]


def active_jobs(kernel_id: str) -> list[dict[str, str]]:
    return squeue_jobs(f"kp-{kernel_id}")


def leftovers(state_dir: Path) -> list[str]:
    """Files a failed start must not leave: lease and connection file (logs may stay)."""
    if not state_dir.exists():
        return []
    return sorted(p.name for p in state_dir.iterdir() if p.suffix != ".log")


async def start(
    name: str, jupyter_dirs: dict[str, Path], kernel_id: str | None = None
) -> AsyncKernelManager:
    km = AsyncKernelManager(kernel_name=name)
    await km.start_kernel(kernel_id=kernel_id or new_kernel_id(), cwd=str(jupyter_dirs["work"]))
    return km


async def wait_pending(kernel_id: str, timeout: float = 10) -> dict[str, str]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rows = await asyncio.to_thread(active_jobs, kernel_id)
        if rows and rows[0]["state"] == "PENDING":
            return rows[0]
        await asyncio.sleep(0.1)
    raise AssertionError(f"no pending job for kernel {kernel_id}")


async def test_queue_timeout_cancels_the_pending_job(
    slurm_spec: Any,
    jupyter_dirs: dict[str, Path],
    state_dir: Path,
    slurm_cluster: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    name = slurm_spec(
        partition=slurm_cluster.held_partition, queue_timeout=3.0, pending_log_interval=1.0
    )
    kernel_id = new_kernel_id()
    started = time.monotonic()
    with pytest.raises(SlurmQueueTimeout) as err:
        await start(name, jupyter_dirs, kernel_id)
    took = time.monotonic() - started
    assert 3.0 <= took < 15
    msg = str(err.value)
    job_id = msg.split()[2]
    assert msg == (
        f"Slurm job {job_id} for kernel {name} waited 3 s in the queue (PartitionDown) and was "
        "cancelled. Try another partition or fewer GPUs, or raise "
        "SlurmProvisioner.queue_timeout (0 waits forever)."
    )
    assert isinstance(err.value, TimeoutError)
    assert active_jobs(kernel_id) == []  # cancelled, confirmed before the error came
    assert leftovers(state_dir) == []
    # while it pended: INFO lines with job id, state, reason and expected start
    pending = [
        r.getMessage()
        for r in caplog.records
        if r.levelno == logging.INFO and f"Slurm job {job_id} PENDING" in r.getMessage()
    ]
    assert any("reason: PartitionDown" in m and "expected start: " in m for m in pending)
    assert len(pending) >= 2  # repeated every pending_log_interval


async def test_job_cancelled_while_pending_is_reported_at_once(
    slurm_spec: Any, jupyter_dirs: dict[str, Path], state_dir: Path, slurm_cluster: Any
) -> None:
    # queue_timeout 0 = wait forever: only the cancellation can end this start
    name = slurm_spec(partition=slurm_cluster.held_partition, queue_timeout=0.0)
    kernel_id = new_kernel_id()
    task = asyncio.ensure_future(start(name, jupyter_dirs, kernel_id))
    row = await wait_pending(kernel_id)
    assert row["reason"] == "PartitionDown"
    cancelled_at = time.monotonic()
    subprocess.run(["scancel", row["id"]], check=True, timeout=30)
    with pytest.raises(SlurmJobFailed) as err:
        await asyncio.wait_for(task, timeout=30)
    assert time.monotonic() - cancelled_at < 5
    msg = str(err.value)
    assert f"Slurm job {row['id']} for kernel {name} ended as CANCELLED" in msg
    assert "before the kernel started" in msg
    assert leftovers(state_dir) == []


async def test_job_held_by_an_admin_is_hopeless_and_cancelled(
    slurm_spec: Any, jupyter_dirs: dict[str, Path], slurm_cluster: Any
) -> None:
    name = slurm_spec(partition=slurm_cluster.held_partition, queue_timeout=0.0)
    kernel_id = new_kernel_id()
    task = asyncio.ensure_future(start(name, jupyter_dirs, kernel_id))
    row = await wait_pending(kernel_id)
    subprocess.run(["scontrol", "hold", row["id"]], check=True, timeout=30)
    with pytest.raises(
        SlurmJobFailed, match=f"Slurm job {row['id']} .* cannot start: JobHeldAdmin"
    ):
        await asyncio.wait_for(task, timeout=30)
    assert active_jobs(kernel_id) == []


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        (
            {"partition": "gpuu"},
            'Slurm rejected the job: "Batch job submission failed: Invalid partition name '
            'specified" (partition=gpuu). Partitions here: gpu, gpu-shared, held',
        ),
        (
            {"gpus": "8"},
            'Slurm rejected the job: "Batch job submission failed: Requested node '
            "configuration is not available\" (gpus=8, partition=gpu). Check the kernel's "
            "Slurm settings",
        ),
        (
            {"partition": "gpu-shared", "time_limit": "2-00:00:00"},
            'Slurm rejected the job: "Batch job submission failed: Requested time limit is '
            'invalid (missing or exceeds some limit)" (time_limit=2-00:00:00, '
            "partition=gpu-shared).",
        ),
    ],
    ids=["partition-gpuu", "gpus-8", "time-over-partition-limit"],
)
async def test_sbatch_rejection_carries_slurms_message(
    slurm_spec: Any,
    jupyter_dirs: dict[str, Path],
    state_dir: Path,
    config: dict[str, str],
    expected: str,
) -> None:
    name = slurm_spec(**config)
    started = time.monotonic()
    with pytest.raises(SlurmSubmitError) as err:
        await start(name, jupyter_dirs)
    assert time.monotonic() - started < 5
    assert str(err.value).startswith(expected), str(err.value)
    assert squeue_jobs(job_prefix()) == []
    assert leftovers(state_dir) == []


async def test_kernel_that_exits_in_its_step_fails_fast_with_its_log(
    slurm_spec: Any, images: Any, jupyter_dirs: dict[str, Path], state_dir: Path
) -> None:
    name = slurm_spec("kp-slurm-noipykernel", image=images.noipykernel)
    kernel_id = new_kernel_id()
    started = time.monotonic()
    with pytest.raises(KernelStartError) as err:
        await start(name, jupyter_dirs, kernel_id)
    assert time.monotonic() - started < 30
    msg = str(err.value)
    assert msg.startswith("Slurm job ")
    assert "The kernel exited before it was ready (exit 1)" in msg
    assert "No module named ipykernel" in msg  # the last lines of its log
    assert str(state_dir / f"kernel-{kernel_id}.log") in msg
    # the allocation submitted for this start is given back
    assert active_jobs(kernel_id) == []
    assert leftovers(state_dir) == []
