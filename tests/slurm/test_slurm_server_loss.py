"""When the Jupyter server goes away: the dead-man switch ends the allocation by itself, a
restarted server re-attaches from the provisioner's record (poll, interrupt, shutdown), a stale
record never touches a job that is not its own, and polling stays one batched squeue per
interval for every kernel, with a controller error read as "alive"."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import psutil
import pytest
from kp_slurm import (
    SESSION_PREFIX,
    interrupt_running_cell,
    reattach,
    run_cell,
    wait_until,
)
from slurm_cluster import ROOT, dead_controller_conf, squeue_jobs, wait_job_state

from kernelprovider.slurm import SlurmQueue

pytestmark = [pytest.mark.slurm, pytest.mark.integration, pytest.mark.timeout(120)]


def job_row(job_id: str) -> dict[str, str] | None:
    rows = [j for j in squeue_jobs() if j["id"] == str(job_id)]
    return rows[0] if rows else None


def kill_server(proc: subprocess.Popen[str]) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)


def stored(record: dict[str, Any]) -> dict[str, Any]:
    """The record as a server keeps it on disk (JSON)."""
    return json.loads(json.dumps(record))


@pytest.fixture
def unreachable_controller(tmp_path: Path) -> str:
    """A slurm.conf that points the clients at a port no controller listens on.

    Only this process's Slurm commands see it (through SLURM_CONF); the cluster itself, and
    everyone else using it, is untouched.
    """
    return dead_controller_conf(tmp_path)


@pytest.mark.timeout(150)
async def test_allocation_ends_by_itself_when_the_server_is_killed(
    slurm_spec: Any, child_server: Any, state_dir: Path
) -> None:
    lease_seconds = 15
    name = slurm_spec("kp-slurm-deadman", lease_seconds=lease_seconds)
    proc, record = child_server(name)
    job = record["job_id"]
    assert job_row(job)["state"] == "RUNNING"
    srun = psutil.Process(record["pid"])
    lease = state_dir / f"kernel-{record['kernel_id']}.lease"
    assert lease.exists()

    kill_server(proc)  # no cleanup, no atexit: the lease simply stops being refreshed
    # lease + the holder script's 5 s check + Slurm's KillWait (5 s) + slack
    bound = lease_seconds + 5 + 5 + 10
    gone = await asyncio.to_thread(wait_job_state, job, ["GONE"], bound)
    assert gone is not None, f"job {job} still active {bound} s after its server died"
    assert time.time() - lease.stat().st_mtime >= lease_seconds
    log = (state_dir / f"kernel-{record['kernel_id']}.log").read_text()
    assert f"lease older than {lease_seconds} s" in log  # the holder script said why
    # the dead server's orphaned srun ended with its step
    assert wait_until(lambda: not srun.is_running() or srun.status() == "zombie", 15)


async def test_restarted_server_reattaches_from_the_record(
    slurm_spec: Any, child_server: Any, state_dir: Path, slurm_cluster: Any
) -> None:
    name = slurm_spec("kp-slurm-reattach", lease_seconds=24)
    proc, record = child_server(name)
    kill_server(proc)
    record = stored(record)
    job = record["job_id"]
    # the kernel's step (a GPU probe step may come before it)
    assert re.fullmatch(rf"{job}\.\d+", record["step_id"])
    assert record["node"] in slurm_cluster.nodes
    assert record["connection_file"] == str(state_dir / f"kernel-{record['kernel_id']}.json")
    assert "key" not in record["connection_info"]  # the key stays in the 0600 file

    km = await reattach(name, record)
    prov = km.provisioner
    assert prov.has_process and prov.job_id == job and prov.process is None
    assert await km.is_alive()
    kc = km.client()
    kc.start_channels()
    try:
        await kc.wait_for_ready(timeout=30)
        reply, out = await run_cell(kc, "import os; print(os.environ['SLURM_JOB_ID'])")
        assert out.strip() == job
        # interrupts from the new server: message mode, then a signal through scancel J.S
        reply = await interrupt_running_cell(km.interrupt_kernel, kc, "while True: pass")
        assert reply["ename"] == "KeyboardInterrupt"
        reply = await interrupt_running_cell(
            lambda: prov.send_signal(signal.SIGINT), kc, "while True: pass"
        )
        assert reply["ename"] == "KeyboardInterrupt"
        # the new server keeps the lease fresh (every lease_seconds / 3 = 8 s)
        lease = Path(prov.files["lease"])
        before = lease.stat().st_mtime
        assert await asyncio.to_thread(wait_until, lambda: lease.stat().st_mtime > before, 25)
    finally:
        kc.stop_channels()
    started = time.monotonic()
    await km.shutdown_kernel()
    assert time.monotonic() - started < 10  # the step's end is noticed, not waited out
    assert job_row(job) is None
    assert list(state_dir.iterdir()) == []


async def test_a_reattached_kernel_restarts_in_its_job(
    slurm_spec: Any, child_server: Any, state_dir: Path
) -> None:
    name = slurm_spec("kp-slurm-reattach-restart", lease_seconds=24)
    proc, record = child_server(name)
    kill_server(proc)
    record = stored(record)
    job = record["job_id"]
    km = await reattach(name, record)
    prov = km.provisioner
    kc = km.client()
    kc.start_channels()
    try:
        # a new step of the same job; the same ports and key, so this client stays
        await km.restart_kernel()
        assert prov.job_id == job and prov.process is not None
        await kc.wait_for_ready(timeout=60)
        reply, out = await run_cell(kc, "import os; print(os.environ['SLURM_JOB_ID'])")
        assert out.strip() == job
    finally:
        kc.stop_channels()
        await km.shutdown_kernel(now=True)
    assert job_row(job) is None


async def test_stale_record_never_touches_another_job(
    slurm_kernel: Any,
    unreachable_controller: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    km, kc = await slurm_kernel()
    record = stored(await km.provisioner.get_provisioner_info())
    kc.stop_channels()
    await km.shutdown_kernel()
    # another job of this user now holds an id the record could name
    foreign = subprocess.run(
        [
            "sbatch",
            "--parsable",
            f"--job-name=kp-{SESSION_PREFIX}-foreign",
            "--time=5:00",
            "--output=/dev/null",
            "--wrap",
            "sleep 300",
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout.strip()
    assert wait_job_state(foreign, ["RUNNING"], 10)
    # a stale record: the job id and step now belong to that other job
    stale = dict(record, job_id=foreign, step_id=f"{foreign}.batch")

    # Slurm lists the id under another name: not attached, nothing to poll or cancel
    km2 = await reattach(km.kernel_name, stale)
    assert not km2.provisioner.has_process and km2.provisioner.job_id is None
    assert not await km2.is_alive()
    await km2.provisioner.cleanup()
    # the record's own job has ended (Slurm still lists it as CANCELLED): not attached either
    km3 = await reattach(km.kernel_name, record)
    assert not km3.provisioner.has_process

    # Slurm cannot be asked while the record is loaded: it is trusted (a kernel is never
    # abandoned over a controller hiccup), but its scancel is filtered by the kernel's job
    # name, so the foreign job survives the shutdown
    monkeypatch.setenv("SLURM_CONF", unreachable_controller)
    km4 = await reattach(km.kernel_name, stale)
    assert km4.provisioner.has_process and km4.provisioner.job_id == foreign
    monkeypatch.undo()  # back to the cluster's SLURM_CONF, set or not
    await km4.provisioner.kill()
    await km4.provisioner.cleanup()
    assert job_row(foreign)["state"] == "RUNNING"
    subprocess.run(["scancel", foreign], check=True, timeout=30)


async def test_polling_is_one_batched_squeue_per_interval(
    slurm_kernel: Any,
    slurm_spec: Any,
    unreachable_controller: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    interval = 2.0
    kernels = await asyncio.gather(
        *(slurm_kernel(f"kp-slurm-poll{i}", poll_interval=interval) for i in range(3))
    )
    queue = SlurmQueue.instance()
    assert queue.interval == interval
    # launched kernels: the local srun answers poll(); no squeue at all
    calls = queue.calls
    for _ in range(20):
        assert all(await asyncio.gather(*(km.is_alive() for km, _ in kernels)))
    assert queue.calls == calls

    # re-attached kernels (a restarted server): one squeue per interval serves all three
    records = [stored(await km.provisioner.get_provisioner_info()) for km, _ in kernels]
    names = [km.kernel_name for km, _ in kernels]
    attached = [await reattach(n, r) for n, r in zip(names, records, strict=True)]
    assert all(km.provisioner.process is None for km in attached)
    calls = queue.calls
    started = time.monotonic()
    while time.monotonic() - started < 3 * interval:
        assert all(await asyncio.gather(*(km.is_alive() for km in attached)))
        await asyncio.sleep(0.1)
    # about 60 polls each: 3-4 squeue calls in all, not 180
    assert 1 <= queue.calls - calls <= 4

    # the controller does not answer: unknown counts as alive
    monkeypatch.setenv("SLURM_CONF", unreachable_controller)
    await asyncio.sleep(interval)
    calls = queue.calls
    assert all(await asyncio.gather(*(km.is_alive() for km in attached)))
    assert queue.calls == calls + 1
    monkeypatch.undo()  # back to the cluster's SLURM_CONF, set or not

    # the controller restarts under running kernels: still alive, still working
    proc = await asyncio.create_subprocess_exec(
        str(ROOT / "scripts" / "slurm-cluster.sh"),
        "restart-ctld",
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    while proc.returncode is None:
        assert all(await asyncio.gather(*(km.is_alive() for km in attached)))
        await asyncio.sleep(0.1)
        if proc.returncode is None:
            try:
                await asyncio.wait_for(proc.wait(), 0.05)
            except asyncio.TimeoutError:
                pass
    await asyncio.sleep(interval)
    assert all(await asyncio.gather(*(km.is_alive() for km in attached)))
    reply, out = await run_cell(kernels[0][1], "print('still here')")
    assert out.strip() == "still here"

    # a step that really ends is seen as dead through the same batched squeue
    victim = attached[1].provisioner
    subprocess.run(["scancel", victim.step_id], check=True, timeout=30)
    assert not await asyncio.wait_for(_until_dead(attached[1]), timeout=3 * interval + 5)
    assert all([await attached[0].is_alive(), await attached[2].is_alive()])


async def _until_dead(km: Any) -> bool:
    while await km.is_alive():
        await asyncio.sleep(0.2)
    return False


def test_no_leftover_processes_of_this_session() -> None:
    """After the tests above: no srun of this session's kernels is still running."""
    mine = [
        p
        for p in psutil.process_iter(["cmdline"])
        if any(f"kp-{SESSION_PREFIX}" in a for a in (p.info["cmdline"] or []))
        and p.pid != os.getpid()
    ]
    assert wait_until(lambda: all(not p.is_running() for p in mine), 15), mine
