"""The kernel's HMAC key lives in its connection file (0600, in the 0700 state directory) and
nowhere else: not in any process's argv or environment, not in Slurm's job record or batch
script, not in the kernel's log, the provisioner's record, or the server's log records."""

from __future__ import annotations

import json
import logging
import subprocess
from pathlib import Path
from typing import Any

import pytest
from kp_slurm import interrupt_running_cell, processes_mentioning, run_cell, scontrol

pytestmark = [pytest.mark.slurm, pytest.mark.integration, pytest.mark.timeout(120)]


def slurm_views(job_id: str) -> dict[str, str]:
    """Everything Slurm will tell anyone about the job and its steps."""
    squeue = subprocess.run(
        ["squeue", "-h", "-s", "-j", job_id, "-o", "%all"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    return {
        "scontrol show job -d": scontrol("show", "job", "-d", job_id),
        "batch script": scontrol("write", "batch_script", job_id, "-"),
        "scontrol show step": scontrol("show", "step", job_id),
        "squeue -s %all": squeue.stdout,
    }


def record_text(caplog: pytest.LogCaptureFixture) -> str:
    handler = logging.Formatter("%(name)s %(levelname)s %(message)s")
    return "\n".join(handler.format(r) for r in caplog.records)


async def test_key_appears_nowhere_but_the_connection_file(
    slurm_kernel: Any,
    state_dir: Path,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    caplog.set_level(logging.DEBUG)
    km, kc = await slurm_kernel(name="kp-slurm-secret", interrupt_mode="signal")
    prov = km.provisioner
    job = prov.job_id
    conn = Path(km.connection_file)
    key = json.loads(conn.read_text())["key"]
    assert len(key) >= 32
    assert conn.stat().st_mode & 0o777 == 0o600

    # exercise every path that talks to Slurm: execute, signal interrupt, restart
    reply, out = await run_cell(kc, "print('hello')")
    assert out.strip() == "hello"
    reply = await interrupt_running_cell(km.interrupt_kernel, kc, "while True: pass")
    assert reply["ename"] == "KeyboardInterrupt"
    await km.restart_kernel()
    await kc.wait_for_ready(timeout=60)
    assert json.loads(conn.read_text())["key"] == key  # same key after the restart

    # the batch script is what Slurm got; it holds a lease path, no secret
    script = scontrol("write", "batch_script", job, "-")
    assert "lease" in script and "#!/bin/sh" in script
    for where, text in slurm_views(job).items():
        assert key not in text, where
    assert processes_mentioning(key, environ=True) == []
    assert key not in Path(prov.files["log"]).read_text()
    record = json.dumps(await prov.get_provisioner_info())
    assert key not in record

    kc.stop_channels()
    await km.shutdown_kernel()
    logs = record_text(caplog)
    # the capture saw the provisioner's DEBUG and INFO lines, and none holds the key
    assert f"step argv ['srun', '--jobid={job}'" in logs
    assert f"submitted Slurm job {job}" in logs
    assert key not in logs
    assert list(state_dir.iterdir()) == []
