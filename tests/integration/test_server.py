"""The container kernel through a real jupyter_server: REST to start it, websocket to run code."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest
from tornado.websocket import websocket_connect

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

TOKEN = "test-token-" + uuid.uuid4().hex


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A jupyter_server subprocess on loopback, with its log captured to a file."""

    def __init__(
        self, root: Path, log: Path, extra_args: list[str] | None = None, stdin: Any = None
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        self._log_file = open(log, "w")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "jupyter_server",
                "--ServerApp.ip=127.0.0.1",
                f"--ServerApp.port={self.port}",
                f"--IdentityProvider.token={TOKEN}",
                "--ServerApp.open_browser=False",
                f"--ServerApp.root_dir={root}",
                "--ServerApp.port_retries=0",
                *(["--allow-root"] if os.geteuid() == 0 else []),
                *(extra_args or []),
            ],
            stdin=stdin,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            env=os.environ.copy(),
        )
        self._wait_up()

    def _wait_up(self) -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"jupyter_server exited: {self.log.read_text()[-2000:]}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.2)
        raise RuntimeError(f"jupyter_server did not start: {self.log.read_text()[-2000:]}")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._log_file.close()

    async def request(self, method: str, path: str, body: Any = None) -> Any:
        req = HTTPRequest(
            self.url + path,
            method=method,
            headers={"Authorization": f"token {TOKEN}"},
            body=None if body is None else json.dumps(body),
            allow_nonstandard_methods=True,
            request_timeout=120,
        )
        resp = await AsyncHTTPClient().fetch(req)
        return json.loads(resp.body) if resp.body else None


@pytest.fixture
def server(jupyter_dirs, tmp_path) -> Iterator[Server]:
    srv = Server(jupyter_dirs["work"], tmp_path / "server.log")
    yield srv
    srv.stop()


def execute_request(code: str) -> dict:
    msg_id = uuid.uuid4().hex
    return {
        "header": {
            "msg_id": msg_id,
            "msg_type": "execute_request",
            "username": "test",
            "session": uuid.uuid4().hex,
            "version": "5.3",
            "date": "",
        },
        "parent_header": {},
        "metadata": {},
        "channel": "shell",
        "buffers": [],
        "content": {
            "code": code,
            "silent": False,
            "store_history": False,
            "user_expressions": {},
            "allow_stdin": False,
            "stop_on_error": True,
        },
    }


async def ws_run_at(
    url: str, headers: dict[str, str], code: str, timeout: float = 60
) -> tuple[str, str, str]:
    """Execute ``code`` over the kernel websocket at ``url``; (reply status, stdout, stderr).

    Reads until the kernel goes idle after the request: output on iopub may trail the reply.
    """
    conn = await websocket_connect(HTTPRequest(url, headers=headers, connect_timeout=timeout))
    msg = execute_request(code)
    await conn.write_message(json.dumps(msg))
    streams: dict[str, list[str]] = {"stdout": [], "stderr": []}
    status = None
    idle = False
    while status is None or not idle:
        raw = await asyncio.wait_for(conn.read_message(), timeout)
        assert raw is not None, "websocket closed"
        reply = json.loads(raw)
        if reply.get("parent_header", {}).get("msg_id") != msg["header"]["msg_id"]:
            continue
        if reply["msg_type"] == "stream":
            streams[reply["content"]["name"]].append(reply["content"]["text"])
        elif reply["msg_type"] == "execute_reply":
            status = reply["content"]["status"]
        elif reply["msg_type"] == "status" and reply["content"]["execution_state"] == "idle":
            idle = True
    conn.close()
    return status, "".join(streams["stdout"]), "".join(streams["stderr"])


async def ws_execute_at(url: str, headers: dict[str, str], code: str) -> tuple[str, str]:
    """Execute ``code`` over the kernel websocket at ``url``; (reply status, stdout)."""
    status, out, _ = await ws_run_at(url, headers, code)
    return status, out


async def ws_execute(server: Server, kernel_id: str, code: str) -> tuple[str, str]:
    """Run code over the kernel's websocket through ``server``; (reply status, stdout)."""
    url = f"ws://127.0.0.1:{server.port}/api/kernels/{kernel_id}/channels"
    return await ws_execute_at(url, {"Authorization": f"token {TOKEN}"}, code)


async def test_kernel_through_jupyter_server(images, install_kernel, server) -> None:
    install_kernel("tf18-cuda92-gpu", images.test, display_name="TF 1.8 / CUDA 9.2 (GPU)")
    specs = await server.request("GET", "/api/kernelspecs")
    assert specs["kernelspecs"]["tf18-cuda92-gpu"]["spec"]["display_name"] == (
        "TF 1.8 / CUDA 9.2 (GPU)"
    )
    kernel = await server.request("POST", "/api/kernels", {"name": "tf18-cuda92-gpu"})
    status, out = await ws_execute(
        server,
        kernel["id"],
        "import json; print(json.load(open('/.singularity.d/labels.json'))['TENSORFLOW_VERSION'])",
    )
    assert status == "ok"
    assert out.strip() == "1.8"
    await server.request("DELETE", f"/api/kernels/{kernel['id']}")
    assert await server.request("GET", "/api/kernels") == []


async def test_server_reports_a_missing_image(install_kernel, server) -> None:
    install_kernel("gone", "/software/images/gone.sif")
    with pytest.raises(HTTPClientError) as e:
        await server.request("POST", "/api/kernels", {"name": "gone"})
    assert e.value.code == 500
    body = json.loads(e.value.response.body)
    assert "Image /software/images/gone.sif not found (kernel gone)" in body["message"]
    assert await server.request("GET", "/api/kernels") == []


@pytest.mark.slurm
async def test_server_reports_a_hung_state_directory_and_keeps_answering(
    images: Any, install_kernel: Any, server: Server, slurm_cluster: Any, hangfs: Any
) -> None:
    """A Slurm kernel whose state directory hangs (tests/hangfs.py): the POST fails with the
    directory's name while the server answers other requests."""
    from kernelprovider.kernelspec import SLURM_PROVISIONER_NAME

    hung_dir = hangfs.mountpoint / "state"
    install_kernel(
        "hung",
        images.test,
        provisioner=SLURM_PROVISIONER_NAME,
        state_dir=str(hung_dir),
        fs_timeout=5.0,
        partition=slurm_cluster.default_partition,
        gpus="0",
    )
    hangfs.hang()
    start = asyncio.ensure_future(server.request("POST", "/api/kernels", {"name": "hung"}))
    deadline = time.monotonic() + 60
    while not start.done() and not hangfs.waited(server.proc.pid):  # the server's thread waits
        assert time.monotonic() < deadline, "the start never reached the hung mount"
        await asyncio.sleep(0.05)
    assert not start.done()
    specs = await server.request("GET", "/api/kernelspecs")  # answered while the start hangs
    assert "hung" in specs["kernelspecs"]
    with pytest.raises(HTTPClientError) as e:
        await start
    message = json.loads(e.value.response.body)["message"]
    assert str(hung_dir) in message and "5 s" in message
    assert await server.request("GET", "/api/kernels") == []
