"""A real sshd inside a node's network namespace, with keys made for it, and packet capture on
a node's veth: the parts the SSH tunnel and capture tests (and bench/bench_tunnel.py) need.

The firewalled node kpwall1 drops every inbound connection but slurmd's and SSH's
(scripts/slurm-cluster.sh); :func:`start_sshd` runs ``/usr/sbin/sshd`` there on port 22 with a
host key and a client key generated into a fresh directory, and returns the ssh options a
SlurmProvisioner needs (``ssh_options``). Root only (nsenter, port 22).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Capture", "Sshd", "allow_ssh", "start_sshd", "veth_of"]


@dataclass
class Sshd:
    """A running sshd and the client side's files."""

    process: subprocess.Popen[bytes]
    address: str
    client_key: Path
    known_hosts: Path
    log: Path

    @property
    def ssh_options(self) -> list[str]:
        """What SlurmProvisioner.ssh_options gets: this key, this host key, no user config."""
        return [
            "-F",
            "/dev/null",
            "-i",
            str(self.client_key),
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            f"UserKnownHostsFile={self.known_hosts}",
            "-o",
            "StrictHostKeyChecking=yes",
        ]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)


def _keygen(path: Path, comment: str) -> str:
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)],
        check=True,
        timeout=30,
    )
    return path.with_suffix(".pub").read_text().strip()


def start_sshd(directory: Path, netns: str, address: str, timeout: float = 20) -> Sshd:
    """Start sshd in ``netns`` listening on ``address``:22; returns once it accepts.

    Raises RuntimeError (with sshd's log) when it does not come up.
    """
    sshd = "/usr/sbin/sshd"
    if not os.access(sshd, os.X_OK) or not shutil.which("ssh-keygen"):
        raise FileNotFoundError("openssh-server is not installed (scripts/slurm-cluster.sh start)")
    directory.mkdir(parents=True, exist_ok=True)
    os.chmod(directory, 0o700)
    host_pub = _keygen(directory / "host_ed25519", "kp-test-host")
    client_pub = _keygen(directory / "client_ed25519", "kp-test-client")
    (directory / "authorized_keys").write_text(client_pub + "\n")
    known = directory / "known_hosts"
    known.write_text(f"{address} {host_pub}\n")
    config = directory / "sshd_config"
    config.write_text(
        "\n".join(
            [
                "Port 22",
                f"ListenAddress {address}",
                f"HostKey {directory / 'host_ed25519'}",
                f"AuthorizedKeysFile {directory / 'authorized_keys'}",
                "PasswordAuthentication no",
                "KbdInteractiveAuthentication no",
                "UsePAM no",
                "StrictModes no",
                "PermitRootLogin prohibit-password",
                "AllowTcpForwarding local",
                "X11Forwarding no",
                "PidFile none",
                "",
            ]
        )
    )
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # privilege separation directory
    allow_ssh(netns)
    log = directory / "sshd.log"
    proc = subprocess.Popen(
        ["nsenter", f"--net=/run/netns/{netns}", "--", sshd, "-D", "-e", "-f", str(config)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=log.open("wb"),
        start_new_session=True,
    )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"sshd in {netns} exited ({proc.returncode}): {log.read_text()}")
        try:
            with socket.create_connection((address, 22), timeout=0.5):
                return Sshd(proc, address, directory / "client_ed25519", known, log)
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError(f"sshd in {netns} did not accept on {address}:22: {log.read_text()}")


def allow_ssh(netns: str) -> None:
    """Make sure the node's firewall (table inet kpwall, if it has one) lets port 22 in.

    scripts/slurm-cluster.sh writes that rule; a cluster started by an older copy of the
    script lacks it, so it is inserted here (before the rule that drops new connections).
    """
    ns = ["nsenter", f"--net=/run/netns/{netns}", "--", "nft"]
    listed = subprocess.run(
        [*ns, "list", "chain", "inet", "kpwall", "input"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    if listed.returncode == 0 and "tcp dport 22 accept" not in listed.stdout:
        subprocess.run(
            [*ns, "insert", "rule", "inet", "kpwall", "input", "tcp", "dport", "22", "accept"],
            check=True,
            timeout=30,
        )


def veth_of(node: str, tag: str = "kp") -> str:
    """Host-side veth of a namespace node, as scripts/slurm-cluster.sh names it."""
    if node.startswith("kpnode"):
        return f"{tag}v{node.removeprefix('kpnode')}"
    return f"{tag}w{node.removeprefix('kpwall')}"


class Capture:
    """``tcpdump -i IFACE -w FILE`` while a block runs; ``data`` is the file's bytes."""

    def __init__(self, iface: str, path: Path) -> None:
        self.iface = iface
        self.path = path
        self.data = b""
        self._proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Capture:
        tcpdump = shutil.which("tcpdump")
        if not tcpdump:
            raise FileNotFoundError("tcpdump is not installed (scripts/slurm-cluster.sh start)")
        # --immediate-mode -U: each packet is delivered and written at once (nothing is left in
        # a buffer at the end); -s 0: whole packets. tcpdump says "listening on" once it
        # captures, which is when the block may start.
        argv = [tcpdump, "-i", self.iface, "--immediate-mode", "-U", "-s", "0", "-n"]
        self._proc = subprocess.Popen(
            [*argv, "-w", str(self.path)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        assert self._proc.stderr is not None
        line = self._proc.stderr.readline().decode(errors="replace")
        if "listening on" not in line:
            self._proc.kill()
            raise RuntimeError(f"tcpdump on {self.iface} did not start: {line}")
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._proc is not None
        self._proc.terminate()
        self._proc.wait(timeout=10)
        if self._proc.stderr:
            self._proc.stderr.close()
        self.data = self.path.read_bytes()
