"""What a Slurm user meets through a real jupyter_server with kernelprovider's kernel manager
(``c.ServerApp.kernel_manager_class = "kernelprovider.manager.SlurmAwareKernelManager"``):

- a kernel whose job waits in the queue is shut down (DELETE) and its job is cancelled at
  once, with and without use_pending_kernels; interrupt and restart of it answer at once;
- a server stopped with SIGTERM or Ctrl-C Ctrl-C cancels the queued jobs of its kernels;
- the kernel knows its job's end (environment), the server log and the kernel model show the
  time left, and a cell run near the end prints one warning line;
- when Slurm ends the job (time limit, scancel from outside), the log and the next cell say why
  in words, and the restarter queues one new job ('requeue') or lets the kernel die ('stop').
"""

from __future__ import annotations

import asyncio
import json
import os
import pty
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from integration.test_server import TOKEN, Server, ws_run_at
from slurm_cluster import cancel_jobs, squeue_jobs, wait_job_state
from tornado.httpclient import HTTPClientError

pytestmark = [pytest.mark.slurm, pytest.mark.integration, pytest.mark.timeout(180)]

SLURM = "slurm-apptainer-provisioner"
MANAGER = 'c.ServerApp.kernel_manager_class = "kernelprovider.manager.SlurmAwareKernelManager"\n'


@pytest.fixture
def slurm_server(jupyter_dirs, tmp_path: Path) -> Iterator[Callable[..., Server]]:
    """jupyter_server with kernelprovider's kernel manager and extra config lines; at teardown
    the server stops and any job of its kernels that is still there is cancelled."""
    servers: list[Server] = []

    def start(config_text: str = "", stdin: Any = None) -> Server:
        config = tmp_path / f"jupyter_server_config{len(servers)}.py"
        config.write_text(MANAGER + config_text)
        log = tmp_path / f"server{len(servers)}.log"
        srv = Server(jupyter_dirs["work"], log, [f"--config={config}"], stdin=stdin)
        servers.append(srv)
        return srv

    yield start
    for srv in servers:
        if srv.proc.poll() is None:
            srv.stop()
        elif not srv._log_file.closed:
            srv._log_file.close()
        for kernel_id in kernel_ids_in_log(srv):
            cancel_jobs(f"kp-{kernel_id}")


def kernel_ids_in_log(server: Server) -> set[str]:
    return {
        word.rstrip(":")
        for line in server.log.read_text().splitlines()
        if "Kernel " in line
        for word in line.split("Kernel ", 1)[1].split()[:1]
        if word.count("-") == 4
    }


@pytest.fixture
def slurm_kernelspec(images, install_kernel, slurm_cluster, tmp_path: Path) -> Callable[..., str]:
    def make(name: str, **config: Any) -> str:
        config.setdefault("partition", slurm_cluster.default_partition)
        config.setdefault("gpus", "0")
        config.setdefault("time_limit", "10:00")
        config.setdefault("state_dir", str(tmp_path / "state"))
        config.setdefault("pending_log_interval", 1.0)
        return install_kernel(name, images.test, provisioner=SLURM, interrupt_mode="message",
                              **config)  # fmt: skip

    return make


async def ws_run(server: Server, kernel_id: str, code: str) -> tuple[str, str, str]:
    """Run ``code`` over the kernel's websocket; (reply status, stdout, stderr)."""
    url = f"ws://127.0.0.1:{server.port}/api/kernels/{kernel_id}/channels"
    return await ws_run_at(url, {"Authorization": f"token {TOKEN}"}, code, timeout=120)


