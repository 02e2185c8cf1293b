"""The compatibility verdict at launch, on this host, with the real runtime and image."""

from __future__ import annotations

import json
import os

import pytest
from jupyter_client import AsyncKernelManager

from kernelprovider.errors import BindSourceNotFound, DriverIncompatible

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

NO_DRIVER = not os.path.exists("/proc/driver/nvidia/version")


@pytest.mark.skipif(not NO_DRIVER, reason="this host has an NVIDIA driver")
async def test_enforce_refuses_a_cuda_image_without_driver(images, install_kernel, jupyter_dirs):
    install_kernel("tf18", images.test, compat_check="enforce")
    km = AsyncKernelManager(kernel_name="tf18")
    with pytest.raises(DriverIncompatible) as e:
        await km.start_kernel(cwd=str(jupyter_dirs["work"]))
    message = str(e.value)
    assert "kp-test.sif needs an NVIDIA GPU (CUDA 9.2)" in message
    assert "has no NVIDIA driver loaded" in message
    assert "set compat_check to 'warn'" in message
    assert list(jupyter_dirs["runtime"].glob("kernel-*.json")) == []


async def test_cpu_kernel_of_a_cuda_image_starts_under_enforce(
    images, install_kernel, jupyter_dirs
):
    install_kernel("tf18cpu", images.test, compat_check="enforce", gpu="none")
    km = AsyncKernelManager(kernel_name="tf18cpu")
    await km.start_kernel(cwd=str(jupyter_dirs["work"]))
    try:
        assert await km.is_alive()
    finally:
        await km.shutdown_kernel(now=True)


async def test_warn_starts_and_logs_the_verdict(images, install_kernel, jupyter_dirs, caplog):
    install_kernel("tf18w", images.test, compat_check="warn")
    km = AsyncKernelManager(kernel_name="tf18w")
    await km.start_kernel(cwd=str(jupyter_dirs["work"]))
    try:
        verdicts = km.provisioner.verdicts
        assert {v.check for v in verdicts} >= {"driver", "tensorflow"}
        tf = next(v for v in verdicts if v.check == "tensorflow")
        assert tf.level == "warn" and "TensorFlow 1.8" in tf.reason
    finally:
        await km.shutdown_kernel(now=True)


async def test_missing_cuda_dir(images, install_kernel, jupyter_dirs):
    install_kernel("cudadir", images.test, cuda_dir="/software/cuda/9.2")
    km = AsyncKernelManager(kernel_name="cudadir")
    with pytest.raises(BindSourceNotFound, match="/software/cuda/9.2 does not exist"):
        await km.start_kernel(cwd=str(jupyter_dirs["work"]))


def test_kernels_started_together_share_one_read_of_the_image(images, tmp_path) -> None:
    """16 reads of a cold cache at once, as 16 kernels of a fresh server: the same facts for
    every one of them, and the disk cache written by the one read they shared."""
    import asyncio

    from kernelprovider import image

    cache = tmp_path / "facts.json"
    image.clear_cache()

    async def main() -> list:
        return await asyncio.gather(
            *(image.image_facts_async(str(images.test), cache_file=cache) for _ in range(16))
        )

    facts = asyncio.run(main())
    assert {(f.cuda, f.tensorflow, f.name) for f in facts} == {("9.2", "1.8", "kp-test.sif")}
    assert len({id(f) for f in facts}) == 16  # each caller gets its own copy
    assert str(os.path.realpath(images.test)) in json.loads(cache.read_text())["images"]
    image.clear_cache()
