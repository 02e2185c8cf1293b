"""Pure parts of the Slurm provisioner: squeue/scontrol parsers, sbatch/srun argv, the holder
script, the environment filter, rejection messages, state directory checks, timing hooks."""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
from pathlib import Path

import pytest
from needs import need_root
from traitlets import TraitError

from kernelprovider.errors import StateDirError
from kernelprovider.slurm import (
    JobInfo,
    LeaseKeeper,
    SlurmProvisioner,
    SlurmQueue,
    batch_script,
    build_sbatch_argv,
    build_srun_argv,
    ensure_state_dir,
    parse_node_addr,
    parse_squeue,
    parse_squeue_steps,
    rejection_message,
    slurm_env,
    tail_file,
)

# --- parsers ---------------------------------------------------------------------------------


def test_parse_squeue_rows_as_slurm_prints_them() -> None:
    # verbatim shapes from docs/slurm-testenv.md: running, pending in `held`, cancelled
    text = (
        "4|RUNNING|None|vm|2026-11-29T20:41:03|8:00:00|7:59:12|kp-abc|alice\n"
        "42|PENDING|PartitionDown||N/A|10:00|10:00|kp-def|alice\n"
        "43|CANCELLED|JobHeldAdmin||2026-11-29T20:54:14|1-00:00:00|0:00|kp-ghi|bob\n"
    )
    jobs = parse_squeue(text)
    assert jobs["4"] == JobInfo(
        "4", "RUNNING", "None", "vm", "2026-11-29T20:41:03", "kp-abc", "alice", "8:00:00", "7:59:12"
    )
    assert jobs["42"].nodes == "" and jobs["42"].reason == "PartitionDown"
    assert not jobs["4"].finished and not jobs["42"].finished
    assert jobs["43"].finished


def test_parse_squeue_names_with_separator_blank_and_short_lines() -> None:
    text = "\n  7|RUNNING|None|vm|N/A|5:00|4:59|odd|name|with|bars|carol  \ngarbage\n8|PENDING\n"
    jobs = parse_squeue(text)
    assert list(jobs) == ["7"]
    assert jobs["7"].name == "odd|name|with|bars"
    assert jobs["7"].user == "carol"


@pytest.mark.parametrize(
    ("state", "finished"),
    [
        ("RUNNING", False),
        ("PENDING", False),
        ("COMPLETING", False),
        ("COMPLETED", True),
        ("TIMEOUT", True),
        ("CANCELLED by 0", True),  # squeue prints the canceller's uid after the state
        ("NODE_FAIL", True),
        ("OUT_OF_MEMORY", True),
    ],
)
def test_finished_states(state: str, finished: bool) -> None:
    assert JobInfo("1", state, "None", "", "", "n", "u").finished is finished


def test_parse_squeue_steps() -> None:
    text = "83.0|kp-x-kernel\n83.batch|batch\n90.3|kp-y-kernel\n\nnot-a-step\n"
    assert parse_squeue_steps(text) == {
        "83": {"83.0": "kp-x-kernel", "83.batch": "batch"},
        "90": {"90.3": "kp-y-kernel"},
    }


def test_parse_node_addr() -> None:
    out = (
        "NodeName=vm Arch=x86_64 CoresPerSocket=32 CPUAlloc=0 CPUTot=32 "
        "NodeAddr=127.0.0.1 NodeHostName=vm Version=22.05.8 OS=Linux"
    )
    assert parse_node_addr(out) == "127.0.0.1"
    assert parse_node_addr("Node vm not found") is None


# --- argv builders ---------------------------------------------------------------------------


def test_sbatch_argv_minimal() -> None:
    assert build_sbatch_argv("kp-1") == [
        "sbatch",
        "--parsable",
        "--job-name=kp-1",
        "--export=NONE",
        "--nodes=1",
        "--output=/dev/null",
    ]


def test_sbatch_argv_every_trait() -> None:
    argv = build_sbatch_argv(
        "kp-1",
        partition="gpu",
        gpus="a100:2",
        time_limit="8:00:00",
        account="proj",
        qos="short",
        constraint="v100|a100",
        cpus_per_task=4,
        mem="32G",
        output="/s/kernel-1.log",
        chdir="/s",
        extra_args=["--reservation=r1"],
    )
    assert argv == [
        "sbatch",
        "--parsable",
        "--job-name=kp-1",
        "--export=NONE",
        "--nodes=1",
        "--output=/s/kernel-1.log",
        "--open-mode=append",
        "--chdir=/s",
        "--partition=gpu",
        "--gres=gpu:a100:2",
        "--time=8:00:00",
        "--account=proj",
        "--qos=short",
        "--constraint=v100|a100",
        "--cpus-per-task=4",
        "--mem=32G",
        "--reservation=r1",
    ]


def test_sbatch_argv_gpus_option() -> None:
    argv = build_sbatch_argv("kp-1", gpus="2", gpu_option="gpus")
    assert "--gpus=2" in argv and not any(a.startswith("--gres") for a in argv)


