"""Faults: the controller restarts or is down, the container process is killed, the state
directory is full or read-only. Each ends in a clear error or a recovery, never a leftover."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from jupyter_client import AsyncKernelManager
from kernel_helpers import start_kernel, still_running
from needs import need_root
from slurm_cluster import dead_controller_conf

from kernelprovider.errors import SlurmSubmitError, StateDirError
from kernelprovider.kernelspec import SLURM_PROVISIONER_NAME
from kernelprovider.slurm import SlurmQueue

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

ROOT = Path(__file__).resolve().parents[2]


async def cell(kc: Any, code: str) -> str:
    out: list[str] = []

    def hook(msg: dict) -> None:
        if msg["msg_type"] == "stream":
            out.append(msg["content"]["text"])

    reply = await kc.execute_interactive(code, timeout=60, output_hook=hook)
    assert reply["content"]["status"] == "ok", reply["content"]
    return "".join(out).strip()


def squeue_names() -> set[str]:
    out = subprocess.run(
        ["squeue", "-h", "-o", "%j"], capture_output=True, text=True, check=True, timeout=30
    ).stdout
    return set(out.split())


@pytest.fixture
def slurm_kernel(images, install_kernel, slurm_cluster, tmp_path) -> Any:
    def make(name: str, **config: Any) -> str:
        config.setdefault("state_dir", str(tmp_path / "state"))
        return install_kernel(
            name,
            images.test,
            provisioner=SLURM_PROVISIONER_NAME,
            interrupt_mode="message",
            partition=slurm_cluster.default_partition,
            gpus="0",
            gpu="none",
            time_limit="20:00",
            poll_interval=1.0,
            **config,
        )

    return make


@pytest.mark.slurm
async def test_slurmctld_restart_while_kernels_run(slurm_kernel, jupyter_dirs) -> None:
    name = slurm_kernel("kp-fault-ctld")
    kernels = [await start_kernel(name, jupyter_dirs["work"]) for _ in range(2)]
    try:
        jobs = [km.provisioner.job_id for km, _ in kernels]
        subprocess.run(
            ["bash", str(ROOT / "scripts" / "slurm-cluster.sh"), "restart-ctld"],
            check=True,
            capture_output=True,
            timeout=120,
        )
        # the kernels never noticed: they answer, and count as alive
        for km, kc in kernels:
            assert await km.is_alive()
            assert await cell(kc, "print(6 * 7)") == "42"
        # polling recovers: the shared squeue sees both jobs running again
        queue = SlurmQueue.instance()
        for job in jobs:
            queue.register(job)
        seen = await queue.jobs(fresh=True)
        assert seen is not None and all(seen[j].state == "RUNNING" for j in jobs)
        for job in jobs:
            queue.unregister(job)
    finally:
        for km, kc in kernels:
            kc.stop_channels()
            await km.shutdown_kernel()
    names = squeue_names()
    assert not [km for km, _ in kernels if f"kp-{km.kernel_id}" in names]


@pytest.mark.slurm
async def test_slurmctld_down_at_start(slurm_kernel, jupyter_dirs, tmp_path, monkeypatch) -> None:
    conf = dead_controller_conf(tmp_path)
    name = slurm_kernel("kp-fault-down")
    monkeypatch.setenv("SLURM_CONF", conf)  # only this process sees a dead controller
    km = AsyncKernelManager(kernel_name=name)
    with pytest.raises(SlurmSubmitError) as e:
        await km.start_kernel(cwd=str(jupyter_dirs["work"]))
    message = str(e.value)
    assert message.startswith("Slurm rejected the job:")
    assert "Unable to contact slurm controller" in message
    assert "The Slurm controller is not answering" in message
    # nothing half-made: no lease, no connection file, no log but Slurm's words, no job
    state = tmp_path / "state"
    assert [p.name for p in state.iterdir() if not p.name.endswith(".log")] == []
    monkeypatch.delenv("SLURM_CONF")
    assert f"kp-{km.kernel_id}" not in squeue_names()


async def test_killed_container_is_detected_and_restartable(images, install_kernel, jupyter_dirs):
    name = install_kernel("kp-fault-kill", images.test, gpu="none")
    km, kc = await start_kernel(name, jupyter_dirs["work"])
    try:
        runtime = psutil.Process(km.provisioner.pid)
        inside = runtime.children(recursive=True)
        assert "Apptainer runtime parent" in " ".join(runtime.cmdline())
        os.kill(runtime.pid, signal.SIGKILL)
        for _ in range(100):
            if not await km.is_alive():
                break
            await asyncio.sleep(0.1)
        assert not await km.is_alive()
        # the kernel under the runtime went with it
        assert await still_running(inside) == []
        await km.restart_kernel(now=True)
        await kc.wait_for_ready(timeout=60)
        assert await cell(kc, "print('back')") == "back"
    finally:
        kc.stop_channels()
        await km.shutdown_kernel(now=True)


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A 256 KiB tmpfs of our own (root only), unmounted afterwards."""
    need_root("mounting a tmpfs")
    mnt = tmp_path / f"small-{uuid.uuid4().hex[:6]}"
    mnt.mkdir()
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=256k,mode=0755", "tmpfs", str(mnt)], check=True
    )
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def fill(mnt: Path) -> None:
    with open(mnt / "filler", "wb") as f:
        try:
            while True:
                f.write(b"\0" * 65536)
                f.flush()
        except OSError:
            pass


@pytest.mark.slurm
async def test_full_state_dir_is_a_clear_error(slurm_kernel, jupyter_dirs, small_fs) -> None:
    state = small_fs / "state"
    state.mkdir(mode=0o700)
    fill(small_fs)
    name = slurm_kernel("kp-fault-full", state_dir=str(state))
    km = AsyncKernelManager(kernel_name=name)
    with pytest.raises(StateDirError) as e:
        await km.start_kernel(cwd=str(jupyter_dirs["work"]))
    assert f"Cannot write to the state directory {state}: No space left on device." in str(e.value)
    assert f"kp-{km.kernel_id}" not in squeue_names()


@pytest.mark.slurm
async def test_read_only_state_dir_is_a_clear_error(slurm_kernel, jupyter_dirs, small_fs) -> None:
    state = small_fs / "state"
    state.mkdir(mode=0o700)
    subprocess.run(["mount", "-o", "remount,ro", str(small_fs)], check=True)
    name = slurm_kernel("kp-fault-ro", state_dir=str(state))
    km = AsyncKernelManager(kernel_name=name)
    with pytest.raises(StateDirError) as e:
        await km.start_kernel(cwd=str(jupyter_dirs["work"]))
    assert f"Cannot write to the state directory {state}: Read-only file system." in str(e.value)
    assert f"kp-{km.kernel_id}" not in squeue_names()


async def test_full_runtime_dir_for_a_local_kernel(images, install_kernel, jupyter_dirs, small_fs):
    name = install_kernel("kp-fault-local-full", images.test, gpu="none")
    fill(small_fs)
    conn = small_fs / "kernel-full.json"
    km = AsyncKernelManager(kernel_name=name, connection_file=str(conn))
    with pytest.raises(StateDirError) as e:
        await km.start_kernel(cwd=str(jupyter_dirs["work"]))
    assert f"Cannot write the kernel's connection file {conn}: No space left on device." in str(
        e.value
    )
    assert not conn.exists()
