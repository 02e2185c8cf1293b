"""Kernels across real node boundaries: on a compute node that is not the server's host (own
network namespace, address and hostname), and on a node whose firewall drops the kernel's
ports, which must fail at once with the node, address and port, and give the job back."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

import psutil
import pytest
from jupyter_client import AsyncKernelManager
from kp_slurm import new_kernel_id, processes_mentioning, run_cell, wait_until
from slurm_cluster import require_multi_node, squeue_jobs

from kernelprovider.errors import KernelUnreachable

pytestmark = [pytest.mark.slurm, pytest.mark.integration, pytest.mark.timeout(120)]


def server_addresses() -> set[str]:
    """Every address of the server's host (this process's network namespace)."""
    return {a.address for addrs in psutil.net_if_addrs().values() for a in addrs}


def connections_to(ip: str, port: int) -> list[Any]:
    proc = psutil.Process()
    conns = (
        proc.net_connections("tcp") if hasattr(proc, "net_connections") else proc.connections("tcp")
    )
    return [
        c
        for c in conns
        if c.raddr and (c.raddr.ip, c.raddr.port) == (ip, port) and c.status == "ESTABLISHED"
    ]


async def test_kernel_runs_on_another_node_and_the_server_reaches_it_there(
    slurm_kernel: Any, slurm_cluster: Any
) -> None:
    require_multi_node(slurm_cluster)
    km, kc = await slurm_kernel()
    prov = km.provisioner
    reply, out = await run_cell(
        kc,
        "import json, os, socket\n"
        "print(json.dumps({'host': socket.gethostname(), 'job': os.environ['SLURM_JOB_ID']}))",
    )
    where = json.loads(out.strip().splitlines()[-1])
    # the kernel runs on the compute node Slurm chose, which is not the server's host ...
    assert where["job"] == prov.job_id
    assert where["host"] == prov.node != slurm_cluster.server_host
    assert prov.node in slurm_cluster.nodes
    # ... and binds that node's address, which is not one of the server's
    info = json.loads(Path(km.connection_file).read_text())
    assert info["ip"] == prov.node_ip == slurm_cluster.node_addrs[prov.node]
    assert info["ip"] not in server_addresses()
    assert km.connection_file.startswith(prov.state_dir)  # written on the node, read here
    # the server's client talks to the kernel over that address
    assert connections_to(info["ip"], info["shell_port"])
    assert connections_to(info["ip"], info["iopub_port"])


@pytest.mark.timeout(90)
async def test_node_behind_a_firewall_fails_fast_naming_node_address_and_port(
    slurm_spec: Any, slurm_cluster: Any, jupyter_dirs: dict[str, Path], state_dir: Path
) -> None:
    require_multi_node(slurm_cluster)
    node = slurm_cluster.firewalled_node
    name = slurm_spec("kp-slurm-wall", partition=slurm_cluster.firewalled_partition)
    km = AsyncKernelManager(kernel_name=name)
    started = time.monotonic()
    with pytest.raises(KernelUnreachable) as e:
        await km.start_kernel(kernel_id=new_kernel_id(), cwd=str(jupyter_dirs["work"]))
    # for the issue note, not asserted: seconds from start to the error (boot_timeout is 180)
    print(f"unreachable node reported after {time.monotonic() - started:.1f} s: {e.value}")
    msg = str(e.value)
    # one sentence: the node, the address and port it could not reach, what to do
    addr = slurm_cluster.node_addrs[node]
    m = re.search(rf"on node {node}\b.*\b{re.escape(addr)}:(\d+)\b", msg)
    assert m and int(m.group(1)) > 0, msg
    assert "kernel_ip" in msg and "allow TCP connections" in msg
    assert msg.count(". ") == 0 and msg.endswith(".")
    # the job was cancelled and confirmed gone; nothing of the kernel is left
    assert squeue_jobs(f"kp-{km.kernel_id}") == []
    assert km.provisioner.job_id is None
    assert wait_until(lambda: processes_mentioning(f"kp-{km.kernel_id}") == [], 10)
    assert sorted(p.suffix for p in state_dir.iterdir()) in ([], [".log"])
