"""The ``jupyter kernelprovider`` command: one module per subcommand on a shared base."""

from __future__ import annotations

__all__ = ["main"]


def main() -> None:
    """Entry point of ``jupyter kernelprovider``."""
    from .main import KernelProviderApp

    KernelProviderApp.launch_instance()
