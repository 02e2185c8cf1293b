"""``jupyter kernelprovider doctor`` and ``list``'s VERDICT column: the real CLI against the real
runtime and test images, asserting on the text a user reads and the exit status."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from kernelprovider.doctor import NO_DRIVER

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

HOST = socket.gethostname()
NO_DRIVER_HERE = not os.path.exists("/proc/driver/nvidia/version")
needs_no_driver = pytest.mark.skipif(not NO_DRIVER_HERE, reason="this host has an NVIDIA driver")


def cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``jupyter kernelprovider ARGS`` as a user would (environment: the test's Jupyter
    path from the jupyter_dirs fixture)."""
    return subprocess.run(
        [sys.executable, "-m", "kernelprovider.app", *args],
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
        cwd=cwd,
    )


def test_planned_driver_upgrade_fails_an_old_driver(images, jupyter_dirs) -> None:
    run = cli("doctor", str(images.test), "--driver-version", "390.46", cwd=jupyter_dirs["work"])
    assert run.returncode == 1, run.stdout + run.stderr
    out = run.stdout
    assert out.startswith(f"Node (hypothetical): {HOST}\n")
    assert (
        "  NVIDIA driver: 390.46 (from --driver-version; serves CUDA <= 9.1 without "
        "compatibility packages)\n" in out
    )
    assert f"Image {images.test} [gpu=nv, compat_check=enforce]\n" in out
    assert "  CUDA: 9.2 (label CUDA_VERSION)\n" in out
    assert "  cuDNN: 7.1 (label CUDNN_VERSION)\n" in out
    assert "  TensorFlow: 1.8 (label TENSORFLOW_VERSION)\n" in out
    assert (
        f"    fail  driver      kp-test.sif needs NVIDIA driver >= 396.26 (CUDA 9.2); node {HOST} "
        "has 390.46. Pick an image with CUDA <= 9.1 or another partition.\n" in out
    )
    assert "    warn  tensorflow  kp-test.sif pairs TensorFlow 1.8 with CUDA 9.2" in out
    assert "  compat_check=enforce: a start would be refused with the fail above.\n" in out
    assert out.endswith("  Result: fail\n")
    assert run.stderr == ""


def test_the_command_is_the_one_a_start_would_run(images, apptainer, jupyter_dirs) -> None:
    work = jupyter_dirs["work"]
    run = cli("doctor", str(images.test), "--driver-version", "580.159.04", cwd=work)
    runtime = next(ln for ln in run.stdout.splitlines() if ln.startswith("  Runtime: "))
    assert runtime.startswith(f"  Runtime: {os.path.realpath(apptainer)} (apptainer ") or (
        runtime.startswith(f"  Runtime: {apptainer} (apptainer ")
    )
    command = next(ln for ln in run.stdout.splitlines() if ln.startswith("  Command: "))
    conn = jupyter_dirs["runtime"] / ".kernel-KERNEL_ID.json.kernel"  # the kernel's own copy
    assert command.endswith(
        f" exec --nv --bind {jupyter_dirs['runtime']} --bind '{work}' --pwd '{work}' "
        f"{images.test} python3 -m ipykernel_launcher -f {conn}"
    ), command
    assert "    APPTAINERENV_PYTHONNOUSERSITE=1\n" in run.stdout
    assert (
        "  Note: KERNEL_ID and the connection file are placeholders: each start gets its own.\n"
        in run.stdout
    )
    assert run.returncode == 0  # ok driver, warn TF: nothing fails


def test_a_hypothetical_gpu_gets_an_architecture_verdict(images, jupyter_dirs) -> None:
    run = cli(
        "doctor",
        str(images.test),
        "--driver-version",
        "580.159.04",
        "--compute-capability",
        "9.0",
        "--gpu-name",
        "NVIDIA H200",
        "--node",
        "qgpu01",
    )
    assert run.returncode == 0, run.stdout
    assert run.stdout.startswith(
        "Node (hypothetical): qgpu01 (from --node)\n"
        "  NVIDIA driver: 580.159.04 (from --driver-version; serves CUDA <= 13.0 without "
        "compatibility packages)\n"
        "  GPUs: 1 (from --compute-capability)\n"
        "    NVIDIA H200, compute capability 9.0 (sm_90)\n"
    )
    assert (
        "    warn  arch        kp-test.sif has CUDA 9.2 but NVIDIA H200 (sm_90) on node qgpu01 "
        "needs CUDA >= 11.8 for native code" in run.stdout
    )
    assert run.stdout.endswith("  Result: warn\n")


