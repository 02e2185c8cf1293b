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
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("jupyterlab")
playwright_api = pytest.importorskip("playwright.sync_api")

from integration.test_server import TOKEN, Server  # noqa: E402

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
KERNELS = ("tf18-cuda92-gpu", "python3")
CELL = """\
import json
labels = json.load(open('/.singularity.d/labels.json'))
print('TENSORFLOW_VERSION', labels['TENSORFLOW_VERSION'], 'CUDA_VERSION', labels['CUDA_VERSION'])"""


def _need(what: str) -> None:
    if os.environ.get("KP_REQUIRE_RUNTIME") == "1":
        pytest.fail(f"{what} (run 'scripts/setup-hub.sh' as root)")
    pytest.skip(what)


@pytest.fixture
def lab(images, jupyter_dirs, tmp_path: Path) -> Iterator[Server]:
    """jupyter_server with JupyterLab, on loopback with a token, after the admin's scan."""
    if not CHROMIUM.exists():
        _need(f"{CHROMIUM} is not installed")
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
    # A user settings directory of the test's own: no news prompt over the page.
    settings = tmp_path / "lab-settings"
    notification = settings / "@jupyterlab" / "apputils-extension"
    notification.mkdir(parents=True)
    (notification / "notification.jupyterlab-settings").write_text(
        json.dumps({"fetchNews": "false", "checkForUpdates": False})
    )
    os.environ["JUPYTERLAB_SETTINGS_DIR"] = str(settings)
    os.environ["JUPYTERLAB_WORKSPACES_DIR"] = str(tmp_path / "lab-workspaces")
    try:
        # Only the kernels this test is about, whatever else the machine has installed.
        allowed = [f"--KernelSpecManager.allowed_kernelspecs={k}" for k in KERNELS]
        srv = Server(jupyter_dirs["work"], tmp_path / "lab.log", allowed)
    finally:
        del os.environ["JUPYTERLAB_SETTINGS_DIR"], os.environ["JUPYTERLAB_WORKSPACES_DIR"]
    yield srv
    srv.stop()


def test_launcher_card_opens_a_notebook_that_runs_in_the_image(lab: Server) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTIFACTS / "jupyterlab-tf18.png"
    with playwright_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 800})
        page.set_default_timeout(90_000)
        try:
            page.goto(f"{lab.url}/lab?token={TOKEN}")
            card = page.locator(f'.jp-LauncherCard[data-category="Notebook"][title="{TF}"]')
            card.wait_for()
            # The card shows the logo the scan installed, served by the kernelspec API.
            logo = card.locator("img")
            assert "/kernelspecs/tf18-cuda92-gpu/logo-" in (logo.get_attribute("src") or "")
            page.screenshot(path=str(ARTIFACTS / "jupyterlab-launcher.png"))
            card.click()

            page.get_by_text(f"{TF} | Idle").wait_for()
            editor = page.locator(".jp-NotebookPanel:visible .jp-Cell .cm-content").first
            editor.click()
            page.keyboard.type(CELL)
            page.keyboard.press("Shift+Enter")
            output = page.locator(".jp-NotebookPanel:visible .jp-OutputArea-output").first
            output.wait_for()
            page.get_by_text(f"{TF} | Idle").wait_for()
            assert output.inner_text().strip() == "TENSORFLOW_VERSION 1.8 CUDA_VERSION 9.2"
            assert page.locator(".jp-NotebookPanel:visible .jp-InputPrompt").first.inner_text() == (
                "[1]:"
            )
            page.screenshot(path=str(shot))
        except Exception:
            page.screenshot(path=str(ARTIFACTS / "jupyterlab-tf18-failure.png"))
            raise
        finally:
            browser.close()
    assert shot.stat().st_size > 0
