"""How the server reaches a Slurm kernel privately: the settings (SSH tunnel, CurveZMQ) and the
hooks SlurmProvisioner calls at each step of a start, restart, re-attach and shutdown.

SlurmProvisioner mixes :class:`TransportMixin` in; each call site in kernelprovider/slurm.py is
marked ``# transport:``. The ssh process lives in :mod:`kernelprovider.tunnel`, the Curve
support check and keys in :mod:`kernelprovider.encryption`.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import subprocess
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from traitlets import TraitError, validate

from .encryption import (
    CurveSupport,
    curve_keys,
    curve_support,
    curve_support_argv,
    decide_curve,
    first_connection_info,
    parse_curve_support,
    server_has_curve,
)
from .errors import EncryptionUnavailable, TunnelError
from .options import TRANSPORT_OPTIONS, options_mixin
from .provisioner import probe_port
from .tunnel import CHANNELS, SshTunnel

__all__ = ["TransportMixin", "TransportOptions", "transport_verdict"]


#: The transport options of :data:`kernelprovider.options.TRANSPORT_OPTIONS` as traits.
TransportOptions: Any = options_mixin(
    "TransportOptions",
    TRANSPORT_OPTIONS,
    "How the server reaches a Slurm kernel privately (SSH tunnel, CurveZMQ), as traits.",
)


class TransportMixin(TransportOptions):  # type: ignore[misc,valid-type]
    """Settings and hooks for a private path between the server and a kernel on a node.

    ``tunnel='ssh'``: the kernel listens on the node's loopback only (or, with ``tunnel_host``,
    on the node's address, reached from that host) and the server reaches its five ports
    through one ssh process. ``encryption``: CurveZMQ where the image's ipykernel supports it.
    Both can be on at once.
    """

    _tunnel: SshTunnel | None = None
    # from the provisioner this is mixed into (SlurmProvisioner): its fs_timeout and the
    # state-directory helper of its allocation (a thread with that deadline)
    fs_timeout: float
    _in_state_dir: Callable[..., Awaitable[Any]]
    _curve = False
    #: What the last start chose, in words (logged; doctor says the same before a start).
    transport_note = ""

    @validate("tunnel_host")
    def _validate_tunnel_host(self, proposal: dict[str, Any]) -> str:
        value = proposal["value"]
        if value.startswith("-") or any(c.isspace() or c == "\0" for c in value):
            raise TraitError(f"tunnel_host: {value!r} is not an SSH destination ([user@]host).")
        return value

    @validate("ssh_command")
    def _validate_ssh_command(self, proposal: dict[str, Any]) -> list[str]:
        if not proposal["value"]:
            raise TraitError("ssh_command must name the ssh client, e.g. ['ssh'].")
        return proposal["value"]

    # --- start ------------------------------------------------------------------------------

    def kernel_bind_ip(self, node_ip: str) -> str:
        """The address the kernel binds on its node; called by pre_launch for ``--ip``.

        Through a tunnel to the node itself, the node's loopback: nothing else on the
        cluster network can even connect to the kernel's ports."""
        if self.tunnel == "ssh" and not self.tunnel_host:
            return "127.0.0.1"
        return node_ip

    async def prepare_transport(self) -> None:
        """Decide CurveZMQ for this start and hold the key pair on the KernelManager.

        Called by SlurmProvisioner.pre_launch after the launch checks, before a job is
        submitted, so a required-but-missing encryption fails without queueing. Like
        LocalProvisioner.pre_launch, the pair lives on the KernelManager
        (``curve_publickey``/``curve_secretkey``) and is reused across restarts; the manager's
        client() hands it to every client.
        """
        km = self.parent
        manager_policy = str(getattr(km, "transport_encryption", "disabled") or "disabled")
        image = str(getattr(self, "image", ""))
        name = os.path.basename(image.rstrip("/")) or image
        if self.encryption == "off" and manager_policy.lower() != "required":
            support = CurveSupport(False, None, "not asked")
        else:
            runtime_info = getattr(self, "runtime_info", None)
            runtime = runtime_info.path if runtime_info is not None else "apptainer"
            support = await curve_support(runtime, image, self._kernel_python())
        try:
            use, why = decide_curve(
                self.encryption, manager_policy.lower(), server_has_curve(), support, name
            )
        except ValueError as e:
            raise EncryptionUnavailable(f"Kernel {self._transport_kernel_name()}: {e}") from e
        self._curve = use
        if use and km is not None and getattr(km, "curve_publickey", None) is None:
            import zmq

            km.curve_publickey, km.curve_secretkey = zmq.curve_keypair()
        path = (
            f"SSH tunnel to {self.tunnel_host or 'the node'}"
            if self.tunnel == "ssh"
            else "direct TCP to the node"
        )
        self.transport_note = f"{path}; {why}"
        kernel_id = getattr(self, "kernel_id", "?")
        self.log.info("Kernel %s: transport: %s", kernel_id, self.transport_note)

    async def seed_connection_file(self, path: str, bind_ip: str) -> None:
        """Write the first connection file of a Curve kernel (address and Curve pair only);
        called by pre_launch where a new allocation's kernel would otherwise start from none.
        The kernel adds its ports and HMAC key. Nothing to do without Curve."""
        km = self.parent
        keys = (getattr(km, "curve_publickey", None), getattr(km, "curve_secretkey", None))
        if not self._curve or keys[0] is None or keys[1] is None:
            return
        info = first_connection_info(bind_ip, keys[0], keys[1])
        await self._in_state_dir(_write_private_json, path, info)

    async def probe_kernel(self, info: Mapping[str, Any]) -> str:
        """How the kernel's shell port answers, as the server will reach it; called by
        SlurmProvisioner._wait_for_kernel each time it has read the connection file.

        Direct: 'open', 'refused' or 'silent' (see provisioner.probe_port). Tunnel: starts the
        ssh process for these ports (or keeps the one that serves them: a restart in the same
        allocation), then 'open' once the kernel answers through it, else 'starting'; raises
        TunnelError when ssh has ended.
        """
        if self.tunnel != "ssh":
            return await probe_port(str(info["ip"]), info["shell_port"], timeout=1.5)
        target = str(info["ip"])
        if self._tunnel is not None and not self._tunnel.serves(info, target):
            await self.close_tunnel()
        if self._tunnel is None:
            self._tunnel = await self._open_tunnel(info, target)
        try:
            answer = await self._tunnel.probe()
        except TunnelError as e:
            node = getattr(self, "node", None) or "?"
            raise TunnelError(f"Kernel {self._transport_kernel_name()} on node {node}: {e}") from e
        return "open" if answer == "open" else "starting"

    async def _open_tunnel(self, info: Mapping[str, Any], target: str) -> SshTunnel:
        prefix = os.path.join(
            str(getattr(self, "state_dir", "")), f"kernel-{getattr(self, 'kernel_id', 'x')}.tunnel-"
        )
        # Leases of this kernel's earlier tunnels (a killed server's): gone, their remote
        # sides end at their next check instead of after lease_seconds.
        await self._in_state_dir(_unlink_matching, prefix)
        lease = prefix + secrets.token_hex(4)
        destination = self.tunnel_host or str(getattr(self, "node_ip", "") or "")
        tunnel = SshTunnel(
            self.ssh_command,
            self.ssh_options,
            destination,
            target,
            info,
            lease,
            int(getattr(self, "lease_seconds", 90)),
        )
        keeper = getattr(self, "lease_keeper", None)
        if keeper is not None:
            # the remote side of the tunnel lives while this is fresh
            await keeper.add(lease, self.fs_timeout)
        await tunnel.start()
        self.log.info(
            "Kernel %s: SSH tunnel to %s (pid %s): local ports %s",
            getattr(self, "kernel_id", "?"),
            destination,
            tunnel.pid,
            ", ".join(str(tunnel.local_ports[n]) for n in CHANNELS),
        )
        return tunnel

    def server_connection(self, info: Mapping[str, Any]) -> dict[str, Any]:
        """The connection info the server's clients use: the kernel's own, or through the
        tunnel 127.0.0.1 and the tunnel's local ports. Called by launch_kernel and by a
        re-attach; the Curve pair travels as the connection file has it."""
        out = dict(info)
        km = self.parent
        if self.tunnel == "ssh" and self._tunnel is not None:
            out["ip"] = "127.0.0.1"
            out.update(self._tunnel.local_ports)
            if km is not None and hasattr(km, "connection_file"):
                # KernelManager rewrites its connection file to match what the provisioner
                # returns; pointed at the kernel's own file it would put the tunnel's local
                # ports there, and a restart or re-attach would read those as the kernel's.
                km.connection_file = self.server_side_file
        keys = curve_keys(info)
        if keys and km is not None:
            # A re-attached kernel (or a restarted server) learns the pair from the file.
            km.curve_publickey, km.curve_secretkey = keys
        return out

    @property
    def server_side_file(self) -> str:
        """The KernelManager's connection file in tunnel mode (127.0.0.1, local ports): next
        to the kernel's own, which keeps what the kernel wrote."""
        base = f"kernel-{getattr(self, 'kernel_id', 'x')}.server.json"
        return os.path.join(str(getattr(self, "state_dir", "")), base)

    async def reattach_transport(self, info: Mapping[str, Any]) -> dict[str, Any]:
        """Re-open the tunnel for a kernel found running (a restarted server); called by
        load_provisioner_info. The old server's ssh ended with it (pdeathsig) or ends
        when its lease goes stale."""
        if self.tunnel == "ssh":
            self._tunnel = await self._open_tunnel(info, str(info["ip"]))
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 30
            while await self._tunnel.probe() != "open" and loop.time() < deadline:
                await asyncio.sleep(0.2)
        return self.server_connection(info)

    async def close_tunnel(self) -> None:
        """End the kernel's ssh process and its lease; called when the kernel's allocation is
        released (final shutdown, failed start) and before a tunnel for new ports."""
        tunnel, self._tunnel = self._tunnel, None
        if tunnel is None:
            return
        keeper = getattr(self, "lease_keeper", None)
        if keeper is not None:
            keeper.discard(tunnel.lease)
        await tunnel.stop()
        await self._in_state_dir(_unlink_matching, self.server_side_file)

    @property
    def tunnel_pid(self) -> int | None:
        """Pid of the running ssh process (None without a tunnel): for tests and logs."""
        return self._tunnel.pid if self._tunnel is not None and self._tunnel.alive else None

    def _kernel_python(self) -> str:
        spec = getattr(self, "kernel_spec", None)
        argv = list(getattr(spec, "argv", None) or [])
        first = argv[0] if argv else "python3"
        return first if "python" in os.path.basename(first) else "python3"

    def _transport_kernel_name(self) -> str:
        km = self.parent
        return str(getattr(km, "kernel_name", "") or getattr(self, "kernel_id", "?"))


