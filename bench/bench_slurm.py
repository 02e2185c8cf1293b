#!/usr/bin/env python
"""The Slurm provisioner's own cost, measured side by side with Slurm's and a local start.

Runs on the real test cluster (docs/slurm-testenv.md) and prints ratios from one run, so the
machine's speed of the day cancels out:

- start: a kernel through SlurmProvisioner vs what Slurm itself needs for the same work
  (``sbatch`` until squeue says RUNNING, plus one ``srun --jobid --overlap true`` step), and a
  bare ``srun true``; the difference is the provisioner's overhead (container boot included,
  shown separately);
- restart inside the allocation vs a cold local container start (ContainerProvisioner);
- squeue calls per minute with 1 and with N running kernels while the KernelManager restarters
  poll, for kernels this process launched (srun answers) and for re-attached ones (the
  batched squeue answers);
- server-host RSS per running kernel (this process; the srun helpers shown apart).

    build/venv/bin/python bench/bench_slurm.py [--quick]

Every job it submits is named kp-kpbench<pid>-... (or kpbench<pid>-...) and is cancelled at
the end; nothing else on the cluster is touched.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import os
import shutil
import statistics
import sys
import tempfile
import time
import tracemalloc
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parent.parent
PREFIX = f"kpbench{os.getpid()}"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="fewer repetitions, shorter windows")
    p.add_argument("--reps", type=int, help="start/restart repetitions (default 8, quick 3)")
    p.add_argument("--kernels", type=int, help="kernels for the scale part (default 20, quick 10)")
    p.add_argument("--window", type=float, help="squeue counting window, s (default 30, quick 12)")
    p.add_argument("--image", default=str(ROOT / "build" / "images" / "kp-test.sif"))
    p.add_argument("--partition", default="gpu")
    args = p.parse_args(argv)
    args.reps = args.reps or (3 if args.quick else 8)
    args.kernels = args.kernels or (10 if args.quick else 20)
    args.window = args.window or (12.0 if args.quick else 30.0)
    return args


# --- small tools ---------------------------------------------------------------------------


async def sh(*argv: str, timeout: float = 60) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout)
    return proc.returncode or 0, out.decode(), err.decode()


def new_kernel_id() -> str:
    return f"{PREFIX}-{uuid.uuid4().hex[:12]}"


class Stamps(logging.Handler):
    """Times of the provisioner's INFO lines, to split a start into its phases."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[tuple[float, str]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append((time.monotonic(), record.getMessage()))

    def first(self, text: str, after: float) -> float | None:
        return next((t for t, m in self.lines if t >= after and text in m), None)


def fmt_s(values: Sequence[float]) -> str:
    return f"{statistics.median(values):6.2f} s  ({min(values):.2f}-{max(values):.2f})"


# --- one measurement each ------------------------------------------------------------------


async def slurm_alone(partition: str, gpus: str) -> tuple[float, float, float]:
    """Slurm's own times for an allocation and a step in it, with nothing else in between:
    (sbatch round trip, sbatch->RUNNING seen by squeue every 20 ms, srun --overlap true)."""
    t0 = time.monotonic()
    gres = [f"--gres=gpu:{gpus}"] if gpus not in ("", "0") else []
    rc, out, err = await sh(
        "sbatch",
        "--parsable",
        f"--job-name={PREFIX}-alloc",
        "--export=NONE",
        "--output=/dev/null",
        f"--partition={partition}",
        "--time=5:00",
        *gres,
        "--wrap",
        "sleep 300",
    )
    if rc != 0:
        raise SystemExit(f"sbatch failed: {err.strip()}")
    submit = time.monotonic() - t0
    job = out.strip().split(";")[0]
    try:
        while (await sh("squeue", "-h", "-j", job, "-o", "%T"))[1].strip() != "RUNNING":
            await asyncio.sleep(0.02)
        alloc = time.monotonic() - t0
        t1 = time.monotonic()
        await sh("srun", f"--jobid={job}", "--overlap", "-N1", "-n1", "true")
        return submit, alloc, time.monotonic() - t1
    finally:
        await sh("scancel", job)


