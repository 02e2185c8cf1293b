"""Private and reachable: a kernel on the firewalled node through a real SSH tunnel (sshd in
kpwall1's namespace, keys made here), and packet captures on a node's veth showing a cell's
output in clear text without encryption and nowhere with CurveZMQ or through the tunnel."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from kp_slurm import job_prefix, processes_mentioning, reattach, run_cell, wait_until
from slurm_cluster import REQUIRE, require_multi_node, squeue_jobs, wait_job_state
from slurm_sshd import Capture, Sshd, allow_ssh, start_sshd, veth_of
from test_slurm_queue_and_clock import job_of, slurm_server, wait_for, ws_run  # noqa: F401

from kernelprovider.errors import EncryptionUnavailable, TunnelError
from kernelprovider.kernelspec import SLURM_PROVISIONER_NAME

pytestmark = [pytest.mark.slurm, pytest.mark.integration, pytest.mark.timeout(180)]


def _need(what: str) -> None:
    if REQUIRE:
        pytest.fail(what)
    pytest.skip(what)


@pytest.fixture
def sshd(sshd_daemon: Sshd, slurm_cluster: Any) -> Sshd:
    """The firewalled node's sshd, with port 22 open in its firewall for this test (a cluster
    start by an older copy of scripts/slurm-cluster.sh rewrites the firewall without it)."""
    allow_ssh(f"kp-{slurm_cluster.firewalled_node}")
    return sshd_daemon


def _sshd_on(
    slurm_cluster: Any, tmp_path_factory: pytest.TempPathFactory, node: str, label: str
) -> Iterator[Sshd]:
    """A real sshd in ``node``'s namespace, with a host and a client key of its own."""
    require_multi_node(slurm_cluster)
    if os.geteuid() != 0:
        _need("the SSH tunnel test starts sshd in a node's namespace: run it as root")
    try:
        daemon = start_sshd(
            tmp_path_factory.mktemp(label), f"kp-{node}", slurm_cluster.node_addrs[node]
        )
    except (FileNotFoundError, RuntimeError) as e:
        _need(f"no sshd on {node}: {e}")
    yield daemon
    daemon.stop()


@pytest.fixture(scope="module")
def sshd_daemon(slurm_cluster: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sshd]:
    """A real sshd on the firewalled node (kpwall1:22), with a host and a client key made
    for this module."""
    yield from _sshd_on(slurm_cluster, tmp_path_factory, slurm_cluster.firewalled_node, "sshd")


@pytest.fixture(scope="module")
def login_sshd(slurm_cluster: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sshd]:
    """A real sshd on compute node kpnode1, standing in for a login host that reaches the
    other nodes (the server reaches only its port 22 here)."""
    yield from _sshd_on(slurm_cluster, tmp_path_factory, slurm_cluster.nodes[0], "login-sshd")


@pytest.fixture
def curve_image(images: Any) -> Path:
    if not images.curve.exists():
        _need(f"test image {images.curve} is missing (make testenv builds it)")
    return images.curve


@pytest.fixture
def capture(tmp_path: Path) -> Any:
    """``capture(node, label)``: a :class:`Capture` on the node's veth (needs tcpdump)."""
    if not shutil.which("tcpdump"):
        _need("tcpdump is not installed (scripts/slurm-cluster.sh start installs it)")
    return lambda node, label: Capture(veth_of(node), tmp_path / f"{label}.pcap")


def marker_cell() -> tuple[str, bytes]:
    """(code, what it prints): the printed marker is not in the code's own text."""
    marker = f"KP-PRIVATE-{uuid.uuid4().hex}"
    return f"print(bytes.fromhex('{marker.encode().hex()}').decode())", marker.encode()


def remote_watchers(lease_part: str, netns: str) -> list[int]:
    """Pids in the node's namespace whose argv names the tunnel's lease (its remote side)."""
    pids = []
    out = os.popen(f"ip netns pids {netns}").read().split()
    for pid in out:
        try:
            cmd = psutil.Process(int(pid)).cmdline()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        if any(lease_part in a for a in cmd):
            pids.append(int(pid))
    return pids


def tunnel_processes(kernel_id: str) -> list[int]:
    """ssh clients whose argv names this kernel's tunnel lease (the remote side's sh, in the
    node's namespace, shares this host's pid namespace and is left out)."""
    pids = []
    for pid, _ in processes_mentioning(f"kernel-{kernel_id}.tunnel-"):
        try:
            if psutil.Process(pid).name() == "ssh":
                pids.append(pid)
        except psutil.NoSuchProcess:
            continue
    return pids