@needs_no_driver
def test_a_host_without_a_driver_says_so(images, jupyter_dirs) -> None:
    run = cli("doctor", str(images.test))
    assert run.returncode == 1
    assert run.stdout.startswith(
        f"Node: {HOST}\n  {NO_DRIVER}\n  GPUs: none (CPU-only kernels still run here)\n"
    )
    assert (
        f"    fail  driver      kp-test.sif needs an NVIDIA GPU (CUDA 9.2) but node {HOST} has "
        "no NVIDIA driver loaded. Pick a GPU partition or node, or set the kernel's GPU mode to "
        "none for a CPU-only run.\n" in run.stdout
    )


def test_json(images, jupyter_dirs) -> None:
    run = cli("doctor", str(images.test), "--driver-version", "390.46", "--json")
    assert run.returncode == 1
    doc = json.loads(run.stdout)
    assert doc["host"]["driver"] == "390.46"
    assert doc["host"]["hypothetical"] == {"driver": "--driver-version"}
    (report,) = doc["reports"]
    assert report["image"] == str(images.test)
    assert report["image_facts"]["cuda"] == "9.2"
    assert report["image_facts"]["sources"]["cuda"] == "label CUDA_VERSION"
    assert report["argv"][1:3] == ["exec", "--nv"]
    assert report["verdict"] == "fail" == doc["verdict"]
    assert report["verdict_reason"] == (
        f"kp-test.sif needs NVIDIA driver >= 396.26 (CUDA 9.2); node {HOST} has 390.46."
    )


def test_a_kernel_resolves_its_config_like_the_server(
    images, install_kernel, jupyter_dirs, tmp_path
) -> None:
    """kernelspec config over the servers' jupyter_server_config over the defaults."""
    shared = tmp_path / "shared"
    shared.mkdir()
    (jupyter_dirs["config"] / "jupyter_server_config.py").write_text(
        f"c.ContainerProvisioner.binds = [{str(shared)!r}]\n"
        "c.ContainerProvisioner.extra_args = ['--writable-tmpfs']\n"
        "c.ContainerProvisioner.gpu = 'none'\n"
    )
    install_kernel("tf18", images.test, display_name="TF 1.8 / CUDA 9.2 (GPU)", gpu="nv")
    run = cli("doctor", "tf18", "--driver-version", "580.159.04")
    out = run.stdout
    assert (
        'Kernel tf18 ("TF 1.8 / CUDA 9.2 (GPU)") [apptainer-provisioner, gpu=nv, '
        "compat_check=warn]\n" in out
    )
    assert f"  Image: {images.test}\n" in out
    command = next(ln for ln in out.splitlines() if ln.startswith("  Command: "))
    assert " exec --nv " in command  # the kernelspec's gpu wins over the site's
    assert f" --bind {shared} " in command  # the site's binds apply
    assert f" --writable-tmpfs {images.test} " in command
    assert run.returncode == 0


def test_without_arguments_every_container_kernel_gets_a_line(
    images, install_kernel, jupyter_dirs
) -> None:
    install_kernel("tf18", images.test)
    install_kernel("tf18cpu", images.test, gpu="none")
    install_kernel("gone", "/software/images/gone.sif")
    run = cli("doctor", "--driver-version", "390.46")
    lines = run.stdout.splitlines()
    assert lines[0] == f"Node (hypothetical): {HOST}"
    # kernels installed system-wide on this machine would be listed too: count only ours
    start = next(i for i, ln in enumerate(lines) if ln.startswith("Kernels ("))
    assert lines[start + 1].split() == ["NAME", "VERDICT", "IMAGE", "REASON"]
    rows = {ln.split()[0]: ln for ln in lines[start + 2 : -1]}
    assert {"gone", "tf18", "tf18cpu"} <= set(rows)
    assert rows["gone"].split()[1:3] == ["fail", "/software/images/gone.sif"]
    assert rows["gone"].endswith("Image /software/images/gone.sif not found (kernel gone).")
    assert rows["tf18"].split()[1] == "fail"
    assert rows["tf18"].endswith(
        f"kp-test.sif needs NVIDIA driver >= 396.26 (CUDA 9.2); node {HOST} has 390.46."
    )
    assert rows["tf18cpu"].split()[1] == "ok"
    assert rows["tf18cpu"].endswith(
        "tf18cpu runs without a GPU (gpu=none), so the driver is not checked."
    )
    assert lines[-1] == "Details: jupyter kernelprovider doctor NAME"
    assert run.returncode == 1


