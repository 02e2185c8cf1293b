"""The ``jupyter kernelprovider`` command: install, list, show and remove container kernels."""

from __future__ import annotations

import json
import os
import re
import sys
from typing import Any

from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel
from jupyter_core.application import JupyterApp, base_aliases, base_flags
from traitlets import (
    Bool,
    CaselessStrEnum,
    Dict,
    Float,
    Instance,
    Int,
    List,
    TraitError,
    Unicode,
    default,
)

from . import __version__
from .apptainer import check_image
from .errors import KernelProviderError
from .kernelspec import (
    PROVISIONER_NAME,
    SLURM_PROVISIONER_NAME,
    build_kernelspec,
    container_kernelspecs,
    install_kernelspec,
    provisioner_config,
    valid_kernel_name,
)

__all__ = [
    "KernelProviderApp",
    "InstallApp",
    "ListApp",
    "ShowApp",
    "RemoveApp",
    "name_from_image",
    "main",
]


def name_from_image(image: str) -> str:
    """A kernel name from an image file name: ``TF-1.8_cuda9.2.sif`` -> ``tf-1.8_cuda9.2``."""
    stem = os.path.basename(image.rstrip("/"))
    stem = re.sub(r"\.(sif|simg|img|sqsh|squashfs)$", "", stem, flags=re.IGNORECASE)
    name = re.sub(r"[^a-z0-9._-]+", "-", stem.lower()).strip("-.")
    return name or "container"


def validated_config(spec: dict[str, Any]) -> dict[str, Any]:
    """Run a kernelspec's provisioner config through the provisioner's own trait validation.

    Called by ``install`` and ``scan`` before writing, so a value that every kernel start
    would refuse (a relative bind, a bad variable name) is refused now, with the same words.
    """
    prov = spec["metadata"]["kernel_provisioner"]
    if prov["provisioner_name"] == SLURM_PROVISIONER_NAME:
        from .slurm import SlurmProvisioner as cls
    else:
        from .provisioner import ContainerProvisioner as cls
    cls(kernel_id="validate", kernel_spec=None, **prov["config"])
    return prov["config"]


class _KernelSpecApp(JupyterApp):
    """Shared parts of the subcommands: the KernelSpecManager they read and write."""

    version = __version__
    kernel_spec_manager = Instance(KernelSpecManager)

    @default("kernel_spec_manager")
    def _kernel_spec_manager_default(self) -> KernelSpecManager:
        return KernelSpecManager(parent=self, data_dir=self.data_dir)

    def fail(self, message: str) -> None:
        """End the command with one line on stderr and exit status 1 (no traceback)."""
        print(f"jupyter kernelprovider: {message}", file=sys.stderr)
        self.exit(1)


_install_aliases = {
    **base_aliases,
    "image": "InstallApp.image",
    "name": "InstallApp.kernel_name",
    "display-name": "InstallApp.display_name",
    "bind": "InstallApp.binds",
    "gpu": "InstallApp.gpu",
    "runtime": "InstallApp.runtime",
    "env": "InstallApp.container_env",
    "extra-arg": "InstallApp.exec_args",
    "python": "InstallApp.python",
    "interrupt-mode": "InstallApp.interrupt_mode",
    "prefix": "InstallApp.prefix",
    "compat-check": "InstallApp.compat_check",
    "driver-dir": "InstallApp.driver_dir",
    "cuda-dir": "InstallApp.cuda_dir",
    "partition": "InstallApp.partition",
    "gpus": "InstallApp.gpus",
    "gpu-option": "InstallApp.gpu_option",
    "time": "InstallApp.time_limit",
    "account": "InstallApp.account",
    "qos": "InstallApp.qos",
    "constraint": "InstallApp.constraint",
    "cpus-per-task": "InstallApp.cpus_per_task",
    "mem": "InstallApp.mem",
    "sbatch-arg": "InstallApp.sbatch_args",
    "srun-arg": "InstallApp.srun_args",
    "state-dir": "InstallApp.state_dir",
    "queue-timeout": "InstallApp.queue_timeout",
}
_install_flags = {
    **base_flags,
    "user": ({"InstallApp": {"user": True}}, "Install for this user only (~/.local/share)."),
    "sys-prefix": (
        {"InstallApp": {"prefix": sys.prefix}},
        f"Install into this Python's prefix ({sys.prefix}).",
    ),
    "cleanenv": ({"InstallApp": {"cleanenv": True}}, "Start the container with --cleanenv."),
    "contain": ({"InstallApp": {"contain": True}}, "Start the container with --contain."),
    "no-gpu": ({"InstallApp": {"gpu": "none"}}, "No GPU passthrough (same as --gpu=none)."),
    "slurm": (
        {"InstallApp": {"slurm": True}},
        "Run the kernel on a node that Slurm allocates (slurm-apptainer-provisioner).",
    ),
    "local": ({"InstallApp": {"slurm": False}}, "Run the kernel on this host (the default)."),
}


