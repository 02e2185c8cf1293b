"""`jupyter kernelprovider scan` with the real CLI, real SIF images and the real Apptainer."""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from jupyter_client.manager import start_new_async_kernel

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

JUPYTER = str(Path(sys.executable).parent / "jupyter")
TF = "TF 1.8 / CUDA 9.2 (GPU)"


def jupyter(*args: str) -> subprocess.CompletedProcess[str]:
    """Run `jupyter ARGS` as a user would, in the test's isolated Jupyter environment."""
    return subprocess.run(
        [JUPYTER, *args], capture_output=True, text=True, env=os.environ.copy(), check=False
    )


def scan(*args: str) -> subprocess.CompletedProcess[str]:
    return jupyter("kernelprovider", "scan", *args)


def plan(stdout: str) -> dict[str, str]:
    """Kernel name -> verb, from scan's output lines ("add  NAME  ...")."""
    verbs = ("add", "update", "unchanged", "remove", "stale")
    rows = [line.split() for line in stdout.splitlines()]
    return {row[1]: row[0] for row in rows if len(row) > 1 and row[0] in verbs}


def kernelspecs() -> dict[str, dict]:
    """What `jupyter kernelspec list --json` shows (every kernel Jupyter would offer)."""
    proc = jupyter("kernelspec", "list", "--json")
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)["kernelspecs"]


@pytest.fixture
def image_dir(images, tmp_path: Path) -> Path:
    """tf-a.sif (a copy of kp-test.sif), tf-b.sif (a link to it), a text file, and
    sub/nested.sif, which is only found with --recursive."""
    d = tmp_path / "images"
    (d / "sub").mkdir(parents=True)
    shutil.copyfile(images.test, d / "tf-a.sif")
    (d / "tf-b.sif").symlink_to(images.test)
    (d / "README.txt").write_text("not an image\n")
    (d / "sub" / "nested.sif").symlink_to(images.test)
    return d


def test_one_kernelspec_per_image_and_a_second_run_changes_nothing(
    image_dir: Path, jupyter_dirs
) -> None:
    prefix = str(jupyter_dirs["prefix"])
    first = scan(str(image_dir), "--prefix", prefix)
    assert first.returncode == 0, first.stderr
    assert plan(first.stdout) == {"tf18-cuda92-gpu": "add", "tf18-cuda92-gpu-tf-b": "add"}

    specs = kernelspecs()
    assert specs["tf18-cuda92-gpu"]["spec"]["display_name"] == TF
    assert specs["tf18-cuda92-gpu-tf-b"]["spec"]["display_name"] == f"{TF} [tf-b]"
    assert not any("nested" in name for name in specs)
    tf = specs["tf18-cuda92-gpu"]
    config = tf["spec"]["metadata"]["kernel_provisioner"]["config"]
    assert config == {"image": str(image_dir / "tf-a.sif")}
    assert tf["spec"]["metadata"]["kernelprovider"]["scan"]["source_dir"] == str(image_dir)
    resource_dir = Path(tf["resource_dir"])
    for logo, size in (("logo-32x32.png", 32), ("logo-64x64.png", 64)):
        data = (resource_dir / logo).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n"
        assert struct.unpack(">II", data[16:24]) == (size, size)
    assert (resource_dir / "logo-svg.svg").read_text().startswith("<svg")

    before = {p: p.stat().st_mtime_ns for p in Path(prefix).rglob("*")}
    second = scan(str(image_dir), "--prefix", prefix)
    assert second.returncode == 0, second.stderr
    assert plan(second.stdout) == {
        "tf18-cuda92-gpu": "unchanged",
        "tf18-cuda92-gpu-tf-b": "unchanged",
    }
    assert {p: p.stat().st_mtime_ns for p in Path(prefix).rglob("*")} == before

    third = scan(str(image_dir), "--prefix", prefix, "--recursive")
    assert plan(third.stdout)["tf18-cuda92-gpu-nested"] == "add"


def test_prune_removes_only_what_scan_made_for_images_that_are_gone(
    image_dir: Path, jupyter_dirs, install_kernel
) -> None:
    prefix = str(jupyter_dirs["prefix"])
    assert scan(str(image_dir), "--prefix", prefix).returncode == 0
    # Made by hand (install), its image long gone: not scan's to remove.
    install_kernel("hand-made", image_dir / "deleted-long-ago.sif", display_name="Hand made")
    (image_dir / "tf-b.sif").unlink()

    without = scan(str(image_dir), "--prefix", prefix)
    assert without.returncode == 0, without.stderr
    assert plan(without.stdout) == {"tf18-cuda92-gpu": "unchanged", "tf18-cuda92-gpu-tf-b": "stale"}
    assert "--prune removes it" in without.stdout
    assert "tf18-cuda92-gpu-tf-b" in kernelspecs()

    dry = scan(str(image_dir), "--prefix", prefix, "--prune", "--dry-run")
    assert plan(dry.stdout)["tf18-cuda92-gpu-tf-b"] == "remove"
    assert "tf18-cuda92-gpu-tf-b" in kernelspecs()

    pruned = scan(str(image_dir), "--prefix", prefix, "--prune")
    assert pruned.returncode == 0, pruned.stderr
    assert plan(pruned.stdout) == {"tf18-cuda92-gpu": "unchanged", "tf18-cuda92-gpu-tf-b": "remove"}
    assert set(kernelspecs()) >= {"tf18-cuda92-gpu", "hand-made"}
    assert "tf18-cuda92-gpu-tf-b" not in kernelspecs()


