"""The example kernelspecs in kernelspecs/ equal what the CLI generates for the same options."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from kernelprovider.app import name_from_image
from kernelprovider.kernelspec import build_kernelspec, make_kernel_cmd, provisioner_config

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "kernelspecs"


def _cli_install(args: list[str], prefix: Path) -> dict:
    # The CLI checks that the image exists; the examples point at /software paths that
    # do not exist here, so install against a stand-in file of the same name.
    proc = subprocess.run(
        [sys.executable, "-m", "kernelprovider.app", "install", "--prefix", str(prefix), *args],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    (kernel_dir,) = (prefix / "share" / "jupyter" / "kernels").iterdir()
    return json.loads((kernel_dir / "kernel.json").read_text())


def _examples() -> list[Path]:
    return sorted(EXAMPLES.glob("*/kernel.json"))


def test_there_are_reviewed_examples() -> None:
    names = {p.parent.name for p in _examples()}
    assert "tf18-cuda92-gpu" in names
    spec = json.loads((EXAMPLES / "tf18-cuda92-gpu" / "kernel.json").read_text())
    assert spec["display_name"] == "TF 1.8 / CUDA 9.2 (GPU)"


@pytest.mark.parametrize("example", _examples(), ids=lambda p: p.parent.name)
def test_example_equals_cli_output(example: Path, tmp_path: Path, monkeypatch) -> None:
    args = json.loads((example.parent / "cli-args.json").read_text())
    expected = json.loads(example.read_text())
    image = expected["metadata"]["kernel_provisioner"]["config"]["image"]
    # A real SIF header at the same path is not possible under /software; use the CLI with
    # an existing stand-in and compare everything but the image path.
    stand_in = tmp_path / Path(image).name
    stand_in.write_bytes(b"#!/usr/bin/env run-singularity\n\0SIF_MAGIC\0" + b"\0" * 2000)
    args = [a.replace(image, str(stand_in)) for a in args]
    monkeypatch.setenv("JUPYTER_DATA_DIR", str(tmp_path / "data"))
    got = _cli_install(args, tmp_path / "prefix")
    got["metadata"]["kernel_provisioner"]["config"]["image"] = image
    assert got == expected


def test_build_kernelspec_shape() -> None:
    spec = build_kernelspec("X", provisioner_config(image="/i.sif", gpu=None, binds=[]))
    assert spec == {
        "argv": make_kernel_cmd(),
        "display_name": "X",
        "language": "python",
        "interrupt_mode": "signal",
        "metadata": {
            "kernel_provisioner": {
                "provisioner_name": "apptainer-provisioner",
                "config": {"image": "/i.sif"},
            }
        },
    }


@pytest.mark.parametrize(
    ("image", "name"),
    [
        ("/software/images/tf-1.8-cuda-9.2.sif", "tf-1.8-cuda-9.2"),
        ("/x/PyTorch 2.1 CUDA12.sif", "pytorch-2.1-cuda12"),
        ("/x/sandbox/", "sandbox"),
        ("/x/???.sif", "container"),
    ],
)
def test_name_from_image(image: str, name: str) -> None:
    assert name_from_image(image) == name


def test_cli_refuses_a_stray_argument(tmp_path: Path) -> None:
    """A positional argument is a typo, not an exec argument to write into kernel.json."""
    image = tmp_path / "x.sif"
    image.write_bytes(b"#!/usr/bin/env run-singularity\n\0SIF_MAGIC\0" + b"\0" * 2000)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "kernelprovider.app",
            "install",
            "--image",
            str(image),
            "--prefix",
            str(tmp_path / "p"),
            "stray",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 1
    assert "unexpected argument(s) 'stray'" in proc.stderr
    assert not (tmp_path / "p").exists()
