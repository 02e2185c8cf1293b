"""Site-wide use through a real JupyterHub: admin scans images once, a user logs in, sees the
kernel in their own single-user server and runs a cell in the image, all through the proxy.

Needs configurable-http-proxy under build/node (scripts/setup-hub.sh). The hub runs as this
user with SimpleLocalProcessSpawner (single-user servers as the same OS user, --allow-root
when root) and SharedPasswordAuthenticator (JupyterHub's replacement for DummyAuthenticator's
deprecated password); kernelspecs are installed under a site prefix that every single-user
server reads through ``c.Spawner.environment = {"JUPYTER_PATH": ...}``.
"""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from needs import need, need_module

requests = need_module("requests", "hub")
need_module("jupyterhub", "hub")

from integration.test_server import free_port, ws_execute_at  # noqa: E402

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
CHP = ROOT / "build" / "node" / "node_modules" / ".bin" / "configurable-http-proxy"
PASSWORD = "kp-" + uuid.uuid4().hex
USER = "alice"
TF = "TF 1.8 / CUDA 9.2 (GPU)"
LABEL_CODE = (
    "import json; print(json.load(open('/.singularity.d/labels.json'))['TENSORFLOW_VERSION'])"
)

HUB_CONFIG = """\
c = get_config()  # noqa
c.JupyterHub.ip = "127.0.0.1"
c.JupyterHub.port = {port}
c.JupyterHub.hub_ip = "127.0.0.1"
c.JupyterHub.hub_port = {hub_port}
c.ConfigurableHTTPProxy.api_url = "http://127.0.0.1:{api_port}"
c.ConfigurableHTTPProxy.command = [{chp!r}]
c.ConfigurableHTTPProxy.pid_file = {state!r} + "/proxy.pid"
c.JupyterHub.db_url = "sqlite:///" + {state!r} + "/jupyterhub.sqlite"
c.JupyterHub.cookie_secret_file = {state!r} + "/cookie_secret"
c.JupyterHub.pid_file = {state!r} + "/jupyterhub.pid"
c.JupyterHub.authenticator_class = "shared-password"
c.SharedPasswordAuthenticator.user_password = {password!r}
c.Authenticator.allowed_users = {{{user!r}}}
c.JupyterHub.spawner_class = "simple"
c.SimpleLocalProcessSpawner.home_dir_template = {home!r} + "/{{username}}"
c.Spawner.cmd = [{singleuser!r}]
c.Spawner.args = {args!r}
# Where the admin installed the kernelspecs ('scan --prefix'): every user's server reads it.
c.Spawner.environment = {{"JUPYTER_PATH": {jupyter_path!r}}}
c.Spawner.start_timeout = 120
c.Spawner.http_timeout = 120
"""


def _need(what: str) -> None:
    need(what, "hub")


class Hub:
    """A JupyterHub subprocess (and its proxy) on loopback, log in ``state/hub.log``."""

    def __init__(self, state: Path, site_prefix: Path) -> None:
        self.port, hub_port, api_port = free_port(), free_port(), free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = state / "hub.log"
        config = state / "jupyterhub_config.py"
        config.write_text(
            HUB_CONFIG.format(
                port=self.port,
                hub_port=hub_port,
                api_port=api_port,
                chp=str(CHP),
                state=str(state),
                password=PASSWORD,
                user=USER,
                home=str(state / "home"),
                singleuser=str(BIN / "jupyterhub-singleuser"),
                args=["--allow-root"] if os.geteuid() == 0 else [],
                jupyter_path=str(site_prefix / "share" / "jupyter"),
            )
        )
        env = os.environ.copy()
        env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
        self._log_file = open(self.log, "w")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [str(BIN / "jupyterhub"), "-f", str(config)],
            cwd=state,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            env=env,
        )
        try:
            self._wait_up()
        except BaseException:
            self.stop()
            raise

    def _wait_up(self) -> None:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"jupyterhub exited: {self.log.read_text()[-3000:]}")
            try:
                if requests.get(self.url + "/hub/api/", timeout=2).status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.3)
        raise RuntimeError(f"jupyterhub did not come up: {self.log.read_text()[-3000:]}")

    def stop(self) -> None:
        """Stop the hub (it stops the proxy and the single-user servers), then end any of its
        processes that outlived it, by pid."""
        try:
            family = psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            family = []
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        gone, alive = psutil.wait_procs(family, timeout=10)
        for p in alive:
            p.kill()
        self._log_file.close()


