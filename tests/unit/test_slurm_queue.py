"""The shared squeue and the lease keeper, with an injected command runner (no Slurm)."""

from __future__ import annotations

import asyncio
import os
import threading
from pathlib import Path
from typing import Any

import pytest

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


ROW = "47|RUNNING|None|vm|2026-12-02T03:00:00|10:00|9:58|kp-k1|alice\n"


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


class HungLease(LeaseKeeper):
    """A keeper whose refresh of one lease blocks like a hung mount until released."""

    def __init__(self, interval: float, hung: str) -> None:
        super().__init__(interval)
        self.hung, self.release, self.threads = hung, threading.Event(), 0

    def _utime(self, path: str) -> None:
        if path == self.hung:
            self.threads += 1
            self.release.wait(30)
        super()._utime(path)


async def test_a_hung_lease_gets_one_thread_and_does_not_hold_up_the_others(
    tmp_path: Path,
) -> None:
    hung, fine = str(tmp_path / "hung.lease"), tmp_path / "fine.lease"
    keeper = HungLease(0.05, hung)
    await keeper.add(hung)
    await keeper.add(str(fine))
    loop = asyncio.get_running_loop()
    try:
        for _ in range(3):  # three refreshes of the healthy lease while the other one hangs
            old = fine.stat().st_mtime_ns - 10**9
            os.utime(fine, ns=(old, old))
            deadline = loop.time() + 10
            while fine.stat().st_mtime_ns == old and loop.time() < deadline:
                await asyncio.sleep(0.01)
            assert fine.stat().st_mtime_ns > old
        assert keeper.threads == 1 and hung in keeper.paths
    finally:
        keeper.release.set()
        keeper.discard(hung)
        keeper.discard(str(fine))


# --- the allocation wait (SlurmProvisioner._wait_running), no KernelManager ------------------


class Script:
    """squeue answers in order (the last one repeats)."""

    def __init__(self, *answers: tuple[int, str, str]) -> None:
        self.answers = list(answers)
        self.calls = 0

    async def __call__(self, argv: list[str], **kwargs: Any) -> tuple[int, str, str]:
        self.calls += 1
        await asyncio.sleep(0)
        return self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]


def row(state: str, reason: str = "None") -> tuple[int, str, str]:
    return 0, f"47|{state}|{reason}|vm|N/A|10:00|10:00|kp-k1|alice\n", ""


async def waiting(tmp_path: Path, script: Script) -> Any:
    from kernelprovider.slurm import SlurmProvisioner

    SlurmQueue._instances[asyncio.get_running_loop()] = SlurmQueue(0.0, runner=script)
    prov = SlurmProvisioner(kernel_id="k1", kernel_spec=None, state_dir=str(tmp_path))
    prov.job_id = "47"
    prov.queue.register("47")
    return prov


async def test_allocation_wait_returns_once_the_job_runs(tmp_path: Path) -> None:
    script = Script(row("PENDING", "Priority"), row("PENDING", "Resources"), row("RUNNING"))
    prov = await waiting(tmp_path, script)
    await prov._wait_running()
    assert script.calls == 3


async def test_allocation_wait_rides_out_a_silent_controller(tmp_path: Path) -> None:
    down = (1, "", "slurm_load_jobs error: Unable to contact slurm controller")
    script = Script(down, down, row("RUNNING"))
    prov = await waiting(tmp_path, script)
    await prov._wait_running()
    assert script.calls == 3


@pytest.mark.parametrize(
    ("answer", "words"),
    [
        (row("PENDING", "BadConstraints"), ["47", "BadConstraints", "cancelled"]),
        (row("FAILED", "NonZeroExitCode"), ["47", "FAILED", "sacct -j 47"]),
        ((1, "", "slurm_load_jobs error: Invalid job id specified"), ["47", "sacct -j 47"]),
    ],
    ids=["hopeless-reason", "failed", "vanished"],
)
async def test_allocation_wait_reports_a_job_that_cannot_start(
    tmp_path: Path, answer: tuple[int, str, str], words: list[str]
) -> None:
    from kernelprovider.errors import SlurmJobFailed

    prov = await waiting(tmp_path, Script(answer))
    with pytest.raises(SlurmJobFailed) as info:
        await prov._wait_running()
    assert all(w in str(info.value) for w in words)
