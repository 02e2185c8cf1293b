"""The container behaviour of a kernel, as a mixin both provisioners inherit.

:class:`ContainerMixin` owns the container traits (from the option table), their checks, the
facts a start reads (runtime, node, image) and the launch plan; the provisioners add where
the kernel runs: :class:`~kernelprovider.provisioner.ContainerProvisioner` (this host, a
LocalProvisioner) and :class:`~kernelprovider.slurm.SlurmProvisioner` (a Slurm step).
"""

from __future__ import annotations

import asyncio
import os
import re
import sys
from typing import Any

from traitlets import TraitError, validate

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
from .errors import DriverDirNotFound, DriverIncompatible, KernelProviderError, no_image_error
from .gpu import driver_dir_for, host_facts, visible_gpus
from .image import image_facts_async
from .launch import LaunchContext, LaunchPlan
from .offloop import in_thread
from .options import CONTAINER_OPTIONS, options_mixin

__all__ = ["ContainerOptions", "ContainerMixin", "local_host_facts", "NV_LIBS"]

_VAR_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")

#: Where apptainer --nv puts the host driver's libraries inside the container.
NV_LIBS = "/.singularity.d/libs"
#: (driver state, facts): kept until the loaded driver or the GPU device nodes change.
_host_cache: tuple[tuple[str | None, tuple[str, ...]], HostFacts] | None = None


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


#: The container options of :data:`kernelprovider.options.CONTAINER_OPTIONS` as traits.
ContainerOptions: Any = options_mixin(
    "ContainerOptions",
    CONTAINER_OPTIONS,
    "The container settings of a kernel (image, runtime, GPU mode, binds, ...), as traits.",
)