@pytest.fixture
def site(images, tmp_path: Path) -> Path:
    """The admin's side: an image directory scanned into a site prefix with the real CLI."""
    if not CHP.exists():
        _need(f"configurable-http-proxy is not installed at {CHP}")
    image_dir = tmp_path / "software" / "images"
    image_dir.mkdir(parents=True)
    (image_dir / "tf-1.8-cuda-9.2.sif").symlink_to(images.test)
    prefix = tmp_path / "site"
    # This machine has no NVIDIA driver: without 'warn' the CUDA 9.2 image would be refused.
    proc = subprocess.run(
        [str(BIN / "jupyter"), "kernelprovider", "scan", str(image_dir), "--prefix", str(prefix),
         "--compat-check", "warn"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    return prefix


@pytest.fixture
def hub(site: Path, tmp_path: Path) -> Iterator[Hub]:
    state = tmp_path / "hub"
    state.mkdir()
    h = Hub(state, site)
    yield h
    h.stop()


def login(hub: Hub) -> tuple[requests.Session, str]:
    """Log in through the login form; return the session and the _xsrf value."""
    s = requests.Session()
    page = s.get(hub.url + "/hub/login", timeout=30)
    assert page.status_code == 200
    m = re.search(r'name="_xsrf" value="([^"]+)"', page.text)
    assert m, "no _xsrf field in the login form"
    xsrf = m.group(1)
    r = s.post(
        hub.url + "/hub/login",
        data={"username": USER, "password": PASSWORD, "_xsrf": xsrf},
        allow_redirects=False,
        timeout=30,
    )
    assert r.status_code == 302, r.text[-500:]
    # The hub issues a new XSRF token bound to the logged-in session; its pages carry it.
    home = s.get(hub.url + "/hub/home", timeout=30)
    assert home.status_code == 200
    m = re.search(r'xsrf_token: "([^"]+)"', home.text)
    assert m, "no xsrf_token on the hub's home page"
    return s, m.group(1)


def wait_server_ready(hub: Hub, headers: dict[str, str]) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        user = requests.get(f"{hub.url}/hub/api/users/{USER}", headers=headers, timeout=30).json()
        server = user.get("servers", {}).get("")
        if server and server.get("ready"):
            return
        if not server or not server.get("pending"):
            raise AssertionError(f"server of {USER} is neither ready nor pending: {user}")
        time.sleep(0.5)
    raise RuntimeError(f"server of {USER} not ready: {hub.log.read_text()[-3000:]}")


def test_user_runs_the_scanned_kernel_through_jupyterhub(hub: Hub) -> None:
    session, xsrf = login(hub)
    # A token of the user's own, made through the Hub's API with the login cookie.
    r = session.post(
        f"{hub.url}/hub/api/users/{USER}/tokens",
        headers={"X-XSRFToken": xsrf},
        json={"note": "kernelprovider test"},
        timeout=30,
    )
    assert r.status_code == 201, r.text
    headers = {"Authorization": f"token {r.json()['token']}"}

    r = requests.post(f"{hub.url}/hub/api/users/{USER}/server", headers=headers, timeout=60)
    assert r.status_code in (201, 202), r.text
    wait_server_ready(hub, headers)

    base = f"{hub.url}/user/{USER}"
    specs = requests.get(f"{base}/api/kernelspecs", headers=headers, timeout=30).json()
    tf = specs["kernelspecs"]["tf18-cuda92-gpu"]
    assert tf["spec"]["display_name"] == TF
    logo = requests.get(hub.url + tf["resources"]["logo-64x64"], headers=headers, timeout=30)
    assert logo.status_code == 200 and logo.content[:4] == b"\x89PNG"

    r = requests.post(
        f"{base}/api/kernels", headers=headers, json={"name": "tf18-cuda92-gpu"}, timeout=120
    )
    assert r.status_code == 201, r.text
    kernel_id = r.json()["id"]
    ws_url = f"ws://127.0.0.1:{hub.port}/user/{USER}/api/kernels/{kernel_id}/channels"
    status, out = asyncio.run(ws_execute_at(ws_url, headers, LABEL_CODE))
    assert status == "ok"
    assert out.strip() == "1.8"

    r = requests.delete(f"{base}/api/kernels/{kernel_id}", headers=headers, timeout=60)
    assert r.status_code == 204
    assert requests.get(f"{base}/api/kernels", headers=headers, timeout=30).json() == []
    r = requests.delete(f"{hub.url}/hub/api/users/{USER}/server", headers=headers, timeout=60)
    assert r.status_code in (202, 204)
