#!/usr/bin/env python
"""Start latency and execute round-trips (an empty cell, a cell printing 1 MB) of a plain, a
CurveZMQ-encrypted and an SSH-tunnelled Slurm kernel, side by side in one run.

On the multi-node test cluster: "plain" and "curve" run on partition ``gpu`` (nodes in their
own network namespaces, reached directly), "tunnel" on partition ``firewalled`` (kpwall1,
which lets only slurmd and SSH in) through a real sshd that this script starts in kpwall1's
namespace with keys made for the run. All three use kp-curve.sif (ipykernel 7.4), so the image
is the same; the starts are interleaved so the machine's speed of the day cancels out. Prints
medians and the ratios to plain.

    build/venv/bin/python bench/bench_tunnel.py [--reps N] [--quick] [--cells N]

Root only (sshd in a namespace). Every job it submits is named kp-kpbench<pid>-... and is
cancelled at the end.
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
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_slurm import ROOT, cancel_ours, new_kernel_id, private_jupyter, sh, stop  # noqa: E402

sys.path.insert(0, str(ROOT / "tests"))
from slurm_sshd import start_sshd  # noqa: E402

SIDES = ("plain", "curve", "tunnel")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="3 starts per side instead of 6")
    p.add_argument("--reps", type=int, help="starts per side (default 6, quick 3)")
    p.add_argument("--cells", type=int, default=30, help="empty cells timed per kernel")
    p.add_argument("--image", default=str(ROOT / "build" / "images" / "kp-curve.sif"))
    args = p.parse_args(argv)
    args.reps = args.reps or (3 if args.quick else 6)
    return args


BIG = "print('x' * 1000000)"  # 1 MB of output: where encryption's bandwidth cost would show


async def one_kernel(
    kernel_name: str, work: str, cells: int
) -> tuple[float, list[float], list[float], str]:
    """(s until the client was ready, round-trips of ``cells`` empty cells and of 5 cells
    printing 1 MB, node)."""
    from jupyter_client import AsyncKernelManager

    km = AsyncKernelManager(kernel_name=kernel_name)
    t0 = time.monotonic()
    await km.start_kernel(kernel_id=new_kernel_id(), cwd=work)
    kc = km.client()
    kc.start_channels()
    await kc.wait_for_ready(timeout=120)
    ready = time.monotonic() - t0
    rtts = []
    for _ in range(cells):
        t = time.monotonic()
        reply = await kc.execute_interactive("pass", timeout=30, output_hook=lambda m: None)
        rtts.append(time.monotonic() - t)
        assert reply["content"]["status"] == "ok"
    bigs = []
    for _ in range(5):
        t = time.monotonic()
        reply = await kc.execute_interactive(BIG, timeout=60, output_hook=lambda m: None)
        bigs.append(time.monotonic() - t)
        assert reply["content"]["status"] == "ok"
    node = km.provisioner.node
    await stop(km, kc)
    return ready, rtts, bigs, node


async def bench(args: argparse.Namespace, tmp: Path, ssh_options: list[str]) -> int:
    from kernelprovider.kernelspec import (
        SLURM_PROVISIONER_NAME,
        build_kernelspec,
        install_kernelspec,
    )

    work = str(tmp / "work")
    os.makedirs(work)
    base: dict[str, Any] = {
        "image": args.image,
        "gpu": "none",
        "gpus": "0",
        "state_dir": str(tmp / "state"),
        "time_limit": "30:00",
        "queue_timeout": 300,
    }
    configs: dict[str, dict[str, Any]] = {
        "plain": {"partition": "gpu", "encryption": "off"},
        "curve": {"partition": "gpu", "encryption": "curve"},
        "tunnel": {
            "partition": "firewalled",
            "encryption": "off",
            "tunnel": "ssh",
            "ssh_options": ssh_options,
        },
    }
    for side, config in configs.items():
        spec = build_kernelspec(side, {**base, **config}, provisioner=SLURM_PROVISIONER_NAME)
        install_kernelspec(spec, f"kpbench-{side}", prefix=str(tmp / "prefix"))

    print("warming up (imports, image cache, CurveZMQ check) ...", flush=True)
    for side in SIDES:
        await one_kernel(f"kpbench-{side}", work, 3)
    ready: dict[str, list[float]] = {s: [] for s in SIDES}
    rtt: dict[str, list[float]] = {s: [] for s in SIDES}
    big: dict[str, list[float]] = {s: [] for s in SIDES}
    nodes: dict[str, set[str]] = {s: set() for s in SIDES}
    for _ in range(args.reps):
        for side in SIDES:
            r, rtts, bigs, node = await one_kernel(f"kpbench-{side}", work, args.cells)
            ready[side].append(r)
            rtt[side] += rtts
            big[side] += bigs
            nodes[side].add(node)

    print(
        f"\n{args.reps} starts per side, interleaved; {args.cells} empty cells per kernel "
        f"(image {Path(args.image).name}); medians (min-max):"
    )
    print(
        f"  {'side':7s} {'nodes':16s} {'start until ready':>22s} {'empty cell':>24s} "
        f"{'cell printing 1 MB':>24s}"
    )
    med = {
        s: (statistics.median(ready[s]), statistics.median(rtt[s]), statistics.median(big[s]))
        for s in SIDES
    }
    for side in SIDES:
        print(
            f"  {side:7s} {','.join(sorted(nodes[side])):16s} "
            f"{med[side][0]:6.2f} s ({min(ready[side]):.2f}-{max(ready[side]):.2f}) "
            f"{med[side][1] * 1000:7.2f} ms ({min(rtt[side]) * 1000:.1f}-"
            f"{max(rtt[side]) * 1000:.1f}) "
            f"{med[side][2] * 1000:7.1f} ms ({min(big[side]) * 1000:.0f}-"
            f"{max(big[side]) * 1000:.0f})"
        )
    for side in ("curve", "tunnel"):
        print(
            f"  {side} / plain: start {med[side][0] / med['plain'][0]:.2f}x, "
            f"empty cell {med[side][1] / med['plain'][1]:.2f}x, "
            f"1 MB cell {med[side][2] / med['plain'][2]:.2f}x"
        )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if not shutil.which("sbatch"):
        print("No Slurm client commands here; run 'sudo scripts/slurm-cluster.sh start'.")
        return 2
    if os.geteuid() != 0:
        print("This bench starts sshd in the firewalled node's namespace: run it as root; "
              "nothing measured.")  # fmt: skip
        return 0
    if not Path(args.image).exists():
        print(f"{args.image} is missing: run 'make testenv'.")
        return 2
    rc, out, _ = asyncio.run(sh("sinfo", "-h", "-o", "%R"))
    if rc != 0 or not {"gpu", "firewalled"} <= set(out.split()):
        print("This needs the multi-node test cluster ('make slurm'); nothing measured.")
        return 0
    tmp = private_jupyter("kpbench-")
    sshd = None
    try:
        sshd = start_sshd(tmp / "sshd", "kp-kpwall1", "10.77.0.100")
        return asyncio.run(bench(args, tmp, sshd.ssh_options))
    finally:
        if sshd is not None:
            sshd.stop()
        asyncio.run(cancel_ours())
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
