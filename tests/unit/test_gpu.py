"""gpu: driver version formats, nvidia-smi rows, GPU selection, the Slurm probe."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from kernelprovider import gpu
from kernelprovider.gpu import (
    PROBE_SCRIPT,
    GpuInfo,
    HostFacts,
    driver_dir_for,
    host_driver_version,
    host_facts,
    list_gpus,
    parse_nvidia_smi_gpus,
    parse_probe_output,
    parse_proc_driver_version,
    visible_gpus,
)

PROC_PROPRIETARY = (
    "NVRM version: NVIDIA UNIX x86_64 Kernel Module  535.104.05  Sat Aug 19 01:15:15 UTC 2023\n"
    "GCC version:  gcc version 12.2.0 (Debian 12.2.0-14)\n"
)
PROC_OPEN = (
    "NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  580.159.04  Release Build  "
    "(dvs-builder@U22-I3-AF03-09-1)  Thu Apr 17 00:00:00 UTC 2026\n"
    "GCC version:  gcc version 11.4.0 (Ubuntu 11.4.0-1ubuntu1~22.04)\n"
)
PROC_OLD = "NVRM version: NVIDIA UNIX x86_64 Kernel Module  390.46  Thu Mar 22 18:37:28 PDT 2018\n"
PROC_ARM = "NVRM version: NVIDIA UNIX Open Kernel Module for aarch64  570.124.06  Release Build\n"

SMI_H200 = (
    "0, NVIDIA H200, GPU-1c7a4b5e-0000-1111-2222-333344445555, 9.0\n"
    "1, NVIDIA H200, GPU-2d8b5c6f-0000-1111-2222-333344445555, 9.0\n"
)


# --------------------------------------------------------------------------------------------
# /proc/driver/nvidia/version


@pytest.mark.parametrize(
    ("text", "version"),
    [
        (PROC_PROPRIETARY, "535.104.05"),
        (PROC_OPEN, "580.159.04"),
        (PROC_OLD, "390.46"),
        (PROC_ARM, "570.124.06"),
        (  # as read on an H200 node
            "NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  580.159.04  Release Build  "
            "(nixbld@)  \nGCC version:  gcc version 15.3.0 (GCC) \n",
            "580.159.04",
        ),
        ("NVRM version: NVIDIA UNIX x86_64 Kernel Module  515.76  Mon Sep 19 2022\n", "515.76"),
        ("", None),
        ("GCC version:  gcc version 12.2.0\n", None),
        ("NVRM version: NVIDIA UNIX Kernel Module (something new)\n", None),
    ],
)
def test_parse_proc_driver_version(text: str, version: str | None) -> None:
    assert parse_proc_driver_version(text) == version


def _fake_root(tmp_path: Path, proc: str | None = None, sys: str | None = None) -> Path:
    root = tmp_path / "root"
    if proc is not None:
        (root / "proc/driver/nvidia").mkdir(parents=True)
        (root / "proc/driver/nvidia/version").write_text(proc)
    if sys is not None:
        (root / "sys/module/nvidia").mkdir(parents=True)
        (root / "sys/module/nvidia/version").write_text(sys)
    root.mkdir(exist_ok=True)
    return root


@pytest.mark.parametrize(
    ("proc", "sys", "version"),
    [
        (PROC_OPEN, "580.159.04\n", "580.159.04"),
        (PROC_PROPRIETARY, None, "535.104.05"),
        (None, "550.54.15\n", "550.54.15"),  # /proc hidden, module version still there
        ("garbage\n", "550.54.15\n", "550.54.15"),
        (None, None, None),  # no driver: NVML and nvidia-smi are not asked for a copied tree
        (None, "not-a-version\n", None),
    ],
)
def test_host_driver_version_from_files(
    tmp_path: Path, proc: str | None, sys: str | None, version: str | None
) -> None:
    assert host_driver_version(str(_fake_root(tmp_path, proc, sys))) == version


# --------------------------------------------------------------------------------------------
# nvidia-smi


@pytest.mark.parametrize(
    ("text", "with_cc", "expected"),
    [
        (
            SMI_H200,
            True,
            [
                GpuInfo("NVIDIA H200", "9.0", 0, "GPU-1c7a4b5e-0000-1111-2222-333344445555"),
                GpuInfo("NVIDIA H200", "9.0", 1, "GPU-2d8b5c6f-0000-1111-2222-333344445555"),
            ],
        ),
        (
            "0, Tesla K40m, GPU-aaaa, 3.5\n",
            True,
            [GpuInfo("Tesla K40m", "3.5", 0, "GPU-aaaa")],
        ),
        (
            "0, Tesla V100-SXM2-32GB, GPU-bbbb\n",
            False,
            [GpuInfo("Tesla V100-SXM2-32GB", None, 0, "GPU-bbbb")],
        ),
        (
            "index, name, uuid, compute_cap\n3, NVIDIA A100-SXM4-80GB, GPU-cccc, 8.0\n",
            True,
            [GpuInfo("NVIDIA A100-SXM4-80GB", "8.0", 3, "GPU-cccc")],
        ),
        (
            "0, Some GPU, Rev. 2, GPU-dddd, [N/A]\n",  # a comma in the name; no capability
            True,
            [GpuInfo("Some GPU, Rev. 2", None, 0, "GPU-dddd")],
        ),
        ("No devices were found\n", True, []),
        (
            "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver.\n",
            True,
            [],
        ),
        ("", True, []),
    ],
)
def test_parse_nvidia_smi_gpus(text: str, with_cc: bool, expected: list[GpuInfo]) -> None:
    assert parse_nvidia_smi_gpus(text, with_compute_cap=with_cc) == expected


def test_gpu_sm_name() -> None:
    assert GpuInfo("NVIDIA H200", "9.0").sm == "sm_90"
    assert GpuInfo("NVIDIA B200", "10.0").sm == "sm_100"
    assert GpuInfo("unknown", None).sm is None


def _fake_smi(bin_dir: Path, body: str) -> None:
    bin_dir.mkdir(parents=True, exist_ok=True)
    script = bin_dir / "nvidia-smi"
    script.write_text("#!/bin/sh\n" + body)
    script.chmod(script.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)


# Answers like a real nvidia-smi: the GPU rows for the list query, the driver for its query.
SMI_NEW = """\
case "$1" in
  --query-gpu=driver_version) echo 580.159.04; echo 580.159.04 ;;
  --query-gpu=index,name,uuid,compute_cap)
    echo "0, NVIDIA H200, GPU-1c7a4b5e-0000-1111-2222-333344445555, 9.0"
    echo "1, NVIDIA H200, GPU-2d8b5c6f-0000-1111-2222-333344445555, 9.0" ;;
  *) echo "unexpected $*" >&2; exit 2 ;;
