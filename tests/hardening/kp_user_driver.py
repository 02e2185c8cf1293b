"""The Jupyter side of the other-users tests, run as an unprivileged user by the user venv's python.

``python kp_user_driver.py MODE JSON``; every result is one line ``KPEVENT {json}`` on stdout
(anything else there, such as a kernel's own output, is not ours).

- ``kernel {"kernel_name", "kernel_id", "cwd", "code"}``: start the kernelspec's kernel through
  AsyncMultiKernelManager (as jupyter_server does), run ``code``, report ``started``
  (connection file, connection info without the key, the cell's output) or ``error``
  (exception class names, message, errno); then serve ``{"cmd": "run", "code"}`` and
  ``{"cmd": "stop"}`` lines from stdin.
- ``forge {"conn", "keys", "code", "wait"}``: for each of ``keys`` (wrong ones), sends an
  ``execute_request(code)`` signed with it to the kernel at ``conn``; reports how many
  messages came back on shell, and on iopub about those requests, within ``wait`` seconds.
- ``read {"path"}``: try to read a file; reports the error class (PermissionError...).
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from typing import Any

import zmq
from jupyter_client import AsyncMultiKernelManager
from jupyter_client.session import Session
from jupyter_core.paths import jupyter_runtime_dir
from jupyter_core.utils import ensure_dir_exists


def emit(event: str, **data: Any) -> None:
    print("KPEVENT " + json.dumps({"event": event, **data}), flush=True)


def describe(e: BaseException) -> dict[str, Any]:
    return {
        "type": type(e).__name__,
        "classes": [c.__name__ for c in type(e).__mro__],
        "message": str(e),
        "errno": getattr(e, "errno", None),
    }


async def run_cell(kc: Any, code: str) -> tuple[str, str]:
    out: list[str] = []

    def on_output(msg: dict) -> None:
        if msg["msg_type"] == "stream":
            out.append(msg["content"]["text"])
        elif msg["msg_type"] == "error":
            out.append("\n".join(msg["content"]["traceback"]))

    reply = await kc.execute_interactive(code, timeout=60, output_hook=on_output)
    return reply["content"]["status"], "".join(out)


async def kernel(args: dict[str, Any]) -> None:
    # As jupyter_server does: a multi-kernel manager whose connection files go to the
    # runtime directory, which the server creates 0700.
    ensure_dir_exists(jupyter_runtime_dir(), mode=0o700)
    mkm = AsyncMultiKernelManager(connection_dir=jupyter_runtime_dir())
    km = None
    kc = None
    loop = asyncio.get_running_loop()
    try:
        await mkm.start_kernel(
            kernel_name=args["kernel_name"], kernel_id=args["kernel_id"], cwd=args["cwd"]
        )
        km = mkm.get_kernel(args["kernel_id"])
        kc = km.client()
        kc.start_channels()
        await kc.wait_for_ready(timeout=120)
        status, out = await run_cell(kc, args["code"])
        info = {k: v for k, v in km.get_connection_info().items() if k != "key"}
        emit("started", connection_file=km.connection_file, conn=info, status=status, out=out)
    except Exception as e:
        emit("error", **describe(e))
    while True:
        line = await loop.run_in_executor(None, sys.stdin.readline)
        cmd = json.loads(line) if line.strip() else {"cmd": "stop"}
        if cmd["cmd"] == "run" and kc is not None:
            status, out = await run_cell(kc, cmd["code"])
            emit("ran", status=status, out=out)
        elif cmd["cmd"] == "stop":
            break
    if kc is not None:
        kc.stop_channels()
    if km is not None:
        await mkm.shutdown_kernel(args["kernel_id"], now=False)
    emit("stopped")


def forge(args: dict[str, Any]) -> None:
    """Raw ZeroMQ, not a KernelClient: a client would drop replies whose signature it cannot
    check, and this must see anything the kernel sends back."""
    conn, ctx = args["conn"], zmq.Context()

    def url(port: int) -> str:
        return f"{conn['transport']}://{conn['ip']}:{port}"

    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.connect(url(conn["iopub_port"]))
    time.sleep(0.5)  # let the subscription reach the kernel before anything is sent
    poller = zmq.Poller()
    poller.register(sub, zmq.POLLIN)
    shells, msg_ids = [], []
    for key in args["keys"]:
        session = Session(key=key.encode(), signature_scheme=conn["signature_scheme"])
        shell = ctx.socket(zmq.DEALER)
        shell.connect(url(conn["shell_port"]))
        content = {
            "code": args["code"],
            "silent": False,
            "store_history": True,
            "user_expressions": {},
            "allow_stdin": False,
            "stop_on_error": True,
        }
        msg_ids.append(session.send(shell, "execute_request", content)["header"]["msg_id"])
        poller.register(shell, zmq.POLLIN)
        shells.append(shell)
    replies = iopub = 0
    deadline = time.monotonic() + args["wait"]
    while (left := deadline - time.monotonic()) > 0:
        for sock, _ in poller.poll(timeout=left * 1000):
            frames = sock.recv_multipart()
            if sock is sub:
                iopub += any(m.encode() in f for f in frames for m in msg_ids)
            else:
                replies += 1
    for sock in (sub, *shells):
        sock.close(linger=0)
    emit("forged", replies=replies, iopub=iopub, clients=len(shells))


def read(args: dict[str, Any]) -> None:
    try:
        with open(args["path"], "rb") as f:
            f.read()
    except OSError as e:
        emit("read", ok=False, **describe(e))
    else:
        emit("read", ok=True)


if __name__ == "__main__":
    mode, payload = sys.argv[1], json.loads(sys.argv[2])
    if mode == "kernel":
        asyncio.run(kernel(payload))
    elif mode == "forge":
        forge(payload)
    elif mode == "read":
        read(payload)
    else:
        sys.exit(f"unknown mode {mode!r}")
