"""``jupyter kernelprovider show NAME``: one kernelspec and where it lives."""

from __future__ import annotations

import json

from jupyter_client.kernelspec import NoSuchKernel

from .base import KernelSpecApp

__all__ = ["ShowApp"]


class ShowApp(KernelSpecApp):
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