def test_srun_argv() -> None:
    assert build_srun_argv("47", "kp-1-kernel", "/home/u/work dir", ["--cpu-bind=none"]) == [
        "srun",
        "--jobid=47",
        "--overlap",
        "--nodes=1",
        "--ntasks=1",
        "--job-name=kp-1-kernel",
        "--chdir=/home/u/work dir",
        "--quiet",
        "--cpu-bind=none",
    ]


# --- the holder script -----------------------------------------------------------------------


def test_batch_script_content() -> None:
    script = batch_script("/state dir/kernel-1.lease", 90, check_every=5)
    assert script.startswith("#!/bin/sh\n")
    assert "lease='/state dir/kernel-1.lease'" in script  # quoted for sh
    assert "max_age=90" in script and "sleep 5" in script
    # nothing from the server: no key, no environment, no python
    assert "key" not in script.lower().replace("keeps", "")
    assert "python" not in script and "$JPY" not in script


def _run_script(script: str, timeout: float) -> tuple[subprocess.CompletedProcess[str], float]:
    started = time.monotonic()
    proc = subprocess.run(
        ["sh", "-c", script], capture_output=True, text=True, timeout=timeout, check=False
    )
    return proc, time.monotonic() - started


def test_batch_script_exits_on_a_stale_lease(tmp_path: Path) -> None:
    lease = tmp_path / "kernel.lease"
    lease.touch()
    old = time.time() - 60
    os.utime(lease, (old, old))
    proc, took = _run_script(batch_script(str(lease), 10, check_every=1), timeout=20)
    assert proc.returncode == 0
    assert "lease older than 10 s" in proc.stdout
    assert took < 5


def test_batch_script_exits_when_the_lease_is_removed(tmp_path: Path) -> None:
    proc, _ = _run_script(batch_script(str(tmp_path / "missing.lease"), 10, 1), timeout=20)
    assert proc.returncode == 0
    assert "lease file gone" in proc.stdout


def test_batch_script_holds_while_the_lease_is_fresh(tmp_path: Path) -> None:
    lease = tmp_path / "kernel.lease"
    lease.touch()
    proc = subprocess.Popen(["sh", "-c", batch_script(str(lease), 10, check_every=1)])
    try:
        time.sleep(2.5)
        assert proc.poll() is None  # still holding
        os.utime(lease, (time.time() - 60, time.time() - 60))
        assert proc.wait(timeout=5) == 0  # and lets go within one check
    finally:
        if proc.poll() is None:
            proc.kill()


# --- environment handed to srun --------------------------------------------------------------


def test_slurm_env_keeps_only_what_a_kernel_needs() -> None:
    server_env = {
        "PATH": "/usr/bin",
        "HOME": "/home/u",
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        "SLURM_CONF": "/etc/slurm/slurm.conf",
        "APPTAINER_CACHEDIR": "/tmp/c",
        "CUDA_VISIBLE_DEVICES": "0",
        "JUPYTERHUB_API_TOKEN": "secret-hub-token",
        "JUPYTERHUB_API_URL": "http://hub",
        "JPY_API_TOKEN": "secret-2",
        "AWS_SECRET_ACCESS_KEY": "secret-3",
        "SLURM_JOB_ID": "12",  # the server's own job (Open OnDemand) must not leak in
        "PYTHONPATH": "/server/site",
        "APPTAINERENV_API_TOKEN": "secret-4",
    }
    extra = {
        "APPTAINERENV_PYTHONNOUSERSITE": "1",
        "APPTAINERENV_OMP_NUM_THREADS": "4",
        "APPTAINERENV_HF_TOKEN": "secret-5",
    }
    env = slurm_env(server_env, extra)
    assert env == {
        "PATH": "/usr/bin",
        "HOME": "/home/u",
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        "SLURM_CONF": "/etc/slurm/slurm.conf",
        "APPTAINER_CACHEDIR": "/tmp/c",
        "CUDA_VISIBLE_DEVICES": "0",
        "APPTAINERENV_PYTHONNOUSERSITE": "1",
        "APPTAINERENV_OMP_NUM_THREADS": "4",
    }
    assert not any("secret" in v for v in env.values())


# --- rejection messages ----------------------------------------------------------------------

SETTINGS = {"partition": "gpuu", "gpus": "1", "time_limit": "8:00:00", "account": ""}


def test_rejection_invalid_partition_verbatim() -> None:
    stderr = (
        "sbatch: error: invalid partition specified: gpuu\n"
        "sbatch: error: Batch job submission failed: Invalid partition name specified\n"
    )
    msg = rejection_message(stderr, SETTINGS, ["gpu", "gpu-shared", "held"])
    assert msg == (
        'Slurm rejected the job: "Batch job submission failed: Invalid partition name '
        'specified" (partition=gpuu). Partitions here: gpu, gpu-shared, held.'
    )


