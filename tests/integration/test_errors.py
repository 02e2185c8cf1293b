"""Every start failure a user can meet ends at once with a named error and a next step."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import uuid
from pathlib import Path

import pytest
import tornado
from jupyter_client import AsyncKernelManager
from jupyter_core.paths import jupyter_runtime_dir
from needs import need, need_root
from traitlets import TraitError

from kernelprovider.errors import (
    BindSourceNotFound,
    ImageNotFound,
    KernelStartError,
    NotAContainerImage,
    RuntimeNotFound,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


async def start(name: str, cwd: Path) -> AsyncKernelManager:
    """Start as jupyter_server does: the connection file goes to the runtime directory."""
    runtime = Path(jupyter_runtime_dir())
    km = AsyncKernelManager(
        kernel_name=name, connection_file=str(runtime / f"kernel-{uuid.uuid4()}.json")
    )
    await km.start_kernel(cwd=str(cwd))
    return km


def no_connection_files(jupyter_dirs: dict[str, Path]) -> bool:
    return list(jupyter_dirs["runtime"].glob("kernel-*.json")) == []


async def test_missing_image(install_kernel, jupyter_dirs) -> None:
    install_kernel("gone", "/software/images/tf-1.8-cuda-9.2.sif")
    with pytest.raises(ImageNotFound) as e:
        await start("gone", jupyter_dirs["work"])
    assert str(e.value) == (
        "Image /software/images/tf-1.8-cuda-9.2.sif not found (kernel gone). Check the path "
        "in the kernelspec or run 'jupyter kernelprovider list'."
    )
    assert no_connection_files(jupyter_dirs)


async def test_corrupt_image(images, install_kernel, jupyter_dirs) -> None:
    install_kernel("corrupt", images.corrupt)
    with pytest.raises(NotAContainerImage, match="is not a container image"):
        await start("corrupt", jupyter_dirs["work"])
    assert no_connection_files(jupyter_dirs)


def test_unreadable_image_for_another_user(images) -> None:
    """The check runs as an unprivileged user, who cannot read a 0600 image of root's."""
    python = "/usr/bin/python3"
    need_root("switching to nobody")
    if not os.path.exists(python):
        need(f"the system {python}")
    root = Path(__file__).resolve().parents[2]
    site_packages = Path(tornado.__file__).parent.parent  # errors.py imports tornado
    shared = Path(tempfile.mkdtemp(prefix="kp-unreadable-"))
    try:
        shared.chmod(0o755)
        image = shared / "private.sif"
        image.write_bytes(images.test.read_bytes()[:4096])
        image.chmod(0o600)
        code = (
            f"from kernelprovider.apptainer import check_image\ncheck_image({str(image)!r}, 'k')\n"
        )
        proc = subprocess.run(
            [python, "-c", code],
            capture_output=True,
            text=True,
            user=65534,
            group=65534,
            cwd="/",
            env={"PYTHONPATH": f"{root}:{site_packages}", "PATH": "/usr/bin:/bin"},
            check=False,
        )
    finally:
        shutil.rmtree(shared)
    if "No module named 'kernelprovider'" in proc.stderr:
        need("the checkout is not readable by nobody", "root")
    assert proc.returncode == 1, proc.stderr
    assert "ImageNotReadable" in proc.stderr
    assert f"Image {image} is not readable by this user (kernel k)" in proc.stderr


async def test_runtime_not_installed(images, install_kernel, jupyter_dirs) -> None:
    install_kernel("nort", images.test, runtime="/opt/nowhere/apptainer")
    with pytest.raises(RuntimeNotFound, match="'/opt/nowhere/apptainer' not found"):
        await start("nort", jupyter_dirs["work"])
    assert no_connection_files(jupyter_dirs)


async def test_runtime_auto_with_none_on_path(images, install_kernel, jupyter_dirs, monkeypatch):
    install_kernel("auto", images.test)
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(RuntimeNotFound, match="Neither apptainer nor singularity is on PATH"):
        await start("auto", jupyter_dirs["work"])


async def test_image_without_ipykernel(images, install_kernel, jupyter_dirs) -> None:
    install_kernel("noipk", images.noipykernel)
    with pytest.raises(KernelStartError) as e:
        await start("noipk", jupyter_dirs["work"])
    message = str(e.value)
    assert message.startswith("The kernel exited before it was ready (exit 1).")
    assert "The image has no ipykernel" in message
    assert "No module named ipykernel" in message
    assert no_connection_files(jupyter_dirs)


async def test_image_without_python(images, install_kernel, jupyter_dirs) -> None:
    if not images.nopython.exists():
        need(f"test image {images.nopython} is missing")
    install_kernel("nopy", images.nopython)
    with pytest.raises(KernelStartError) as e:
        await start("nopy", jupyter_dirs["work"])
    message = str(e.value)
    assert "The kernel exited before it was ready (exit 255)." in message
    assert "python3" in message and "not found" in message
    assert no_connection_files(jupyter_dirs)


async def test_missing_bind_source(images, install_kernel, jupyter_dirs) -> None:
    install_kernel("bind", images.test, binds=["/nonexistent/scratch:/scratch"])
    with pytest.raises(BindSourceNotFound) as e:
        await start("bind", jupyter_dirs["work"])
    assert str(e.value) == (
        "Bind source /nonexistent/scratch does not exist on this host (bind "
        "/nonexistent/scratch:/scratch). Create it or remove it from the kernelspec's binds."
    )
    assert no_connection_files(jupyter_dirs)


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"gpu": "cuda"}, "gpu"),
        ({"binds": ["scratch"]}, "relative"),
        ({"binds": ["/a,b"]}, "','"),
        ({"container_env": {"BAD-NAME": "1"}}, "not a valid variable name"),
        ({"ready_timeout": "soon"}, "ready_timeout"),
    ],
)
async def test_bad_config_values(images, install_kernel, jupyter_dirs, config, message) -> None:
    install_kernel("bad", images.test, **config)
    with pytest.raises(TraitError, match=message):
        await start("bad", jupyter_dirs["work"])
    assert no_connection_files(jupyter_dirs)


async def test_relative_image_path(install_kernel, jupyter_dirs) -> None:
    install_kernel("rel", "images/tf.sif")
    with pytest.raises(TraitError, match="must be an absolute path"):
        await start("rel", jupyter_dirs["work"])
