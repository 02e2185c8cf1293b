"""A kernel in a real SIF image through AsyncKernelManager: start, execute, interrupt, restart,
shutdown, and nothing left behind."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import psutil
import pytest
from jupyter_client import AsyncKernelManager
from kernel_helpers import interrupt_running_cell, run_cell, start_kernel, still_running

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]


def kernel_processes(km: AsyncKernelManager) -> list[psutil.Process]:
    """The container's process and everything under it."""
    root = psutil.Process(km.provisioner.pid)
    return [root, *root.children(recursive=True)]


def processes_mentioning(text: str) -> list[psutil.Process]:
    found = []
    for p in psutil.process_iter(["cmdline"]):
        try:
            if any(text in arg for arg in (p.info["cmdline"] or [])):
                found.append(p)
        except psutil.Error:
            continue
    return found


@pytest.fixture
async def started(images, install_kernel, jupyter_dirs):
    name = install_kernel("kp-test", images.test, display_name="TF 1.8 / CUDA 9.2 (GPU)")
    km, kc = await start_kernel(name, jupyter_dirs["work"])
    yield km, kc
    kc.stop_channels()
    if await km.is_alive():
        await km.shutdown_kernel(now=True)


async def test_kernel_runs_inside_the_image(started, jupyter_dirs) -> None:
    km, kc = started
    code = (
        "import json, os, sys\n"
        "labels = json.load(open('/.singularity.d/labels.json'))\n"
        "print(labels['TENSORFLOW_VERSION'], labels['CUDA_VERSION'])\n"
        "print(os.environ.get('KP_TEST_IMAGE'), os.environ.get('PYTHONNOUSERSITE'))\n"
        "print(os.getcwd())\n"
    )
    reply, out = await run_cell(kc, code)
    assert reply["status"] == "ok", out
    lines = out.splitlines()
    assert lines[0] == "1.8 9.2"
    assert lines[1] == "kp-test 1"
    assert lines[2] == str(jupyter_dirs["work"])
    # the process the server holds is the runtime; the kernel runs under it
    procs = kernel_processes(km)
    assert "Apptainer runtime parent" in " ".join(procs[0].cmdline())
    assert any("ipykernel_launcher" in " ".join(p.cmdline()) for p in procs[1:])


async def test_interrupt_then_next_cell(started) -> None:
    km, kc = started
    reply = await interrupt_running_cell(km.interrupt_kernel, kc, "while True: pass")
    assert reply["status"] == "error"
    assert reply["ename"] == "KeyboardInterrupt"
    content, out = await run_cell(kc, "print(6 * 7)")
    assert content["status"] == "ok"
    assert out.strip() == "42"


async def test_restart_gives_a_fresh_kernel(started) -> None:
    km, kc = started
    await run_cell(kc, "x = 1")
    old = {p.pid for p in kernel_processes(km)}
    await km.restart_kernel(now=False)
    await kc.wait_for_ready(timeout=60)
    content, out = await run_cell(kc, "print('x' in dir())")
    assert content["status"] == "ok"
    assert out.strip() == "False"
    assert not [p for p in old if psutil.pid_exists(p) and psutil.Process(p).status() != "zombie"]


async def test_shutdown_leaves_nothing(images, install_kernel, jupyter_dirs) -> None:
    name = install_kernel("kp-test", images.test)
    km = AsyncKernelManager(kernel_name=name)
    await km.start_kernel(cwd=str(jupyter_dirs["work"]))
    kc = km.client()
    kc.start_channels()
    await kc.wait_for_ready(timeout=60)
    conn_file = km.connection_file
    assert Path(conn_file).exists()
    # the key is in the file (0600), not on any command line
    key = json.loads(Path(conn_file).read_text())["key"]
    assert oct(Path(conn_file).stat().st_mode & 0o777) == "0o600"
    procs = kernel_processes(km)
    assert len(procs) >= 2, "expected the runtime and the python kernel under it"
    assert not processes_mentioning(key)
    kc.stop_channels()
    await km.shutdown_kernel()
    assert await still_running(procs) == []
    assert processes_mentioning(conn_file) == []
    assert not Path(conn_file).exists()
    assert list(jupyter_dirs["runtime"].glob("kernel-*.json")) == []


async def test_message_mode_interrupt(images, install_kernel, jupyter_dirs):
    name = install_kernel("kp-msg", images.test, interrupt_mode="message")
    km = AsyncKernelManager(kernel_name=name)
    await km.start_kernel(cwd=str(jupyter_dirs["work"]))
    kc = km.client()
    kc.start_channels()
    try:
        await kc.wait_for_ready(timeout=60)
        reply = await interrupt_running_cell(
            km.interrupt_kernel, kc, "import time\nwhile True: time.sleep(0.01)"
        )
        assert reply["ename"] == "KeyboardInterrupt"
        content, out = await run_cell(kc, "print('alive')")
        assert out.strip() == "alive"
    finally:
        kc.stop_channels()
        await km.shutdown_kernel(now=True)


async def test_server_python_settings_stay_outside(
    images, install_kernel, jupyter_dirs, monkeypatch
):
    """A server started with PYTHONPATH (modules, conda) must not point the image's Python at
    the server's packages."""
    monkeypatch.setenv("PYTHONPATH", "/opt/site/server-packages")
    monkeypatch.setenv("PYTHONHOME", "/opt/site/python")
    name = install_kernel("kp-pp", images.test, container_env={"KP_FROM_SPEC": "yes"})
    km = AsyncKernelManager(kernel_name=name)
    await km.start_kernel(cwd=str(jupyter_dirs["work"]))
    kc = km.client()
    kc.start_channels()
    try:
        await kc.wait_for_ready(timeout=60)
        code = (
            "import os; print(os.environ.get('PYTHONPATH'), os.environ.get('PYTHONHOME'), "
            "os.environ.get('KP_FROM_SPEC'))"
        )
        content, out = await run_cell(kc, code)
        assert content["status"] == "ok"
        assert out.split() == ["None", "None", "yes"]
    finally:
        kc.stop_channels()
        await km.shutdown_kernel(now=True)


async def test_kernels_started_together_all_come_up_and_leave_no_key(
    images, install_kernel, jupyter_dirs
) -> None:
    """Six starts at once on two cores: each manager reads a complete connection file (the
    kernel rewrites only its own link), every kernel answers, and after shutdown no file
    with a key is left in the runtime directory."""
    name = install_kernel("kp-burst", images.test, gpu="none")
    started = await asyncio.gather(
        *(start_kernel(name, jupyter_dirs["work"], timeout=120) for _ in range(6))
    )
    runtime = jupyter_dirs["runtime"]
    for km, kc in started:
        on_disk = json.loads(Path(km.connection_file).read_text())
        assert on_disk["shell_port"] == km.shell_port
        reply, out = await run_cell(kc, "print(6 * 7)")
        assert out.strip() == "42", out
    for km, kc in started:
        kc.stop_channels()
        await km.shutdown_kernel()
    assert sorted(p.name for p in runtime.iterdir() if "kernel" in p.name) == []