async def wait_for(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    """Poll ``predicate`` (run in a thread) until it returns something true."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = await asyncio.to_thread(predicate)
        if value:
            return value
        await asyncio.sleep(0.3)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def job_of(kernel_id: str, states: set[str] | None = None) -> dict[str, str] | None:
    rows = [
        j
        for j in squeue_jobs(f"kp-{kernel_id}", all_states=True)
        if states is None or j["state"] in states
    ]
    return rows[-1] if rows else None


async def kernel_ids(server: Server) -> list[str]:
    return [k["id"] for k in await server.request("GET", "/api/kernels")]


# --- 1 and 5: leave the queue; interrupt and restart answer at once ---------------------------


@pytest.mark.parametrize("pending_kernels", [True, False], ids=["pending-kernels", "default"])
async def test_shutdown_of_a_queued_kernel_cancels_its_job(
    slurm_server, slurm_kernelspec, slurm_cluster, tmp_path: Path, pending_kernels: bool
) -> None:
    server = slurm_server(f"c.MappingKernelManager.use_pending_kernels = {pending_kernels}\n")
    name = slurm_kernelspec("queued", partition=slurm_cluster.held_partition, queue_timeout=0.0)
    post = asyncio.ensure_future(server.request("POST", "/api/kernels", {"name": name}))
    if pending_kernels:
        kernel_id = (await post)["id"]
    else:
        # the POST stays open while the job waits; the kernel is listed meanwhile
        ids: list[str] = []
        deadline = time.monotonic() + 30
        while not ids and time.monotonic() < deadline:
            ids = await kernel_ids(server)
            await asyncio.sleep(0.2)
        assert ids, "the starting kernel is not listed in /api/kernels"
        kernel_id = ids[0]
        assert not post.done()
    job = await wait_for(lambda: job_of(kernel_id, {"PENDING"}), 30, "a pending job")
    model = await server.request("GET", f"/api/kernels/{kernel_id}")
    assert model["execution_state"] == "starting"
    assert model["slurm"]["job_id"] == job["id"] and model["slurm"]["state"] == "PENDING"

    # 5: interrupt is refused at once with what the kernel waits for
    with pytest.raises(HTTPClientError) as refused:
        await server.request("POST", f"/api/kernels/{kernel_id}/interrupt")
    assert refused.value.code == 409
    message = json.loads(refused.value.response.body)["message"]
    assert f"Slurm job {job['id']} (reason: PartitionDown) is still waiting" in message
    assert "Shut the kernel down to leave the queue" in message
    # ... and a restart is answered at once: nothing to restart yet
    model = await server.request("POST", f"/api/kernels/{kernel_id}/restart")
    assert model["reason"].startswith(f"Not restarted: Slurm job {job['id']}")
    assert job_of(kernel_id, {"PENDING"}) is not None

    # 1: DELETE cancels the job (confirmed gone before the answer) and frees everything
    await server.request("DELETE", f"/api/kernels/{kernel_id}")
    assert job_of(kernel_id, {"PENDING", "RUNNING"}) is None
    assert (await server.request("GET", "/api/kernels")) == []
    state = tmp_path / "state"
    assert sorted(p.suffix for p in state.iterdir()) in ([], [".log"])
    if not pending_kernels:
        with pytest.raises(HTTPClientError) as failed:
            await post
        text = failed.value.response.body.decode()
        assert f"Kernel {name} was shut down while Slurm job {job['id']}" in text
        assert "the job was cancelled" in text
    log = server.log.read_text()
    assert f"Kernel {kernel_id}: shut down while Slurm job {job['id']}" in log


# --- 4: a server that stops leaves no queued job behind ---------------------------------------


@pytest.mark.parametrize("how", ["SIGTERM", "Ctrl-C Ctrl-C at a terminal", "Ctrl-C, no terminal"])
async def test_server_stop_cancels_the_queued_jobs_of_its_kernels(
    slurm_server, slurm_kernelspec, slurm_cluster, how: str
) -> None:
    # jupyter_server asks "Shut down this Jupyter server?" on a first Ctrl-C at a terminal
    # (a second one stops it); without a terminal Ctrl-C ends its loop without its shutdown
    tty = pty.openpty() if "at a terminal" in how else None
    stdin = tty[1] if tty else subprocess.DEVNULL
    server = slurm_server("c.MappingKernelManager.use_pending_kernels = True\n", stdin=stdin)
    name = slurm_kernelspec("queued", partition=slurm_cluster.held_partition, queue_timeout=0.0)
    kernels = [(await server.request("POST", "/api/kernels", {"name": name}))["id"] for _ in "ab"]
    jobs = [
        await wait_for(lambda k=k: job_of(k, {"PENDING"}), 30, "a pending job") for k in kernels
    ]
    if how == "SIGTERM":
        server.proc.send_signal(signal.SIGTERM)
    else:
        server.proc.send_signal(signal.SIGINT)
        if tty:
            await wait_for(lambda: "Shut down this Jupyter server" in server.log.read_text(),
                           10, "the confirmation prompt")  # fmt: skip
            server.proc.send_signal(signal.SIGINT)
    # within jupyter_server's own shutdown (Server.stop() would give up after 30 s)
    await asyncio.to_thread(server.proc.wait, 30)
    for job in jobs:
        assert wait_job_state(job["id"], {"GONE"}, timeout=1) is not None, job
    log = server.log.read_text()
    for kernel_id, job in zip(kernels, jobs, strict=True):
        if how == "Ctrl-C, no terminal":
            said = f"Kernel {kernel_id}: the server exits without its shutdown; cancelled Slurm"
        else:
            said = f"Kernel {kernel_id}: shut down while Slurm job {job['id']}"
        assert said in log, log[-3000:]
    if tty:
        for fd in tty:
            os.close(fd)


# --- 2 and 3: the clock, and the end of an allocation -----------------------------------------


@pytest.mark.timeout(300)
async def test_the_clock_and_a_time_limit_that_ends_the_job(slurm_server, slurm_kernelspec) -> None:
    server = slurm_server()
    name = slurm_kernelspec("short", time_limit="1:00", end_warning=120.0)
    kernel_id = (await server.request("POST", "/api/kernels", {"name": name}))["id"]
    status, out, err = await ws_run(
        server,
        kernel_id,
        "import os; print(os.environ['SLURM_JOB_ID'], os.environ['KP_SLURM_JOB_END'])",
    )
    assert status == "ok"
    job_id, end = out.split()
    # the kernel knows its job's end: about a minute from now
    assert 0 < int(end) - time.time() <= 60
    # less than end_warning (2 min) is left: this cell run printed one warning line
    assert err.count("\n") == 1
    assert f"kernelprovider: Slurm job {job_id} ends at " in err
    assert "save the notebook and checkpoint your work now" in err
    # ... once: the next cell run prints nothing more
    assert (await ws_run(server, kernel_id, "1"))[2] == ""
    # the kernel model and the server log show the time left
    model = await server.request("GET", f"/api/kernels/{kernel_id}")
    assert model["slurm"]["job_id"] == job_id and 0 < model["slurm"]["seconds_left"] <= 60
    assert (
        f"Slurm job {job_id} RUNNING on " in model["reason"] and " left (ends " in model["reason"]
    )
    log = server.log.read_text()
    assert f"Kernel {kernel_id}: Slurm job {job_id} ends at " in log
    assert "(time limit 1:00, " in log

    # Slurm ends the job at its time limit; the restarter queues one new job and says why
    new = await wait_for(
        lambda: (j := job_of(kernel_id, {"RUNNING"})) and j["id"] != job_id and j,
        150,
        "the requeued job",
    )
    assert wait_job_state(job_id, {"TIMEOUT"}, timeout=1) is not None
    status, out, err = await ws_run(
        server, kernel_id, "import os; print(os.environ['SLURM_JOB_ID'])"
    )
    assert (status, out.strip()) == ("ok", new["id"])
    assert f"kernelprovider: Slurm ended job {job_id} at its time limit of 0:01:00." in err
    assert "This is a new kernel in a new job" in err
    log = server.log.read_text()
    assert (
        f"Kernel {kernel_id}: Slurm ended job {job_id} at its time limit of 0:01:00. Queueing one "
        "new allocation for it (SlurmProvisioner.on_job_end = 'requeue')."
    ) in log
    await server.request("DELETE", f"/api/kernels/{kernel_id}")
    assert job_of(kernel_id, {"RUNNING", "PENDING"}) is None


@pytest.mark.parametrize("policy", ["requeue", "stop"])
async def test_scancel_from_outside_is_explained_and_follows_on_job_end(
    slurm_server, slurm_kernelspec, policy: str
) -> None:
    server = slurm_server()
    name = slurm_kernelspec("cancelled", on_job_end=policy, time_limit="20:00")
    kernel_id = (await server.request("POST", "/api/kernels", {"name": name}))["id"]
    status, out, err = await ws_run(
        server, kernel_id, "import os; print(os.environ['SLURM_JOB_ID'])"
    )
    job_id = out.strip()
    assert err == ""  # 20 minutes left, a 10 minute margin: no warning
    subprocess.run(["scancel", job_id], check=True, timeout=30)
    said = f"Slurm ended job {job_id} because it was cancelled (scancel by its owner or an admin)"
    log_line = await wait_for(
        lambda: next((ln for ln in server.log.read_text().splitlines() if said in ln), None),
        60,
        "the log line that says why the job ended",
    )
    if policy == "stop":
        assert log_line.endswith(
            f"{said}. Kernel {name} stopped (SlurmProvisioner.on_job_end = 'stop'); start it "
            "again to queue a new job."
        )
        # the server drops the dead kernel; no new job is queued for it
        deadline = time.monotonic() + 30
        while kernel_id in await kernel_ids(server) and time.monotonic() < deadline:
            await asyncio.sleep(0.3)
        assert kernel_id not in await kernel_ids(server)
        await asyncio.sleep(5)  # longer than the restarter's interval: it must not come back
        assert job_of(kernel_id, {"PENDING", "RUNNING"}) is None
        # said once (the restarter does not retry a start that cannot help)
        warnings = [ln for ln in server.log.read_text().splitlines() if "Slurm ended job" in ln]
        assert [ln for ln in warnings if ln.startswith("[W")] == [log_line]
    else:
        assert log_line.endswith(
            f"{said}. Queueing one new allocation for it (SlurmProvisioner.on_job_end = 'requeue')."
        )
        new = await wait_for(lambda: job_of(kernel_id, {"RUNNING"}), 60, "the requeued job")
        assert new["id"] != job_id
        status, out, err = await ws_run(server, kernel_id, "print('back')")
        assert (status, out.strip()) == ("ok", "back")
        assert err.startswith(f"kernelprovider: {said}. This is a new kernel in a new job")
        await server.request("DELETE", f"/api/kernels/{kernel_id}")


async def test_a_requeued_kernel_comes_up_on_another_node(
    slurm_server, slurm_kernelspec, slurm_cluster
) -> None:
    """Slurm kills the kernel (its connection file stays behind, naming the old node's address
    and ports); the new allocation lands on another node, where the kernel must not load it."""
    from slurm_cluster import require_multi_node

    require_multi_node(slurm_cluster)
    server = slurm_server()
    name = slurm_kernelspec("moved", time_limit="20:00")
    kernel_id = (await server.request("POST", "/api/kernels", {"name": name}))["id"]
    status, out, _ = await ws_run(server, kernel_id, "import socket; print(socket.gethostname())")
    first = job_of(kernel_id, {"RUNNING"})
    assert first is not None and out.strip() == first["node"]
    # the old node takes no new job: the requeued one has to go elsewhere
    subprocess.run(
        ["scontrol", "update", f"nodename={first['node']}", "state=drain", "reason=kp-test"],
        check=True,
        timeout=30,
    )
    try:
        subprocess.run(["scancel", first["id"]], check=True, timeout=30)
        new = await wait_for(lambda: job_of(kernel_id, {"RUNNING"}), 60, "the requeued job")
        assert new["id"] != first["id"] and new["node"] != first["node"]
        where = "import socket; print(socket.gethostname())"
        status, out, _ = await ws_run(server, kernel_id, where)
        assert (status, out.strip()) == ("ok", new["node"])
        await server.request("DELETE", f"/api/kernels/{kernel_id}")
    finally:
        subprocess.run(
            ["scontrol", "update", f"nodename={first['node']}", "state=resume"],
            check=False,
            timeout=30,
        )
