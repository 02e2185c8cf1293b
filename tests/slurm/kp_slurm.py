"""Helpers for the Slurm kernel tests: run a cell, interrupt one, find processes, re-attach.

A plain module (tests/slurm is on sys.path while these tests run), shared by the test files
and by kp_child.py, the "server" process that the dead-man and re-attach tests kill.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
import uuid
from typing import Any

import psutil
from jupyter_client import AsyncKernelManager
from jupyter_client.provisioning import KernelProvisionerFactory

from kernelprovider.slurm import SlurmProvisioner

# Every job these tests submit is named kp-<kernel id>; the kernel ids start with this, so
# teardown cancels this session's jobs only, never another engineer's.
SESSION_PREFIX = f"t{os.getpid()}x{uuid.uuid4().hex[:6]}"


def new_kernel_id() -> str:
    return f"{SESSION_PREFIX}-{uuid.uuid4().hex[:12]}"


def job_prefix() -> str:
    return f"kp-{SESSION_PREFIX}-"


async def run_cell(kc: Any, code: str, timeout: float = 60) -> tuple[dict, str]:
    """Execute ``code``; return the reply content and everything it printed to stdout."""
    out: list[str] = []

    def on_output(msg: dict) -> None:
        if msg["msg_type"] == "stream":
            out.append(msg["content"]["text"])
        elif msg["msg_type"] == "error":
            out.append("\n".join(msg["content"]["traceback"]))

    reply = await kc.execute_interactive(code, timeout=timeout, output_hook=on_output)
    return reply["content"], "".join(out)


async def interrupt_running_cell(interrupt: Any, kc: Any, code: str) -> dict:
    """Start ``code``, call ``interrupt()``, return the reply of the interrupted cell."""
    msg_id = kc.execute(code)
    await asyncio.sleep(1.5)
    await interrupt()
    reply = await kc.get_shell_msg(timeout=30)
    while reply["parent_header"].get("msg_id") != msg_id:
        reply = await kc.get_shell_msg(timeout=30)
    # ipykernel aborts requests that arrive while it handles the error
    await asyncio.sleep(0.5)
    return reply["content"]


def slurm_steps(job_id: str) -> dict[str, str]:
    """Step id -> step name of job ``job_id`` as the real squeue lists them."""
    out = subprocess.run(
        ["squeue", "-h", "-s", "-j", str(job_id), "-o", "%i|%j"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    ).stdout
    return dict(line.split("|", 1) for line in out.splitlines() if "|" in line)


def scontrol(*args: str) -> str:
    proc = subprocess.run(
        ["scontrol", *args], capture_output=True, text=True, timeout=30, check=False
    )
    return proc.stdout + proc.stderr


def processes_mentioning(text: str, environ: bool = False) -> list[tuple[int, str]]:
    """(pid, where) of every process whose argv (and, with ``environ``, environment) holds
    ``text``."""
    found = []
    for p in psutil.process_iter(["pid", "cmdline"]):
        try:
            if any(text in arg for arg in (p.info["cmdline"] or [])):
                found.append((p.pid, "cmdline"))
            if environ and any(text in k or text in v for k, v in p.environ().items()):
                found.append((p.pid, "environ"))
        except psutil.Error:
            continue
    return found


def wait_until(predicate: Any, timeout: float, interval: float = 0.2) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


async def reattach(kernel_name: str, record: dict) -> AsyncKernelManager:
    """What a restarted server does: a new KernelManager and provisioner from a record."""
    km = AsyncKernelManager(kernel_name=kernel_name)
    km.kernel_id = record["kernel_id"]
    prov = KernelProvisionerFactory.instance().create_provisioner_instance(
        record["kernel_id"], km.kernel_spec, parent=km
    )
    assert isinstance(prov, SlurmProvisioner)
    await prov.load_provisioner_info(record)
    km.provisioner = prov
    if prov.connection_info.get("key"):
        km.load_connection_info(prov.connection_info)
        km.connection_file = prov.files["connection"]
    return km