def test_dry_run_prints_the_plan_and_writes_nothing(image_dir: Path, jupyter_dirs) -> None:
    prefix = jupyter_dirs["prefix"]
    proc = scan(str(image_dir), "--prefix", str(prefix), "--dry-run")
    assert proc.returncode == 0, proc.stderr
    assert plan(proc.stdout) == {"tf18-cuda92-gpu": "add", "tf18-cuda92-gpu-tf-b": "add"}
    assert f'"{TF}"' in proc.stdout
    assert "dry run: nothing written" in proc.stdout
    assert list(prefix.rglob("*")) == []


def test_an_unreadable_image_is_reported_and_the_others_installed(
    images, image_dir: Path, jupyter_dirs
) -> None:
    shutil.copyfile(images.corrupt, image_dir / "broken.sif")
    proc = scan(str(image_dir), "--prefix", str(jupyter_dirs["prefix"]))
    assert proc.returncode == 1
    skip = [line for line in proc.stdout.splitlines() if line.startswith("skip")]
    assert len(skip) == 1 and "broken.sif" in skip[0]
    assert "Check that it is a SIF/squashfs image" in skip[0]
    assert proc.stderr.strip().splitlines()[-1] == (
        "jupyter kernelprovider: 1 image(s) could not be read (see 'skip' above); "
        "the others were handled."
    )
    assert "Traceback" not in proc.stderr
    assert "tf18-cuda92-gpu" in kernelspecs()


def test_slurm_options_and_display_name_template(image_dir: Path, jupyter_dirs) -> None:
    (image_dir / "tf-b.sif").unlink()
    args = ["--slurm", "--partition", "gpu", "--gpus", "1", "--time", "1:00:00"]
    proc = scan(
        str(image_dir), "--prefix", str(jupyter_dirs["prefix"]), *args,
        "--bind", "/scratch", "--display-name", "{auto} on Slurm",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    spec = kernelspecs()["tf18-cuda92-gpu"]["spec"]
    assert spec["display_name"] == f"{TF} on Slurm"
    assert spec["interrupt_mode"] == "message"
    prov = spec["metadata"]["kernel_provisioner"]
    assert prov["provisioner_name"] == "slurm-apptainer-provisioner"
    assert prov["config"] == {
        "image": str(image_dir / "tf-a.sif"),
        "partition": "gpu",
        "gpus": "1",
        "time_limit": "1:00:00",
        "binds": ["/scratch"],
    }


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "usage: jupyter kernelprovider scan DIR..."),
        (["/nonexistent/images"], "Directory /nonexistent/images not found."),
        (["{images}", "--display-name", "One name"], "would give all 3 images the same name"),
        (["{images}", "--display-name", "{version}"], "'version' is not a placeholder here"),
    ],
)
def test_user_mistakes_end_with_one_line(image_dir: Path, jupyter_dirs, args, message) -> None:
    args = [a.replace("{images}", str(image_dir)) for a in args]
    proc = scan(*args, "--prefix", str(jupyter_dirs["prefix"]), "--recursive")
    assert proc.returncode == 1
    assert proc.stderr.strip().count("\n") == 0, proc.stderr
    assert message in proc.stderr


async def test_a_scanned_kernel_runs_in_its_image(image_dir: Path, jupyter_dirs) -> None:
    (image_dir / "tf-b.sif").unlink()
    # No NVIDIA driver on this machine: the CUDA 9.2 image is allowed with a warning.
    proc = scan(str(image_dir), "--prefix", str(jupyter_dirs["prefix"]), "--compat-check", "warn")
    assert proc.returncode == 0, proc.stderr
    km, kc = await start_new_async_kernel(kernel_name="tf18-cuda92-gpu", cwd=str(image_dir))
    try:
        outputs: list[str] = []
        reply = await kc.execute_interactive(
            "import os; print(os.environ['KP_TEST_IMAGE'])",
            output_hook=lambda m: outputs.append(m["content"].get("text", "")),
            timeout=60,
        )
        assert reply["content"]["status"] == "ok"
        assert "".join(outputs).strip() == "kp-test"
    finally:
        kc.stop_channels()
        await km.shutdown_kernel()
