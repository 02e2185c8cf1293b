"""``jupyter kernelprovider doctor KERNEL`` says which private path a Slurm kernel's traffic
takes: CurveZMQ (the image's ipykernel supports it), the SSH tunnel, or neither (a warning that
names the way out). Real CLI, real runtime, the real test images; nothing is started."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from test_doctor_cli import cli

from kernelprovider.kernelspec import SLURM_PROVISIONER_NAME

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


def transport_line(out: str) -> str:
    return next(
        line
        for line in out.splitlines()
        if line.strip().startswith(("ok", "warn", "fail")) and " transport " in line
    )


@pytest.fixture
def curve_image(images: Any) -> Path:
    if not images.curve.exists():
        pytest.fail(f"{images.curve} is missing (make testenv builds it)")
    return images.curve


def test_doctor_names_the_transport_of_each_slurm_kernel(
    images: Any, curve_image: Path, install_kernel: Any, jupyter_dirs: dict[str, Path]
) -> None:
    kernels = {
        "kp-old": {"image": images.test},
        "kp-old-tunnel": {"image": images.test, "tunnel": "ssh"},
        "kp-curve": {"image": curve_image},
        "kp-old-required": {"image": images.test, "encryption": "curve"},
    }
    lines = {}
    for name, config in kernels.items():
        image = config.pop("image")
        install_kernel(name, image, provisioner=SLURM_PROVISIONER_NAME, gpu="none", **config)
        run = cli("doctor", name, cwd=jupyter_dirs["work"])
        lines[name] = transport_line(run.stdout)
    old = lines["kp-old"]
    assert old.split()[0] == "warn" and "ipykernel 6.17.0" in old and "tunnel='ssh'" in old
    assert lines["kp-old-tunnel"].split()[0] == "ok" and "SSH tunnel" in lines["kp-old-tunnel"]
    assert lines["kp-curve"].split()[0] == "ok" and "CurveZMQ" in lines["kp-curve"]
    assert "ipykernel 7.4.0" in lines["kp-curve"]
    required = lines["kp-old-required"]
    assert required.split()[0] == "fail" and "kp-test.sif" in required
