"""Batch tools run notebooks on container kernels: `jupyter execute` (nbclient) and papermill,
with `-k <kernel>`, on this host and on a node that the real Slurm cluster allocates."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from slurm_cluster import squeue_jobs, wait_job_state

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

BIN = Path(sys.executable).parent
LABEL = "import json; print(json.load(open('/.singularity.d/labels.json'))['TENSORFLOW_VERSION'])"
WHERE = (
    "import os; print(os.environ.get('SLURM_JOB_ID', '-'), os.environ.get('SLURM_JOB_NAME', '-'))"
)


def notebook(path: Path) -> Path:
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(LABEL), nbformat.v4.new_code_cell(WHERE)]
    nbformat.write(nb, path)
    return path


def run_tool(tool: str, kernel: str, src: Path, out: Path) -> None:
    """Run the batch tool as a user would; fail with its output if it fails."""
    if tool == "nbclient":
        argv = [BIN / "jupyter", "execute", src, f"--kernel_name={kernel}", f"--output={out.stem}"]
    else:
        argv = [BIN / "papermill", src, out, "-k", kernel, "--no-progress-bar"]
    proc = subprocess.run(
        [str(a) for a in argv], capture_output=True, text=True, env=os.environ.copy(), check=False
    )
    assert proc.returncode == 0, f"{tool} failed:\n{proc.stdout}\n{proc.stderr}"
    assert out.exists(), f"{tool} wrote no {out}"


def stdout_of(path: Path) -> list[str]:
    """The stdout text of each code cell of the executed notebook."""
    nb = nbformat.read(path, as_version=4)
    return [
        "".join(o.get("text", "") for o in cell.outputs if o.get("name") == "stdout").strip()
        for cell in nb.cells
        if cell.cell_type == "code"
    ]


@pytest.mark.parametrize("tool", ["nbclient", "papermill"])
def test_batch_tool_runs_a_notebook_in_the_image(tool, images, install_kernel, tmp_path) -> None:
    install_kernel("tf18-cuda92-gpu", images.test, display_name="TF 1.8 / CUDA 9.2 (GPU)")
    src = notebook(tmp_path / "analysis.ipynb")
    out = tmp_path / "analysis-out.ipynb"
    run_tool(tool, "tf18-cuda92-gpu", src, out)
    assert stdout_of(out) == ["1.8", "- -"]


@pytest.mark.slurm
@pytest.mark.parametrize("tool", ["nbclient", "papermill"])
def test_batch_tool_runs_a_notebook_on_a_slurm_node(
    tool, images, install_kernel, slurm_cluster, tmp_path
) -> None:
    install_kernel(
        "tf18-cuda92-gpu-slurm",
        images.test,
        display_name="TF 1.8 / CUDA 9.2 (GPU, Slurm)",
        provisioner="slurm-apptainer-provisioner",
        interrupt_mode="message",
        partition=slurm_cluster.default_partition,
        gpus="1",
        state_dir=str(tmp_path / "state"),
    )
    src = notebook(tmp_path / "analysis.ipynb")
    out = tmp_path / "analysis-out.ipynb"
    run_tool(tool, "tf18-cuda92-gpu-slurm", src, out)
    label, where = stdout_of(out)
    assert label == "1.8"
    job_id, job_name = where.split()
    assert job_id.isdigit()
    assert job_name.startswith("kp-")
    # The tool shut the kernel down: its allocation is gone, no kp-* job of it is left.
    assert wait_job_state(job_id, {"GONE"}, timeout=30) is not None
    assert not [
        j for j in squeue_jobs("kp-") if j["id"] == job_id or job_name.startswith(j["name"])
    ]
