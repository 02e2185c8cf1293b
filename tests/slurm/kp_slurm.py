"""Helpers for the Slurm kernel tests: run a cell, interrupt one, find processes, re-attach.

A plain module (tests/slurm is on sys.path while these tests run), shared by the test files
and by kp_child.py, the "server" process that the dead-man and re-attach tests kill.
"""

from __future__ import annotations

import os
import subprocess
import time
import uuid
from typing import Any

import psutil
from jupyter_client import AsyncKernelManager
from jupyter_client.provisioning import KernelProvisionerFactory
from kernel_helpers import interrupt_running_cell, run_cell  # noqa: F401 - re-exported

from kernelprovider.slurm import SlurmProvisioner

# Every job these tests submit is named kp-<kernel id>; the kernel ids start with this, so
# teardown cancels this session's jobs only, never another engineer's.
SESSION_PREFIX = f"t{os.getpid()}x{uuid.uuid4().hex[:6]}"


def new_kernel_id() -> str:
    return f"{SESSION_PREFIX}-{uuid.uuid4().hex[:12]}"


def job_prefix() -> str:
    return f"kp-{SESSION_PREFIX}-"


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
