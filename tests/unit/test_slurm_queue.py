"""The shared squeue and the lease keeper, with an injected command runner (no Slurm)."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

from kernelprovider.slurm import LeaseKeeper, SlurmQueue


class FakeSqueue:
    """Answers squeue like a controller would; records every call."""

    def __init__(self, out: str = "", rc: int = 0, err: str = "") -> None:
        self.out, self.rc, self.err = out, rc, err
        self.calls: list[list[str]] = []

    async def __call__(self, argv: list[str], **kwargs: Any) -> tuple[int, str, str]:
        self.calls.append(list(argv))
        await asyncio.sleep(0)  # a real command yields to the loop
        return self.rc, self.out, self.err


ROW = "47|RUNNING|None|vm|2026-12-02T03:00:00|kp-k1|alice\n"


async def test_concurrent_callers_share_one_squeue() -> None:
    runner = FakeSqueue(ROW)
    queue = SlurmQueue(60, runner=runner)
    queue.register("47")
    jobs = await asyncio.gather(*(queue.job("47") for _ in range(5)))
    assert len(runner.calls) == 1 and queue.calls == 1
    assert runner.calls[0][:2] == ["squeue", "-h"] and runner.calls[0][-2:] == ["-j", "47"]
    assert all(j and j.state == "RUNNING" and j.nodes == "vm" for j in jobs)


async def test_a_job_slurm_forgot_is_gone_and_a_controller_error_is_unknown() -> None:
    queue = SlurmQueue(60, runner=FakeSqueue(rc=1, err="slurm_load_jobs error: Invalid job id"))
    assert await queue.job("47", fresh=True) is False
    down = SlurmQueue(60, runner=FakeSqueue(rc=1, err="Unable to contact slurm controller"))
    assert await down.job("47", fresh=True) is None  # unknown: assume alive


async def test_a_newly_registered_job_forces_a_new_squeue() -> None:
    runner = FakeSqueue(ROW)
    queue = SlurmQueue(60, runner=runner)
    queue.register("47")
    await queue.jobs()
    queue.register("48")
    await queue.job("48")
    assert len(runner.calls) == 2 and runner.calls[1][-1] == "47,48"


async def test_steps_of_a_reattached_kernel() -> None:
    runner = FakeSqueue("47.0|kp-k1-kernel\n47.batch|batch\n")
    queue = SlurmQueue(60, runner=runner)
    steps = await queue.steps(need="47")
    assert steps == {"47": {"47.0": "kp-k1-kernel", "47.batch": "batch"}}
    assert "-s" in runner.calls[0]


async def test_lease_keeper_refreshes_until_discarded(tmp_path: Path) -> None:
    lease = tmp_path / "kernel-1.lease"
    keeper = LeaseKeeper(0.05)
    await keeper.add(str(lease))
    assert lease.exists() and oct(lease.stat().st_mode & 0o777) == "0o600"
    old = lease.stat().st_mtime_ns - 10**9
    os.utime(lease, ns=(old, old))
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10
    while lease.stat().st_mtime_ns == old and loop.time() < deadline:
        await asyncio.sleep(0.01)
    assert lease.stat().st_mtime_ns > old
    keeper.discard(str(lease))
    assert keeper._task is None and keeper.paths == set()


async def test_lease_keeper_drops_a_lease_that_vanished(tmp_path: Path) -> None:
    lease = tmp_path / "kernel-2.lease"
    keeper = LeaseKeeper(0.05)
    await keeper.add(str(lease))
    lease.unlink()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10
    while keeper.paths and loop.time() < deadline:
        await asyncio.sleep(0.01)
    assert keeper.paths == set()
