"""``jupyter kernelprovider``: the top-level command and its subcommands."""

from __future__ import annotations

import sys

from jupyter_core.application import JupyterApp

from .. import __version__

__all__ = ["KernelProviderApp", "main"]


class KernelProviderApp(JupyterApp):
    """``jupyter kernelprovider``: manage kernels that run in Apptainer/Singularity images."""

    name = "jupyter-kernelprovider"
    version = __version__
    description = (
        "The ``jupyter kernelprovider`` command: install, list, show and remove container kernels."
    )
    subcommands = {
        # Imported on use: each subcommand owns a module of its own.
        "install": (
            "kernelprovider.cli.install.InstallApp",
            "Install a kernelspec whose kernel runs inside an Apptainer/Singularity image.",
        ),
        "list": (
            "kernelprovider.cli.list.ListApp",
            "List container kernelspecs: name, display name, image, runtime, GPU mode.",
        ),
        "show": (
            "kernelprovider.cli.show.ShowApp",
            "Show a container kernelspec: jupyter kernelprovider show NAME",
        ),
        "remove": (
            "kernelprovider.cli.remove.RemoveApp",
            "Remove container kernelspecs: jupyter kernelprovider remove NAME...",
        ),
        "scan": (
            "kernelprovider.cli.scan.ScanApp",
            "Install or update one kernelspec per image found in directories.",
        ),
        "doctor": (
            "kernelprovider.cli.doctor.DoctorApp",
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
