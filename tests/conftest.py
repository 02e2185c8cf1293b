"""Shared fixtures: the real Apptainer runtime, the test images, an isolated Jupyter path."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kernelprovider.kernelspec import (
    PROVISIONER_NAME,
    build_kernelspec,
    install_kernelspec,
    provisioner_config,
)

pytest_plugins = ["slurm_cluster", "hangfs"]

ROOT = Path(__file__).resolve().parent.parent
IMAGES = Path(os.environ.get("KP_TEST_IMAGES", ROOT / "build" / "images"))

# `make test` sets KP_REQUIRE_RUNTIME=1: there a missing runtime or image is a broken test
# environment, not a reason to skip (tests/needs.py).
from needs import REQUIRE, need, need_module, need_root  # noqa: E402,F401


@pytest.fixture(scope="session")
def apptainer() -> str:
    """Path of the real apptainer binary."""
    path = shutil.which("apptainer") or shutil.which("singularity")
    if not path:
        need("apptainer is not installed")
    return path


class Images:
    """The test images built by scripts/setup-testenv.sh."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.test = root / "kp-test.sif"
        self.noipykernel = root / "kp-noipykernel.sif"
        self.nopython = root / "kp-nopython.sif"
        self.corrupt = root / "corrupt.sif"
        #: Genuine framework files from published wheels (JAX's CUDA 12 plugin, libcudart 12).
        self.frameworks = root / "kp-frameworks.sif"
        #: ipykernel 7.4 / jupyter_client 8.10 from wheels: a kernel that speaks CurveZMQ.
        self.curve = root / "kp-curve.sif"


@pytest.fixture(scope="session")
def images(apptainer: str) -> Images:
    imgs = Images(IMAGES)
    if not imgs.test.exists():
        need(f"test image {imgs.test} is missing")
    return imgs


@pytest.fixture
def jupyter_dirs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Path]]:
    """An isolated Jupyter data/runtime/config path, so tests see only their own kernels."""
    dirs = {
        "data": tmp_path / "jdata",
        "runtime": tmp_path / "jruntime",
        "config": tmp_path / "jconfig",
        "prefix": tmp_path / "prefix",
        "work": tmp_path / "work dir",  # a space, as users have
    }
    for d in dirs.values():
        d.mkdir(parents=True, exist_ok=True)
    monkeypatch.setenv("JUPYTER_DATA_DIR", str(dirs["data"]))
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(dirs["runtime"]))
    monkeypatch.setenv("JUPYTER_CONFIG_DIR", str(dirs["config"]))
    monkeypatch.setenv("JUPYTER_PATH", str(dirs["prefix"] / "share" / "jupyter"))
    monkeypatch.setenv("JUPYTER_CONFIG_PATH", str(dirs["config"]))
    monkeypatch.setenv("JUPYTER_PLATFORM_DIRS", "0")
    yield dirs


@pytest.fixture
def install_kernel(jupyter_dirs: dict[str, Path]) -> Any:
    """Install a container kernelspec under the test prefix; returns its name."""

    def install(
        name: str,
        image: str | Path,
        display_name: str = "",
        interrupt_mode: str = "signal",
        provisioner: str = PROVISIONER_NAME,
        **config: Any,
    ) -> str:
        # This test machine has no NVIDIA driver: a CUDA-labelled image would (rightly) be
        # refused under 'enforce'. Tests of that verdict set compat_check themselves.
        config.setdefault("compat_check", "warn")
        spec = build_kernelspec(
            display_name or name,
            provisioner_config(image=str(image), **config),
            interrupt_mode=interrupt_mode,
            provisioner=provisioner,
        )
        install_kernelspec(spec, name, prefix=str(jupyter_dirs["prefix"]))
        return name

    return install
