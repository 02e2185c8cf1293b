"""Fixtures for kernels on the real Slurm test cluster: kernelspecs, started kernels, a stand-in
server process, and teardown that cancels this session's jobs only."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from jupyter_client import AsyncKernelManager
from kp_slurm import job_prefix, new_kernel_id
from slurm_cluster import cancel_jobs

from kernelprovider.kernelspec import SLURM_PROVISIONER_NAME

HERE = Path(__file__).resolve().parent


@pytest.fixture(autouse=True)
def _cancel_leftover_jobs(slurm_cluster: Any) -> Iterator[None]:
    """Safety net: whatever a failed test left running is cancelled (our names only)."""
    yield
    cancel_jobs(job_prefix())


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    return tmp_path / "state"


@pytest.fixture
def slurm_spec(images: Any, install_kernel: Any, slurm_cluster: Any, state_dir: Path) -> Any:
    """Install a Slurm kernelspec for the test image; returns its name.

    Defaults: partition gpu, no GPUs (so a busy cluster does not make tests wait), a 20
    minute time limit (longer than the 10 minute end warning, so cell outputs carry no
    warning line), this test's state directory, message-mode interrupts.
    """

    def make(name: str = "kp-slurm", interrupt_mode: str = "message", **config: Any) -> str:
        config.setdefault("state_dir", str(state_dir))
        config.setdefault("partition", slurm_cluster.default_partition)
        config.setdefault("gpus", "0")
        config.setdefault("time_limit", "20:00")
        config.setdefault("queue_timeout", 60.0)
        return install_kernel(
            name,
            config.pop("image", images.test),
            interrupt_mode=interrupt_mode,
            provisioner=SLURM_PROVISIONER_NAME,
            **config,
        )

    return make


@pytest.fixture
async def slurm_kernel(slurm_spec: Any, jupyter_dirs: dict[str, Path]) -> AsyncIterator[Any]:
    """Start kernels through AsyncKernelManager on the cluster: ``await start(**config)``
    returns (km, kc) with the client ready; all are shut down at teardown."""
    started: list[tuple[AsyncKernelManager, Any]] = []

    async def start(
        name: str = "kp-slurm",
        interrupt_mode: str = "message",
        manager: type[AsyncKernelManager] = AsyncKernelManager,
        **config: Any,
    ) -> tuple[AsyncKernelManager, Any]:
        kernel_name = slurm_spec(name, interrupt_mode, **config)
        km = manager(kernel_name=kernel_name)
        await km.start_kernel(kernel_id=new_kernel_id(), cwd=str(jupyter_dirs["work"]))
        kc = km.client()
        kc.start_channels()
        started.append((km, kc))
        await kc.wait_for_ready(timeout=60)
        return km, kc

    yield start
    for km, kc in started:
        kc.stop_channels()
        prov = km.provisioner
        if km.context.closed:  # the test shut it down already (its cleanup closes the context)
            continue
        if prov is not None and (prov.has_process or prov.job_id):
            await km.shutdown_kernel(now=True)


@pytest.fixture
def child_server(jupyter_dirs: dict[str, Path]) -> Iterator[Any]:
    """Run kp_child.py (a stand-in server) for a kernelspec; returns (process, its record)."""
    procs: list[subprocess.Popen[str]] = []

    def spawn(kernel_name: str) -> tuple[subprocess.Popen[str], dict[str, Any]]:
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
        proc = subprocess.Popen(
            [
                sys.executable,
                str(HERE / "kp_child.py"),
                kernel_name,
                new_kernel_id(),
                str(jupyter_dirs["work"]),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        procs.append(proc)
        line = proc.stdout.readline()
        if not line:
            proc.wait(timeout=30)
            pytest.fail(f"stand-in server did not start a kernel:\n{proc.stderr.read()}")
        return proc, json.loads(line)["record"]

    yield spawn
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        for stream in (proc.stdout, proc.stderr):
            if stream:
                stream.close()
