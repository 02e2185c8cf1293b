"""A filesystem call that never returns fails its own start, not the server.

The image of one kernel is a FIFO: opening it blocks in the kernel (the operating system's
kernel) exactly like a file on a hung network mount, until someone opens the other end.
While that start waits, another kernel of the same process keeps answering; the hung start
ends with a FilesystemTimeout that names the image.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import pytest
from jupyter_client.manager import AsyncKernelManager
from kernel_helpers import run_cell, start_kernel

from kernelprovider.errors import FilesystemTimeout


async def test_a_hung_image_read_fails_its_start_and_the_server_keeps_serving(
    images: Any, install_kernel: Any, jupyter_dirs: dict[str, Path]
) -> None:
    hung = jupyter_dirs["work"] / "hung.sif"
    os.mkfifo(hung)
    install_kernel("healthy", images.test, gpu="none")
    install_kernel("hung", hung, gpu="none", fs_timeout=5.0)
    km, kc = await start_kernel("healthy", jupyter_dirs["work"])
    hung_km = AsyncKernelManager(kernel_name="hung")
    start = asyncio.ensure_future(hung_km.start_kernel(cwd=str(jupyter_dirs["work"])))
    try:
        # the loop is free while the hung start waits: the other kernel answers
        for i in range(3):
            reply, out = await run_cell(kc, f"print({i} * 7)")
            assert reply["status"] == "ok" and out.strip() == str(i * 7)
        assert not start.done()
        with pytest.raises(FilesystemTimeout) as info:
            await start
        assert str(hung) in str(info.value) and "5 s" in str(info.value)
        conn = hung_km.connection_file
        assert conn and not os.path.exists(conn)  # the key it was given is gone again
    finally:
        # release the thread still blocked in open(): give the FIFO a writer that hangs up
        fd = os.open(hung, os.O_WRONLY | os.O_NONBLOCK)
        os.close(fd)
        kc.stop_channels()
        await km.shutdown_kernel(now=True)