async def test_kernel_on_firewalled_node_through_ssh_tunnel(
    slurm_kernel: Any, slurm_cluster: Any, sshd: Sshd, capture: Any
) -> None:
    node = slurm_cluster.firewalled_node
    km, kc = await slurm_kernel(
        "kp-tunnel",
        partition=slurm_cluster.firewalled_partition,
        tunnel="ssh",
        ssh_options=sshd.ssh_options,
    )
    prov = km.provisioner
    kernel_id = prov.kernel_id
    assert prov.node == node
    # the kernel listens on the node's loopback only; the server uses the tunnel's ports
    assert prov._connection["ip"] == "127.0.0.1"
    assert km.ip == "127.0.0.1"
    assert km.shell_port != prov._connection["shell_port"]
    # the kernel's own file keeps the kernel's ports; the manager's view is another file
    on_disk = json.loads(Path(prov.files["connection"]).read_text())
    assert on_disk["shell_port"] == prov._connection["shell_port"]
    assert km.connection_file != prov.files["connection"]
    _, out = await run_cell(kc, "import socket; print(socket.gethostname())")
    assert out.strip() == node

    # one ssh process, and neither the HMAC key nor a Curve key on its command line
    ssh_pid = prov.tunnel_pid
    assert ssh_pid and psutil.pid_exists(ssh_pid)
    argv = " ".join(psutil.Process(ssh_pid).cmdline())
    assert "ssh" in argv and sshd.address in argv
    assert km.session.key.decode() not in argv
    if km.curve_secretkey:
        assert km.curve_secretkey.decode() not in argv
    assert tunnel_processes(kernel_id) == [ssh_pid]

    # what crosses the node's veth is SSH only: a cell's output is not readable there
    code, marker = marker_cell()
    with capture(node, "tunnel") as cap:
        _, out = await run_cell(kc, code)
    assert out.strip() == marker.decode()
    assert marker not in cap.data
    assert len(cap.data) > 200  # the capture saw the cell's packets

    # a restart keeps the one tunnel (same node, same ports)
    await km.restart_kernel(now=True)
    await kc.wait_for_ready(timeout=60)
    _, out = await run_cell(kc, "print(6 * 7)")
    assert out.strip() == "42"
    assert tunnel_processes(kernel_id) == [prov.tunnel_pid]

    # shutdown: no ssh left here, no remote side left on the node, no files of the tunnel
    await km.shutdown_kernel()
    assert await asyncio.to_thread(wait_until, lambda: not tunnel_processes(kernel_id), 10)
    assert await asyncio.to_thread(
        wait_until, lambda: not remote_watchers(f"kernel-{kernel_id}.tunnel-", f"kp-{node}"), 15
    )
    assert [p.name for p in Path(prov.state_dir).iterdir() if kernel_id in p.name] == []


async def test_tunnel_ends_when_the_server_is_killed(
    slurm_spec: Any, child_server: Any, slurm_cluster: Any, sshd: Sshd, state_dir: Path
) -> None:
    node = slurm_cluster.firewalled_node
    lease_seconds = 10
    name = slurm_spec(
        "kp-tunnel-deadman",
        partition=slurm_cluster.firewalled_partition,
        tunnel="ssh",
        ssh_options=sshd.ssh_options,
        lease_seconds=lease_seconds,
    )
    proc, record = child_server(name)
    kernel_id = record["kernel_id"]
    assert tunnel_processes(kernel_id), "the stand-in server's kernel has no ssh tunnel"
    assert remote_watchers(f"kernel-{kernel_id}.tunnel-", f"kp-{node}")

    proc.send_signal(signal.SIGKILL)  # no cleanup: only pdeathsig and the leases are left
    proc.wait(timeout=30)
    bound = lease_seconds + 20
    assert await asyncio.to_thread(wait_until, lambda: not tunnel_processes(kernel_id), bound)
    assert await asyncio.to_thread(
        wait_until,
        lambda: not remote_watchers(f"kernel-{kernel_id}.tunnel-", f"kp-{node}"),
        bound,
    )
    gone = await asyncio.to_thread(wait_job_state, record["job_id"], ["GONE"], bound + 10)
    assert gone is not None