esac
"""
# A driver from before compute_cap existed rejects the whole query.
SMI_OLD = """\
case "$1" in
  --query-gpu=driver_version) echo 470.82.01 ;;
  --query-gpu=index,name,uuid,compute_cap)
    echo 'Field "compute_cap" is not a valid field to query.'; exit 2 ;;
  --query-gpu=index,name,uuid) echo "0, Tesla K80, GPU-eeee" ;;
  *) exit 2 ;;
esac
"""


@pytest.fixture
def no_nvml(monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep a real NVML (on a GPU machine) out of tests about nvidia-smi."""
    monkeypatch.setattr(gpu, "_with_nvml", lambda fn: None)


def test_list_gpus_with_fake_nvidia_smi(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_nvml: None
) -> None:
    _fake_smi(tmp_path / "bin", SMI_NEW)
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    assert list_gpus() == parse_nvidia_smi_gpus(SMI_H200)


def test_list_gpus_with_an_old_driver(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_nvml: None
) -> None:
    _fake_smi(tmp_path / "bin", SMI_OLD)
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    assert list_gpus() == [GpuInfo("Tesla K80", None, 0, "GPU-eeee")]


def test_list_gpus_without_nvidia_smi(monkeypatch: pytest.MonkeyPatch, no_nvml: None) -> None:
    monkeypatch.setattr(gpu.shutil, "which", lambda name: None)
    assert list_gpus() == []