class InstallApp(_KernelSpecApp):
    """Write a kernelspec that starts its kernel inside an image."""

    name = "jupyter-kernelprovider-install"
    description = "Install a kernelspec whose kernel runs inside an Apptainer/Singularity image."
    examples = """
    jupyter kernelprovider install --image /software/images/tf-1.8-cuda-9.2.sif \\
        --name tf18-cuda92-gpu --display-name "TF 1.8 / CUDA 9.2 (GPU)" --sys-prefix
    """
    aliases = _install_aliases
    flags = _install_flags

    image = Unicode("", help="Image the kernel runs in (absolute path or URI).").tag(config=True)
    kernel_name = Unicode("", help="Kernel name (default: from the image file name).").tag(
        config=True
    )
    display_name = Unicode("", help="Name shown in the launcher (default: the kernel name).").tag(
        config=True
    )
    binds = List(Unicode(), help="Extra binds SRC[:DST[:ro|rw]] (repeatable).").tag(config=True)
    gpu = CaselessStrEnum(
        ["nv", "nvccli", "rocm", "none"], default_value=None, allow_none=True, help="GPU mode."
    ).tag(config=True)
    runtime = Unicode("", help="Runtime: apptainer, singularity or a path (default auto).").tag(
        config=True
    )
    container_env = Dict(
        value_trait=Unicode(), help="Variables inside the container, --env KEY=VALUE."
    ).tag(config=True)
    # Not named extra_args: traitlets keeps the positional arguments under that name.
    exec_args = List(Unicode(), help="Extra arguments for 'exec' (repeatable).").tag(config=True)
    compat_check = CaselessStrEnum(
        ["enforce", "warn", "off"],
        default_value=None,
        allow_none=True,
        help="CUDA/driver check before start (default enforce).",
    ).tag(config=True)
    driver_dir = Unicode(
        "", help="Driver directory template, e.g. /software/nvidia/{driver_version}."
    ).tag(config=True)
    cuda_dir = Unicode("", help="Host CUDA toolkit bound at /usr/local/cuda.").tag(config=True)
    cleanenv = Bool(False, help="Pass --cleanenv.").tag(config=True)
    contain = Bool(False, help="Pass --contain.").tag(config=True)
    python = Unicode("python3", help="The python inside the image.").tag(config=True)
    interrupt_mode = CaselessStrEnum(
        ["signal", "message"],
        default_value=None,
        allow_none=True,
        help="How interrupts reach the kernel (default: signal locally, message with Slurm).",
    ).tag(config=True)
    slurm = Bool(False, help="Use the Slurm provisioner (kernel on an allocated node).").tag(
        config=True
    )
    partition = Unicode("", help="Slurm partition.").tag(config=True)
    gpus = Unicode("", help="GPUs per kernel, e.g. 1 or a100:2 (Slurm mode).").tag(config=True)
    gpu_option = Unicode("", help="'gres' (--gres=gpu:N) or 'gpus' (--gpus=N).").tag(config=True)
    time_limit = Unicode("", help="Allocation time limit, e.g. 8:00:00.").tag(config=True)
    account = Unicode("", help="Slurm account.").tag(config=True)
    qos = Unicode("", help="Slurm QOS.").tag(config=True)
    constraint = Unicode("", help="Slurm node features (--constraint).").tag(config=True)
    cpus_per_task = Int(0, help="CPUs for the allocation.").tag(config=True)
    mem = Unicode("", help="Memory for the allocation, e.g. 32G.").tag(config=True)
    sbatch_args = List(Unicode(), help="Extra sbatch arguments (repeatable).").tag(config=True)
    srun_args = List(Unicode(), help="Extra srun arguments (repeatable).").tag(config=True)
    state_dir = Unicode("", help="Shared per-user state directory (Slurm mode).").tag(config=True)
    queue_timeout = Float(
        None, allow_none=True, help="Seconds to wait in the queue (0 = forever)."
    ).tag(config=True)
    user = Bool(False, help="Install for this user only.").tag(config=True)
    prefix = Unicode("", help="Install under PREFIX/share/jupyter/kernels.").tag(config=True)

    def build(self) -> tuple[str, dict[str, Any]]:
        """The kernel name and kernel.json this invocation stands for (no I/O)."""
        image = (
            os.path.abspath(os.path.expanduser(self.image))
            if "://" not in self.image
            else (self.image)
        )
        name = self.kernel_name or name_from_image(image)
        slurm_values: dict[str, Any] = {}
        if self.slurm:
            slurm_values = {
                "partition": self.partition or None,
                "gpus": self.gpus or None,
                "gpu_option": self.gpu_option or None,
                "time_limit": self.time_limit or None,
                "account": self.account or None,
                "qos": self.qos or None,
                "constraint": self.constraint or None,
                "cpus_per_task": self.cpus_per_task or None,
                "mem": self.mem or None,
                "sbatch_args": list(self.sbatch_args),
                "srun_args": list(self.srun_args),
                "state_dir": self.state_dir or None,
                "queue_timeout": self.queue_timeout,
            }
        config = provisioner_config(
            **slurm_values,
            image=image,
            gpu=self.gpu,
            runtime=self.runtime or None,
            binds=list(self.binds),
            container_env=dict(self.container_env),
            extra_args=list(self.exec_args),
            compat_check=self.compat_check,
            driver_dir=self.driver_dir or None,
            cuda_dir=self.cuda_dir or None,
            cleanenv=self.cleanenv or None,
            contain=self.contain or None,
        )
        spec = build_kernelspec(
            self.display_name or name,
            config,
            provisioner=SLURM_PROVISIONER_NAME if self.slurm else PROVISIONER_NAME,
            python=self.python,
            interrupt_mode=self.interrupt_mode or ("message" if self.slurm else "signal"),
        )
        return name, spec

    def start(self) -> None:
        """Validate the options, then install through KernelSpecManager.install_kernel_spec."""
        if not self.image:
            self.fail("--image is required, e.g. --image /software/images/tf-1.8-cuda-9.2.sif")
        if self.extra_args:
            self.fail(f"unexpected argument(s) {' '.join(self.extra_args)!r}; see --help.")
        if self.kernel_name and not valid_kernel_name(self.kernel_name):
            self.fail(f"--name {self.kernel_name!r}: use only letters, digits, '.', '_' and '-'.")
        name, spec = self.build()
        try:
            config = validated_config(spec)
            check_image(config["image"], name)
        except (KernelProviderError, TraitError) as e:
            self.fail(str(e))
        try:
            dest = install_kernelspec(
                spec,
                name,
                user=self.user,
                prefix=self.prefix or None,
                ksm=self.kernel_spec_manager,
            )
        except OSError as e:
            self.fail(
                f"Cannot write the kernelspec ({e}). Use --user, --sys-prefix or --prefix, or "
                "run as an admin for a system-wide install."
            )
        print(f"Installed kernelspec {name} ({spec['display_name']}) in {dest}")


