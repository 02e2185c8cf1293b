"""ContainerProvisioner: a Jupyter kernel inside an Apptainer/Singularity image on this host."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
import re
import subprocess
import sys
import threading
from typing import IO, Any

from jupyter_client.connect import KernelConnectionInfo
from jupyter_client.provisioning import LocalProvisioner
from traitlets import Bool, CaselessStrEnum, Dict, Float, List, TraitError, Unicode, validate

from .aio import shared
from .apptainer import (
    Bind,
    RuntimeInfo,
    build_exec_argv,
    check_bind_sources,
    check_image,
    container_env,
    env_is_evaluated,
    find_runtime_async,
    is_image_uri,
    parse_bind,
)
from .compat import HostFacts, ImageFacts, Verdict, evaluate, evaluate_policy
from .errors import (
    DriverDirNotFound,
    DriverIncompatible,
    KernelProviderError,
    KernelStartError,
    KernelStartTimeout,
    StateDirError,
)
from .gpu import driver_dir_for, host_facts, visible_gpus
from .image import image_facts_async

__all__ = [
    "ContainerProvisioner",
    "LogTail",
    "explain_exit",
    "local_host_facts",
    "drop_host_python",
    "HOST_PYTHON_VARS",
    "listening",
    "probe_port",
]

_VAR_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")

#: Where apptainer --nv puts the host driver's libraries inside the container.
NV_LIBS = "/.singularity.d/libs"
#: (driver state, facts): kept until the loaded driver or the GPU device nodes change.
_host_cache: tuple[tuple[str | None, tuple[str, ...]], HostFacts] | None = None
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


def _driver_state() -> tuple[str | None, tuple[str, ...]]:
    """What changes when the driver is upgraded or GPUs come and go: the loaded driver's
    version line and the /dev/nvidiaN device nodes. Reading them costs a few syscalls."""
    try:
        with open("/proc/driver/nvidia/version", encoding="utf-8", errors="replace") as f:
            version: str | None = f.readline().strip()
    except OSError:
        version = None
    try:
        devices = tuple(sorted(n for n in os.listdir("/dev") if re.fullmatch(r"nvidia\d+", n)))
    except OSError:
        devices = ()
    return version, devices


async def local_host_facts() -> HostFacts:
    """This host's driver and GPUs, probed in a thread (NVML or nvidia-smi) once and kept
    while the driver and the GPU device nodes stay the same.

    Called by every local start's GPU pre-flight: a start pays a look at
    /proc/driver/nvidia/version, not an nvidia-smi run; starts on a cold cache share one probe.
    """
    global _host_cache
    state = await asyncio.to_thread(_driver_state)
    if _host_cache is None or _host_cache[0] != state:
        facts = await shared(("host-facts", state), lambda: asyncio.to_thread(host_facts))
        _host_cache = (state, facts)
    return _host_cache[1]


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

    compat_check = CaselessStrEnum(
        ["enforce", "warn", "off"],
        default_value="enforce",
        help="Check the image's CUDA/TensorFlow against the node's driver and GPUs before "
        "start: 'enforce' stops a launch that cannot work, 'warn' only logs, 'off' skips.",
    ).tag(config=True)

    driver_dir = Unicode(
        "",
        help="Driver directory mode: a template such as '/software/nvidia/{driver_version}' "
        "(also {driver_major}) naming host directories of NVIDIA driver libraries (lib/ and "
        "bin/, or libraries directly); the one for the detected driver is bound at "
        "driver_lib_path/driver_bin_path and put first on LD_LIBRARY_PATH and PATH.",
    ).tag(config=True)

    driver_lib_path = Unicode(
        "/nvlib", help="Container path of the driver libraries in driver directory mode."
    ).tag(config=True)

    driver_bin_path = Unicode(
        "/nvbin", help="Container path of the driver programs in driver directory mode."
    ).tag(config=True)

    cuda_dir = Unicode(
        "",
        help="A host CUDA toolkit (for example /software/cuda/9.2) bound read-only at "
        "/usr/local/cuda, for images built without one.",
    ).tag(config=True)

    ready_timeout = Float(
        120.0,
        help="Seconds the kernel may take to open its ports after the container starts; past "
        "that the start fails with its log.",
    ).tag(config=True)

    @validate("image")
    def _validate_image(self, proposal: dict[str, Any]) -> str:
        value = proposal["value"]
        if "\0" in value:
            raise TraitError(f"image {value!r} contains a NUL byte; use the .sif file's path.")
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
            # ASCII only: apptainer sources `export NAME=...`, and one name its shell refuses
            # ("invalid var name", e.g. a non-ASCII letter) silently drops every variable.
            if not _VAR_NAME.fullmatch(name):
                raise TraitError(
                    f"container_env: {name!r} is not a valid variable name (ASCII letters, "
                    "digits and _, not starting with a digit)."
                )
        return proposal["value"]

    @validate("driver_dir", "cuda_dir", "driver_lib_path", "driver_bin_path")
    def _validate_abs_path(self, proposal: dict[str, Any]) -> str:
        value = proposal["value"]
        if value and not value.startswith("/"):
            raise TraitError(f"{proposal['trait'].name} must be an absolute path, not {value!r}.")
        return value

    # --- state kept between hooks -------------------------------------------------------
    runtime_info: RuntimeInfo | None = None
    image_facts: ImageFacts | None = None
    verdicts: list[Verdict] = []
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

    async def node_facts(self) -> HostFacts:
        """Driver and GPUs of the node the kernel will run on (here: this host).

        Called from :meth:`gpu_setup` during pre_launch; the Slurm provisioner overrides it
        with a probe step on the allocated node.
        """
        return await local_host_facts()

    async def check_compatibility(self, host: HostFacts) -> list[Verdict]:
        """Judge the image's CUDA/TF against ``host``; raise DriverIncompatible on a blocking fail.

        Called from :meth:`gpu_setup`. Every verdict is logged (warn/fail at WARNING) so the
        server log says why a kernel may be slow or CPU-only even when it starts.
        """
        if self.compat_check == "off" or self.gpu == "none" or is_image_uri(self.image):
            return []
        assert self.runtime_info is not None
        try:
            facts = await image_facts_async(self.image, runtime=self.runtime_info.path)
        except (KernelProviderError, TimeoutError) as e:
            self.log.warning(
                "Kernel %s: cannot read the image's CUDA version: %s", self.kernel_id, e
            )
            return []
        self.image_facts = facts
        verdicts = evaluate(facts, host)
        for v in verdicts:
            # ok at INFO: the log then says on which driver and GPU a kernel was judged.
            level = {"ok": 20, "warn": 30, "fail": 30}[v.level]
            self.log.log(
                level, "Kernel %s: compatibility %s: %s", self.kernel_id, v.level, v.reason
            )
        blocking = evaluate_policy(verdicts, self.compat_check)
        if blocking:
            raise DriverIncompatible(
                " ".join(v.reason for v in blocking)
                + " (To start anyway, set compat_check to 'warn' for this kernel.)"
            )
        return verdicts

    def driver_setup(self, host: HostFacts) -> tuple[list[Bind], dict[str, str]]:
        """Binds and container variables for driver directory mode and a host CUDA dir.

        The driver's libraries go first on LD_LIBRARY_PATH: any libcuda the image ships
        (a stub, or an old driver baked in) must lose against the host's.
        """
        binds: list[Bind] = []
        variables: dict[str, str] = {}
        image_ld = getattr(self, "image_facts", None)
        image_ld_path = image_ld.ld_library_path if image_ld else None
        first_lib = NV_LIBS if self.gpu in ("nv", "nvccli") else ""
        if self.driver_dir:
            if not host.driver:
                raise DriverDirNotFound(
                    f"driver_dir is set but node {host.node} has no NVIDIA driver loaded. Run "
                    "the kernel on a GPU node or unset driver_dir."
                )
            path = driver_dir_for(self.driver_dir, host.driver)
            if not os.path.isdir(path):
                raise DriverDirNotFound(
                    f"No driver directory {path} for NVIDIA driver {host.driver} on node "
                    f"{host.node} (driver_dir={self.driver_dir}). Ask your admins to create it "
                    "from the driver's libraries, or unset driver_dir to use --nv."
                )
            lib = os.path.join(path, "lib")
            lib = lib if os.path.isdir(lib) else path
            binds.append(Bind(lib, self.driver_lib_path, "ro"))
            bin_dir = os.path.join(path, "bin")
            if os.path.isdir(bin_dir):
                binds.append(Bind(bin_dir, self.driver_bin_path, "ro"))
                variables["PREPEND_PATH"] = self.driver_bin_path
            first_lib = self.driver_lib_path
        if self.cuda_dir:
            check_bind_sources([Bind(self.cuda_dir, "/usr/local/cuda")])
            binds.append(Bind(self.cuda_dir, "/usr/local/cuda", "ro"))
        if first_lib and (self.driver_dir or image_ld_path):
            rest = [p for p in (image_ld_path or "").split(":") if p and p != first_lib]
            variables["LD_LIBRARY_PATH"] = ":".join([first_lib, *rest])
        return binds, variables

    def gpu_selection(self, env: dict[str, str]) -> tuple[dict[str, str], dict[str, str]]:
        """(runtime variables, container variables) that keep the GPU choice of the job.

        --cleanenv drops CUDA_VISIBLE_DEVICES, so it is passed in explicitly; --nvccli picks
        devices from NVIDIA_VISIBLE_DEVICES, which --contain would otherwise leave empty.
        """
        runtime_vars: dict[str, str] = {}
        container_vars: dict[str, str] = {}
        if self.gpu == "none":
            return runtime_vars, container_vars
        if self.cleanenv and env.get("CUDA_VISIBLE_DEVICES") is not None:
            container_vars["CUDA_VISIBLE_DEVICES"] = env["CUDA_VISIBLE_DEVICES"]
        if self.gpu == "nvccli":
            runtime_vars["NVIDIA_VISIBLE_DEVICES"] = visible_gpus(env) or "all"
        return runtime_vars, container_vars

    @property
    def uses_gpu_setup(self) -> bool:
        """Whether a launch needs the GPU pre-flight (GPU passthrough or driver/CUDA dirs)."""
        return self.gpu != "none" or bool(self.cuda_dir) or bool(self.driver_dir)

    async def gpu_setup(
        self, env: dict[str, str]
    ) -> tuple[list[Bind], dict[str, str], dict[str, str]]:
        """Everything GPU for one launch: (binds, runtime variables, container variables).

        Called by pre_launch after the image and runtime checks: node facts, verdicts
        (which may stop the launch), driver/CUDA directories, GPU selection.
        """
        if not self.uses_gpu_setup:
            return [], {}, {}
        needs_host = (self.compat_check != "off" and self.gpu != "none") or bool(self.driver_dir)
        host = await self.node_facts() if needs_host else HostFacts(node="")
        self.verdicts = await self.check_compatibility(host)
        binds, container_vars = self.driver_setup(host)
        runtime_vars, selection_vars = self.gpu_selection(env)
        container_vars.update(selection_vars)
        return binds, runtime_vars, container_vars

    async def check_launch(self, cwd: str) -> list[Bind]:
        """The checks that need no kernel: image, runtime, bind sources; returns the binds.

        Called by pre_launch (of this class and of SlurmProvisioner, before it submits a
        job), so a mistake ends the start at once with a message instead of a kernel that
        never answers or an allocation that waits for nothing.
        """
        if not self.image:
            raise TraitError(
                f"Kernel {self.kernel_name or '?'} has no image configured. Set 'image' in "
                "the kernelspec's kernel_provisioner config."
            )
        binds = [*self.connection_binds(cwd), *self.user_binds()]

        def checks() -> None:
            # Filesystem work: a hung network filesystem must not stop the server's loop.
            check_image(self.image, self.kernel_name)
            check_bind_sources(binds)

        await asyncio.to_thread(checks)
        self.runtime_info = await find_runtime_async(self.runtime)
        return binds

    async def container_command(
        self, inner: list[str], cwd: str, binds: list[Bind], env: dict[str, str]
    ) -> tuple[list[str], dict[str, str]]:
        """The runtime argv around ``inner`` and the variables the runtime needs.

        Called by pre_launch once the node is known (here, or the allocated node in Slurm
        mode): runs the GPU pre-flight (which may refuse the launch), then builds
        ``apptainer exec ... IMAGE inner``. The variables include the container's own,
        already in APPTAINERENV_/SINGULARITYENV_ form.
        """
        assert self.runtime_info is not None
        gpu_binds, runtime_vars, gpu_vars = await self.gpu_setup(env)
        argv = build_exec_argv(
            self.runtime_info.path,
            self.image,
            inner,
            gpu=self.gpu,
            binds=[*binds, *gpu_binds],
            pwd=cwd,
            cleanenv=self.cleanenv,
            contain=self.contain,
            extra_args=self.extra_args,
        )
        variables = dict(runtime_vars)
        variables.update(
            container_env(
                self.runtime_info.flavor,
                {**gpu_vars, **self.container_variables()},
                evaluated=env_is_evaluated(self.extra_args, env),
            )
        )
        return argv, variables

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
            binds = await self.check_launch(cwd)
            inner = await self._kernel_side_file(self.inner_command(kwargs["cmd"]))
            argv, variables = await self.container_command(inner, cwd, binds, kwargs["env"])
        except Exception:
            await self._discard_connection()
            raise
        kwargs["cmd"] = argv
        kwargs["cwd"] = cwd
        drop_host_python(kwargs["env"])
        kwargs["env"].update(variables)
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

    async def _kernel_side_file(self, inner: list[str]) -> list[str]:
        """``inner`` with the connection file's path swapped for :meth:`kernel_file`.

        Called by pre_launch. Where the filesystem has no hard links, the kernel gets the
        manager's file as before.
        """
        conn = getattr(self.parent, "connection_file", "") if self.parent else ""
        link = self.kernel_file()
        if not conn or link is None or conn not in inner:
            return inner

        def make_link() -> bool:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(link)
            try:
                os.link(conn, link)
            except OSError:
                return False
            return True

        if not await asyncio.to_thread(make_link):
            return inner
        return [link if a == conn else a for a in inner]

    async def cleanup(self, restart: bool = False) -> None:
        """Remove the kernel's link to the connection file (it holds the key), then let
        LocalProvisioner return the ports; called by KernelManager after the kernel ended."""
        link = self.kernel_file()
        if link is not None:
            await asyncio.to_thread(_unlink_quietly, link)
        await super().cleanup(restart=restart)

    async def _discard_connection(self) -> None:
        # A failed start leaves no connection file (it holds the key) and no cached ports.
        km = self.parent
        link = self.kernel_file()
        if link is not None:
            await asyncio.to_thread(_unlink_quietly, link)
        if km is not None and hasattr(km, "cleanup_connection_file"):
            km.cleanup_connection_file()
        if self.connection_info.get("shell_port"):
            await self.cleanup(restart=False)  # returns the cached ports
        self.ports_cached = False


def _unlink_quietly(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


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
