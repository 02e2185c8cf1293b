"""A kernel on the real Slurm cluster through AsyncKernelManager: start, execute (in the image, as
a step of the job), interrupt in both modes, restart in the same allocation, shutdown that
leaves nothing, a kernel that dies inside its step, and the CLI's Slurm kernelspec."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import psutil
import pytest
from jupyter_client import AsyncKernelManager
from jupyter_client.ioloop import AsyncIOLoopKernelManager
from kp_slurm import (
    interrupt_running_cell,
    new_kernel_id,
    processes_mentioning,
    run_cell,
    scontrol,
    slurm_steps,
    wait_until,
)
from slurm_cluster import squeue_jobs

from kernelprovider.errors import DriverIncompatible

pytestmark = [pytest.mark.slurm, pytest.mark.integration, pytest.mark.timeout(120)]

WHERE_AM_I = (
    "import json, os, socket\n"
    "labels = json.load(open('/.singularity.d/labels.json'))\n"
    "print(json.dumps({'tf': labels['TENSORFLOW_VERSION'], 'cuda': labels['CUDA_VERSION'],\n"
    "  'image_env': os.environ.get('KP_TEST_IMAGE'), 'job': os.environ.get('SLURM_JOB_ID'),\n"
    "  'step': os.environ.get('SLURM_STEP_ID'), 'gpus': os.environ.get('CUDA_VISIBLE_DEVICES'),\n"
    "  'cwd': os.getcwd(), 'host': socket.gethostname(), 'pid': os.getpid(),\n"
    "  'spec_env': os.environ.get('KP_SPEC_VAR'),\n"
    "  'hub': os.environ.get('JUPYTERHUB_API_TOKEN')}))\n"
)


async def where_am_i(kc: Any) -> dict[str, Any]:
    reply, out = await run_cell(kc, WHERE_AM_I)
    assert reply["status"] == "ok", out
    return json.loads(out.strip().splitlines()[-1])


def job_row(job_id: str) -> dict[str, str] | None:
    rows = [j for j in squeue_jobs() if j["id"] == str(job_id)]
    return rows[0] if rows else None


async def test_start_and_execute_in_the_image_as_a_step_of_the_job(
    slurm_kernel: Any,
    slurm_cluster: Any,
    state_dir: Path,
    jupyter_dirs: dict[str, Path],
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    caplog.set_level(logging.INFO)
    # a server token in the environment must not reach the kernel
    monkeypatch.setenv("JUPYTERHUB_API_TOKEN", "hub-token-that-stays-home")
    km, kc = await slurm_kernel(gpus="1", time_limit="15:00")
    prov = km.provisioner
    where = await where_am_i(kc)
    # in the image ...
    assert (where["tf"], where["cuda"], where["image_env"]) == ("1.8", "9.2", "kp-test")
    # ... as a step of this kernel's own job, on the allocated node, with its GPU
    assert where["job"] == prov.job_id
    assert where["step"] is not None and where["step"].isdigit()
    assert where["host"] == prov.node and prov.node in slurm_cluster.nodes
    assert prov.node_ip == slurm_cluster.node_addrs[prov.node]
    assert where["gpus"] == "0"
    assert where["cwd"] == str(jupyter_dirs["work"])
    assert where["hub"] is None
    assert psutil.Process(where["pid"]).status() != psutil.STATUS_ZOMBIE

    # the job Slurm holds: named after the kernel, traits turned into sbatch options
    row = job_row(prov.job_id)
    assert row is not None
    assert row["name"] == f"kp-{km.kernel_id}"
    assert (row["state"], row["partition"], row["node"]) == ("RUNNING", "gpu", prov.node)
    assert row["time_limit"] == "15:00"
    show = scontrol("show", "job", "-d", prov.job_id)
    assert "gres/gpu=1" in show or "gres:gpu:1" in show
    assert slurm_steps(prov.job_id)[f"{prov.job_id}.{where['step']}"] == f"kp-{km.kernel_id}-kernel"

    # the kernel wrote its connection file into the 0700 state directory; its log is there
    conn = Path(km.connection_file)
    assert conn.parent == state_dir
    assert state_dir.stat().st_mode & 0o777 == 0o700
    assert conn.stat().st_mode & 0o777 == 0o600
    assert json.loads(conn.read_text())["ip"] == prov.node_ip
    assert Path(prov.files["log"]).exists()

    # one INFO line per lifecycle step, with the job id
    lines = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert any(f"submitted Slurm job {prov.job_id}" in m and "--gres=gpu:1" in m for m in lines)
    assert any(f"Slurm job {prov.job_id} running on {prov.node}" in m for m in lines)
    assert any(
        f"as a step of Slurm job {prov.job_id} on {prov.node} ({prov.node_ip})" in m for m in lines
    )


async def test_every_slurm_trait_reaches_sbatch_and_output_reaches_the_log(
    slurm_kernel: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    km, kc = await slurm_kernel(
        gpus="1",
        gpu_option="gpus",
        account="proj-kp",
        qos="normal",  # accepted and ignored here: no accounting storage
        cpus_per_task=2,
        mem="512M",
        sbatch_args=["--comment=kp-trait-check"],
    )
    job = km.provisioner.job_id
    show = scontrol("show", "job", job)
    for field in (
        "TresPerJob=gres:gpu:1",
        "Account=proj-kp",
        "NumCPUs=2",
        "MinMemoryNode=512M",
        "Comment=kp-trait-check",
    ):
        assert field in show, field
    submitted = [r.getMessage() for r in caplog.records if "submitted Slurm job" in r.getMessage()]
    assert "--qos=normal" in submitted[0]
    # what the kernel writes to its stdout/stderr file descriptors lands in its log
    reply, _ = await run_cell(kc, "import os; os.write(2, b'kp-marker-stderr\\n')")
    assert reply["status"] == "ok"
    log = Path(km.provisioner.files["log"])
    assert wait_until(lambda: "kp-marker-stderr" in log.read_text(), 5)


async def test_kernelspec_env_reaches_the_kernel(
    slurm_spec: Any, jupyter_dirs: dict[str, Path]
) -> None:
    # srun gets a short allowlist of the server's environment; kernel.json's "env" must
    # still reach the kernel (through APPTAINERENV_*)
    name = slurm_spec("kp-slurm-env")
    spec_file = jupyter_dirs["prefix"] / "share/jupyter/kernels" / name / "kernel.json"
    spec = json.loads(spec_file.read_text())
    spec["env"] = {"KP_SPEC_VAR": "from-kernel.json"}
    spec_file.write_text(json.dumps(spec))
    km = AsyncKernelManager(kernel_name=name)
    await km.start_kernel(kernel_id=new_kernel_id(), cwd=str(jupyter_dirs["work"]))
    kc = km.client()
    kc.start_channels()
    try:
        await kc.wait_for_ready(timeout=60)
        assert (await where_am_i(kc))["spec_env"] == "from-kernel.json"
    finally:
        kc.stop_channels()
        await km.shutdown_kernel()


async def test_message_mode_interrupt(slurm_kernel: Any) -> None:
    km, kc = await slurm_kernel(interrupt_mode="message")
    assert km.kernel_spec.interrupt_mode == "message"
    before = await where_am_i(kc)
    reply = await interrupt_running_cell(
        km.interrupt_kernel, kc, "import time\nwhile True: time.sleep(0.01)"
    )
    assert reply["ename"] == "KeyboardInterrupt"
    after = await where_am_i(kc)
    assert (after["pid"], after["step"]) == (before["pid"], before["step"])


async def test_signal_mode_interrupt_goes_through_scancel(slurm_kernel: Any) -> None:
    km, kc = await slurm_kernel(name="kp-slurm-signal", interrupt_mode="signal")
    assert km.kernel_spec.interrupt_mode == "signal"
    before = await where_am_i(kc)
    # a busy loop in pure Python: only a real SIGINT in the kernel process stops it
    reply = await interrupt_running_cell(km.interrupt_kernel, kc, "while True: pass")
    assert reply["ename"] == "KeyboardInterrupt"
    assert km.provisioner.step_id == f"{km.provisioner.job_id}.{before['step']}"
    # twice more, quickly: each is delivered, nothing is killed
    for _ in range(2):
        reply = await interrupt_running_cell(km.interrupt_kernel, kc, "while True: pass")
        assert reply["ename"] == "KeyboardInterrupt"
    after = await where_am_i(kc)
    assert (after["pid"], after["step"]) == (before["pid"], before["step"])
    assert await km.is_alive()


async def test_restart_is_a_new_step_in_the_same_job(slurm_kernel: Any) -> None:
    km, kc = await slurm_kernel()
    await run_cell(kc, "x = 1")
    before = await where_am_i(kc)
    job = km.provisioner.job_id
    await km.restart_kernel()
    await kc.wait_for_ready(timeout=60)  # the same client: same ports, same key
    after = await where_am_i(kc)
    assert km.provisioner.job_id == job == after["job"]
    assert int(after["step"]) > int(before["step"])
    assert after["pid"] != before["pid"] or after["step"] != before["step"]
    content, out = await run_cell(kc, "print('x' in dir())")
    assert out.strip() == "False"
    steps = slurm_steps(job)
    assert f"{job}.{after['step']}" in steps and f"{job}.{before['step']}" not in steps
    assert [j["id"] for j in squeue_jobs(f"kp-{km.kernel_id}")] == [job]


async def test_shutdown_leaves_nothing(slurm_kernel: Any, state_dir: Path) -> None:
    km, kc = await slurm_kernel()
    prov = km.provisioner
    job, conn, srun_pid = prov.job_id, km.connection_file, prov.pid
    assert sorted(p.suffix for p in state_dir.iterdir()) == [".json", ".lease", ".log"]
    kc.stop_channels()
    await km.shutdown_kernel()
    # the provisioner confirmed it: no wait needed
    assert job_row(job) is None
    assert not [
        j
        for j in squeue_jobs(all_states=True)
        if j["id"] == job and j["state"] in ("RUNNING", "PENDING", "COMPLETING")
    ]
    assert list(state_dir.iterdir()) == []
    assert not psutil.pid_exists(srun_pid) or psutil.Process(srun_pid).status() == "zombie"
    assert processes_mentioning(conn) == []
    assert prov.job_id is None and not prov.has_process


@pytest.mark.parametrize("how", ["os._exit", "scancel step"])
async def test_kernel_dying_in_its_step_is_detected_and_restartable(
    slurm_kernel: Any, how: str
) -> None:
    km, kc = await slurm_kernel()
    before = await where_am_i(kc)
    job = km.provisioner.job_id
    if how == "os._exit":
        kc.execute("import os; os._exit(1)")
    else:
        subprocess.run(["scancel", f"{job}.{before['step']}"], check=True, timeout=30)
    for _ in range(100):
        if not await km.is_alive():
            break
        await asyncio.sleep(0.1)
    assert not await km.is_alive()
    assert await km.provisioner.poll() is not None
    # the allocation is still there; restart brings a working kernel into it
    assert job_row(job)["state"] == "RUNNING"
    await km.restart_kernel()
    await kc.wait_for_ready(timeout=60)
    after = await where_am_i(kc)
    assert after["job"] == job and int(after["step"]) > int(before["step"])
    assert await km.is_alive()


async def test_restarter_brings_a_killed_kernel_back_in_the_same_job(slurm_kernel: Any) -> None:
    km, kc = await slurm_kernel(manager=AsyncIOLoopKernelManager)
    before = await where_am_i(kc)
    job = km.provisioner.job_id
    restarted = asyncio.Event()
    km.add_restart_callback(restarted.set, "restart")
    subprocess.run(["scancel", f"{job}.{before['step']}"], check=True, timeout=30)
    await asyncio.wait_for(restarted.wait(), timeout=20)  # time_to_dead is 3 s
    for _ in range(200):
        if km.ready.done() and await km.is_alive():
            break
        await asyncio.sleep(0.1)
    await kc.wait_for_ready(timeout=60)
    after = await where_am_i(kc)
    assert after["job"] == job and int(after["step"]) > int(before["step"])


@pytest.mark.timeout(150)
async def test_cli_installed_slurm_kernelspec_starts_on_the_cluster(
    images: Any, jupyter_dirs: dict[str, Path], state_dir: Path, slurm_cluster: Any
) -> None:
    cli = Path(sys.executable).parent / "jupyter-kernelprovider"
    proc = subprocess.run(
        [
            str(cli),
            "install",
            "--slurm",
            f"--image={images.test}",
            "--name=kp-cli-slurm",
            "--display-name=TF 1.8 / CUDA 9.2 (GPU, Slurm)",
            f"--prefix={jupyter_dirs['prefix']}",
            f"--partition={slurm_cluster.shared_partition}",
            "--gpus=1",
            "--time=20:00",
            f"--state-dir={state_dir}",
            # the test node has no NVIDIA driver: 'enforce' would (rightly) refuse CUDA 9.2
            "--compat-check=warn",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env=dict(os.environ),
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    spec_file = jupyter_dirs["prefix"] / "share/jupyter/kernels/kp-cli-slurm/kernel.json"
    spec = json.loads(spec_file.read_text())
    assert spec["interrupt_mode"] == "message"
    prov = spec["metadata"]["kernel_provisioner"]
    assert prov["provisioner_name"] == "slurm-apptainer-provisioner"
    assert prov["config"]["partition"] == "gpu-shared"

    km = AsyncKernelManager(kernel_name="kp-cli-slurm")
    await km.start_kernel(kernel_id=new_kernel_id(), cwd=str(jupyter_dirs["work"]))
    kc = km.client()
    kc.start_channels()
    try:
        await kc.wait_for_ready(timeout=60)
        where = await where_am_i(kc)
        assert where["job"] == km.provisioner.job_id and where["gpus"] == "0"
        row = job_row(km.provisioner.job_id)
        assert (row["partition"], row["time_limit"]) == ("gpu-shared", "20:00")
        reply = await interrupt_running_cell(km.interrupt_kernel, kc, "while True: pass")
        assert reply["ename"] == "KeyboardInterrupt"
    finally:
        kc.stop_channels()
        await km.shutdown_kernel()
    assert wait_until(lambda: job_row(where["job"]) is None, 5)


@pytest.mark.skipif(
    os.path.exists("/proc/driver/nvidia/version"), reason="the test node has an NVIDIA driver"
)
async def test_enforce_judges_the_allocated_node_and_gives_the_job_back(
    slurm_spec: Any,
    slurm_cluster: Any,
    jupyter_dirs: dict[str, Path],
    state_dir: Path,
    caplog: Any,
) -> None:
    """The verdict uses the node's facts (a probe step in the job), not the server's."""
    name = slurm_spec("kp-slurm-enforce", compat_check="enforce")
    km = AsyncKernelManager(kernel_name=name)
    caplog.set_level(logging.INFO)
    with pytest.raises(DriverIncompatible) as e:
        await km.start_kernel(kernel_id=new_kernel_id(), cwd=str(jupyter_dirs["work"]))
    node = km.provisioner.node
    assert node in slurm_cluster.nodes
    assert f"kp-test.sif needs an NVIDIA GPU (CUDA 9.2) but node {node} has no NVIDIA driver" in (
        str(e.value)
    )
    assert any(f"node {node} has NVIDIA driver none" in r.getMessage() for r in caplog.records)
    job = km.provisioner.job_id or ""
    assert [j for j in squeue_jobs(f"kp-{km.kernel_id}") if j["state"] != "COMPLETED"] == []
    assert sorted(p.name for p in state_dir.iterdir() if not p.name.endswith(".log")) == [], job
