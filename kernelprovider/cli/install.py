"""``jupyter kernelprovider install``: write one kernelspec whose kernel runs in an image."""

from __future__ import annotations

import sys
from typing import Any

from jupyter_core.application import base_aliases, base_flags
from traitlets import TraitError, Unicode

from ..apptainer import check_image
from ..errors import KernelProviderError
from ..kernelspec import install_kernelspec, name_from_image, valid_kernel_name, validated_config
from ..options import cli_aliases, cli_flags
from .base import InstallOptionsApp

__all__ = ["InstallApp", "name_from_image"]

_install_aliases = {
    **base_aliases,
    "image": "InstallApp.image",
    "name": "InstallApp.kernel_name",
    "display-name": "InstallApp.display_name",
    "python": "InstallApp.python",
    "interrupt-mode": "InstallApp.interrupt_mode",
    "prefix": "InstallApp.prefix",
    **cli_aliases("InstallApp"),
}
_install_flags = {
    **base_flags,
    **cli_flags("InstallApp"),
    "user": ({"InstallApp": {"user": True}}, "Install for this user only (~/.local/share)."),
    "sys-prefix": (
        {"InstallApp": {"prefix": sys.prefix}},
        f"Install into this Python's prefix ({sys.prefix}).",
    ),
    "no-gpu": ({"InstallApp": {"gpu": "none"}}, "No GPU passthrough (same as --gpu=none)."),
    "slurm": (
        {"InstallApp": {"slurm": True}},
        "Run the kernel on a node that Slurm allocates (slurm-apptainer-provisioner).",
    ),
    "local": ({"InstallApp": {"slurm": False}}, "Run the kernel on this host (the default)."),
}


class InstallApp(InstallOptionsApp):
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

    def build(self) -> tuple[str, dict[str, Any]]:
        """The kernel name and kernel.json this invocation stands for (no I/O)."""
        name = self.kernel_name or name_from_image(self.image)
        return name, self.build_spec(self.image, self.display_name or name)

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