class ListApp(_KernelSpecApp):
    """List the installed kernelspecs that run in containers."""

    name = "jupyter-kernelprovider-list"
    description = "List container kernelspecs: name, display name, image, runtime, GPU mode."
    flags = {
        **base_flags,
        "json": ({"ListApp": {"json_output": True}}, "Print JSON."),
    }
    json_output = Bool(False, help="Print JSON instead of a table.").tag(config=True)

    def rows(self) -> list[dict[str, Any]]:
        """One dict per container kernelspec, with whether its image can be started here and
        its verdict on this host ("ok"/"warn"/"fail" and the worst reason's first sentence;
        ``jupyter kernelprovider doctor NAME`` prints all of them)."""
        from .doctor import (  # imported on use: doctor.py imports this module
            framework_dict,
            framework_text,
            kernel_summary,
        )
        from .gpu import host_facts

        kernels = container_kernelspecs(self.kernel_spec_manager)
        if not kernels:
            return []
        host = host_facts()  # once: nvidia-smi is the slow part
        rows = []
        for name, (resource_dir, spec) in kernels.items():
            prov = spec["metadata"]["kernel_provisioner"]
            config = prov.get("config", {})
            image = config.get("image", "")
            try:
                check_image(image, name)
                image_state = "ok"
            except KernelProviderError as e:
                image_state = type(e).__name__
            verdict, verdict_reason, frameworks = kernel_summary(self, name, host)
            rows.append(
                {
                    "name": name,
                    "display_name": spec.get("display_name", name),
                    "image": image,
                    "image_state": image_state,
                    "runtime": config.get("runtime", "auto"),
                    "gpu": config.get("gpu", "nv"),
                    "provisioner": prov.get("provisioner_name"),
                    "resource_dir": resource_dir,
                    "verdict": verdict,
                    "verdict_reason": verdict_reason,
                    "frameworks": [framework_dict(fw, host) for fw in frameworks],
                    "frameworks_text": "; ".join(framework_text(fw) for fw in frameworks),
                }
            )
        return rows

    def start(self) -> None:
        """Print the table (or JSON)."""
        rows = self.rows()
        if self.json_output:
            print(json.dumps(rows, indent=1))
            return
        if not rows:
            print(
                "No container kernelspecs installed. Add one with 'jupyter kernelprovider install'."
            )
            return
        cols = ["name", "display_name", "image", "image_state", "runtime", "gpu", "verdict"]
        heads = ["NAME", "DISPLAY NAME", "IMAGE", "IMAGE STATE", "RUNTIME", "GPU", "VERDICT"]
        if any(r["frameworks_text"] for r in rows):
            cols.append("frameworks_text")
            heads.append("FRAMEWORKS")
        widths = [
            max(len(h), *(len(str(r[c])) for r in rows)) for c, h in zip(cols, heads, strict=True)
        ]
        print("  ".join(h.ljust(w) for h, w in zip(heads, widths, strict=True)))
        for r in rows:
            print("  ".join(str(r[c]).ljust(w) for c, w in zip(cols, widths, strict=True)))