class ContainerMixin(ContainerOptions):  # type: ignore[misc,valid-type]
    """The container side of a kernel: traits, checks, facts and the launch plan.

    Mixed in before the provisioner base that says where the kernel runs
    (``ContainerProvisioner(ContainerMixin, LocalProvisioner)``,
    ``SlurmProvisioner(SlurmOptions, ContainerMixin, KernelProvisionerBase)``); it overrides
    none of jupyter_client's hooks, so theirs run as they are.
    """

    # --- state kept between hooks -------------------------------------------------------
    runtime_info: RuntimeInfo | None = None
    #: The verdicts of the last start's plan (a record for logs and tests, read by no hook).
    verdicts: list[Verdict] = []

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

        Called from :meth:`plan_start` during pre_launch; the Slurm provisioner overrides it
        with a probe step on the allocated node.
        """
        return await local_host_facts()

    @property
    def reads_image_facts(self) -> bool:
        """Whether a start reads the image's facts (to judge them and for LD_LIBRARY_PATH)."""
        return self.compat_check != "off" and self.gpu != "none" and not is_image_uri(self.image)

    async def read_image_facts(self) -> ImageFacts | None:
        """The image's CUDA/TF facts when a start judges them, else None.

        Called by :meth:`plan_start` during pre_launch. Not read with compat_check 'off',
        gpu 'none' or a URI image; a failed read is logged and judged as unknown.
        """
        if not self.reads_image_facts:
            return None
        assert self.runtime_info is not None
        try:
            return await image_facts_async(self.image, runtime=self.runtime_info.path)
        except (KernelProviderError, TimeoutError) as e:
            self.log.warning(
                "Kernel %s: cannot read the image's CUDA version: %s", self.kernel_id, e
            )
            return None

    def judge(self, image: ImageFacts | None, host: HostFacts | None) -> list[Verdict]:
        """The CUDA/TF verdicts of ``image`` on ``host`` (none when either is unknown or the
        kernel runs without a GPU). Pure; called by :meth:`launch_plan`."""
        if image is None or host is None or self.gpu == "none":
            return []
        return evaluate(image, host)

    def enforce(self, verdicts: list[Verdict]) -> None:
        """Log every verdict and raise DriverIncompatible on a blocking fail.

        Called by :meth:`launch_plan` for a real start. Every verdict is logged (warn/fail at
        WARNING) so the server log says why a kernel may be slow or CPU-only even when it
        starts.
        """
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

    def driver_setup(
        self, host: HostFacts, image: ImageFacts | None = None
    ) -> tuple[list[Bind], dict[str, str]]:
        """Binds and container variables for driver directory mode and a host CUDA dir.

        Called by :meth:`launch_plan`. The driver's libraries go first on LD_LIBRARY_PATH
        (after the image's own path, from ``image``): any libcuda the image ships (a stub, or
        an old driver baked in) must lose against the host's.
        """
        binds: list[Bind] = []
        variables: dict[str, str] = {}
        image_ld_path = image.ld_library_path if image else None
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

    async def check_launch(self, cwd: str) -> list[Bind]:
        """The checks that need no kernel: image, runtime, bind sources; returns the binds.

        Called by pre_launch (of this class and of SlurmProvisioner, before it submits a
        job), so a mistake ends the start at once with a message instead of a kernel that
        never answers or an allocation that waits for nothing.
        """
        if not self.image:
            raise no_image_error(self.kernel_name)
        await in_thread(
            check_image,
            self.image,
            self.kernel_name,
            timeout=self.fs_timeout,
            what=f"Image {self.image}",
        )
        self.runtime_info = await find_runtime_async(self.runtime)
        binds = [*self.connection_binds(cwd), *self.user_binds()]
        await in_thread(
            check_bind_sources,
            binds,
            timeout=self.fs_timeout,
            what="The bind sources " + ", ".join(b.src for b in binds),
        )
        return binds

    def launch_plan(self, ctx: LaunchContext, *, strict: bool = True) -> LaunchPlan:
        """The plan of one start: ``runtime exec ... IMAGE inner``, its variables and binds.

        Called by :meth:`plan_start` (pre_launch, ``strict``: a blocking verdict or a missing
        driver directory raises) and by ``doctor`` (not strict: they become "fail"
        verdicts). Reads nothing but the driver/CUDA directories' existence.
        """
        verdicts = self.judge(ctx.image, ctx.host)
        if strict:
            self.enforce(verdicts)
        binds = [*self.connection_binds(ctx.cwd), *self.user_binds()]
        runtime_vars: dict[str, str] = {}
        gpu_vars: dict[str, str] = {}
        if ctx.host is not None and self.uses_gpu_setup:
            try:
                gpu_binds, gpu_vars = self.driver_setup(ctx.host, ctx.image)
            except (KernelProviderError, ValueError) as e:
                if strict:
                    raise
                verdicts.append(Verdict("fail", str(e), "driver_dir"))
                gpu_binds = []
            binds += gpu_binds
            runtime_vars, selection_vars = self.gpu_selection(dict(ctx.env))
            gpu_vars.update(selection_vars)
        variables = {**gpu_vars, **self.container_variables()}
        argv = build_exec_argv(
            ctx.runtime.path,
            self.image,
            ctx.inner,
            gpu=self.gpu,
            binds=binds,
            pwd=ctx.cwd,
            cleanenv=self.cleanenv,
            contain=self.contain,
            extra_args=self.extra_args,
        )
        env = dict(runtime_vars)
        env.update(
            container_env(
                ctx.runtime.flavor,
                variables,
                evaluated=env_is_evaluated(self.extra_args, ctx.env),
            )
        )
        return LaunchPlan(argv, env, variables, binds, verdicts)

    async def plan_start(self, inner: list[str], cwd: str, env: dict[str, str]) -> LaunchPlan:
        """Gather the facts a start is planned from (node, image), then plan it (strict).

        Called by pre_launch once the node is known (here, or the allocated node in Slurm
        mode); a verdict under compat_check 'enforce' or a missing driver directory stops
        the launch here.
        """
        assert self.runtime_info is not None
        host: HostFacts | None = None
        if self.uses_gpu_setup:
            needs_host = (self.compat_check != "off" and self.gpu != "none") or bool(
                self.driver_dir
            )
            host = await self.node_facts() if needs_host else HostFacts(node="")
        image = await self.read_image_facts() if host is not None else None
        return self.launch_plan(self.launch_context(inner, cwd, env, host, image))

    def launch_context(
        self,
        inner: list[str],
        cwd: str,
        env: dict[str, str],
        host: HostFacts | None,
        image: ImageFacts | None,
        runtime: RuntimeInfo | None = None,
    ) -> LaunchContext:
        """The context :meth:`launch_plan` reads; the Slurm provisioner adds its job.

        ``runtime`` defaults to the one :meth:`check_launch` found.
        """
        runtime = runtime or self.runtime_info
        assert runtime is not None
        return LaunchContext(inner, cwd, env, runtime, host, image)
