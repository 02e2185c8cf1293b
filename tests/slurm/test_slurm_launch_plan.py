"""doctor prints the Slurm step a start runs: the same srun argv and container variables."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import pytest
from jupyter_client.kernelspec import KernelSpecManager
from traitlets.config import Application

from kernelprovider.doctor import PLACEHOLDER_ID, kernel_report, make_provisioner
from kernelprovider.gpu import host_facts

CONFIGS: dict[str, dict[str, Any]] = {
    "defaults": {"gpu": "none"},
    "cleanenv-env": {"gpu": "none", "cleanenv": True, "container_env": {"OMP_NUM_THREADS": "2"}},
    "no-eval-srun-args": {
        "gpu": "none",
        "extra_args": ["--no-eval"],
        "container_env": {"WHERE": "$HOME"},
        "srun_args": ["--cpu-bind=none"],
    },
}


def step_env(pid: int) -> dict[str, str]:
    """The environment the srun of the kernel step really got."""
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    pairs = (item.decode().partition("=") for item in raw if item)
    # The job's end (KP_SLURM_JOB_END) is known only once the job runs: doctor cannot say it.
    return {
        k: v
        for k, _, v in pairs
        if k.startswith(("APPTAINERENV_", "SINGULARITYENV_")) and not k.endswith("_JOB_END")
    }


@pytest.mark.parametrize("config", CONFIGS.values(), ids=list(CONFIGS))
async def test_doctor_shows_the_step_a_slurm_start_runs(
    config: dict[str, Any], slurm_kernel: Any, jupyter_dirs: dict[str, Path]
) -> None:
    km, _ = await slurm_kernel(f"kp-plan-{len(config)}", **config)
    prov = km.provisioner
    assert prov.process is not None
    spec = KernelSpecManager().get_kernel_spec(km.kernel_name)
    doctor = make_provisioner(Application(), kernel=km.kernel_name, spec=spec)
    report = await asyncio.to_thread(
        kernel_report,
        doctor,
        host_facts(),
        kernel=km.kernel_name,
        node_known=False,
        cwd=str(jupyter_dirs["work"]),
        env=dict(os.environ),
    )
    # Only the placeholders themselves: the in-kernel hook's code names SLURM_JOB_ID too.
    fill = {"--jobid=JOB_ID": f"--jobid={prov.job_id}", "--ip=NODE_ADDR": f"--ip={prov.node_ip}"}
    shown = [fill.get(a, a.replace(PLACEHOLDER_ID, prov.kernel_id)) for a in report.argv]
    real = list(prov.process.args)
    assert shown == real
    assert report.env == step_env(prov.process.pid)