def test_rejection_too_many_gpus() -> None:
    stderr = (
        "sbatch: error: Batch job submission failed: Requested node configuration is not "
        "available\n"
    )
    msg = rejection_message(stderr, {"partition": "", "gpus": "8", "mem": ""})
    assert msg.startswith(
        'Slurm rejected the job: "Batch job submission failed: Requested node configuration '
        'is not available" (gpus=8).'
    )
    assert "Check the kernel's Slurm settings" in msg


def test_rejection_keeps_the_more_specific_line() -> None:
    stderr = (
        "sbatch: error: Memory specification can not be satisfied\n"
        "sbatch: error: Batch job submission failed: Requested node configuration is not "
        "available\n"
    )
    msg = rejection_message(stderr, {"gpus": "1", "mem": "100G"})
    assert "(gpus=1, mem=100G)" in msg
    assert "Slurm also said: Memory specification can not be satisfied." in msg


def test_rejection_time_limit_and_controller_down() -> None:
    msg = rejection_message(
        "sbatch: error: Batch job submission failed: Requested time limit is invalid (missing "
        "or exceeds some limit)",
        {"partition": "gpu-shared", "time_limit": "2-00:00:00", "gpus": "1"},
    )
    assert "(time_limit=2-00:00:00, partition=gpu-shared)" in msg
    down = rejection_message(
        "sbatch: error: Batch job submission failed: Unable to contact slurm controller "
        "(connect failure)",
        {"gpus": "1"},
    )
    assert "controller is not answering" in down


# --- state directory, log tail ---------------------------------------------------------------


def test_state_dir_created_0700(tmp_path: Path) -> None:
    path = tmp_path / "a" / "state"
    ensure_state_dir(str(path))
    assert path.stat().st_mode & 0o777 == 0o700
    path.chmod(0o755)
    ensure_state_dir(str(path))
    assert path.stat().st_mode & 0o777 == 0o700


def test_state_dir_refuses_a_symlink(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir(mode=0o700)
    (tmp_path / "link").symlink_to(tmp_path / "real")
    with pytest.raises(StateDirError, match="symlink"):
        ensure_state_dir(str(tmp_path / "link"))


def test_state_dir_refuses_another_users_directory(tmp_path: Path) -> None:
    need_root("creating a directory owned by someone else")
    path = tmp_path / "theirs"
    path.mkdir(mode=0o700)
    os.chown(path, 65534, 65534)
    with pytest.raises(StateDirError, match="belongs to uid 65534"):
        ensure_state_dir(str(path))


def test_tail_file(tmp_path: Path) -> None:
    log = tmp_path / "k.log"
    log.write_text("".join(f"line {i}\n" for i in range(100)) + "\n\n")
    assert tail_file(str(log), 3) == "line 97\nline 98\nline 99"
    assert tail_file(str(tmp_path / "none.log")) == ""


# --- traits and timing hooks -----------------------------------------------------------------


def test_traits_validate() -> None:
    prov = SlurmProvisioner()
    with pytest.raises(TraitError):
        prov.partition = "--wrap=evil"
    with pytest.raises(TraitError):
        prov.time_limit = "1:00:00\n#SBATCH --x"
    with pytest.raises(TraitError):
        prov.lease_seconds = 5
    prov.partition = "gpu-shared"
    assert prov.partition == "gpu-shared"


def test_timing_hooks() -> None:
    prov = SlurmProvisioner()
    assert prov.get_shutdown_wait_time(5.0) == 15.0
    assert prov.get_shutdown_wait_time(60.0) == 60.0
    assert prov.get_stable_start_time(10.0) == 30.0
    assert prov.queue_timeout == 3600.0 and prov.boot_timeout == 180.0


def test_files_live_in_the_state_dir(tmp_path: Path) -> None:
    prov = SlurmProvisioner(state_dir=str(tmp_path), kernel_id="abc")
    assert prov.job_name == "kp-abc"
    assert prov.step_name == "kp-abc-kernel"
    assert prov.files == {
        "connection": str(tmp_path / "kernel-abc.json"),
        "lease": str(tmp_path / "kernel-abc.lease"),
        "log": str(tmp_path / "kernel-abc.log"),
    }


# --- per-loop singletons ---------------------------------------------------------------------


def test_queue_and_lease_keeper_are_per_event_loop(tmp_path: Path) -> None:
    async def grab(interval: float) -> tuple[SlurmQueue, SlurmQueue, LeaseKeeper]:
        first = SlurmQueue.instance(interval)
        again = SlurmQueue.instance(interval * 2)  # the shortest interval wins
        keeper = LeaseKeeper.instance(30)
        lease = tmp_path / "k.lease"
        await keeper.add(str(lease))
        assert lease.exists() and lease.stat().st_mode & 0o777 == 0o600
        keeper.discard(str(lease))
        return first, again, keeper

    q1, q1_again, k1 = asyncio.run(grab(3.0))
    q2, _, k2 = asyncio.run(grab(4.0))
    assert q1 is q1_again and q1.interval == 3.0
    # a new loop (a test, a restarted server) never inherits a lock or task of a dead loop
    assert q2 is not q1 and k2 is not k1 and q2.interval == 4.0
