"""JupyterLab in a real headless Chromium: the launcher shows the scanned image's kernel, a click
opens a notebook on it, a cell runs inside the image and its output shows in the page.

Needs Debian's chromium (/usr/bin/chromium) and the playwright package, both set up by
scripts/setup-hub.sh (no `playwright install`: Playwright drives the system browser). The
screenshots are kept as build/artifacts/jupyterlab-launcher.png (the launcher) and
build/artifacts/jupyterlab-tf18.png (the notebook with the cell's output).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from needs import need, need_module

need_module("jupyterlab", "browser")
playwright_api = need_module("playwright.sync_api", "browser")

from integration.test_server import TOKEN, Server  # noqa: E402
from slurm_cluster import squeue_jobs, wait_job_state  # noqa: E402

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "build" / "artifacts"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
TF = "TF 1.8 / CUDA 9.2 (GPU)"
CELL = """\
import json
labels = json.load(open('/.singularity.d/labels.json'))
print('TENSORFLOW_VERSION', labels['TENSORFLOW_VERSION'], 'CUDA_VERSION', labels['CUDA_VERSION'])"""
WHERE = "import os; print(os.environ['SLURM_JOB_ID'], os.environ['SLURM_JOB_PARTITION'])"


def _need(what: str) -> None:
    need(what, "browser")


@pytest.fixture
def start_lab(jupyter_dirs, tmp_path: Path) -> Iterator[Callable[..., Server]]:
    """Start jupyter_server with JupyterLab on loopback with a token; stopped at teardown."""
    if not CHROMIUM.exists():
        _need(f"{CHROMIUM} is not installed")
    # A user settings directory of the test's own: no news prompt over the page.
    settings = tmp_path / "lab-settings"
    notification = settings / "@jupyterlab" / "apputils-extension"
    notification.mkdir(parents=True)
    (notification / "notification.jupyterlab-settings").write_text(
        json.dumps({"fetchNews": "false", "checkForUpdates": False})
    )
    servers: list[Server] = []

    def start(kernels: Sequence[str], site_config: str = "") -> Server:
        config = tmp_path / "jupyter_server_config.py"
        config.write_text(site_config)
        # Only the kernels the test is about, whatever else the machine has installed.
        args = [f"--config={config}"]
        args += [f"--KernelSpecManager.allowed_kernelspecs={k}" for k in kernels]
        os.environ["JUPYTERLAB_SETTINGS_DIR"] = str(settings)
        os.environ["JUPYTERLAB_WORKSPACES_DIR"] = str(tmp_path / "lab-workspaces")
        try:
            srv = Server(jupyter_dirs["work"], tmp_path / "lab.log", args)
        finally:
            del os.environ["JUPYTERLAB_SETTINGS_DIR"], os.environ["JUPYTERLAB_WORKSPACES_DIR"]
        servers.append(srv)
        return srv

    yield start
    for srv in servers:
        srv.stop()


@pytest.fixture
def browser_page() -> Iterator[Any]:
    """A page of Debian's chromium, headless, driven by Playwright."""
    with playwright_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 800})
        page.set_default_timeout(90_000)
        try:
            yield page
        finally:
            browser.close()