async def test_capture_shows_output_in_clear_text_only_without_encryption(
    slurm_kernel: Any, slurm_cluster: Any, curve_image: Path, capture: Any
) -> None:
    require_multi_node(slurm_cluster)
    seen = {}
    for label, config in {
        "plain": {"encryption": "off"},
        "curve": {"encryption": "curve", "image": curve_image},
    }.items():
        km, kc = await slurm_kernel(f"kp-capture-{label}", **config)
        prov = km.provisioner
        assert prov.node in slurm_cluster.nodes  # another node than the server's host
        assert bool(km.curve_publickey) == (label == "curve")
        code, marker = marker_cell()
        with capture(prov.node, label) as cap:
            _, out = await run_cell(kc, code)
        assert out.strip() == marker.decode()
        node_ip = bytes(int(x) for x in prov.node_ip.split("."))
        assert node_ip in cap.data  # the capture holds the kernel's packets
        seen[label] = marker in cap.data
        kc.stop_channels()
        await km.shutdown_kernel()
    assert seen == {"plain": True, "curve": False}


async def test_curve_kernel_restarts_encrypted_with_the_same_keys(
    slurm_kernel: Any, curve_image: Path
) -> None:
    km, kc = await slurm_kernel("kp-curve-restart", image=curve_image)  # encryption: auto
    public = km.curve_publickey
    assert public and km.provisioner.transport_note.endswith("supports CurveZMQ")
    _, out = await run_cell(kc, "x = 41; print(x + 1)")
    assert out.strip() == "42"
    await km.restart_kernel(now=True)
    await kc.wait_for_ready(timeout=60)
    reply, out = await run_cell(kc, "print('x' in globals())")
    assert out.strip() == "False"  # a new kernel process, same clients, same Curve pair
    assert km.curve_publickey == public


async def test_tunnel_and_curve_together(
    slurm_kernel: Any, slurm_cluster: Any, sshd: Sshd, curve_image: Path
) -> None:
    km, kc = await slurm_kernel(
        "kp-tunnel-curve",
        image=curve_image,
        partition=slurm_cluster.firewalled_partition,
        tunnel="ssh",
        ssh_options=sshd.ssh_options,
        encryption="curve",
    )
    assert km.curve_publickey and km.ip == "127.0.0.1"
    _, out = await run_cell(kc, "import socket; print(socket.gethostname())")
    assert out.strip() == slurm_cluster.firewalled_node


async def test_curve_required_with_an_old_image_fails_before_queueing(
    slurm_kernel: Any, slurm_cluster: Any
) -> None:
    with pytest.raises(EncryptionUnavailable) as err:
        await slurm_kernel("kp-curve-old", encryption="curve")
    text = str(err.value)
    assert "kp-test.sif" in text and "ipykernel 6.17.0" in text and "tunnel='ssh'" in text
    assert squeue_jobs(job_prefix()) == []  # refused before sbatch


async def test_restarted_server_opens_a_new_tunnel_to_the_running_kernel(
    slurm_spec: Any, child_server: Any, slurm_cluster: Any, sshd: Sshd
) -> None:
    name = slurm_spec(
        "kp-tunnel-reattach",
        partition=slurm_cluster.firewalled_partition,
        tunnel="ssh",
        ssh_options=sshd.ssh_options,
    )
    proc, record = child_server(name)
    kernel_id = record["kernel_id"]
    old = tunnel_processes(kernel_id)
    assert len(old) == 1
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    # the dead server's ssh ends with it (pdeathsig), long before its lease would go stale
    assert await asyncio.to_thread(wait_until, lambda: not tunnel_processes(kernel_id), 10)

    km = await reattach(name, json.loads(json.dumps(record)))
    prov = km.provisioner
    assert prov.job_id == record["job_id"] and tunnel_processes(kernel_id) == [prov.tunnel_pid]
    assert km.ip == "127.0.0.1"
    kc = km.client()
    kc.start_channels()
    try:
        await kc.wait_for_ready(timeout=30)
        _, out = await run_cell(kc, "import socket; print(socket.gethostname())")
        assert out.strip() == slurm_cluster.firewalled_node
    finally:
        kc.stop_channels()
        await km.shutdown_kernel(now=True)
    assert await asyncio.to_thread(wait_until, lambda: not tunnel_processes(kernel_id), 10)


