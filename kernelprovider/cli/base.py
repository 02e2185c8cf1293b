"""Shared parts of the subcommands: the KernelSpecManager, one-line failures, install options."""

from __future__ import annotations

import sys
from typing import Any

from jupyter_client.kernelspec import KernelSpecManager
from jupyter_core.application import JupyterApp
from traitlets import Bool, CaselessStrEnum, Instance, Unicode, default

from .. import __version__
from ..kernelspec import install_spec
from ..options import cli_traits, spec_values

__all__ = ["KernelSpecApp", "InstallOptionsApp"]


class KernelSpecApp(JupyterApp):
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


# One trait per option of the table that has a command-line flag (kernelprovider.options).
InstallOptions: Any = type("InstallOptions", (KernelSpecApp,), cli_traits())


class InstallOptionsApp(InstallOptions):  # type: ignore[misc,valid-type]
    """The options ``install`` and ``scan`` share, and the one builder of their kernel.json."""

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
    user = Bool(False, help="Install for this user only.").tag(config=True)
    prefix = Unicode("", help="Install under PREFIX/share/jupyter/kernels.").tag(config=True)

    def build_spec(self, image: str, display_name: str) -> dict[str, Any]:
        """kernel.json for ``image`` with the options given on the command line (no I/O)."""
        return install_spec(
            image,
            display_name,
            spec_values(self, self.slurm),
            slurm=self.slurm,
            python=self.python,
            interrupt_mode=self.interrupt_mode or None,
        )
