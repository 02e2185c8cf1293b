"""ContainerProvisioner: a Jupyter kernel inside an Apptainer/Singularity image on this host."""

from __future__ import annotations

import asyncio
import collections
import os
import subprocess
import sys
import threading
from typing import IO, Any

from jupyter_client.connect import KernelConnectionInfo
from jupyter_client.provisioning import LocalProvisioner
from traitlets import Bool, CaselessStrEnum, Dict, Float, List, TraitError, Unicode, validate

from .apptainer import (
    Bind,
    RuntimeInfo,
    build_exec_argv,
    check_bind_sources,
    check_image,
    container_env,
    find_runtime_async,
    is_image_uri,
    parse_bind,
)
from .errors import KernelStartError, KernelStartTimeout

__all__ = ["ContainerProvisioner", "LogTail", "explain_exit"]


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


class ContainerProvisioner(LocalProvisioner):  # type: ignore[misc]
    """Starts the kernelspec's own argv inside an Apptainer/Singularity image on this host.

    Select it in a kernelspec with ``"kernel_provisioner": {"provisioner_name":
    "apptainer-provisioner", "config": {"image": "/path/img.sif"}}``. Every trait below can be
    set per kernelspec (``config``) or site-wide (``c.ContainerProvisioner.gpu = "none"`` in a
    Jupyter config file); the kernelspec wins.
    """

    image = Unicode(
        "",
        help="Path of the SIF/squashfs image or sandbox directory (or a docker://, oras:// URI) "
        "that the kernel runs in.",
    ).tag(config=True)

    runtime = Unicode(
        "auto",
        help="Container runtime: 'auto' (apptainer, then singularity, from PATH), a command "
        "name, or an absolute path.",
    ).tag(config=True)

    gpu = CaselessStrEnum(
        ["nv", "nvccli", "rocm", "none"],
        default_value="nv",
        help="GPU passthrough: 'nv' (--nv), 'nvccli' (--nv --nvccli), 'rocm' (--rocm) or 'none'.",
    ).tag(config=True)

    binds = List(
        Unicode(),
        help="Extra bind mounts, each 'SRC[:DST[:ro|rw]]' with absolute paths. The connection "
        "file's directory and the working directory are always bound.",
    ).tag(config=True)

    container_env = Dict(
        value_trait=Unicode(),
        help="Variables set inside the container, passed as APPTAINERENV_*/SINGULARITYENV_* so "
        "they survive --cleanenv and never appear in argv.",
    ).tag(config=True)

    cleanenv = Bool(
        False, help="Pass --cleanenv: start the container without the server's environment."
    ).tag(config=True)

    contain = Bool(
        False,
        help="Pass --contain: no home, /tmp or site binds; only the binds kernelprovider adds.",
    ).tag(config=True)

    extra_args = List(
        Unicode(),
        help="Extra arguments to 'exec', placed after kernelprovider's own and before the image "
        "(for example ['--writable-tmpfs']).",
    ).tag(config=True)

    no_user_site = Bool(
        True,
        help="Set PYTHONNOUSERSITE=1 in the container so packages in ~/.local do not shadow "
        "the image's own.",
    ).tag(config=True)

    ready_timeout = Float(
        120.0,
        help="Seconds the kernel may take to open its ports after the container starts; past "
        "that the start fails with its log.",
    ).tag(config=True)

    @validate("image")
    def _validate_image(self, proposal: dict[str, Any]) -> str:
        value = proposal["value"]
        if value and not is_image_uri(value):
            value = os.path.expanduser(value)
            if not os.path.isabs(value):
                raise TraitError(
                    f"image must be an absolute path or a URI, not {value!r}. Use the full "
                    "path of the .sif file."
                )
        return value

    @validate("binds")
    def _validate_binds(self, proposal: dict[str, Any]) -> list[str]:
        for value in proposal["value"]:
            try:
                parse_bind(value)
            except ValueError as e:
                raise TraitError(str(e)) from e
        return proposal["value"]

    @validate("container_env")
    def _validate_container_env(self, proposal: dict[str, Any]) -> dict[str, str]:
        for name in proposal["value"]:
            if (
                not name
                or not (name[0].isalpha() or name[0] == "_")
                or not all(c.isalnum() or c == "_" for c in name)
            ):
                raise TraitError(
                    f"container_env: {name!r} is not a valid variable name (letters, digits, _)."
                )
        return proposal["value"]

    # --- state kept between hooks -------------------------------------------------------
    runtime_info: RuntimeInfo | None = None
    _tail: LogTail | None = None

    @property
    def kernel_name(self) -> str:
        """The kernelspec's name, for messages."""
        parent = self.parent
        return getattr(parent, "kernel_name", "") or ""

    def connection_binds(self, cwd: str) -> list[Bind]:
        """The binds every kernel needs: the connection file's directory and the work dir.

        Called by :meth:`pre_launch`; without them a site with ``mount home = no`` or a
        ``--contain`` kernel could neither read its connection file nor open the notebook's
        neighbours.
        """
        binds = []
        km = self.parent
        conn = getattr(km, "connection_file", "") if km else ""
        if conn:
            conn_dir = os.path.dirname(os.path.abspath(conn))
            binds.append(Bind(conn_dir, conn_dir))
        binds.append(Bind(cwd, cwd))
        return binds

    def user_binds(self) -> list[Bind]:
        """The configured extra binds, parsed (validated already by the trait)."""
        return [parse_bind(b) for b in self.binds]

    def container_variables(self) -> dict[str, str]:
        """Variables for inside the container, before the runtime's prefix is applied."""
        variables = {}
        if self.no_user_site:
            variables["PYTHONNOUSERSITE"] = "1"
        variables.update(self.container_env)
        return variables

    def inner_command(self, cmd: list[str]) -> list[str]:
        """The kernel command as it must run inside the image.

        KernelManager.format_kernel_cmd swaps a leading 'python'/'python3' for the server's
        own sys.executable, a path that does not exist in the image; undo that swap.
        """
        spec_argv = list(self.kernel_spec.argv) if self.kernel_spec else []
        if cmd and spec_argv and cmd[0] == sys.executable and spec_argv[0] != sys.executable:
            return [spec_argv[0], *cmd[1:]]
        return list(cmd)

    async def pre_launch(self, **kwargs: Any) -> dict[str, Any]:
        """Wrap the kernelspec's argv in ``apptainer exec``; called by KernelManager before launch.

        LocalProvisioner writes the connection file and formats the argv; then the image,
        runtime and binds are checked here, so a mistake ends the start at once with a
        message instead of a kernel that never answers.
        """
        cwd = os.path.abspath(kwargs.get("cwd") or os.getcwd())
        kwargs = await super().pre_launch(**kwargs)
        try:
            if not self.image:
                raise TraitError(
                    f"Kernel {self.kernel_name or '?'} has no image configured. Set 'image' in "
                    "the kernelspec's kernel_provisioner config."
                )
            check_image(self.image, self.kernel_name)
            self.runtime_info = await find_runtime_async(self.runtime)
            binds = [*self.connection_binds(cwd), *self.user_binds()]
            check_bind_sources(binds)
            argv = build_exec_argv(
                self.runtime_info.path,
                self.image,
                self.inner_command(kwargs["cmd"]),
                gpu=self.gpu,
                binds=binds,
                pwd=cwd,
                cleanenv=self.cleanenv,
                contain=self.contain,
                extra_args=self.extra_args,
            )
        except Exception:
            await self._discard_connection()
            raise
        kwargs["cmd"] = argv
        kwargs["cwd"] = cwd
        kwargs["env"].update(container_env(self.runtime_info.flavor, self.container_variables()))
        kwargs["stderr"] = subprocess.PIPE
        self.log.info(
            "Starting kernel %s in %s with %s (gpu=%s)",
            self.kernel_id,
            self.image,
            self.runtime_info.flavor,
            self.gpu,
        )
        self.log.debug("Container argv: %s", argv)
        return kwargs

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
            if await _listening(transport, ip, port):
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
            await asyncio.sleep(0.05)

    async def _discard_connection(self) -> None:
        # A failed start leaves no connection file (it holds the key) and no cached ports.
        km = self.parent
        if km is not None and hasattr(km, "cleanup_connection_file"):
            km.cleanup_connection_file()
        await self.cleanup(restart=False)
        self.ports_cached = False

    def log_tail(self) -> str:
        """The last lines the kernel wrote to stderr (for error messages and tests)."""
        return self._tail.text(0) if self._tail else ""


async def _listening(transport: str, ip: str, port: Any) -> bool:
    """True when something accepts connections at the kernel's shell endpoint."""
    if transport == "ipc":
        return os.path.exists(f"{ip}-{port}")
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(ip, int(port)), timeout=0.5)
    except (OSError, asyncio.TimeoutError):
        return False
    writer.close()
    try:
        await writer.wait_closed()
    except OSError:
        pass
    return True
