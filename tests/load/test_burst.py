"""9am at the JupyterHub: 16 kernels started at once through one jupyter_server, local and Slurm.

All must become ready and shut down cleanly, leaving no process, job or file. The start
latency percentiles are printed next to a single start measured in the same run (figures for
the issue note; no timed assertion).
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integration"))
from kernel_helpers import still_running  # noqa: E402
from test_server import Server, ws_execute  # noqa: E402

from kernelprovider.kernelspec import SLURM_PROVISIONER_NAME  # noqa: E402

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

BURST = 16
CELL = (
    "import json, os; print(json.load(open('/.singularity.d/labels.json'))['TENSORFLOW_VERSION'])"
)


async def start_and_run(server: Server, name: str) -> tuple[str, float]:
    t0 = time.monotonic()
    kernel = await server.request("POST", "/api/kernels", {"name": name})
    status, out = await ws_execute(server, kernel["id"], CELL)
    assert (status, out.strip()) == ("ok", "1.8")
    return kernel["id"], time.monotonic() - t0


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


def report(mode: str, single: float, burst: list[float]) -> None:
    print(
        f"\n[burst {mode}] single start {single:.2f} s; {len(burst)} at once: "
        f"p50 {pct(burst, 50):.2f} s, p90 {pct(burst, 90):.2f} s, max {max(burst):.2f} s "
        f"(p50/single {statistics.median(burst) / single:.1f}x)"
    )


def kernel_descendants(server: Server) -> list[psutil.Process]:
    try:
        return psutil.Process(server.proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


async def burst(
    server: Server, name: str, while_running: Callable[[list[str]], None] | None = None
) -> tuple[float, list[float], list[str]]:
    """(single start, burst start times, kernel ids); every kernel is deleted at the end.

    ``while_running`` gets the burst's kernel ids while all of them run."""
    kid, single = await start_and_run(server, name)
    await server.request("DELETE", f"/api/kernels/{kid}")
    results = await asyncio.gather(*(start_and_run(server, name) for _ in range(BURST)))
    assert len(await server.request("GET", "/api/kernels")) == BURST
    if while_running is not None:
        while_running([k for k, _ in results])
    await asyncio.gather(*(server.request("DELETE", f"/api/kernels/{k}") for k, _ in results))
    assert await server.request("GET", "/api/kernels") == []
    return single, [t for _, t in results], [kid] + [k for k, _ in results]


@pytest.fixture
def server(jupyter_dirs: dict[str, Path], tmp_path: Path) -> Any:
    srv = Server(jupyter_dirs["work"], tmp_path / "server.log")
    yield srv
    srv.stop()


async def test_local_burst(images, install_kernel, jupyter_dirs, server) -> None:
    install_kernel("tf18", images.test)
    single, times, _ = await burst(server, "tf18")
    report("local", single, times)
    assert await still_running(kernel_descendants(server)) == []
    assert list(jupyter_dirs["runtime"].glob("kernel-*.json")) == []


async def test_slurm_burst(images, install_kernel, jupyter_dirs, server, slurm_cluster, tmp_path):
    from slurm_cluster import squeue_jobs

    state = tmp_path / "state"
    install_kernel(
        "tf18-slurm",
        images.test,
        provisioner=SLURM_PROVISIONER_NAME,
        interrupt_mode="message",
        partition=slurm_cluster.default_partition,
        gpus="0",
        time_limit="10:00",
        state_dir=str(state),
    )
    nodes: dict[str, str] = {}

    def where(kernel_ids: list[str]) -> None:
        running = {f"kp-{k}" for k in kernel_ids}
        nodes.update({j["name"]: j["node"] for j in squeue_jobs("kp-") if j["name"] in running})

    single, times, ids = await burst(server, "tf18-slurm", where)
    report("slurm", single, times)
    spread = {n: list(nodes.values()).count(n) for n in sorted(set(nodes.values()))}
    print(f"[burst slurm] kernels per node: {spread}")
    # all 16 ran on the compute nodes, spread over them (multi-node: not the server's host)
    assert len(nodes) == BURST and set(spread) <= set(slurm_cluster.nodes)
    if slurm_cluster.multi_node:
        assert len(spread) >= 2 and slurm_cluster.server_host not in spread
    names = {f"kp-{k}" for k in ids}
    assert [j for j in squeue_jobs("kp-") if j["name"] in names] == []
    assert sorted(p.name for p in state.iterdir()) == []
    assert [p for p in kernel_descendants(server) if p.status() != psutil.STATUS_ZOMBIE] == []
