"""in_thread on a real hung mount (tests/hangfs.py): calls stuck there do not cost other calls.

A call into a hung filesystem never returns; in_thread gives up on it after its timeout, but
the thread stays inside the operating system's kernel until the filesystem answers. Those
threads must not be taken from a shared pool: a few hung calls would then make every later
call, on a healthy disk too, time out with a message that blames the wrong directory.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest
from hangfs import HangFS

from kernelprovider.errors import FilesystemTimeout
from kernelprovider.offloop import in_thread

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


async def test_calls_stuck_on_a_hung_mount_do_not_starve_other_calls(
    hangfs: HangFS, tmp_path: Path
) -> None:
    hung = str(hangfs.mountpoint / "state")
    # more stuck calls than the default thread pool has workers (min(32, cores + 4))
    stuck = min(32, (os.cpu_count() or 1) + 4) + 1
    hangfs.hang()
    try:
        calls = [
            in_thread(os.makedirs, hung, 0o700, True, timeout=2, what=f"State directory {hung}")
            for _ in range(stuck)
        ]
        results = await asyncio.gather(*calls, return_exceptions=True)
        assert all(isinstance(r, FilesystemTimeout) for r in results), results
        # a healthy directory still answers, and its errors are its own
        healthy = tmp_path / "healthy"
        await in_thread(os.makedirs, str(healthy), 0o700, True, timeout=10, what="healthy")
        assert healthy.is_dir()
        with pytest.raises(FileNotFoundError):
            await in_thread(os.stat, str(tmp_path / "absent"), timeout=10, what="absent")
        assert len(hangfs.waited(os.getpid())) == stuck  # every one is still inside the mount
    finally:
        hangfs.release()  # before the loop ends: a pool's stuck threads would hold its close
