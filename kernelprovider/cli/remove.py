"""``jupyter kernelprovider remove NAME...``: remove container kernelspecs."""

from __future__ import annotations

from jupyter_client.kernelspec import NoSuchKernel
from jupyter_core.application import base_flags
from traitlets import Bool

from ..kernelspec import container_kernelspecs
from .base import KernelSpecApp

__all__ = ["RemoveApp"]


class RemoveApp(KernelSpecApp):
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
