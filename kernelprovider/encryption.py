"""CurveZMQ transport encryption for kernels on other nodes: whether an image's kernel speaks it,
the keys, and the connection file a kernel starts from.

jupyter_client (>= 8.9, jupyter_client#1110) and ipykernel (ipykernel#1515) encrypt the ZeroMQ
traffic between server and kernel with CurveZMQ when the connection file carries a Curve key
pair: the kernel's sockets become Curve servers, the client's sockets use the same pair and the
kernel's public key as server key. LocalProvisioner generates that pair in pre_launch and writes
it into the connection file; a Slurm kernel writes its own connection file on the node, so the
Slurm provisioner writes a first file holding only the Curve pair and the address to bind
(never the HMAC key: the kernel still makes that itself), and the kernel adds its ports and key.

An image whose ipykernel predates Curve support would ignore the pair and listen in clear text
while the server expected Curve, so support is checked once per image (one short ``apptainer
exec``, cached) before a start uses it; where it is missing, the SSH tunnel
(:mod:`kernelprovider.tunnel`) is the encrypted path.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import zmq

from .aio import shared
from .errors import KernelProviderError
from .image.cache import _image_key

__all__ = [
    "CURVE_SUPPORT_SCRIPT",
    "CurveSupport",
    "curve_support",
    "curve_support_argv",
    "decide_curve",
    "first_connection_info",
    "parse_curve_support",
    "server_has_curve",
]

#: Runs with the image's Python (3.5 or later: no f-strings) and imports nothing but zmq:
#: whether its ipykernel and jupyter_client read Curve keys from a connection file and its
#: libzmq was built with libsodium. Prints one JSON line.
CURVE_SUPPORT_SCRIPT = r"""
import json, os, re, sys
out = {"ipykernel": None, "kernel_curve": False, "client_curve": False, "zmq_curve": False}
try:
    import importlib.util as iu
    def source(pkg, mod):
        spec = iu.find_spec(pkg)
        if spec is None or not spec.origin:
            return None, None
        base = os.path.dirname(spec.origin)
        try:
            with open(os.path.join(base, mod)) as f:
                return base, f.read()
        except (IOError, OSError):
            return base, None
    base, text = source("ipykernel", "kernelapp.py")
    if base:
        out["kernel_curve"] = bool(text and "curve_secretkey" in text)
        parent = os.path.dirname(base)
        for name in os.listdir(parent):
            m = re.match(r"^ipykernel-([0-9][^-]*?)\.(dist|egg)-info$", name)
            if m:
                out["ipykernel"] = m.group(1)
    base, text = source("jupyter_client", "connect.py")
    out["client_curve"] = bool(text and "curve_secretkey" in text)
    import zmq
    out["zmq_curve"] = bool(zmq.has("curve"))
except Exception as e:
    out["error"] = "%s: %s" % (type(e).__name__, e)
sys.stdout.write(json.dumps(out) + "\n")
"""


@dataclass(frozen=True)
class CurveSupport:
    """Whether an image's kernel can run with CurveZMQ; ``why`` says what is missing."""

    supported: bool
    ipykernel: str | None = None
    why: str = ""


def server_has_curve() -> bool:
    """True when this server's pyzmq has CurveZMQ (libzmq built with libsodium)."""
    return bool(zmq.has("curve"))


def curve_support_argv(runtime: str, image: str, python: str) -> list[str]:
    """The exec that runs :data:`CURVE_SUPPORT_SCRIPT` in the image: no GPU, home or host env."""
    return [runtime, "exec", "--cleanenv", "--contain", image, python, "-c", CURVE_SUPPORT_SCRIPT]


def parse_curve_support(stdout: str) -> CurveSupport:
    """The script's JSON line as a verdict; anything else means "no" with the reason."""
    line = next((ln for ln in reversed(stdout.splitlines()) if ln.startswith("{")), "")
    try:
        found: dict[str, Any] = json.loads(line)
    except ValueError:
        return CurveSupport(False, None, "its Python did not answer the CurveZMQ check")
    version = found.get("ipykernel")
    named = f"ipykernel {version}" if version else "ipykernel"
    if found.get("error") and not found.get("kernel_curve"):
        return CurveSupport(False, version, f"the check failed ({found['error']})")
    if not found.get("kernel_curve"):
        return CurveSupport(False, version, f"its {named} has no CurveZMQ support")
    if not found.get("client_curve"):
        return CurveSupport(False, version, "its jupyter_client reads no Curve keys (needs 8.9+)")
    if not found.get("zmq_curve"):
        return CurveSupport(False, version, "its pyzmq's libzmq was built without libsodium")
    return CurveSupport(True, version, f"its {named} supports CurveZMQ")