async def seen_running(job_name: str) -> float:
    """When squeue (asked every 20 ms, independently of the provisioner) first lists the job
    named ``job_name`` as RUNNING."""
    while True:
        rc, out, _ = await sh("squeue", "-h", "-n", job_name, "-o", "%T")
        if out.strip() == "RUNNING":
            return time.monotonic()
        await asyncio.sleep(0.02)


async def bare_srun(partition: str) -> float:
    t0 = time.monotonic()
    rc, _, err = await sh(
        "srun",
        f"--job-name={PREFIX}-srun",
        f"--partition={partition}",
        "-N1",
        "-n1",
        "--time=1:00",
        "true",
    )
    if rc != 0:
        raise SystemExit(f"srun failed: {err.strip()}")
    return time.monotonic() - t0


async def start_ready(
    kernel_name: str, work: str, manager: Any = None, kernel_id: str | None = None
) -> tuple[Any, Any, float]:
    """Start a kernel; (manager, ready client, seconds until start_kernel returned)."""
    from jupyter_client import AsyncKernelManager

    km = (manager or AsyncKernelManager)(kernel_name=kernel_name)
    t0 = time.monotonic()
    await km.start_kernel(kernel_id=kernel_id or new_kernel_id(), cwd=work)
    listening = time.monotonic() - t0
    kc = km.client()
    kc.start_channels()
    await kc.wait_for_ready(timeout=120)
    return km, kc, listening


async def stop(km: Any, kc: Any) -> None:
    kc.stop_channels()
    await km.shutdown_kernel()


async def reattach(kernel_name: str, record: dict[str, Any]) -> Any:
    """A second manager for a running kernel, from its provisioner record (server restart)."""
    from jupyter_client.ioloop import AsyncIOLoopKernelManager
    from jupyter_client.provisioning import KernelProvisionerFactory

    km = AsyncIOLoopKernelManager(kernel_name=kernel_name)
    km.kernel_id = record["kernel_id"]
    prov = KernelProvisionerFactory.instance().create_provisioner_instance(
        record["kernel_id"], km.kernel_spec, parent=km
    )
    await prov.load_provisioner_info(record)
    km.provisioner = prov
    km.load_connection_info(prov.connection_info)
    return km


async def squeue_per_minute(seconds: float) -> float:
    from kernelprovider.slurm import SlurmQueue

    queue = SlurmQueue.instance()
    before = queue.calls
    await asyncio.sleep(seconds)
    return (queue.calls - before) * 60 / seconds


def rss_mb(pids: Callable[[], list[int]] | None = None) -> float:
    gc.collect()
    if pids is None:
        return psutil.Process().memory_info().rss / 2**20
    total = 0
    for pid in pids():
        try:
            total += psutil.Process(pid).memory_info().rss
        except psutil.Error:
            pass
    return total / 2**20


# --- the run -------------------------------------------------------------------------------