def test_a_corrupt_image_fails_with_the_runtime_check(images, jupyter_dirs) -> None:
    run = cli("doctor", str(images.corrupt), "--driver-version", "580.159.04")
    assert run.returncode == 1
    assert (
        f"    fail  image  {images.corrupt} is not a container image (no SIF, squashfs or ext3 "
        "header). Rebuild it with 'apptainer build' or point the kernelspec at the right file.\n"
        in run.stdout
    )


def test_a_missing_driver_directory_is_named(images, install_kernel, jupyter_dirs, tmp_path):
    install_kernel("drv", images.test, driver_dir=str(tmp_path / "nvidia" / "{driver_version}"))
    run = cli("doctor", "drv", "--driver-version", "595.45.04")
    assert run.returncode == 1
    assert (
        f"    fail  driver_dir  No driver directory {tmp_path}/nvidia/595.45.04 for NVIDIA driver "
        f"595.45.04 on node {HOST}" in run.stdout
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["no-such-kernel"],
            "No container kernel named 'no-such-kernel' and no image at no-such-kernel. See "
            "'jupyter kernelprovider list', or give the image's path.",
        ),
        (["/nope/x.sif", "/nope/y.sif"], "give at most one KERNEL or IMAGE (see --help)."),
        (
            ["--driver-version", "newest"],
            "--driver-version 'newest' is not a driver version; give it as nvidia-smi prints it, "
            "e.g. --driver-version 580.95.05.",
        ),
        (
            ["--compute-capability", "sm_90"],
            "--compute-capability 'sm_90' is not a compute capability; give MAJOR.MINOR, e.g. "
            "--compute-capability 9.0 for an H100/H200 (nvidia-smi --query-gpu=compute_cap "
            "--format=csv shows it).",
        ),
    ],
)
def test_usage_mistakes_end_with_one_line(args, message, jupyter_dirs) -> None:
    run = cli("doctor", *args)
    assert run.returncode == 2
    assert run.stdout == ""
    assert run.stderr == f"jupyter kernelprovider doctor: {message}\n"


def test_list_shows_each_kernels_verdict(images, install_kernel, jupyter_dirs) -> None:
    install_kernel("tf18cpu", images.test, gpu="none")
    install_kernel("gone", "/software/images/gone.sif")
    run = cli("list")
    assert run.returncode == 0
    head, *rows = run.stdout.splitlines()
    assert head.split() == [
        "NAME", "DISPLAY", "NAME", "IMAGE", "IMAGE", "STATE", "RUNTIME", "GPU", "VERDICT"
    ]  # fmt: skip
    verdicts = {r.split()[0]: r.split()[-1] for r in rows}
    assert (verdicts["gone"], verdicts["tf18cpu"]) == ("fail", "ok")
    doc = {r["name"]: r for r in json.loads(cli("list", "--json").stdout)}
    assert (doc["gone"]["verdict"], doc["gone"]["verdict_reason"]) == (
        "fail",
        "Image /software/images/gone.sif not found (kernel gone).",
    )
    assert (doc["tf18cpu"]["verdict"], doc["tf18cpu"]["verdict_reason"]) == (
        "ok",
        "tf18cpu runs without a GPU (gpu=none), so the driver is not checked.",
    )
    assert doc["tf18cpu"]["image_state"] == "ok"  # the existing columns stay


# --------------------------------------------------------------------------------------------
# What the image's frameworks were built for, read from genuine files (kp-frameworks.sif:
# the published jax-cuda12-plugin 0.7.0 and nvidia-cuda-runtime-cu12 12.9.79 wheels)

H200 = ("--driver-version", "580.95.05", "--compute-capability", "9.0", "--gpu-name", "NVIDIA H200")
SITE = "/usr/lib/python3/dist-packages"


def _frameworks_report(image: Path | str, *node: str) -> tuple[dict, subprocess.CompletedProcess]:
    run = cli("doctor", str(image), *node, "--json")
    (report,) = json.loads(run.stdout)["reports"]
    return report, run


def _assert_jax_facts(report: dict) -> None:
    facts = report["image_facts"]
    (jax,) = facts["frameworks"]
    assert (jax["name"], jax["version"], jax["cuda"], jax["gpu_build"]) == (
        "JAX",
        "0.7.0",
        "12",
        True,
    )
    # The SM code the plugin's libraries really carry (their .nv_fatbin sections).
    assert jax["sass"] == ["sm_50", "sm_60", "sm_70", "sm_80", "sm_90", "sm_100", "sm_120"]
    assert jax["ptx"] == ["compute_120"]
    assert jax["archs_from"].startswith(f"{SITE}/jax_cuda12_plugin/{{")
    assert jax["on_gpus"] == {"sm_90": "native sm_90"}
    assert facts["cudart"] == [f"{SITE}/nvidia/cuda_runtime/lib/libcudart.so.12"]
    assert facts["cuda"] == "12.9.79"  # the nvidia-cuda-runtime-cu12 wheel


