#!/usr/bin/env python
"""Start latency of a Slurm kernel on the server's own host vs on another node, side by side.

On the multi-node test cluster (scripts/slurm-cluster.sh, KP_SLURM_NODES >= 2) partition
``local`` holds a node in the server's host namespace (NodeAddr 127.0.0.1) and partition
``gpu`` the compute nodes in their own network namespaces (own address and hostname). The
same kernelspec is started on each, interleaved, so the machine's speed of the day cancels
out; it prints both medians (start_kernel until it returned, and until the client was ready)
and their ratio.

    build/venv/bin/python bench/bench_nodes.py [--reps N] [--quick]

Every job it submits is named kp-kpbench<pid>-... and is cancelled at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_slurm import ROOT, cancel_ours, new_kernel_id, private_jupyter, sh, stop  # noqa: E402


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="3 repetitions instead of 8")
    p.add_argument("--reps", type=int, help="starts per side (default 8, quick 3)")
    p.add_argument("--image", default=str(ROOT / "build" / "images" / "kp-test.sif"))
    p.add_argument("--same-host", default="local", help="partition on the server's host")
    p.add_argument("--other-node", default="gpu", help="partition of the other nodes")
    args = p.parse_args(argv)
    args.reps = args.reps or (3 if args.quick else 8)
    return args


async def one_start(kernel_name: str, work: str) -> tuple[float, float, str, str]:
    """(s until start_kernel returned, s until ready, node, kernel address)."""
    from jupyter_client import AsyncKernelManager

    km = AsyncKernelManager(kernel_name=kernel_name)
    t0 = time.monotonic()
    await km.start_kernel(kernel_id=new_kernel_id(), cwd=work)
    returned = time.monotonic() - t0
    kc = km.client()
    kc.start_channels()
    await kc.wait_for_ready(timeout=120)
    ready = time.monotonic() - t0
    node, ip = km.provisioner.node, km.provisioner.node_ip
    await stop(km, kc)
    return returned, ready, node, ip


async def bench(args: argparse.Namespace, tmp: Path) -> int:
    from kernelprovider.kernelspec import (
        SLURM_PROVISIONER_NAME,
        build_kernelspec,
        install_kernelspec,
    )

    work = str(tmp / "work")
    os.makedirs(work)
    sides = {"same host": args.same_host, "other node": args.other_node}
    for label, partition in sides.items():
        config = {
            "image": args.image,
            "gpu": "none",
            "gpus": "0",
            "state_dir": str(tmp / "state"),
            "partition": partition,
            "time_limit": "30:00",
            "queue_timeout": 300,
        }
        spec = build_kernelspec(label, config, provisioner=SLURM_PROVISIONER_NAME)
        install_kernelspec(spec, f"kpbench-{partition}", prefix=str(tmp / "prefix"))

    print("warming up (imports, image cache on both sides) ...", flush=True)
    for partition in sides.values():
        await one_start(f"kpbench-{partition}", work)
    times: dict[str, list[tuple[float, float]]] = {label: [] for label in sides}
    where: dict[str, set[str]] = {label: set() for label in sides}
    for _ in range(args.reps):
        for label, partition in sides.items():
            returned, ready, node, ip = await one_start(f"kpbench-{partition}", work)
            times[label].append((returned, ready))
            where[label].add(f"{node} ({ip})")

    print(f"\nSlurm kernel start, {args.reps} each, interleaved (median, min-max):")
    medians = {}
    for label in sides:
        ready = [r for _, r in times[label]]
        returned = [r for r, _ in times[label]]
        medians[label] = statistics.median(ready)
        print(
            f"  {label:10s} on {', '.join(sorted(where[label]))}: ready {medians[label]:.2f} s "
            f"({min(ready):.2f}-{max(ready):.2f}), start_kernel returned "
            f"{statistics.median(returned):.2f} s"
        )
    ratio = medians["other node"] / medians["same host"]
    print(f"  other node / same host (median until ready): {ratio:.2f}x")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if not shutil.which("sbatch"):
        print("No Slurm client commands here; run 'sudo scripts/slurm-cluster.sh start'.")
        return 2
    rc, out, _ = asyncio.run(sh("sinfo", "-h", "-o", "%R"))
    missing = {args.same_host, args.other_node} - set(out.split())
    if rc != 0 or missing:
        print(
            f"Partition(s) {', '.join(sorted(missing)) or '?'} missing: this needs the "
            "multi-node test cluster (sudo KP_SLURM_NODES=2 scripts/slurm-cluster.sh start); "
            "nothing measured."
        )
        return 0
    tmp = private_jupyter("kpbench-")
    try:
        return asyncio.run(bench(args, tmp))
    finally:
        asyncio.run(cancel_ours())
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