async def test_a_key_the_node_refuses_fails_the_start_with_what_ssh_said(
    slurm_kernel: Any, slurm_cluster: Any, sshd: Sshd, tmp_path: Path, state_dir: Path
) -> None:
    stranger = tmp_path / "stranger"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(stranger)], check=True)
    options = [str(stranger) if o == str(sshd.client_key) else o for o in sshd.ssh_options]
    with pytest.raises(TunnelError) as err:
        await slurm_kernel(
            "kp-tunnel-refused",
            partition=slurm_cluster.firewalled_partition,
            tunnel="ssh",
            ssh_options=options,
        )
    text = str(err.value)
    assert sshd.address in text and "Permission denied" in text and "ssh_options" in text
    # the job was cancelled; no ssh, srun or kernel of this start is left
    firewalled = slurm_cluster.firewalled_partition
    assert not [j for j in squeue_jobs(job_prefix()) if j["partition"] == firewalled]
    assert await asyncio.to_thread(
        wait_until, lambda: processes_mentioning(str(state_dir)) == [], 10
    )


async def test_jupyter_server_kernel_through_the_tunnel_survives_a_requeue(
    slurm_server: Any,  # noqa: F811 - the fixture imported above
    install_kernel: Any,
    images: Any,
    slurm_cluster: Any,
    sshd: Sshd,
    tmp_path: Path,
) -> None:
    """The real server path: POST a tunnelled kernel, run a cell over its websocket; Slurm
    ends the job, the kernel is requeued with new ports behind a new tunnel (the old ssh is
    gone); DELETE leaves no ssh."""
    node = slurm_cluster.firewalled_node
    server = slurm_server()
    name = install_kernel(
        "kp-tunnel-server",
        images.test,
        provisioner=SLURM_PROVISIONER_NAME,
        interrupt_mode="message",
        partition=slurm_cluster.firewalled_partition,
        gpus="0",
        time_limit="20:00",
        state_dir=str(tmp_path / "state"),
        tunnel="ssh",
        ssh_options=sshd.ssh_options,
    )
    kernel_id = (await server.request("POST", "/api/kernels", {"name": name}))["id"]
    where = "import socket; print(socket.gethostname())"
    status, out, _ = await ws_run(server, kernel_id, where)
    assert (status, out.strip()) == ("ok", node)
    first = job_of(kernel_id, {"RUNNING"})
    old = tunnel_processes(kernel_id)
    assert first is not None and len(old) == 1

    subprocess.run(["scancel", first["id"]], check=True, timeout=30)
    new = await wait_for(lambda: job_of(kernel_id, {"RUNNING"}), 60, "the requeued job")
    assert new["id"] != first["id"]
    status, out, _ = await ws_run(server, kernel_id, where)
    assert (status, out.strip()) == ("ok", node)
    now = tunnel_processes(kernel_id)
    assert len(now) == 1 and now != old

    await server.request("DELETE", f"/api/kernels/{kernel_id}")
    assert await asyncio.to_thread(wait_until, lambda: not tunnel_processes(kernel_id), 15)


async def test_tunnel_through_a_login_host_to_another_node(
    slurm_kernel: Any, slurm_cluster: Any, login_sshd: Sshd
) -> None:
    """tunnel_host: ssh goes to the "login host" (kpnode1's sshd), which forwards to the
    kernel's node (kpnode2) at its own address."""
    login, node = slurm_cluster.nodes[0], slurm_cluster.nodes[1]
    km, kc = await slurm_kernel(
        "kp-tunnel-login",
        sbatch_args=[f"--nodelist={node}"],
        tunnel="ssh",
        tunnel_host=login_sshd.address,
        ssh_options=login_sshd.ssh_options,
    )
    prov = km.provisioner
    kernel_id = prov.kernel_id
    assert prov.node == node and node != login
    assert prov._connection["ip"] == slurm_cluster.node_addrs[node]  # reached from the login host
    assert km.ip == "127.0.0.1"
    argv = psutil.Process(prov.tunnel_pid).cmdline()
    assert login_sshd.address in argv
    assert f"{slurm_cluster.node_addrs[node]}:{prov._connection['shell_port']}" in " ".join(argv)
    _, out = await run_cell(kc, "import socket; print(socket.gethostname())")
    assert out.strip() == node
    await km.shutdown_kernel()
    assert await asyncio.to_thread(wait_until, lambda: not tunnel_processes(kernel_id), 10)