_cache: dict[tuple[str, str, int, int, str], CurveSupport] = {}


async def curve_support(runtime: str, image: str, python: str, timeout: float = 60) -> CurveSupport:
    """Whether ``image``'s kernel speaks CurveZMQ; asked once per image file and Python.

    Called by the Slurm provisioner's pre_launch (through
    :meth:`kernelprovider.transport.TransportMixin.prepare_transport`) before a job is
    submitted. Subprocess through asyncio, stat in a thread; kernels started together share
    one exec.
    """
    try:
        real, size, mtime = await asyncio.to_thread(_image_key, image)
    except (OSError, KernelProviderError):
        return CurveSupport(False, None, "the image file cannot be read here")
    key = (runtime, real, size, mtime, python)
    if key in _cache:
        return _cache[key]
    found = await shared(("curve-support", key), lambda: _ask(runtime, real, python, timeout))
    _cache[key] = found
    return found


async def _ask(runtime: str, image: str, python: str, timeout: float) -> CurveSupport:
    try:
        proc = await asyncio.create_subprocess_exec(
            *curve_support_argv(runtime, image, python),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
            start_new_session=True,
        )
    except OSError as e:
        return CurveSupport(False, None, f"the CurveZMQ check could not run ({e.strerror})")
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), timeout)
    except asyncio.TimeoutError:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except OSError:
            pass
        await proc.wait()
        return CurveSupport(False, None, f"the CurveZMQ check did not answer within {timeout:g} s")
    return parse_curve_support(out.decode(errors="replace"))


def decide_curve(
    policy: str, manager_policy: str, server_ok: bool, image: CurveSupport, image_name: str
) -> tuple[bool, str]:
    """(use Curve, why) from the provisioner's ``encryption`` ('auto', 'curve', 'off'), the
    KernelManager's ``transport_encryption`` ('disabled', 'auto', 'required') and what server
    and image support. Raises ValueError (message for the user) when Curve is required and
    one side lacks it. Pure."""
    required = policy == "curve" or manager_policy == "required"
    if policy == "off" and manager_policy != "required":
        return False, "encryption is off (SlurmProvisioner.encryption='off')"
    missing = ""
    if not server_ok:
        missing = "this server's pyzmq was built without libsodium (zmq.has('curve') is False)"
    elif not image.supported:
        missing = f"image {image_name}: {image.why}"
    if not missing:
        return True, f"CurveZMQ: {image.why}"
    if required:
        raise ValueError(
            f"CurveZMQ encryption is required but {missing}. Use an image whose ipykernel "
            "supports CurveZMQ, or set tunnel='ssh' (SSH encrypts the traffic) and "
            "encryption='auto'."
        )
    return False, f"no CurveZMQ ({missing})"


def first_connection_info(ip: str, public: bytes, secret: bytes) -> dict[str, Any]:
    """What the provisioner writes before a Curve kernel starts: address, transport and the
    Curve pair; no ports (the kernel picks them) and no HMAC key (the kernel makes it)."""
    return {
        "ip": ip,
        "transport": "tcp",
        "signature_scheme": "hmac-sha256",
        "curve_publickey": public.decode("ascii"),
        "curve_secretkey": secret.decode("ascii"),
    }


def curve_keys(info: Mapping[str, Any]) -> tuple[bytes, bytes] | None:
    """The Curve pair of a connection file's info, as bytes; None when it has none."""
    pub, sec = info.get("curve_publickey"), info.get("curve_secretkey")
    if not pub or not sec:
        return None
    return (pub.encode() if isinstance(pub, str) else pub), (
        sec.encode() if isinstance(sec, str) else sec
    )
