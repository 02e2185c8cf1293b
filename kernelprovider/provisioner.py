"""ContainerProvisioner: a Jupyter kernel inside an Apptainer/Singularity image on this host."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
import subprocess
import sys
import threading
from typing import IO, Any

from jupyter_client.connect import KernelConnectionInfo
from jupyter_client.provisioning import LocalProvisioner

from .container import ContainerMixin, ContainerOptions, local_host_facts
from .errors import (
    KernelStartError,
    KernelStartTimeout,
    StateDirError,
    named_hook,
)
from .launch import LaunchContext
from .offloop import in_thread, unlink_quietly

__all__ = [
    "ContainerProvisioner",
    "ContainerOptions",
    "LogTail",
    "explain_exit",
    "local_host_facts",
    "drop_host_python",
    "HOST_PYTHON_VARS",
    "listening",
    "probe_port",
]

#: How often the shell port is tried while one kernel starts: every interval is latency a
#: user waits on average half of. Kernels starting together share this rate (a refused
#: connect costs about 0.2 ms of CPU, which a burst of 16 starts on 2 cores should not pay
#: 800 times a second): each polls every LISTEN_POLL_S x (kernels waiting), at most 0.25 s.
LISTEN_POLL_S = 0.02
_waiting = 0

#: The server's own Python settings; inside the image they point the image's Python at the
#: server's packages (a cp312 pyzmq in a 3.11 kernel fails with "undefined symbol").
HOST_PYTHON_VARS = ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "PYTHONEXECUTABLE")


def drop_host_python(env: dict[str, str]) -> None:
    """Remove the server's Python variables from the environment handed to the runtime.

    A kernelspec that needs one inside the container sets it in ``container_env``.
    """
    for name in HOST_PYTHON_VARS:
        env.pop(name, None)


class LogTail:
    """Copies a kernel's stderr to the server's stderr and keeps its last lines.

    A daemon thread reads the pipe so the event loop never blocks on it; failure messages
    quote :meth:`text`.
    """

    def __init__(self, stream: IO[bytes], sink: IO[str] | None, lines: int = 40) -> None:
        self._stream = stream
        self._sink = sink
        self._lines: collections.deque[str] = collections.deque(maxlen=lines)
        self._thread = threading.Thread(target=self._run, name="kernel-stderr", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        for raw in iter(self._stream.readline, b""):
            line = raw.decode(errors="replace")
            self._lines.append(line.rstrip("\n"))
            if self._sink is not None:
                try:
                    self._sink.write(line)
                    self._sink.flush()
                except (OSError, ValueError):
                    self._sink = None

    def text(self, wait: float = 0.5) -> str:
        """The last lines read so far, after waiting up to ``wait`` s for the pipe to drain."""
        self._thread.join(wait)
        return "\n".join(line for line in self._lines if line.strip())


def explain_exit(code: int | None, tail: str) -> str:
    """One sentence for a kernel process that ended early, with the next step when known."""
    hint = ""
    if "No module named ipykernel" in tail:
        hint = " The image has no ipykernel: install it in the image or pick another image."
    elif "executable file not found" in tail or "No such file or directory" in tail:
        hint = " The image has no such program (is python3 installed in it?)."
    elif "could not open image" in tail or ("FATAL" in tail and "image" in tail):
        hint = " The runtime could not open the image: rebuild it or check the file."
    last = tail.strip() or "(the kernel wrote nothing)"
    return (
        f"The kernel exited before it was ready (exit {code}).{hint} Last lines of its log:\n{last}"
    )


class ContainerProvisioner(ContainerMixin, LocalProvisioner):  # type: ignore[misc]
    """Starts the kernelspec's own argv inside an Apptainer/Singularity image on this host.

    Select it in a kernelspec with ``"kernel_provisioner": {"provisioner_name":
    "apptainer-provisioner", "config": {"image": "/path/img.sif"}}``. Every trait below can be
    set per kernelspec (``config``) or site-wide (``c.ContainerProvisioner.gpu = "none"`` in a
    Jupyter config file); the kernelspec wins. The traits come from the option table
    (:mod:`kernelprovider.options`).
    """

    _tail: LogTail | None = None

    @named_hook
    async def pre_launch(self, **kwargs: Any) -> dict[str, Any]:
        """Wrap the kernelspec's argv in ``apptainer exec``; called by KernelManager before launch.

        LocalProvisioner writes the connection file and formats the argv; a failed check
        removes that file again (it holds the key) before the error propagates.
        """
        cwd = os.path.abspath(kwargs.get("cwd") or os.getcwd())
        try:
            kwargs = await super().pre_launch(**kwargs)
        except OSError as e:
            conn = getattr(self.parent, "connection_file", "") or "the runtime directory"
            await self._discard_connection()
            if os.path.isfile(conn):  # the half-written file jupyter_client began
                with contextlib.suppress(OSError):
                    os.unlink(conn)
            raise StateDirError(
                f"Cannot write the kernel's connection file {conn}: {e.strerror}. Free space "
                "there or point JUPYTER_RUNTIME_DIR at a writable directory."
            ) from e
        try:
            await self.check_launch(cwd)
            await self._make_kernel_file()
            plan = await self.plan_start(self.inner_command(kwargs["cmd"]), cwd, kwargs["env"])
        except Exception:
            await self._discard_connection()
            raise
        argv = plan.argv
        self.verdicts = plan.verdicts
        kwargs["cmd"] = argv
        kwargs["cwd"] = cwd
        drop_host_python(kwargs["env"])
        kwargs["env"].update(plan.env)
        kwargs["stderr"] = subprocess.PIPE
        assert self.runtime_info is not None
        self.log.info(
            "Starting kernel %s in %s with %s (gpu=%s)",
            self.kernel_id,
            self.image,
            self.runtime_info.flavor,
            self.gpu,
        )
        self.log.debug("Container argv: %s", argv)
        return kwargs

    @named_hook
    async def launch_kernel(self, cmd: list[str], **kwargs: Any) -> KernelConnectionInfo:
        """Start the container and return once the kernel listens; called by KernelManager.

        Waiting here for the kernel's ports (or its early exit) is what turns an image
        without ipykernel into an immediate error with the log's last lines, instead of a
        client waiting out its 60 s kernel_info timeout.
        """
        info = await super().launch_kernel(cmd, **kwargs)
        assert self.process is not None
        self._tail = LogTail(self.process.stderr, sys.stderr)
        try:
            await self._wait_until_listening()
        except Exception:
            await self._discard_connection()
            raise
        return info

    async def _wait_until_listening(self) -> None:
        global _waiting
        _waiting += 1
        try:
            await self._poll_until_listening()
        finally:
            _waiting -= 1

    async def _poll_until_listening(self) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.ready_timeout
        ip = str(self.connection_info.get("ip") or "127.0.0.1")
        port = self.connection_info.get("shell_port")
        transport = self.connection_info.get("transport", "tcp")
        while True:
            code = self.process.poll() if self.process else None
            if code is not None:
                tail = self._tail.text() if self._tail else ""
                await self.wait()
                raise KernelStartError(explain_exit(code, tail))
            if await listening(transport, ip, port):
                return
            if loop.time() > deadline:
                tail = self._tail.text(0) if self._tail else ""
                await self.kill()
                await self.wait()
                raise KernelStartTimeout(
                    f"Kernel {self.kernel_name} in {self.image} did not open its ports within "
                    f"{self.ready_timeout:.0f} s. Raise ContainerProvisioner.ready_timeout if "
                    f"the image is slow to start. Last lines of its log:\n{tail}"
                )
            await asyncio.sleep(min(LISTEN_POLL_S * max(_waiting, 1), 0.25))

    def kernel_file(self) -> str | None:
        """The kernel's own name for the connection file: a hard link next to the manager's.

        ipykernel up to 6.2x rewrites its connection file (remove, create, write) right after
        it binds its ports, which is when :meth:`launch_kernel` returns and jupyter_client
        reads the manager's file: a start under load could read it half-written
        (JSONDecodeError). Under its own name the kernel replaces only its link; the
        manager's file keeps the original, complete inode.
        """
        conn = getattr(self.parent, "connection_file", "") if self.parent else ""
        if not conn:
            return None
        head, name = os.path.split(os.path.abspath(conn))
        return os.path.join(head, f".{name}.kernel")

    def launch_context(self, inner: list[str], *args: Any, **kwargs: Any) -> LaunchContext:
        """The container context with the connection file's path swapped for
        :meth:`kernel_file` in the kernel's argv: the plan pre_launch runs and doctor prints."""
        conn = getattr(self.parent, "connection_file", "") if self.parent else ""
        own = self.kernel_file()
        if conn and own:
            inner = [own if a == conn else a for a in inner]
        return super().launch_context(inner, *args, **kwargs)

    async def _make_kernel_file(self) -> None:
        """Create :meth:`kernel_file`: a hard link to the manager's connection file, or a
        private copy (0600) where the filesystem has no hard links. Called by pre_launch
        after LocalProvisioner wrote the connection file."""
        conn = getattr(self.parent, "connection_file", "") if self.parent else ""
        own = self.kernel_file()
        if not conn or own is None:
            return

        def make() -> None:
            unlink_quietly(own)
            try:
                os.link(conn, own)
            except OSError:
                fd = os.open(own, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
                with open(conn, "rb") as src, os.fdopen(fd, "wb") as dst:
                    dst.write(src.read())

        await in_thread(make, timeout=self.fs_timeout, what=f"Connection file {conn}")

    async def cleanup(self, restart: bool = False) -> None:
        """Remove the kernel's link to the connection file (it holds the key), then let
        LocalProvisioner return the ports; called by KernelManager after the kernel ended."""
        link = self.kernel_file()
        if link is not None:
            await asyncio.to_thread(unlink_quietly, link)
        await super().cleanup(restart=restart)

    async def _discard_connection(self) -> None:
        # A failed start leaves no connection file (it holds the key) and no cached ports.
        km = self.parent
        link = self.kernel_file()
        if link is not None:
            await asyncio.to_thread(unlink_quietly, link)
        if km is not None and hasattr(km, "cleanup_connection_file"):
            km.cleanup_connection_file()
        if self.connection_info.get("shell_port"):
            await self.cleanup(restart=False)  # returns the cached ports
        self.ports_cached = False


async def probe_port(ip: str, port: Any, timeout: float = 0.5) -> str:
    """How a TCP port answers: 'open', 'refused' (a reset: nothing listens yet, or a firewall
    rejects) or 'silent' (no answer within ``timeout``: a firewall drops the packets)."""
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(ip, int(port)), timeout=timeout)
    except asyncio.TimeoutError:
        return "silent"
    except OSError:
        return "refused"
    writer.close()
    try:
        await writer.wait_closed()
    except OSError:
        pass
    return "open"


async def listening(transport: str, ip: str, port: Any) -> bool:
    """True when something accepts connections at the kernel's shell endpoint."""
    if transport == "ipc":
        return os.path.exists(f"{ip}-{port}")
    return await probe_port(ip, port) == "open"
