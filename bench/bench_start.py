#!/usr/bin/env python
"""Start latency: a hand-written `apptainer exec` kernel.json vs ContainerProvisioner.

One run, interleaved, so the machine's speed of the moment cancels out of the ratios:

1. (a) a kernel.json whose argv is ``apptainer exec IMAGE python3 -m ipykernel_launcher -f
   {connection_file}`` and (b) the same image through ContainerProvisioner: medians of
   start-to-ready (``start_kernel`` until ``kernel_info`` answers) and of the execute round trip,
   and the ratios b/a (targets: start <= 1.05, round trip <= 1.02);
2. where a start goes: the provisioner's checks (image header, runtime lookup, host facts, image
   facts, verdicts; first call and cached), ``apptainer exec`` until the image's Python runs,
   Python + ipykernel import, until the shell port listens, until kernel_info answers; and for
   Slurm: sbatch until RUNNING, the login-shell environment that ``--export=NONE`` makes Slurm
   build (with a slow login profile), the probe step, an srun step, and a restart in the same
   allocation vs a cold local start;
3. images users have: gzip, xz, zstd SIFs and a sandbox of one root filesystem, an image without
   byte-code caches and (when built with ``KP_BENCH_IMAGES=1 bash scripts/setup-testenv.sh``) a
   large numpy/scipy/pandas image;
4. 16 concurrent starts: p50/p90 against a single start, local and Slurm.

    build/venv/bin/python bench/bench_start.py [--quick] [--no-slurm] [--no-images]

The image variants are built once under build/bench/ (kept; rebuilt when kp-test.sif changes).
Slurm jobs are named kpstart<pid>-... and cancelled at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import pwd
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BENCH_DIR = ROOT / "build" / "bench"
PREFIX = f"kpstart{os.getpid()}"
SLOW_USER = "kpbench15"
SLOW_PROFILE_S = 2
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_slurm import Stamps, private_jupyter, sh  # noqa: E402  (shared with the Slurm benchmark)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="fewer repetitions")
    p.add_argument("--reps", type=int, help="side-by-side pairs (default 8, quick 4)")
    p.add_argument("--image-reps", type=int, help="starts per image variant (default 3, quick 2)")
    p.add_argument("--burst", type=int, default=16, help="concurrent starts (default 16)")
    p.add_argument("--no-slurm", action="store_true", help="skip the Slurm parts")
    p.add_argument("--no-images", action="store_true", help="skip the image variants")
    p.add_argument("--image", default=str(ROOT / "build" / "images" / "kp-test.sif"))
    p.add_argument("--partition", default="gpu")
    args = p.parse_args(argv)
    args.reps = args.reps or (4 if args.quick else 8)
    args.image_reps = args.image_reps or (2 if args.quick else 3)
    return args


# --- small tools ---------------------------------------------------------------------------


def med(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def pct(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    k = (len(ordered) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def row(label: str, values: Sequence[float], unit: str = "s") -> str:
    if not values:
        return f"  {label:60s}      -"
    scale = 1000 if unit == "ms" else 1
    return (
        f"  {label:60s} {med(values) * scale:7.3f} {unit}  "
        f"({min(values) * scale:.3f}-{max(values) * scale:.3f}, n={len(values)})"
    )


async def timed(argv: Sequence[str], timeout: float = 120) -> float:
    t0 = time.monotonic()
    rc, _, err = await sh(*argv, timeout=timeout)
    if rc != 0:
        raise RuntimeError(f"{' '.join(argv[:4])}... failed (exit {rc}): {err.strip()[-300:]}")
    return time.monotonic() - t0


def apptainer() -> str:
    found = shutil.which("apptainer") or shutil.which("singularity")
    if not found:
        raise SystemExit("No apptainer on PATH; run 'make testenv' first.")
    return found


# --- kernels -------------------------------------------------------------------------------


#: Starts that failed and were tried again (e.g. a port another process took meanwhile:
#: jupyter_client picks free ports, other servers on this host pick theirs at the same time).
RETRIED: list[str] = []


async def start_ready(name: str, work: str, kernel_id: str | None = None) -> dict[str, Any]:
    """Start kernel ``name``; times of start_kernel's return (listening) and kernel_info.
    A start that fails is tried once more (and listed at the end); its time is not used."""
    try:
        return await _start_ready(name, work, kernel_id)
    except Exception as e:
        RETRIED.append(f"{name}: {type(e).__name__}: {str(e)[:100]}")
        return await _start_ready(name, work, None)


async def _start_ready(name: str, work: str, kernel_id: str | None) -> dict[str, Any]:
    from jupyter_client import AsyncKernelManager

    km = AsyncKernelManager(kernel_name=name)
    t0 = time.monotonic()
    try:
        await km.start_kernel(cwd=work, kernel_id=kernel_id or f"{PREFIX}-{uuid.uuid4().hex[:10]}")
    except Exception:
        # a start that failed after its process began (a burst's JSONDecodeError): end it
        if km.has_kernel:
            await km.shutdown_kernel(now=True)
        raise
    t1 = time.monotonic()
    kc = km.client()
    kc.start_channels()
    try:
        await kc.wait_for_ready(timeout=180)
    except Exception:
        kc.stop_channels()
        await km.shutdown_kernel(now=True)
        raise
    return {"km": km, "kc": kc, "t0": t0, "launched": t1 - t0, "ready": time.monotonic() - t0}


async def round_trips(kc: Any, count: int) -> list[float]:
    """Execute round trips of a trivial cell (execute_request until its reply)."""
    times = []
    for i in range(count):
        t0 = time.monotonic()
        reply = await kc.execute(f"{i} + 1", reply=True, timeout=60)
        times.append(time.monotonic() - t0)
        if reply["content"]["status"] != "ok":
            raise RuntimeError(f"execute failed: {reply['content']}")
    return times


async def stop(k: dict[str, Any]) -> None:
    k["kc"].stop_channels()
    await k["km"].shutdown_kernel(now=False)


def install_specs(prefix: Path, specs: dict[str, tuple[str | None, Any]]) -> None:
    """name -> (provisioner or None for a hand-written argv, config or argv)."""
    from kernelprovider.kernelspec import build_kernelspec, install_kernelspec

    for name, (prov, value) in specs.items():
        if prov is None:
            spec = {"argv": value, "display_name": name, "language": "python"}
        else:
            spec = build_kernelspec(name, value, provisioner=prov, interrupt_mode="message")
        install_kernelspec(spec, name, prefix=str(prefix))


# --- image variants ------------------------------------------------------------------------


def build_variants(base: str) -> dict[str, str]:
    """gzip (the base), xz, zstd SIFs, a sandbox and a no-.pyc SIF of one root filesystem."""
    BENCH_DIR.mkdir(parents=True, exist_ok=True)
    stamp = BENCH_DIR / "source.stamp"
    st = os.stat(base)
    key = f"{os.path.realpath(base)} {st.st_size} {st.st_mtime_ns}\n"
    sandbox = BENCH_DIR / "kp-test-sandbox"
    out = {"gzip SIF": base, "sandbox": str(sandbox)}
    wanted = {
        "xz SIF": (BENCH_DIR / "kp-test-xz.sif", sandbox, "xz"),
        "zstd SIF": (BENCH_DIR / "kp-test-zstd.sif", sandbox, "zstd"),
        "gzip SIF, no .pyc": (BENCH_DIR / "kp-test-nopyc.sif", BENCH_DIR / "nopyc-root", "gzip"),
    }
    fresh = stamp.exists() and stamp.read_text() == key
    env = {**os.environ, "APPTAINER_TMPDIR": str(BENCH_DIR)}
    run = apptainer()
    if not fresh or not sandbox.is_dir():
        shutil.rmtree(sandbox, ignore_errors=True)
        print("  unpacking kp-test.sif into a sandbox ...", flush=True)
        from kernelprovider.image import image_compression

        comp = image_compression(base)
        if comp is None or comp.compressor is None:
            raise SystemExit(f"{base} has no squashfs root filesystem to unpack")
        # unsquashfs of the SIF's partition: the same files, without apptainer's extractor
        subprocess.run(
            ["unsquashfs", "-q", "-n", "-o", str(comp.offset), "-d", str(sandbox), base],
            check=True,
            stdout=subprocess.DEVNULL,
        )
    for label, (sif, src, comp) in wanted.items():
        out[label] = str(sif)
        if fresh and sif.exists():
            continue
        if src.name == "nopyc-root":
            shutil.rmtree(src, ignore_errors=True)
            subprocess.run(["cp", "-a", str(sandbox), str(src)], check=True)
            for d in list(src.rglob("__pycache__")):
                shutil.rmtree(d, ignore_errors=True)
        print(f"  building {sif.name} ({comp}) ...", flush=True)
        subprocess.run(
            [
                run,
                "-q",
                "build",
                "--force",
                "--mksquashfs-args",
                f"-comp {comp}",
                str(sif),
                str(src),
            ],
            check=True,
            env=env,
        )
        if src.name == "nopyc-root":
            shutil.rmtree(src, ignore_errors=True)
    stamp.write_text(key)
    scipy = ROOT / "build" / "images" / "kp-scipy.sif"
    if scipy.exists():
        out["large: numpy/scipy/pandas, gzip"] = str(scipy)
    return out


def image_size(path: str) -> str:
    if os.path.isdir(path):
        total = sum(
            f.stat().st_size for f in Path(path).rglob("*") if f.is_file() and not f.is_symlink()
        )
        return f"{total / 2**20:.0f} MB"
    return f"{os.path.getsize(path) / 2**20:.0f} MB"


# --- the parts -----------------------------------------------------------------------------


async def checks_breakdown(image: str) -> dict[str, tuple[float, float]]:
    """Each provisioner check timed on its own: (first call, cached call) in seconds."""
    from kernelprovider import apptainer as ap
    from kernelprovider import image as im
    from kernelprovider import provisioner as pv
    from kernelprovider.compat import evaluate

    out: dict[str, tuple[float, float]] = {}

    async def both(
        label: str, reset: Callable[[], None], call: Callable[[], Awaitable[Any]]
    ) -> Any:
        reset()
        t0 = time.monotonic()
        value = await call()
        t1 = time.monotonic()
        await call()
        out[label] = (t1 - t0, time.monotonic() - t1)
        return value

    async def header() -> Any:
        return ap.check_image(image)

    await both("image header (check_image)", lambda: None, header)
    runtime = await both(
        "runtime lookup (apptainer --version)",
        ap._runtime_cache.clear,
        lambda: ap.find_runtime_async("auto"),
    )

    def reset_host() -> None:
        pv._host_cache = None

    host = await both("host facts (driver, GPUs)", reset_host, pv.local_host_facts)
    cache = Path(tempfile.mkdtemp(prefix="kpstart-facts-")) / "facts.json"

    def reset_facts() -> None:
        im.clear_cache()
        cache.unlink(missing_ok=True)

    facts = await both(
        "image facts (inspect + one exec; then cache)",
        reset_facts,
        lambda: im.image_facts_async(image, runtime.path, cache_file=cache),
    )

    async def verdicts() -> Any:
        return evaluate(facts, host)

    await both("verdicts", lambda: None, verdicts)
    im.clear_cache()
    return out


async def exec_breakdown(image: str, reps: int) -> dict[str, list[float]]:
    """apptainer exec of true / python3 -c pass / import ipykernel.kernelapp, interleaved."""
    run = apptainer()
    series: dict[str, list[float]] = {"true": [], "python": [], "import": []}
    argvs = {
        "true": [run, "exec", image, "/bin/true"],
        "python": [run, "exec", image, "python3", "-c", "pass"],
        "import": [run, "exec", image, "python3", "-c", "import ipykernel.kernelapp"],
    }
    for _ in range(reps):
        for key, argv in argvs.items():
            series[key].append(await timed(argv))
    return series


async def import_time(image: str, modules: str, reps: int) -> list[float]:
    run = apptainer()
    return [
        await timed([run, "exec", image, "python3", "-c", f"import {modules}"]) for _ in range(reps)
    ]


async def side_by_side(work: str, reps: int, stamps: Stamps) -> dict[str, list[float]]:
    """(a), (b) and (c: the provisioner with its default gpu='nv') started in rotating order;
    then, with all three alive, execute round trips alternated between them."""
    rows: dict[str, list[float]] = {
        k: [] for k in "a_ready b_ready c_ready a_rt b_rt c_rt b_launch b_pre b_listen".split()
    }
    names = {"a": "kpstart-raw", "b": "kpstart-prov", "c": "kpstart-prov-nv"}
    for rep in range(reps):
        print(f"  side by side {rep + 1}/{reps} ...", flush=True)
        order = "abc"[rep % 3 :] + "abc"[: rep % 3]
        if rep % 2:
            order = order[::-1]
        alive = {}
        for side in order:
            k = alive[side] = await start_ready(names[side], work)
            rows[f"{side}_ready"].append(k["ready"])
            if side == "b":
                rows["b_launch"].append(k["launched"])
                started = stamps.first("Starting kernel", k["t0"])
                if started is not None:
                    rows["b_pre"].append(started - k["t0"])
                    rows["b_listen"].append(k["launched"] - (started - k["t0"]))
        rts: dict[str, list[float]] = {side: [] for side in alive}
        for _ in range(20):
            for side in order:
                rts[side] += await round_trips(alive[side]["kc"], 1)
        for side in order:
            rows[f"{side}_rt"].append(med(rts[side]))
        await asyncio.gather(*(stop(k) for k in alive.values()))
    return rows


async def cold_checks_burst(image: str, count: int) -> tuple[float, float]:
    """The checks that a cache serves, on cold caches: one start alone vs ``count`` at once
    (seconds until all have their facts), as 16 kernels of a fresh server would."""
    from kernelprovider import apptainer as ap
    from kernelprovider import image as im
    from kernelprovider import provisioner as pv

    cache = Path(tempfile.mkdtemp(prefix="kpstart-facts-")) / "facts.json"

    async def one() -> None:
        await asyncio.to_thread(ap.check_image, image)
        rt = await ap.find_runtime_async("auto")
        await pv.local_host_facts()
        await im.image_facts_async(image, rt.path, cache_file=cache)

    def reset() -> None:
        ap._runtime_cache.clear()
        pv._host_cache = None
        im.clear_cache()
        cache.unlink(missing_ok=True)

    out = []
    for n in (1, count):
        reset()
        t0 = time.monotonic()
        await asyncio.gather(*(one() for _ in range(n)))
        out.append(time.monotonic() - t0)
    reset()
    return out[0], out[1]


async def burst(name: str, work: str, count: int) -> tuple[list[float], list[str]]:
    """(start-to-ready of the starts that worked, one line per start that failed)."""
    got = await asyncio.gather(
        *(start_ready(name, work) for _ in range(count)), return_exceptions=True
    )
    ks = [k for k in got if isinstance(k, dict)]
    failed = [f"{type(e).__name__}: {str(e)[:120]}" for e in got if isinstance(e, BaseException)]
    await asyncio.gather(*(stop(k) for k in ks))
    return [k["ready"] for k in ks], failed


async def restart_times(name: str, work: str, reps: int) -> list[float]:
    k = await start_ready(name, work)
    out = []
    try:
        for _ in range(reps):
            t0 = time.monotonic()
            await k["km"].restart_kernel(now=False)
            await k["kc"].wait_for_ready(timeout=180)
            out.append(time.monotonic() - t0)
    finally:
        await stop(k)
    return out


# --- Slurm ---------------------------------------------------------------------------------


async def wait_state(job: str, state: str = "RUNNING", timeout: float = 300) -> float:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        _, out, _ = await sh("squeue", "-h", "-j", job, "-o", "%T")
        if out.strip() == state:
            return time.monotonic()
        await asyncio.sleep(0.02)
    raise RuntimeError(f"job {job} not {state} within {timeout} s")


def ensure_slow_user() -> pwd.struct_passwd:
    """A test user whose login profile sleeps SLOW_PROFILE_S seconds."""
    try:
        user = pwd.getpwnam(SLOW_USER)
    except KeyError:
        subprocess.run(["useradd", "-m", "-s", "/bin/bash", SLOW_USER], check=True)
        user = pwd.getpwnam(SLOW_USER)
    profile = Path(user.pw_dir) / ".bash_profile"
    profile.write_text(f"# kernelprovider bench: a slow login profile\nsleep {SLOW_PROFILE_S}\n")
    os.chown(profile, user.pw_uid, user.pw_gid)
    return user


async def login_env_cost(partition: str, reps: int) -> dict[str, list[float]]:
    """For the slow-profile user: sbatch -> script running, and sbatch -> first srun step done,
    per --export choice. The script writes a marker when it runs."""
    user = ensure_slow_user()
    marker_dir = Path(user.pw_dir)
    choices = {
        "--export=NONE": ["--export=NONE"],
        "--export=NIL": ["--export=NIL"],
        "--export=ALL": ["--export=ALL"],
        "--export=ALL --get-user-env": ["--export=ALL", "--get-user-env"],
    }
    out: dict[str, list[float]] = {}
    for _ in range(reps):
        for label, opts in choices.items():
            marker = marker_dir / f"{PREFIX}-{uuid.uuid4().hex[:6]}"
            t0 = time.monotonic()
            rc, sout, err = await sh(
                "runuser", "-u", SLOW_USER, "--", "sbatch", "--parsable",
                f"--job-name={PREFIX}-env", f"--partition={partition}", "--time=2:00",
                "--output=/dev/null", f"--chdir={marker_dir}", *opts,
                "--wrap", f"touch {marker}; sleep 120",
            )  # fmt: skip
            if rc != 0:
                out.setdefault(label + " (refused)", []).append(0.0)
                continue
            job = sout.strip().split(";")[0]
            try:
                running = await wait_state(job)
                step_t0 = time.monotonic()
                rc, _, _ = await sh(
                    "runuser", "-u", SLOW_USER, "--", "srun", f"--jobid={job}", "--overlap",
                    "-N1", "-n1", "true", timeout=120,
                )  # fmt: skip
                step = time.monotonic() - step_t0
                while not marker.exists() and time.monotonic() - t0 < 60:
                    await asyncio.sleep(0.02)
                script = time.monotonic() - t0
                out.setdefault(label + ": sbatch -> RUNNING", []).append(running - t0)
                out.setdefault(label + ": sbatch -> script runs", []).append(script)
                out.setdefault(label + ": first srun step (after RUNNING)", []).append(step)
            finally:
                await sh("scancel", job)
                marker.unlink(missing_ok=True)
    return out


async def slurm_parts(
    args: argparse.Namespace, work: str, stamps: Stamps, local_ready: float
) -> dict[str, Any]:
    from kernelprovider.gpu import PROBE_SCRIPT

    res: dict[str, Any] = {"rows": {}}
    rows: dict[str, list[float]] = res["rows"]
    for key in "alloc step probe start_ready pre queue locate boot restart".split():
        rows[key] = []
    for rep in range(args.image_reps):
        print(f"  slurm {rep + 1}/{args.image_reps} ...", flush=True)
        t0 = time.monotonic()
        rc, out, err = await sh(
            "sbatch", "--parsable", f"--job-name={PREFIX}-alloc", "--export=NONE",
            "--output=/dev/null", f"--partition={args.partition}", "--time=5:00",
            "--wrap", "sleep 300",
        )  # fmt: skip
        if rc != 0:
            raise RuntimeError(f"sbatch failed: {err.strip()}")
        job = out.strip().split(";")[0]
        try:
            rows["alloc"].append(await wait_state(job) - t0)
            srun = ["srun", f"--jobid={job}", "--overlap", "-N1", "-n1", "--quiet"]
            rows["step"].append(await timed([*srun, "true"]))
            rows["probe"].append(await timed([*srun, "sh", "-c", PROBE_SCRIPT]))
        finally:
            await sh("scancel", job)
        k = await start_ready("kpstart-slurm", work)
        rows["start_ready"].append(k["ready"])
        sub = stamps.first("submitted Slurm job", k["t0"])
        run = stamps.first("running on", k["t0"])
        step = stamps.first("as a step of Slurm job", k["t0"])
        if sub and run and step:
            rows["pre"].append(sub - k["t0"])
            rows["queue"].append(run - sub)
            rows["locate"].append(step - run)
            rows["boot"].append(k["launched"] - (step - k["t0"]))
        t1 = time.monotonic()
        await k["km"].restart_kernel(now=False)
        await k["kc"].wait_for_ready(timeout=180)
        rows["restart"].append(time.monotonic() - t1)
        await stop(k)
    res["restart_ratio"] = med(rows["restart"]) / local_ready
    print("  slurm login environment (slow profile) ...", flush=True)
    res["env"] = await login_env_cost(args.partition, max(1, args.image_reps - 1))
    print(f"  slurm burst of {args.burst} ...", flush=True)
    # without GPUs: the test node has 4, and a burst of kernels holding GPUs would queue
    res["burst"], res["burst_failed"] = await burst("kpstart-slurm-cpu", work, args.burst)
    return res


# --- the run -------------------------------------------------------------------------------


async def bench(args: argparse.Namespace, tmp: Path) -> int:
    from kernelprovider.image import compression_note, image_compression
    from kernelprovider.kernelspec import PROVISIONER_NAME, SLURM_PROVISIONER_NAME

    work = str(tmp / "work")
    os.makedirs(work)
    os.chdir(work)  # every apptainer exec starts in the same small directory
    image = args.image
    run = apptainer()
    common = {"image": image, "gpu": "none"}
    specs: dict[str, tuple[str | None, Any]] = {
        "kpstart-raw": (
            None,
            [run, "exec", image, "python3", "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        ),
        "kpstart-prov": (PROVISIONER_NAME, common),
        "kpstart-prov-nv": (PROVISIONER_NAME, {"image": image, "compat_check": "warn"}),
        "kpstart-slurm": (
            SLURM_PROVISIONER_NAME,
            {
                **common,
                "state_dir": str(tmp / "state"),
                "partition": args.partition,
                "time_limit": "30:00",
                "queue_timeout": 300,
            },
        ),  # fmt: skip
        "kpstart-slurm-cpu": (
            SLURM_PROVISIONER_NAME,
            {
                **common,
                "state_dir": str(tmp / "state"),
                "partition": args.partition,
                "time_limit": "30:00",
                "queue_timeout": 300,
                "gpus": "0",
            },
        ),  # fmt: skip
    }
    install_specs(tmp / "prefix", specs)
    stamps = Stamps()
    tl = logging.getLogger("traitlets")
    tl.addHandler(stamps)
    tl.setLevel(logging.INFO)
    tl.propagate = False

    print("checks, each on its own (first call, then cached) ...", flush=True)
    checks = await checks_breakdown(image)
    print("warming up ...", flush=True)
    for name in ("kpstart-raw", "kpstart-prov", "kpstart-prov-nv"):
        await stop(await start_ready(name, work))

    print("1. side by side (a) hand-written kernel.json vs (b) ContainerProvisioner", flush=True)
    sbs = await side_by_side(work, args.reps, stamps)
    print("2. apptainer exec breakdown ...", flush=True)
    ex = await exec_breakdown(image, max(3, args.reps // 2))
    local_restart = await restart_times("kpstart-prov", work, max(2, args.reps // 2))

    variants: dict[str, dict[str, Any]] = {}
    if not args.no_images:
        print("3. image variants ...", flush=True)
        built = await asyncio.to_thread(build_variants, image)
        pycache = tmp / "pycache"
        pycache.mkdir()
        configs = {label: {"image": path} for label, path in built.items()}
        # What a site can do for an image without .pyc: a writable byte-code cache outside it
        configs["gzip SIF, no .pyc, PYTHONPYCACHEPREFIX"] = {
            "image": built["gzip SIF, no .pyc"],
            "binds": [str(pycache)],
            "container_env": {"PYTHONPYCACHEPREFIX": str(pycache)},
        }
        for label, config in configs.items():
            path = config["image"]
            spec = f"kpstart-img-{len(variants)}"
            install_specs(tmp / "prefix", {spec: (PROVISIONER_NAME, {**common, **config})})
            await stop(await start_ready(spec, work))  # facts cache, page cache
            entry: dict[str, Any] = {"path": path, "ready": [], "import": []}
            for _ in range(args.image_reps):
                k = await start_ready(spec, work)
                entry["ready"].append(k["ready"])
                await stop(k)
                entry["import"] += await import_time(path, "ipykernel.kernelapp", 1)
            if "scipy" in label:
                entry["big"] = await import_time(
                    path, "numpy, scipy.linalg, pandas", args.image_reps
                )
            comp = await asyncio.to_thread(image_compression, path)
            entry["comp"] = compression_note(comp) if comp else "?"
            entry["size"] = image_size(path)
            variants[label] = entry
            print(f"    {label}: ready {med(entry['ready']):.2f} s", flush=True)

    print(f"4. burst of {args.burst} local starts ...", flush=True)
    local_burst, local_failed = await burst("kpstart-prov", work, args.burst)
    cold_one, cold_burst = await cold_checks_burst(image, args.burst)

    slurm: dict[str, Any] | None = None
    if not args.no_slurm:
        if shutil.which("sbatch"):
            try:
                slurm = await slurm_parts(args, work, stamps, med(sbs["b_ready"]))
            except Exception as e:  # a cluster restarted by another helper: report, go on
                print(f"  Slurm part failed: {e}", flush=True)
        else:
            print("  no sbatch here: Slurm parts skipped", flush=True)

    # -- report
    start_ratio = med(sbs["b_ready"]) / med(sbs["a_ready"])
    rt_ratio = med(sbs["b_rt"]) / med(sbs["a_rt"])
    print("\n== 1. side by side, same image, interleaved (medians) ==")
    print(row("(a) hand-written apptainer exec kernel.json: start-to-ready", sbs["a_ready"]))
    print(row("(b) ContainerProvisioner: start-to-ready", sbs["b_ready"]))
    print(row("(a) execute round trip", sbs["a_rt"], "ms"))
    print(row("(b) execute round trip", sbs["b_rt"], "ms"))
    print(row("(c) ContainerProvisioner, gpu=nv, compat_check=warn: ready", sbs["c_ready"]))
    print(row("(c) execute round trip", sbs["c_rt"], "ms"))
    print("\n== 2. where a local start goes ==")
    for label, (first, cached) in checks.items():
        print(f"  check: {label:52s} first {first * 1000:8.1f} ms, cached {cached * 1000:7.2f} ms")
    print(row("(b) pre_launch: all checks + connection file (in the start)", sbs["b_pre"], "ms"))
    print(row("apptainer exec IMAGE true (runtime set-up, mount, exit)", ex["true"]))
    py = [p - t for p, t in zip(ex["python"], ex["true"], strict=True)]
    imp = [i - p for i, p in zip(ex["import"], ex["python"], strict=True)]
    print(row("  + python3 -c pass (interpreter start)", py))
    print(row("  + import ipykernel.kernelapp", imp))
    print(row("(b) after pre_launch until the shell port listens", sbs["b_listen"]))
    ki = [r - la for r, la in zip(sbs["b_ready"], sbs["b_launch"], strict=True)]
    print(row("(b) port listening until kernel_info answers", ki))
    print(row("(b) restart (same manager) until ready", local_restart))
    if variants:
        print("\n== 3. images (ContainerProvisioner start-to-ready; import in apptainer exec) ==")
        base = med(variants["gzip SIF"]["ready"])
        for label, e in variants.items():
            print(
                f"  {label:32s} {e['size']:>7s}  ready {med(e['ready']):6.2f} s "
                f"({med(e['ready']) / base:4.2f}x gzip)  import ipykernel "
                f"{med(e['import']):5.2f} s   [{e['comp']}]"
            )
            if "big" in e:
                print(
                    f"  {'':32s} {'':7s}  import numpy, scipy.linalg, pandas {med(e['big']):5.2f} s"
                )
    print(f"\n== 4. {args.burst} concurrent starts (start-to-ready) ==")
    single = med(sbs["b_ready"])
    print(
        f"  local: single {single:.2f} s; burst p50 {pct(local_burst, 0.5):.2f} s "
        f"({pct(local_burst, 0.5) / single:.1f}x), p90 {pct(local_burst, 0.9):.2f} s "
        f"({pct(local_burst, 0.9) / single:.1f}x); {args.burst} starts on "
        f"{os.cpu_count()} cores: {args.burst * single / (os.cpu_count() or 1):.1f} s of CPU-bound "
        "work per core if every start were CPU-bound"
    )
    print(f"  local burst: {len(local_failed)} of {args.burst} starts failed")
    for line in sorted(set(local_failed)):
        print(f"    {line}")
    print(
        f"  cold caches (fresh server), checks only: 1 start {cold_one:.2f} s, "
        f"{args.burst} at once {cold_burst:.2f} s ({cold_burst / cold_one:.1f}x)"
    )
    if slurm:
        r = slurm["rows"]
        print("\n== 2b. where a Slurm start goes ==")
        print(row("Slurm alone: sbatch -> RUNNING (squeue every 20 ms)", r["alloc"]))
        print(row("Slurm alone: srun --overlap true step", r["step"]))
        print(row("Slurm alone: probe step (srun sh -c PROBE_SCRIPT)", r["probe"]))
        print(row("SlurmProvisioner start-to-ready", r["start_ready"]))
        print(row("  of which: checks before sbatch", r["pre"]))
        print(row("  of which: sbatch -> RUNNING seen by the provisioner", r["queue"]))
        print(row("  of which: node lookup (+ probe when gpu != none), argv", r["locate"]))
        print(row("  of which: srun + apptainer + ipykernel listening", r["boot"]))
        print(row("restart in the same allocation until ready", r["restart"]))
        print(f"  restart in allocation / local cold start (b): {slurm['restart_ratio']:.2f}x")
        print(f"  login environment, user {SLOW_USER} with a {SLOW_PROFILE_S} s login profile:")
        for label, values in sorted(slurm["env"].items()):
            print(row("  " + label, values))
        print(f"  slurm burst: {len(slurm['burst_failed'])} of {args.burst} starts failed")
        for line in sorted(set(slurm["burst_failed"])):
            print(f"    {line}")
        b = slurm["burst"]
        single = med(r["start_ready"])
        print(
            f"  slurm burst of {args.burst}: single {single:.2f} s; p50 {pct(b, 0.5):.2f} s "
            f"({pct(b, 0.5) / single:.1f}x), p90 {pct(b, 0.9):.2f} s ({pct(b, 0.9) / single:.1f}x)"
        )
    print()
    print(f"{'metric':44s} {'measured':>10s}  {'target':10s} verdict")
    for metric, value, target in (
        ("start-to-ready (b)/(a)", start_ratio, 1.05),
        ("execute round trip (b)/(a)", rt_ratio, 1.02),
    ):
        verdict = "PASS" if value <= target else "MISS"
        print(f"{metric:44s} {value:10.3f}  <= {target:<7.2f} {verdict}")
    print(f"starts tried again: {len(RETRIED)}")
    for line in RETRIED:
        print(f"  {line}")
    print(json.dumps({"start_ratio": round(start_ratio, 4), "rt_ratio": round(rt_ratio, 4)}))
    return 0


async def cancel_ours() -> None:
    rc, out, _ = await sh("squeue", "-h", "-o", "%i %j")
    ids = [line.split()[0] for line in out.splitlines() if PREFIX in line]
    if ids:
        await sh("scancel", *ids)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if not Path(args.image).exists():
        print(f"Image {args.image} is missing; run 'make testenv' first.", file=sys.stderr)
        return 2
    tmp = private_jupyter("kpstart-")
    # (a) hands the server's whole environment to the container and (b) drops PYTHONPATH:
    # the server's Python path must not make the two sides differ.
    os.environ.pop("PYTHONPATH", None)
    os.environ["PYDEVD_DISABLE_FILE_VALIDATION"] = "1"
    started = time.monotonic()
    try:
        rc = asyncio.run(bench(args, tmp))
    finally:
        if shutil.which("squeue"):
            asyncio.run(cancel_ours())
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"(total {time.monotonic() - started:.0f} s)")
    return rc


if __name__ == "__main__":
    sys.exit(main())