def test_doctor_reads_what_a_sifs_frameworks_were_built_for(images, jupyter_dirs) -> None:
    report, run = _frameworks_report(images.frameworks, *H200)
    assert run.returncode == 0, run.stdout + run.stderr
    _assert_jax_facts(report)
    assert report["image_facts"]["sources"]["frameworks"] == "the image's Python"
    by_check = {}
    for v in report["verdicts"]:
        by_check.setdefault(v["check"], []).append(v)
    (arch,) = by_check["arch"]
    assert arch["level"] == "ok" and "runs natively on NVIDIA H200 (sm_90)" in arch["reason"]
    (runtime,) = by_check["framework"]
    assert runtime["level"] == "ok" and "ships libcudart.so.12" in runtime["reason"]
    text = cli("doctor", str(images.frameworks), *H200).stdout
    assert "  Frameworks (read by the image's Python):\n" in text
    assert (
        "    JAX 0.7.0: CUDA 12; code for sm_50, sm_60, sm_70, sm_80, sm_90, sm_100, sm_120" in text
    )
    assert "      on this node: sm_90: native sm_90\n" in text


def test_a_gpu_the_frameworks_carry_no_code_for_fails(images, jupyter_dirs) -> None:
    report, run = _frameworks_report(
        images.frameworks, "--driver-version", "470.82.01", "--compute-capability", "3.5"
    )
    assert run.returncode == 1
    arch = next(v for v in report["verdicts"] if v["check"] == "arch")
    assert arch["level"] == "fail" and "no kernel image is available" in arch["reason"]
    assert "Pick an image built for sm_35" in arch["reason"]


def test_a_sandbox_directory_is_read_from_its_files(images, jupyter_dirs, tmp_path) -> None:
    # The same root filesystem as a sandbox directory: the SIF's squashfs partition unpacked.
    unsquashfs = shutil.which("unsquashfs")
    if unsquashfs is None:
        pytest.fail("unsquashfs (squashfs-tools) is missing: run scripts/setup-testenv.sh")
    with open(images.frameworks, "rb") as f:
        offset = f.read(1 << 20).find(b"hsqs")
    assert offset > 0, "no squashfs partition in the SIF"
    sandbox = tmp_path / "kp-frameworks"
    subprocess.run(
        [
            unsquashfs,
            "-no-xattrs",
            "-q",
            "-o",
            str(offset),
            "-d",
            str(sandbox),
            str(images.frameworks),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    report, run = _frameworks_report(sandbox, *H200)
    assert run.returncode == 0, run.stdout + run.stderr
    _assert_jax_facts(report)
    assert report["image_facts"]["sources"]["frameworks"] == "the sandbox's files"


def test_list_shows_the_frameworks(images, install_kernel, jupyter_dirs) -> None:
    install_kernel("jax", images.frameworks)
    run = cli("list")
    assert run.returncode == 0
    head, row = run.stdout.splitlines()
    assert head.split()[-1] == "FRAMEWORKS"
    assert "JAX 0.7.0: CUDA 12; code for sm_50" in row
    (doc,) = json.loads(cli("list", "--json").stdout)
    assert doc["frameworks"][0]["ptx"] == ["compute_120"]


@pytest.mark.parametrize("comp", ["xz", "zstd"])
def test_the_image_compression_and_what_it_costs(
    apptainer, images, jupyter_dirs, tmp_path, comp
) -> None:
    """A SIF built by the real apptainer with -comp COMP: doctor names it, and for xz says
    how to rebuild; the gzip test image reads as gzip."""
    root = tmp_path / "root"
    (root / ".singularity.d").mkdir(parents=True)
    (root / "hello").write_text("hi\n")
    sif = tmp_path / f"tiny-{comp}.sif"
    build = subprocess.run(
        [apptainer, "-q", "build", "--mksquashfs-args", f"-comp {comp}", str(sif), str(root)],
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    assert build.returncode == 0, build.stderr
    run = cli("doctor", str(sif), "--json", cwd=jupyter_dirs["work"])
    (report,) = json.loads(run.stdout)["reports"]
    assert report["compression"]["kind"] == "sif"
    assert report["compression"]["compressor"] == comp
    assert ("-comp zstd" in report["compression"]["note"]) == (comp == "xz")
    text = cli("doctor", str(images.test), cwd=jupyter_dirs["work"]).stdout
    assert "  Storage: sif, squashfs gzip" in text