def test_host_facts_falls_back_to_nvidia_smi(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_nvml: None
) -> None:
    _fake_smi(tmp_path / "bin", SMI_NEW)
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    # No /proc or /sys driver files on this "host": the driver comes from nvidia-smi.
    monkeypatch.setattr(gpu, "_read_first_line", lambda path: None)
    facts = host_facts("gpu01")
    assert facts == HostFacts("gpu01", "580.159.04", parse_nvidia_smi_gpus(SMI_H200))


def test_host_facts_without_driver(monkeypatch: pytest.MonkeyPatch, no_nvml: None) -> None:
    monkeypatch.setattr(gpu, "_read_first_line", lambda path: None)
    monkeypatch.setattr(gpu.shutil, "which", lambda name: None)
    facts = host_facts()
    assert facts.driver is None and facts.gpus == [] and facts.node


# --------------------------------------------------------------------------------------------
# GPU selection


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, None),
        ({"CUDA_VISIBLE_DEVICES": "0,1"}, "0,1"),
        ({"CUDA_VISIBLE_DEVICES": " 2 , 3 "}, "2,3"),
        ({"CUDA_VISIBLE_DEVICES": "GPU-1c7a4b5e-0000"}, "GPU-1c7a4b5e-0000"),
        ({"CUDA_VISIBLE_DEVICES": "MIG-5c9d2a1e-aaaa"}, "MIG-5c9d2a1e-aaaa"),
        ({"CUDA_VISIBLE_DEVICES": ""}, "none"),
        ({"CUDA_VISIBLE_DEVICES": "NoDevFiles"}, "none"),  # Slurm without GPUs in the job
        ({"CUDA_VISIBLE_DEVICES": "-1"}, "none"),
        ({"CUDA_VISIBLE_DEVICES": "all"}, None),
        ({"SLURM_JOB_GPUS": "2,3"}, "2,3"),
        ({"SLURM_STEP_GPUS": "3", "SLURM_JOB_GPUS": "2,3"}, "3"),  # the step is narrower
        ({"CUDA_VISIBLE_DEVICES": "0", "SLURM_JOB_GPUS": "5"}, "0"),  # what CUDA sees wins
        ({"GPU_DEVICE_ORDINAL": "1"}, "1"),
        ({"SLURM_JOB_ID": "42", "PATH": "/usr/bin"}, None),
    ],
)
def test_visible_gpus(env: dict[str, str], expected: str | None) -> None:
    assert visible_gpus(env) == expected


