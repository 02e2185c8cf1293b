"""SSH tunnels for kernels on nodes that accept no inbound connections: one ``ssh -L`` process
per kernel forwards its five ports, and ends with the kernel.

The way gateway_provisioners and remote_ikernel reach such nodes, with three differences:
the ssh process is an asyncio subprocess (the server's loop never waits on it); nothing secret
is on its command line (only ports, addresses and the path of a lease file: the kernel's HMAC
key and Curve keys stay in the connection file); and it cannot outlive the kernel. Three things
end it: the provisioner stops it on shutdown; ``setpriv --pdeathsig`` (where util-linux has it)
ends it when the server process dies; and its remote command watches a lease file on the shared
state directory that the server's lease keeper refreshes, so when the server is killed and
the lease goes stale the remote side exits and ssh with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import shlex
import shutil
import signal
import socket
from collections.abc import Mapping, Sequence
from typing import Any

from .errors import TunnelError
from .offloop import unlink_quietly

__all__ = [
    "CHANNELS",
    "WATCH_SCRIPT",
    "SshTunnel",
    "build_ssh_argv",
    "free_local_ports",
    "zmtp_probe",
]

#: The kernel's five ports, in the order they are forwarded.
CHANNELS = ("shell_port", "iopub_port", "stdin_port", "control_port", "hb_port")

#: The remote command (POSIX sh, on the tunnel host): lives while the lease file is fresh.
#: $1 = lease file, $2 = its maximum age in seconds, $3 = seconds between checks.
WATCH_SCRIPT = (
    'while m=$(stat -c %Y "$1" 2>/dev/null) && [ $(( $(date +%s) - m )) -le "$2" ]; '
    'do sleep "$3"; done'
)

_SSH_DEFAULTS = (
    "-T",
    "-o",
    "BatchMode=yes",
    # A host that drops SSH too would otherwise hold the start for TCP's own timeout (minutes).
    "-o",
    "ConnectTimeout=10",
    "-o",
    "ExitOnForwardFailure=yes",
    "-o",
    "ServerAliveInterval=15",
    "-o",
    "ServerAliveCountMax=3",
)


def build_ssh_argv(
    ssh: Sequence[str],
    options: Sequence[str],
    destination: str,
    forwards: Sequence[tuple[int, str, int]],
    lease: str,
    max_age: int,
    check_every: int = 2,
) -> list[str]:
    """``ssh [defaults] [options] -L 127.0.0.1:LOCAL:TARGET:REMOTE ... DEST sh -c WATCH ...``.

    ``forwards``: (local port, address the tunnel host connects to, remote port). The remote
    command is one string (ssh joins its arguments for the remote shell), each part quoted.
    Pure; the caller validates ``destination``.
    """
    argv = [*ssh, *_SSH_DEFAULTS, *options]
    for local, target, remote in forwards:
        argv += ["-L", f"127.0.0.1:{int(local)}:{target}:{int(remote)}"]
    remote_cmd = " ".join(
        shlex.quote(a)
        for a in ("sh", "-c", WATCH_SCRIPT, "kp-tunnel", lease, str(int(max_age)), str(check_every))
    )
    return [*argv, "--", destination, remote_cmd]


@functools.lru_cache(maxsize=1)
def _setpriv() -> str | None:
    """util-linux's setpriv, looked up once per process (not on every tunnel's start)."""
    return shutil.which("setpriv")


def free_local_ports(count: int) -> list[int]:
    """``count`` distinct ports free on 127.0.0.1 now (held together while chosen)."""
    socks = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


async def zmtp_probe(port: int, timeout: float = 2.0) -> str:
    """How the kernel behind a forwarded local port answers: 'open' when a ZeroMQ peer sends
    its greeting (ZMTP starts with byte 0xFF, Curve or not), 'closed' when ssh accepts and then
    drops the connection (nothing listens on the node yet), 'refused' while ssh has not bound
    the port, 'silent' when nothing comes within ``timeout``."""
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection("127.0.0.1", port), timeout=timeout
        )
    except asyncio.TimeoutError:
        return "silent"
    except OSError:
        return "refused"
    try:
        first = await asyncio.wait_for(reader.read(1), timeout=timeout)
    except asyncio.TimeoutError:
        first = None
    except OSError:
        first = b""
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
    if first is None:
        return "silent"
    return "open" if first == b"\xff" else "closed"


class SshTunnel:
    """One ssh process forwarding a kernel's five ports from 127.0.0.1 on this host.

    Made by :class:`kernelprovider.transport.TransportMixin` when a kernel's connection file
    appears (and again when a requeued kernel has new ports); ``remote`` is that file's info.
    """

    def __init__(
        self,
        ssh: Sequence[str],
        options: Sequence[str],
        destination: str,
        target: str,
        remote: Mapping[str, Any],
        lease: str,
        max_age: int,
    ) -> None:
        self.destination = destination
        self.target = target
        self.remote_ports = {name: int(remote[name]) for name in CHANNELS}
        self.local_ports = dict(zip(CHANNELS, free_local_ports(len(CHANNELS)), strict=True))
        self.lease = lease
        forwards = [(self.local_ports[n], target, self.remote_ports[n]) for n in CHANNELS]
        argv = build_ssh_argv(ssh, options, destination, forwards, lease, max_age)
        setpriv = _setpriv()
        # pdeathsig: the kernel sends ssh SIGTERM the moment the server process dies.
        self.argv = [setpriv, "--pdeathsig", "TERM", "--", *argv] if setpriv else argv
        self.process: asyncio.subprocess.Process | None = None
        self._err: list[str] = []
        self._reader: asyncio.Task[None] | None = None

    def serves(self, remote: Mapping[str, Any], target: str) -> bool:
        """True when this tunnel (still running) forwards exactly ``remote``'s ports."""
        return (
            self.alive
            and target == self.target
            and all(int(remote.get(n, -1)) == p for n, p in self.remote_ports.items())
        )

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.returncode is None

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def stderr_tail(self, lines: int = 5) -> str:
        """The last lines ssh wrote to stderr."""
        return "\n".join(self._err[-lines:])

    async def start(self) -> None:
        """Start ssh (its own session: a signal to the server's group does not reach it)."""
        self.process = await asyncio.create_subprocess_exec(
            *self.argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,
        )
        self._reader = asyncio.ensure_future(self._read_stderr())

    async def _read_stderr(self) -> None:
        assert self.process is not None and self.process.stderr is not None
        while True:
            line = await self.process.stderr.readline()
            if not line:
                return
            text = line.decode(errors="replace").rstrip()
            # "channel N: open failed: connect failed": a probe before the kernel listened
            if "open failed" not in text:
                self._err.append(text)
                del self._err[:-20]

    async def probe(self) -> str:
        """The kernel's shell port through the tunnel (see :func:`zmtp_probe`); raises
        :class:`TunnelError` when ssh has exited."""
        if not self.alive:
            raise self.ended_error()
        answer = await zmtp_probe(self.local_ports["shell_port"])
        if answer != "open" and not self.alive:
            raise self.ended_error()
        return answer

    def ended_error(self) -> TunnelError:
        code = self.process.returncode if self.process else None
        said = self.stderr_tail() or "(ssh printed nothing)"
        return TunnelError(
            f"The SSH tunnel to {self.destination} ended (exit {code}): {said}\nCheck that "
            f"'ssh -o BatchMode=yes {self.destination} true' works from this host without a "
            "password prompt (key, known_hosts), or set SlurmProvisioner.ssh_options / "
            "tunnel_host."
        )

    async def stop(self) -> None:
        """End ssh (SIGTERM, then SIGKILL after 3 s) and wait for it."""
        proc = self.process
        if proc is not None and proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), 3)
            except asyncio.TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
        if self._reader is not None:
            with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(self._reader, 1)
        await asyncio.to_thread(unlink_quietly, self.lease)
