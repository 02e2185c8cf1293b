"""A Slurm kernel whose state directory hangs fails its own start, not the server.

The state directory lies on a real FUSE mount (tests/hangfs.py) that hangs on demand like a
hard NFS mount whose server went away: every stat, open or write there blocks in the
operating system's kernel until the test releases it. While one start waits on it, another
Slurm kernel of the same process keeps executing cells (a watch thread checks the loop never
stalls); the hung start ends with a FilesystemTimeout that names the state directory, the
fs_timeout and a next step, and no Slurm job is left for it.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import pytest
from hangfs import HangFS, LoopWatch, mounted
from jupyter_client import AsyncKernelManager
from kp_slurm import new_kernel_id, run_cell
from slurm_cluster import squeue_jobs

from kernelprovider.errors import FilesystemTimeout

pytestmark = [pytest.mark.slurm, pytest.mark.integration, pytest.mark.timeout(240)]


async def wait_for(predicate: Any, timeout: float = 60) -> None:
    """Poll ``predicate`` on the loop (so the loop stays free) until it holds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        assert loop.time() < deadline, f"timed out waiting for {predicate.__doc__ or predicate}"
        await asyncio.sleep(0.05)


async def test_a_hung_state_directory_fails_its_start_and_the_server_keeps_serving(
    slurm_kernel: Any, slurm_spec: Any, hangfs: HangFS, jupyter_dirs: dict[str, Path]
) -> None:
    _, kc = await slurm_kernel()  # healthy: its state directory is on the local disk
    hung_dir = hangfs.mountpoint / "state"
    name = slurm_spec("kp-slurm-hung", state_dir=str(hung_dir), fs_timeout=5.0)
    hung_km = AsyncKernelManager(kernel_name=name)
    kernel_id = new_kernel_id()
    hangfs.hang()
    with LoopWatch(hangfs):
        start = asyncio.ensure_future(
            hung_km.start_kernel(kernel_id=kernel_id, cwd=str(jupyter_dirs["work"]))
        )

        def start_is_stuck_on_the_mount() -> bool:
            return start.done() or bool(hangfs.waited(os.getpid()))

        await wait_for(start_is_stuck_on_the_mount)
        assert not start.done(), "the start ended before it reached the hung mount"
        # the loop is free while a thread of the start is stuck: the other kernel answers
        for i in range(3):
            reply, out = await run_cell(kc, f"print({i} * 7)")
            assert reply["status"] == "ok" and out.strip() == str(i * 7)
        with pytest.raises(FilesystemTimeout) as info:
            await start
    message = str(info.value)
    assert str(hung_dir) in message and "5 s" in message
    assert "try again" in message or "admins" in message  # a next step
    assert hung_km.provisioner is None or not hung_km.provisioner.job_id
    assert not squeue_jobs(f"kp-{kernel_id}", all_states=True), "a job was submitted"
    assert hangfs.waited(os.getpid()), "nothing of this process waited on the hung mount"

    # the filesystem comes back: the stuck thread finishes, the mount goes away cleanly
    hangfs.release()
    hangfs.stop()
    assert not mounted(hangfs.mountpoint)
    reply, out = await run_cell(kc, "print(6 * 7)")
    assert reply["status"] == "ok" and out.strip() == "42"


async def start_on_the_mount(slurm_kernel: Any, hangfs: HangFS) -> tuple[Any, Any]:
    """A Slurm kernel whose state directory is on the (not yet hung) mount; one cell run."""
    km, kc = await slurm_kernel("kp-slurm-mount", state_dir=str(hangfs.mountpoint / "state"))
    reply, out = await run_cell(kc, "print(1 + 1)")
    assert reply["status"] == "ok" and out.strip() == "2"
    return km, kc


async def test_a_state_directory_that_hangs_under_a_running_kernel_leaves_the_loop_free(
    slurm_kernel: Any, hangfs: HangFS
) -> None:
    _, kc = await slurm_kernel()  # healthy: its state directory is on the local disk
    km, kc_mount = await start_on_the_mount(slurm_kernel, hangfs)
    hangfs.hang()
    with LoopWatch(hangfs):
        # the lease keeper's next refresh (every lease_seconds / 3) reaches the hung mount
        # and waits there, in a thread of this process

        def the_lease_refresh_waits() -> bool:
            return bool(hangfs.waited(os.getpid()))

        await wait_for(the_lease_refresh_waits, timeout=km.provisioner.lease_seconds)
        for client in (kc, kc_mount):  # both kernels answer: their sockets need no filesystem
            reply, out = await run_cell(client, "print(6 * 7)")
            assert reply["status"] == "ok" and out.strip() == "42"
        assert await km.is_alive()  # poll asks Slurm, not the filesystem
    hangfs.release()
    reply, out = await run_cell(kc_mount, "print(7 * 7)")
    assert reply["status"] == "ok" and out.strip() == "49"


async def test_shutting_down_a_kernel_whose_state_directory_hangs_leaves_the_loop_free(
    slurm_kernel: Any, hangfs: HangFS
) -> None:
    _, kc = await slurm_kernel()
    km, _ = await start_on_the_mount(slurm_kernel, hangfs)
    hangfs.hang()
    with LoopWatch(hangfs):
        stop = asyncio.ensure_future(km.shutdown_kernel(now=True))
        reply, out = await run_cell(kc, "print(6 * 7)")  # while the shutdown waits
        assert reply["status"] == "ok" and out.strip() == "42"
        await stop