async def bench(args: argparse.Namespace, tmp: Path) -> list[tuple[str, str, str, str]]:
    from jupyter_client.ioloop import AsyncIOLoopKernelManager

    from kernelprovider.kernelspec import (
        PROVISIONER_NAME,
        SLURM_PROVISIONER_NAME,
        build_kernelspec,
        install_kernelspec,
    )

    prefix = tmp / "prefix"
    work = str(tmp / "work")
    os.makedirs(work)
    # Same container flags on both sides; this box has no NVIDIA driver for --nv to bind.
    common = {"image": args.image, "gpu": "none"}
    slurm = {
        **common,
        "state_dir": str(tmp / "state"),
        "partition": args.partition,
        "time_limit": "30:00",
        "queue_timeout": 300,
    }
    specs = {
        "kpbench-slurm": (SLURM_PROVISIONER_NAME, {**slurm, "gpus": "1"}),
        "kpbench-slurm-cpu": (SLURM_PROVISIONER_NAME, {**slurm, "gpus": "0"}),
        "kpbench-local": (PROVISIONER_NAME, common),
    }
    for name, (prov, config) in specs.items():
        spec = build_kernelspec(name, config, provisioner=prov, interrupt_mode="message")
        install_kernelspec(spec, name, prefix=str(prefix))

    stamps = Stamps()
    logging.getLogger("traitlets").addHandler(stamps)
    logging.getLogger("traitlets").setLevel(logging.INFO)
    logging.getLogger("traitlets").propagate = False

    print("warming up (imports, image cache) ...", flush=True)
    for name in ("kpbench-local", "kpbench-slurm"):
        await stop(*(await start_ready(name, work))[:2])

    # -- start and restart, interleaved so drift hits every series alike
    series = (
        "alloc step bare start ready restart local local_ready pre queue locate boot "
        "slurm_own overhead detect local_restart"
    )
    rows: dict[str, list[float]] = {k: [] for k in series.split()}
    for rep in range(args.reps):
        print(f"start/restart {rep + 1}/{args.reps} ...", flush=True)
        submit, alloc, step = await slurm_alone(args.partition, "1")
        rows["alloc"].append(alloc)
        rows["step"].append(step)
        rows["bare"].append(await bare_srun(args.partition))

        kernel_id = new_kernel_id()
        t0 = time.monotonic()
        watcher = asyncio.ensure_future(seen_running(f"kp-{kernel_id}"))
        km, kc, listening = await start_ready("kpbench-slurm", work, kernel_id=kernel_id)
        rows["start"].append(listening)
        rows["ready"].append(time.monotonic() - t0)
        running_seen = await asyncio.wait_for(watcher, 10)
        submitted = stamps.first("submitted Slurm job", t0)
        running = stamps.first("running on", t0)
        stepping = stamps.first("as a step of Slurm job", t0)
        if submitted and running and stepping:
            rows["pre"].append(submitted - t0)
            rows["queue"].append(running - submitted)
            rows["locate"].append(stepping - running)
            rows["boot"].append(t0 + listening - stepping)
            # Slurm's own share of this very start: its sbatch round trip, the wait until
            # the job ran (watched every 20 ms from outside), and one srun step
            own = submit + (running_seen - submitted) + step
            rows["slurm_own"].append(own)
            rows["overhead"].append(listening - own)
            rows["detect"].append(running - running_seen)
        t1 = time.monotonic()
        await km.restart_kernel()
        await kc.wait_for_ready(timeout=120)
        rows["restart"].append(time.monotonic() - t1)
        await stop(km, kc)

        t0 = time.monotonic()
        km, kc, listening = await start_ready("kpbench-local", work)
        rows["local"].append(listening)
        rows["local_ready"].append(time.monotonic() - t0)
        t1 = time.monotonic()
        await km.restart_kernel()
        await kc.wait_for_ready(timeout=120)
        rows["local_restart"].append(time.monotonic() - t1)
        await stop(km, kc)

    overhead = rows["overhead"]
    beyond_boot = [o - loc for o, loc in zip(overhead, rows["local"], strict=True)]
    restart_ratio = statistics.median(rows["restart"]) / statistics.median(rows["local_ready"])

    # -- scale: squeue per minute and RSS, with 1 and with N kernels
    srun_pids: list[int] = []
    kms: list[tuple[Any, Any]] = []
    attached: list[Any] = []

    async def add_kernels(count: int) -> None:
        sem = asyncio.Semaphore(4)  # 2 cores: a few container boots at a time

        async def one() -> None:
            async with sem:
                km, kc, _ = await start_ready(
                    "kpbench-slurm-cpu", work, manager=AsyncIOLoopKernelManager
                )
                kc.stop_channels()  # a server holds no client per idle kernel
                kms.append((km, kc))
                srun_pids.append(km.provisioner.pid)

        await asyncio.gather(*(one() for _ in range(count)))

    async def attach_all() -> None:
        for km, _ in kms[len(attached) :]:
            record = await km.provisioner.get_provisioner_info()
            other = await reattach(km.kernel_name, record)
            other.start_restarter()
            attached.append(other)

    def stop_attached() -> None:
        for other in attached:
            other.stop_restarter()

    scale: dict[str, float] = {}
    tracemalloc.start()
    try:
        rss0 = rss_mb()
        heap0 = tracemalloc.get_traced_memory()[0]
        print(f"scale: 1 kernel, {args.window:.0f} s windows ...", flush=True)
        await add_kernels(1)
        scale["launched_1"] = await squeue_per_minute(args.window)
        await attach_all()
        scale["attached_1"] = await squeue_per_minute(args.window)
        print(f"scale: {args.kernels} kernels ...", flush=True)
        stop_attached()
        await add_kernels(args.kernels - 1)
        await asyncio.sleep(2)
        rss_n = rss_mb()
        scale["rss_per_kernel"] = (rss_n - rss0) / args.kernels
        # Python objects the server still holds per kernel (RSS can hide them in freed pages)
        scale["heap_per_kernel"] = (tracemalloc.get_traced_memory()[0] - heap0) / args.kernels
        tracemalloc.stop()
        scale["srun_rss_per_kernel"] = rss_mb(lambda: srun_pids) / len(srun_pids)
        scale["launched_n"] = await squeue_per_minute(args.window)
        for other in attached:
            other.start_restarter()
        await attach_all()
        scale["attached_n"] = await squeue_per_minute(args.window)
        alive = [await km.is_alive() for km, _ in kms] + [await o.is_alive() for o in attached]
        scale["alive"] = sum(alive) / len(alive)
    finally:
        stop_attached()
        print("shutting down ...", flush=True)
        await asyncio.gather(*(km.shutdown_kernel() for km, _ in kms), return_exceptions=True)

    # -- report
    print()
    print(
        f"Slurm {await slurm_version()} on {os.uname().nodename}, {os.cpu_count()} CPUs; "
        f"image {Path(args.image).name}; {args.reps} repetitions; medians (min-max)"
    )
    detail = [
        ("Slurm alone: sbatch -> RUNNING (squeue every 20 ms)", rows["alloc"]),
        ("Slurm alone: srun --jobid --overlap true", rows["step"]),
        ("Slurm alone: bare srun true (new allocation + step)", rows["bare"]),
        ("kernel start via SlurmProvisioner (listening)", rows["start"]),
        ("  of which: checks before sbatch", rows["pre"]),
        ("  of which: sbatch -> RUNNING seen by the provisioner", rows["queue"]),
        ("  of which: node lookup, step argv", rows["locate"]),
        ("  of which: srun + apptainer + ipykernel listening", rows["boot"]),
        ("  Slurm's own share (same job, watched from outside)", rows["slurm_own"]),
        ("  provisioner's RUNNING detection lag", rows["detect"]),
        ("kernel start via SlurmProvisioner (kernel_info ready)", rows["ready"]),
        ("local cold start via ContainerProvisioner (listening)", rows["local"]),
        ("local cold start via ContainerProvisioner (ready)", rows["local_ready"]),
        ("restart inside the allocation (ready)", rows["restart"]),
        ("local restart via ContainerProvisioner (ready), for scale", rows["local_restart"]),
        ("overhead beyond Slurm's own (start - Slurm's share)", overhead),
        ("  same, less the local container+kernel boot", beyond_boot),
    ]
    for label, values in detail:
        if values:
            print(f"  {label:58s} {fmt_s(values)}")
    n = args.kernels
    for kind in ("launched", "attached"):
        print(
            f"  squeue calls/min while the restarters of {kind} kernels poll: "
            f"1 kernel {scale[kind + '_1']:.1f}, {n} kernels {scale[kind + '_n']:.1f}"
        )
    print(
        f"  server process per kernel ({n} kernels): RSS {scale['rss_per_kernel']:.1f} MB, "
        f"Python heap {scale['heap_per_kernel'] / 2**20:.2f} MB; "
        f"srun helper RSS per kernel: {scale['srun_rss_per_kernel']:.1f} MB; "
        f"alive at the end: {scale['alive']:.0%}"
    )

    med_over = statistics.median(overhead)
    host_rss = scale["rss_per_kernel"] + scale["srun_rss_per_kernel"]
    a1, an = scale["attached_1"], scale["attached_n"]
    return [
        ("start overhead beyond Slurm's own", f"{med_over:.2f} s", "<= 1.0 s", med_over <= 1.0),
        (
            "restart in allocation / local cold start",
            f"{restart_ratio:.2f}x",
            "<= 1.2x",
            restart_ratio <= 1.2,
        ),
        (
            f"squeue/min launched, 1 vs {n} kernels",
            f"{scale['launched_1']:.1f} vs {scale['launched_n']:.1f}",
            "independent of N",
            scale["launched_n"] <= scale["launched_1"] + 60 / args.window,
        ),
        (
            f"squeue/min re-attached, 1 vs {n} kernels",
            f"{a1:.1f} vs {an:.1f}",
            "independent of N",
            an <= a1 * 1.25 + 60 / args.window,
        ),
        (
            "server RSS per running kernel",
            f"{scale['rss_per_kernel']:.1f} MB",
            "<= 15 MB",
            scale["rss_per_kernel"] <= 15,
        ),
        (
            "  same, plus its srun on the server host",
            f"{host_rss:.1f} MB",
            "<= 15 MB",
            host_rss <= 15,
        ),
    ]