def _scan(images, jupyter_dirs, tmp_path: Path) -> None:
    image_dir = tmp_path / "images"
    image_dir.mkdir()
    (image_dir / "tf-1.8-cuda-9.2.sif").symlink_to(images.test)
    # No NVIDIA driver on this machine: the CUDA 9.2 image is allowed with a warning.
    scan = subprocess.run(
        [str(Path(sys.executable).parent / "jupyter"), "kernelprovider", "scan", str(image_dir),
         "--prefix", str(jupyter_dirs["prefix"]), "--compat-check", "warn"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert scan.returncode == 0, scan.stderr


def _get(server: Server, path: str) -> Any:
    # Playwright's sync API runs its own event loop here: plain urllib, not tornado.
    req = urllib.request.Request(server.url + path, headers={"Authorization": f"token {TOKEN}"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.load(resp)


def _open_notebook(page: Any, lab: Server, display_name: str, state: str) -> None:
    """Open JupyterLab, click the kernel's launcher card, wait for '<name> | <state>'."""
    page.goto(f"{lab.url}/lab?token={TOKEN}")
    page.locator(f'.jp-LauncherCard[data-category="Notebook"][title="{display_name}"]').click()
    page.get_by_text(f"{display_name} | {state}").wait_for()


def _run_cell(page: Any, code: str) -> None:
    page.locator(".jp-NotebookPanel:visible .jp-Cell .cm-content").first.click()
    page.keyboard.type(code)
    page.keyboard.press("Shift+Enter")


def test_launcher_card_opens_a_notebook_that_runs_in_the_image(
    images, jupyter_dirs, tmp_path, start_lab, browser_page
) -> None:
    _scan(images, jupyter_dirs, tmp_path)
    lab = start_lab(["tf18-cuda92-gpu", "python3"])
    page = browser_page
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    try:
        page.goto(f"{lab.url}/lab?token={TOKEN}")
        card = page.locator(f'.jp-LauncherCard[data-category="Notebook"][title="{TF}"]')
        card.wait_for()
        # The card shows the logo the scan installed, served by the kernelspec API.
        assert "/kernelspecs/tf18-cuda92-gpu/logo-" in (
            card.locator("img").get_attribute("src") or ""
        )
        page.screenshot(path=str(ARTIFACTS / "jupyterlab-launcher.png"))
        card.click()

        page.get_by_text(f"{TF} | Idle").wait_for()
        _run_cell(page, CELL)
        output = page.locator(".jp-NotebookPanel:visible .jp-OutputArea-output").first
        output.wait_for()
        page.get_by_text(f"{TF} | Idle").wait_for()
        assert output.inner_text().strip() == "TENSORFLOW_VERSION 1.8 CUDA_VERSION 9.2"
        prompt = page.locator(".jp-NotebookPanel:visible .jp-InputPrompt").first
        assert prompt.inner_text() == "[1]:"
        page.screenshot(path=str(ARTIFACTS / "jupyterlab-tf18.png"))
    except Exception:
        page.screenshot(path=str(ARTIFACTS / "jupyterlab-tf18-failure.png"))
        raise


SLURM_TF = "TF 1.8 / CUDA 9.2 (GPU, Slurm)"
PENDING_SITE = """
# What a long queue wait looks like with pending kernels (see examples/jupyter_server_config.py)
c.MappingKernelManager.use_pending_kernels = True
c.SlurmProvisioner.pending_log_interval = 2.0
"""


def _slurm_notebook(install_kernel, images, tmp_path: Path, **config: Any) -> None:
    """Install the Slurm kernelspec the notebooks here open (display name SLURM_TF)."""
    config.setdefault("gpus", "0")
    install_kernel(
        "tf18-cuda92-gpu-slurm",
        images.test,
        display_name=SLURM_TF,
        provisioner="slurm-apptainer-provisioner",
        interrupt_mode="message",
        state_dir=str(tmp_path / "state"),
        **config,
    )


@pytest.mark.slurm
def test_a_cell_run_while_the_slurm_job_waits_runs_once_it_starts(
    images, install_kernel, slurm_cluster, tmp_path, start_lab, browser_page
) -> None:
    _slurm_notebook(
        install_kernel,
        images,
        tmp_path,
        partition=slurm_cluster.default_partition,
        gpus="1",
        # Held until the test releases it: a queue wait that ends when the test says so.
        sbatch_args=["--hold"],
    )
    lab = start_lab(["tf18-cuda92-gpu-slurm"], PENDING_SITE)
    page = browser_page
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    job = None
    try:
        _open_notebook(page, lab, SLURM_TF, "Connecting")
        _run_cell(page, WHERE)
        deadline = time.monotonic() + 60
        while job is None and time.monotonic() < deadline:
            ids = [s["kernel"]["id"] for s in _get(lab, "/api/sessions") if s.get("kernel")]
            job = next((j for k in ids for j in squeue_jobs(f"kp-{k}")), None)
            time.sleep(0.3)
        assert job is not None, "no Slurm job for the notebook's kernel"
        assert (job["state"], job["reason"]) == ("PENDING", "JobHeldUser")
        # While it waits: the kernel's name, "Connecting", and the cell queued as [*].
        prompt = page.locator(".jp-NotebookPanel:visible .jp-InputPrompt").first
        assert prompt.inner_text() == "[*]:"
        page.get_by_text(f"{SLURM_TF} | Connecting").wait_for()
        page.screenshot(path=str(ARTIFACTS / "jupyterlab-slurm-queued.png"))

        subprocess.run(["scontrol", "release", job["id"]], check=True, timeout=30)
        output = page.locator(".jp-NotebookPanel:visible .jp-OutputArea-output").first
        output.wait_for()
        page.get_by_text(f"{SLURM_TF} | Idle").wait_for()
        assert output.inner_text().split() == [job["id"], "gpu"]
        assert prompt.inner_text() == "[1]:"
        page.screenshot(path=str(ARTIFACTS / "jupyterlab-slurm-started.png"))
        log = lab.log.read_text()
        assert f"Slurm job {job['id']} PENDING (reason: JobHeldUser" in log
    except Exception:
        page.screenshot(path=str(ARTIFACTS / "jupyterlab-slurm-failure.png"))
        raise
    finally:
        if job is None:
            try:
                ids = [s["kernel"]["id"] for s in _get(lab, "/api/sessions") if s.get("kernel")]
            except OSError:
                ids = []
            job = next((j for k in ids for j in squeue_jobs(f"kp-{k}")), None)
        if job is not None:
            # A held job never starts by itself: never leave it queued.
            if wait_job_state(job["id"], {"RUNNING", "GONE"}, timeout=1) is None:
                subprocess.run(["scancel", job["id"]], check=False, timeout=30)
    lab.stop()
    assert wait_job_state(job["id"], {"GONE"}, timeout=60) is not None


# --- Slurm kernels with kernelprovider's kernel manager (README "While a Slurm kernel waits") --

STDERR = (
    ".jp-NotebookPanel:visible "
    '.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"]'
)
MANAGER_SITE = """
c.ServerApp.kernel_manager_class = "kernelprovider.manager.SlurmAwareKernelManager"
c.MappingKernelManager.use_pending_kernels = True
c.SlurmProvisioner.pending_log_interval = 2.0
"""


def _notebook_job(lab: Server, states: set[str], timeout: float = 60) -> dict[str, str]:
    """The Slurm job of the notebook's kernel once it is in one of ``states``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ids = [s["kernel"]["id"] for s in _get(lab, "/api/sessions") if s.get("kernel")]
        jobs = [j for k in ids for j in squeue_jobs(f"kp-{k}") if j["state"] in states]
        if jobs:
            return jobs[-1]
        time.sleep(0.3)
    raise AssertionError(f"no Slurm job in {states} for the notebook's kernel")


@pytest.mark.slurm
def test_shut_down_kernel_in_the_running_panel_leaves_the_queue(
    images, install_kernel, slurm_cluster, tmp_path, start_lab, browser_page
) -> None:
    _slurm_notebook(
        install_kernel, images, tmp_path, partition=slurm_cluster.held_partition, queue_timeout=0.0
    )
    lab = start_lab(["tf18-cuda92-gpu-slurm"], MANAGER_SITE)
    page = browser_page
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    job = None
    try:
        _open_notebook(page, lab, SLURM_TF, "Connecting")
        job = _notebook_job(lab, {"PENDING"})
        assert job["reason"] == "PartitionDown"
        # The Running panel lists the waiting kernel; its "Shut Down Kernel" button cancels it.
        page.locator('[data-id="jp-running-sessions"]').click()
        item = page.locator(".jp-RunningSessions-item", has_text=SLURM_TF).first
        item.hover()
        page.screenshot(path=str(ARTIFACTS / "jupyterlab-slurm-queued-running-panel.png"))
        item.locator('[title="Shut Down Kernel"], .jp-RunningSessions-itemShutdown').first.click()
        assert wait_job_state(job["id"], {"GONE"}, timeout=15) is not None
        deadline = time.monotonic() + 15
        while _get(lab, "/api/kernels") and time.monotonic() < deadline:
            time.sleep(0.2)
        assert _get(lab, "/api/kernels") == []
        page.screenshot(path=str(ARTIFACTS / "jupyterlab-slurm-left-the-queue.png"))
        assert f"shut down while Slurm job {job['id']}" in lab.log.read_text()
    except Exception:
        page.screenshot(path=str(ARTIFACTS / "jupyterlab-slurm-queue-failure.png"))
        raise
    finally:
        if job is not None and wait_job_state(job["id"], {"GONE"}, timeout=1) is None:
            subprocess.run(["scancel", job["id"]], check=False, timeout=30)


@pytest.mark.slurm
def test_the_notebook_warns_before_the_end_and_says_why_the_job_ended(
    images, install_kernel, slurm_cluster, tmp_path, start_lab, browser_page
) -> None:
    # 5 minutes of time limit, a 10 minute margin: the first cell run already warns
    partition = slurm_cluster.default_partition
    _slurm_notebook(install_kernel, images, tmp_path, partition=partition, time_limit="5:00")
    lab = start_lab(["tf18-cuda92-gpu-slurm"], MANAGER_SITE)
    page = browser_page
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    jobs: list[dict[str, str]] = []
    try:
        _open_notebook(page, lab, SLURM_TF, "Idle")
        jobs.append(_notebook_job(lab, {"RUNNING"}))
        _run_cell(page, "print('hello')")
        stderr = page.locator(STDERR).first
        stderr.wait_for()
        warning = stderr.inner_text().strip()
        assert warning.startswith(f"kernelprovider: Slurm job {jobs[0]['id']} ends at ")
        assert "save the notebook and checkpoint your work now" in warning
        page.screenshot(path=str(ARTIFACTS / "jupyterlab-slurm-end-warning.png"))

        # An admin cancels the job: JupyterLab says the kernel restarts; the next cell says why
        subprocess.run(["scancel", jobs[0]["id"]], check=True, timeout=30)
        dialog = page.locator(".jp-Dialog")
        dialog.wait_for()
        dialog.get_by_role("button").last.click()
        jobs.append(_notebook_job(lab, {"RUNNING"}))
        assert jobs[1]["id"] != jobs[0]["id"]
        # the next cell run (the new, empty cell below the first)
        page.locator(".jp-NotebookPanel:visible .jp-Cell .cm-content").last.click()
        page.keyboard.type("print('again')")
        page.keyboard.press("Shift+Enter")
        note = page.locator(
            STDERR,
            has_text="because it was cancelled",
        ).first
        note.wait_for()
        assert (
            f"kernelprovider: Slurm ended job {jobs[0]['id']} because it was cancelled"
            in note.inner_text()
        )
        page.screenshot(path=str(ARTIFACTS / "jupyterlab-slurm-job-ended.png"))
    except Exception:
        page.screenshot(path=str(ARTIFACTS / "jupyterlab-slurm-clock-failure.png"))
        raise
    finally:
        for job in jobs:
            if wait_job_state(job["id"], {"GONE"}, timeout=1) is None:
                subprocess.run(["scancel", job["id"]], check=False, timeout=30)


def test_a_kernel_that_cannot_start_shows_its_named_error_and_next_step(
    install_kernel, jupyter_dirs, start_lab, browser_page
) -> None:
    # No image configured: the provisioner's TraitError becomes KernelConfigError, which
    # jupyter_server answers with its text; JupyterLab shows that text, not "Unhandled error".
    install_kernel("noimage", "", display_name="No image (broken)")
    lab = start_lab(["noimage"])
    page = browser_page
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.goto(f"{lab.url}/lab?token={TOKEN}")
    page.locator('.jp-LauncherCard[data-category="Notebook"][title="No image (broken)"]').click()
    dialog = page.locator(".jp-Dialog")
    dialog.wait_for()
    text = dialog.inner_text()
    page.screenshot(path=str(ARTIFACTS / "jupyterlab-named-error.png"))
    assert "noimage" in text and "has no image configured" in text, text
    assert "kernel_provisioner" in text, text  # the next step: where to set it
    assert "Unhandled error" not in text, text
