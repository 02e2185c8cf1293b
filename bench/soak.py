"""Soak: many start / execute / shutdown cycles, then count what was left behind.

`make soak` runs 100 local and 48 Slurm cycles, the Slurm ones 16 at a time so that they spread
over the test cluster's nodes (``--local N --slurm N --slurm-parallel N`` to change). After the
cycles it counts leftover processes (children of this process, and any process whose command
line names a connection file), leftover Slurm jobs (named kp-<kernel id> of this run), files
left in the runtime and state directories, and the server-host memory (RSS of this process)
at the start, after the first 10% and at the end. Exits 1 if anything was left behind.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
IMAGE = ROOT / "build" / "images" / "kp-test.sif"


def rss_mb() -> float:
    return psutil.Process().memory_info().rss / 2**20


def setup_env(tmp: Path) -> None:
    for name in ("data", "runtime", "config", "prefix"):
        (tmp / name).mkdir()
    os.environ.update(
        JUPYTER_DATA_DIR=str(tmp / "data"),
        JUPYTER_RUNTIME_DIR=str(tmp / "runtime"),
        JUPYTER_CONFIG_DIR=str(tmp / "config"),
        JUPYTER_PATH=str(tmp / "prefix" / "share" / "jupyter"),
    )


def install(tmp: Path) -> None:
    from kernelprovider.kernelspec import (
        SLURM_PROVISIONER_NAME,
        build_kernelspec,
        install_kernelspec,
    )

    local = build_kernelspec("soak", {"image": str(IMAGE), "compat_check": "warn"})
    install_kernelspec(local, "soak-local", prefix=str(tmp / "prefix"))
    slurm = build_kernelspec(
        "soak slurm",
        {
            "image": str(IMAGE),
            "compat_check": "warn",
            "gpus": "0",
            "time_limit": "10:00",
            "state_dir": str(tmp / "state"),
        },
        provisioner=SLURM_PROVISIONER_NAME,
        interrupt_mode="message",
    )
    install_kernelspec(slurm, "soak-slurm", prefix=str(tmp / "prefix"))


async def cycle(name: str, cwd: Path, nodes: dict[str, int]) -> str:
    """One start / execute / shutdown; counts the Slurm node it ran on in ``nodes``."""
    from jupyter_client import AsyncKernelManager

    km = AsyncKernelManager(kernel_name=name)
    await km.start_kernel(cwd=str(cwd))
    kc = km.client()
    kc.start_channels()
    try:
        await kc.wait_for_ready(timeout=120)
        reply = await kc.execute_interactive("x = sum(range(1000))", timeout=60)
        assert reply["content"]["status"] == "ok", reply["content"]
        node = getattr(km.provisioner, "node", None)
        if node:
            nodes[node] = nodes.get(node, 0) + 1
    finally:
        kc.stop_channels()
        await km.shutdown_kernel()
    return km.kernel_id or ""


def leftover_processes(conn_dirs: list[Path]) -> list[str]:
    found = []
    for p in psutil.Process().children(recursive=True):
        try:
            if p.status() != psutil.STATUS_ZOMBIE:
                found.append(f"{p.pid} {' '.join(p.cmdline())[:120]}")
        except psutil.Error:
            continue
    for p in psutil.process_iter(["pid", "cmdline"]):
        cmd = " ".join(p.info["cmdline"] or [])
        if any(str(d) in cmd for d in conn_dirs) and p.pid != os.getpid():
            found.append(f"{p.pid} {cmd[:120]}")
    return sorted(set(found))


def leftover_jobs(kernel_ids: set[str]) -> list[str]:
    out = subprocess.run(
        ["squeue", "-h", "-o", "%i %j %T"], capture_output=True, text=True, check=False
    ).stdout
    return [line for line in out.splitlines() if line.split()[1][3:] in kernel_ids]


async def soak(mode: str, n: int, tmp: Path, parallel: int = 1) -> dict[str, object]:
    """``n`` cycles, ``parallel`` of them at a time (a wave: all start, run, shut down)."""
    name = f"soak-{mode}"
    cwd = tmp / "work"
    cwd.mkdir(exist_ok=True)
    ids: set[str] = set()
    nodes: dict[str, int] = {}
    mem = [rss_mb()]
    t0 = time.monotonic()
    done = 0
    while done < n:
        wave = min(parallel, n - done)
        ids.update(await asyncio.gather(*(cycle(name, cwd, nodes) for _ in range(wave))))
        before, done = done, done + wave
        if before < max(1, n // 10) <= done:
            mem.append(rss_mb())
        if done // 10 > before // 10 or done == n:
            print(f"  {mode}: {done}/{n} cycles, RSS {rss_mb():.1f} MB", flush=True)
    mem.append(rss_mb())
    await asyncio.sleep(1)
    dirs = [tmp / "runtime", tmp / "state"]
    return {
        "mode": mode,
        "cycles": n,
        "seconds": time.monotonic() - t0,
        "processes": leftover_processes(dirs),
        "jobs": leftover_jobs(ids) if mode == "slurm" else [],
        "files": sorted(
            str(p.relative_to(tmp))
            for d in dirs
            if d.exists()
            for p in d.iterdir()
            if p.name.startswith("kernel-")
        ),
        "rss": mem,
        "nodes": nodes,
    }


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--local", type=int, default=100)
    parser.add_argument("--slurm", type=int, default=50)
    parser.add_argument(
        "--slurm-parallel", type=int, default=1, help="Slurm kernels started at once (a wave)"
    )
    args = parser.parse_args()
    bad = False
    with tempfile.TemporaryDirectory(prefix="kp-soak-") as t:
        tmp = Path(t)
        setup_env(tmp)
        install(tmp)
        for mode, n in (("local", args.local), ("slurm", args.slurm)):
            if not n:
                continue
            r = await soak(mode, n, tmp, args.slurm_parallel if mode == "slurm" else 1)
            rss = r["rss"]
            print(
                f"[soak {mode}] {r['cycles']} cycles in {r['seconds']:.0f} s: "
                f"leftover processes {len(r['processes'])}, Slurm jobs {len(r['jobs'])}, "
                f"files {len(r['files'])}; server RSS {rss[0]:.1f} MB at start, "
                f"{rss[1]:.1f} MB after 10%, {rss[-1]:.1f} MB at the end "
                f"(end/10% = {rss[-1] / rss[1]:.2f})"
                + (f"; kernels per node {r['nodes']}" if r["nodes"] else "")
            )
            for what in ("processes", "jobs", "files"):
                for item in r[what]:
                    print(f"    left {what[:-1]}: {item}")
            bad |= bool(r["processes"] or r["jobs"] or r["files"])
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
