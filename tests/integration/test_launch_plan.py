"""doctor prints the plan a start runs: its argv and variables equal pre_launch's."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import pytest
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import AsyncKernelManager
from jupyter_core.paths import jupyter_runtime_dir
from traitlets.config import Application

from kernelprovider.doctor import PLACEHOLDER_ID, kernel_report, make_provisioner
from kernelprovider.gpu import host_facts

PREFIXES = ("APPTAINERENV_", "SINGULARITYENV_", "NVIDIA_VISIBLE_DEVICES")

CONFIGS: dict[str, dict[str, Any]] = {
    "defaults": {},
    "no-gpu": {"gpu": "none"},
    "cleanenv-binds-env": {"cleanenv": True, "container_env": {"OMP_NUM_THREADS": "4"}},
    "no-eval": {"extra_args": ["--no-eval"], "container_env": {"WHERE": "$HOME"}},
    "contain-compat-off": {"contain": True, "compat_check": "off", "no_user_site": False},
    "nvccli-cuda-dir": {"gpu": "nvccli", "cuda_dir": "/usr"},
}


@pytest.mark.parametrize("config", CONFIGS.values(), ids=list(CONFIGS))
async def test_doctor_argv_and_env_are_what_pre_launch_builds(
    config: dict[str, Any], images: Any, install_kernel: Any, jupyter_dirs: dict[str, Path]
) -> None:
    extra = jupyter_dirs["work"] / "data"
    extra.mkdir()
    install_kernel("plan", images.test, binds=[f"{extra}:/data:ro"], **config)
    work = str(jupyter_dirs["work"])

    # As jupyter_server's MultiKernelManager does: the connection file in the runtime dir.
    kernel_id = "c0ffee00-0000-4000-8000-000000000012"
    conn = os.path.join(jupyter_runtime_dir(), f"kernel-{kernel_id}.json")
    km = AsyncKernelManager(kernel_name="plan", kernel_id=kernel_id, connection_file=conn)
    cmd, kw = await km._async_pre_start_kernel(cwd=work)
    try:
        spec = KernelSpecManager().get_kernel_spec("plan")
        prov = make_provisioner(Application(), kernel="plan", spec=spec)
        # doctor blocks (a CLI may); here it runs beside the server's loop, in a thread.
        report = await asyncio.to_thread(
            kernel_report, prov, host_facts(), kernel="plan", cwd=work, env=dict(os.environ)
        )
    finally:
        await km.provisioner._discard_connection()  # nothing was started

    placeholder_conn = prov.parent.connection_file
    shown = [
        a.replace(placeholder_conn, km.connection_file).replace(PLACEHOLDER_ID, km.kernel_id)
        for a in report.argv
    ]
    assert shown == cmd
    started = {k: v for k, v in kw["env"].items() if k.startswith(PREFIXES)}
    assert report.env == started
