"""``python -m kernelprovider.app`` and the ``jupyter-kernelprovider`` entry point.

The command lives in :mod:`kernelprovider.cli` (one module per subcommand); this module only
keeps the old import path working. Nothing in the library imports it.
"""

from __future__ import annotations

from .cli.install import InstallApp
from .cli.list import ListApp
from .cli.main import KernelProviderApp, main
from .cli.remove import RemoveApp
from .cli.show import ShowApp
from .kernelspec import name_from_image

__all__ = [
    "KernelProviderApp",
    "InstallApp",
    "ListApp",
    "ShowApp",
    "RemoveApp",
    "name_from_image",
    "main",
]

if __name__ == "__main__":
    main()