def _unlink_matching(prefix: str) -> None:
    """Remove the files whose path starts with ``prefix`` (in its directory)."""
    head, tail = os.path.split(prefix)
    try:
        names = [n for n in os.listdir(head or ".") if n.startswith(tail)]
    except OSError:
        return
    for name in names:
        try:
            os.unlink(os.path.join(head, name))
        except FileNotFoundError:
            pass


def _write_private_json(path: str, info: Mapping[str, Any]) -> None:
    """Write ``info`` as a 0600 file (no symlink followed), replacing what is there."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(dict(info), f, indent=2)


def _curve_support_blocking(runtime: str, image: str, python: str) -> CurveSupport:
    try:
        proc = subprocess.run(
            curve_support_argv(runtime, image, python),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        return CurveSupport(False, None, f"the CurveZMQ check could not run ({e})")
    return parse_curve_support(proc.stdout)


def transport_verdict(prov: Any, runtime: str | None) -> tuple[str, str]:
    """(level, sentence) for ``doctor``: which private path a Slurm kernel would take.

    Blocking (one ``apptainer exec`` of encryption.CURVE_SUPPORT_SCRIPT); called by
    doctor.kernel_report for Slurm kernels.
    """
    image = str(prov.image)
    name = os.path.basename(image.rstrip("/")) or image
    if runtime and prov.encryption != "off":
        support = _curve_support_blocking(runtime, image, prov._kernel_python())
    else:
        support = CurveSupport(False, None, "not checked")
    try:
        use, why = decide_curve(prov.encryption, "disabled", server_has_curve(), support, name)
    except ValueError as e:
        return "fail", str(e)
    if prov.tunnel == "ssh":
        where = prov.tunnel_host or "the kernel's node"
        inner = "CurveZMQ inside it as well" if use else f"no CurveZMQ inside it ({support.why})"
        return "ok", f"SSH tunnel to {where} encrypts the kernel's traffic; {inner}."
    if use:
        return "ok", f"CurveZMQ encrypts the traffic between server and node ({support.why})."
    return (
        "warn",
        f"Traffic between server and node is signed (HMAC) but readable on the cluster "
        f"network, {why}. Set tunnel='ssh' (encrypted by SSH), or use an image whose ipykernel "
        "supports CurveZMQ.",
    )
