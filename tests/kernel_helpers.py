"""Helpers shared by the kernel tests: run a cell, interrupt a running one.

A plain module (tests/ is on sys.path through the rootdir conftest), imported by the local,
Slurm, GPU and hardening tests alike.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any

import psutil
from jupyter_client import AsyncKernelManager

__all__ = ["start_kernel", "run_cell", "interrupt_running_cell", "still_running"]


async def still_running(procs: Iterable[psutil.Process], timeout: float = 15) -> list:
    """Wait until every process of ``procs`` has ended (zombies count as ended); return the
    ones still running after ``timeout`` s (an empty list when all are gone)."""

    def alive(p: psutil.Process) -> bool:
        try:
            return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return False

    procs = list(procs)
    deadline = time.monotonic() + timeout
    while True:
        left = [p for p in procs if alive(p)]
        if not left or time.monotonic() > deadline:
            return left
        await asyncio.sleep(0.05)


async def start_kernel(name: str, cwd: Path, timeout: float = 60) -> tuple[Any, Any]:
    """Start kernel ``name`` in ``cwd`` as jupyter_server would; (manager, ready client)."""
    km = AsyncKernelManager(kernel_name=name)
    await km.start_kernel(cwd=str(cwd))
    kc = km.client()
    kc.start_channels()
    await kc.wait_for_ready(timeout=timeout)
    return km, kc


async def run_cell(kc: Any, code: str, timeout: float = 60) -> tuple[dict, str]:
    """Execute ``code``; return the reply content and what it printed (tracebacks too)."""
    out: list[str] = []

    def on_output(msg: dict) -> None:
        if msg["msg_type"] == "stream":
            out.append(msg["content"]["text"])
        elif msg["msg_type"] == "error":
            out.append("\n".join(msg["content"]["traceback"]))

    reply = await kc.execute_interactive(code, timeout=timeout, output_hook=on_output)
    return reply["content"], "".join(out)


async def interrupt_running_cell(
    interrupt: Callable[[], Awaitable[Any]], kc: Any, code: str, timeout: float = 30
) -> dict:
    """Start ``code``, call ``interrupt()`` once it runs, return the interrupted cell's reply.

    The cell first prints a marker; the interrupt goes out when the marker arrives on
    IOPub, so it always lands in the running code (no fixed sleep).
    """
    marker = "kp-cell-running"
    msg_id = kc.execute(f"print({marker!r}, flush=True)\n{code}")
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        msg = await kc.get_iopub_msg(timeout=max(0.1, deadline - loop.time()))
        if (
            msg["parent_header"].get("msg_id") == msg_id
            and msg["msg_type"] == "stream"
            and marker in msg["content"]["text"]
        ):
            break
    await interrupt()
    reply = await kc.get_shell_msg(timeout=timeout)
    while reply["parent_header"].get("msg_id") != msg_id:
        reply = await kc.get_shell_msg(timeout=timeout)
    # ipykernel aborts requests that arrive while it handles the error: wait until it is
    # idle again (the status message of this request), as a person's next cell would.
    while True:
        msg = await kc.get_iopub_msg(timeout=timeout)
        if (
            msg["parent_header"].get("msg_id") == msg_id
            and msg["msg_type"] == "status"
            and msg["content"]["execution_state"] == "idle"
        ):
            break
    return reply["content"]