class ShowApp(_KernelSpecApp):
    """Print one kernelspec and where it lives."""

    name = "jupyter-kernelprovider-show"
    description = "Show a container kernelspec: jupyter kernelprovider show NAME"

    def start(self) -> None:
        """Print the resource directory and kernel.json of the kernel named on the command line."""
        if len(self.extra_args) != 1:
            self.fail("usage: jupyter kernelprovider show NAME")
        name = self.extra_args[0]
        try:
            spec = self.kernel_spec_manager.get_kernel_spec(name)
        except NoSuchKernel:
            self.fail(f"No kernelspec named {name!r}. See 'jupyter kernelprovider list'.")
        print(f"# {spec.resource_dir}")
        print(json.dumps(spec.to_dict(), indent=1, sort_keys=True))


class RemoveApp(_KernelSpecApp):
    """Remove container kernelspecs by name."""

    name = "jupyter-kernelprovider-remove"
    description = "Remove container kernelspecs: jupyter kernelprovider remove NAME..."
    flags = {
        **base_flags,
        "force": ({"RemoveApp": {"force": True}}, "Also remove kernelspecs not made by us."),
    }
    force = Bool(False, help="Remove even kernelspecs that do not use our provisioners.").tag(
        config=True
    )

    def start(self) -> None:
        """Remove each named kernelspec that uses a kernelprovider provisioner."""
        if not self.extra_args:
            self.fail("usage: jupyter kernelprovider remove NAME...")
        ours = container_kernelspecs(self.kernel_spec_manager)
        for name in self.extra_args:
            if name not in ours and not self.force:
                self.fail(
                    f"{name!r} is not a container kernelspec installed here; see "
                    "'jupyter kernelprovider list' (or --force to remove any kernelspec)."
                )
            try:
                path = self.kernel_spec_manager.remove_kernel_spec(name)
            except (NoSuchKernel, KeyError):
                self.fail(f"No kernelspec named {name!r}.")
            except OSError as e:
                self.fail(f"Cannot remove {name}: {e}. Run as the user or admin who installed it.")
            print(f"Removed {name} ({path})")


class KernelProviderApp(JupyterApp):
    """``jupyter kernelprovider``: manage kernels that run in Apptainer/Singularity images."""

    name = "jupyter-kernelprovider"
    version = __version__
    description = __doc__
    subcommands = {
        "install": (InstallApp, InstallApp.description),
        "list": (ListApp, ListApp.description),
        "show": (ShowApp, ShowApp.description),
        "remove": (RemoveApp, RemoveApp.description),
        # Imported on use: each owns a module of its own.
        "scan": (
            "kernelprovider.scan.ScanApp",
            "Install or update one kernelspec per image found in directories.",
        ),
        "doctor": (
            "kernelprovider.doctor.DoctorApp",
            "Show the driver, GPUs, image CUDA/TF and the verdicts for a kernel or image.",
        ),
    }

    def start(self) -> None:
        """Run the subcommand; without one, list them and exit 1."""
        if self.subapp is None:
            print("No subcommand given. Available:", ", ".join(self.subcommands), file=sys.stderr)
            self.print_subcommands()
            self.exit(1)
        self.subapp.start()


main = KernelProviderApp.launch_instance

if __name__ == "__main__":
    main()