def test_visible_gpus_reads_the_process_environment_when_given_none(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for var in ("CUDA_VISIBLE_DEVICES", "SLURM_STEP_GPUS", "SLURM_JOB_GPUS", "GPU_DEVICE_ORDINAL"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("SLURM_JOB_GPUS", "1")
    assert visible_gpus() == "1"


# --------------------------------------------------------------------------------------------
# Driver directories


@pytest.mark.parametrize(
    ("template", "version", "expected"),
    [
        ("/opt/nvidia/{driver_version}/lib64", "535.104.05", "/opt/nvidia/535.104.05/lib64"),
        ("/cvmfs/drivers/nvidia-{driver_major}", "580.159.04", "/cvmfs/drivers/nvidia-580"),
        ("/opt/nv/{driver_major}/{driver_version}", "515.76", "/opt/nv/515/515.76"),
        ("/usr/lib/nvidia", "535.104.05", "/usr/lib/nvidia"),
    ],
)
def test_driver_dir_for(template: str, version: str, expected: str) -> None:
    assert driver_dir_for(template, version) == expected


@pytest.mark.parametrize("template", ["/opt/{driver}/lib", "/opt/{0}/lib", "/opt/{driver_version"])
def test_driver_dir_for_rejects_unknown_placeholders(template: str) -> None:
    with pytest.raises(ValueError, match=r"\{driver_version\} and \{driver_major\}"):
        driver_dir_for(template, "535.104.05")


def test_driver_dir_for_rejects_a_non_version() -> None:
    with pytest.raises(ValueError, match="not a driver version"):
        driver_dir_for("/opt/{driver_major}", "none")


# --------------------------------------------------------------------------------------------
# The Slurm probe


def probe_text(*lines: str) -> str:
    return "\n".join(["kernelprovider-probe-begin", *lines, "kernelprovider-probe-end", ""])


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            probe_text(
                "node=gpu01.cluster",
                "proc_version=" + PROC_OPEN.splitlines()[0],
                "sys_version=580.159.04",
                "gpu=0, NVIDIA H200, GPU-1c7a4b5e-0000-1111-2222-333344445555, 9.0",
            ),
            HostFacts(
                "gpu01.cluster",
                "580.159.04",
                [GpuInfo("NVIDIA H200", "9.0", 0, "GPU-1c7a4b5e-0000-1111-2222-333344445555")],
            ),
        ),
        (
            probe_text("node=qgpu01", "proc_version=" + PROC_OLD.splitlines()[0]),
            HostFacts("qgpu01", "390.46", []),
        ),
        (
            probe_text("node=n1", "sys_version=550.54.15"),
            HostFacts("n1", "550.54.15", []),
        ),
        (
            probe_text("node=n2", "gpu_nocc=0, Tesla K80, GPU-eeee", "smi_driver=470.82.01"),
            HostFacts("n2", "470.82.01", [GpuInfo("Tesla K80", None, 0, "GPU-eeee")]),
        ),
        (
            # srun's own chatter around the probe is ignored
            "srun: job 42 has been allocated resources\n"
            + probe_text("node=cpu07")
            + "node=ignored-after-end\n",
            HostFacts("cpu07", None, []),
        ),
    ],
)
def test_parse_probe_output(text: str, expected: HostFacts) -> None:
    assert parse_probe_output(text) == expected


def test_parse_probe_output_prefers_slurms_node_name() -> None:
    facts = parse_probe_output(probe_text("node=gpu01.cluster.example"), node="gpu01")
    assert facts.node == "gpu01"


def test_parse_probe_output_without_probe_says_what_it_saw() -> None:
    with pytest.raises(ValueError, match="srun: error: Unable to create step"):
        parse_probe_output("srun: error: Unable to create step for job 42\n")


def test_probe_script_runs_under_posix_sh_and_parses() -> None:
    sh = shutil.which("dash") or shutil.which("sh")
    assert sh
    out = subprocess.run([sh, "-c", PROBE_SCRIPT], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    facts = parse_probe_output(out.stdout)
    assert facts.node == os.uname().nodename
    if os.path.exists("/proc/driver/nvidia/version"):
        assert facts.driver == host_driver_version()
    elif not shutil.which("nvidia-smi"):
        assert facts.driver is None and facts.gpus == []


@pytest.mark.parametrize(
    ("smi", "gpus", "driver"),
    [
        (SMI_NEW, parse_nvidia_smi_gpus(SMI_H200), "580.159.04"),
        (SMI_OLD, [GpuInfo("Tesla K80", None, 0, "GPU-eeee")], "470.82.01"),
    ],
)
def test_probe_script_with_fake_nvidia_smi(
    tmp_path: Path, smi: str, gpus: list[GpuInfo], driver: str
) -> None:
    _fake_smi(tmp_path / "bin", smi)
    env = {**os.environ, "PATH": f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}"}
    out = subprocess.run(
        ["sh", "-c", PROBE_SCRIPT], capture_output=True, text=True, timeout=30, env=env
    )
    facts = parse_probe_output(out.stdout, node="gpu01")
    assert facts.gpus == gpus
    if not os.path.exists("/proc/driver/nvidia/version"):
        assert facts.driver == driver  # only asked of nvidia-smi when /proc says nothing