async def slurm_version() -> str:
    rc, out, _ = await sh("sinfo", "--version")
    return out.split()[-1] if rc == 0 and out.split() else "?"


def print_table(results: list[tuple[str, str, str, bool]]) -> None:
    print()
    print(f"{'metric':44s} {'measured':>16s}  {'target':18s} verdict")
    for metric, measured, target, ok in results:
        print(f"{metric:44s} {measured:>16s}  {target:18s} {'PASS' if ok else 'MISS'}")


async def cancel_ours() -> None:
    rc, out, _ = await sh("squeue", "-h", "-o", "%i %j")
    ids = [line.split()[0] for line in out.splitlines() if PREFIX in line]
    if ids:
        await sh("scancel", *ids)


def private_jupyter(prefix: str) -> Path:
    """A temporary directory of its own for Jupyter's paths (kernelspecs, runtime, data,
    config), set in this process's environment; the caller removes it at the end."""
    tmp = Path(tempfile.mkdtemp(prefix=prefix))
    for var, sub in [
        ("JUPYTER_PATH", "prefix/share/jupyter"),
        ("JUPYTER_DATA_DIR", "data"),
        ("JUPYTER_RUNTIME_DIR", "runtime"),
        ("JUPYTER_CONFIG_DIR", "config"),
    ]:
        os.environ[var] = str(tmp / sub)
    return tmp


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if not shutil.which("sbatch"):
        print(
            "No Slurm client commands here; start the test cluster first "
            "(sudo scripts/slurm-cluster.sh start).",
            file=sys.stderr,
        )
        return 2
    if not Path(args.image).exists():
        print(
            f"Image {args.image} is missing; build the test images first "
            "(bash scripts/setup-testenv.sh).",
            file=sys.stderr,
        )
        return 2
    tmp = private_jupyter("kpbench-")
    os.environ["PYDEVD_DISABLE_FILE_VALIDATION"] = "1"  # quiet local kernels' debugpy
    started = time.monotonic()
    try:
        results = asyncio.run(bench(args, tmp))
    finally:
        asyncio.run(cancel_ours())
        shutil.rmtree(tmp, ignore_errors=True)
    print_table(results)
    print(f"\n(total {time.monotonic() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
