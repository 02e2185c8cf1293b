"""The one skip helper: a test that needs a real part (runtime, Slurm, hub, browser, root)
skips without it, and fails under ``KP_REQUIRE_RUNTIME=1`` (``make test``), where a missing
part is a broken test environment. GPU tests keep their own rule: they skip on a machine
without an NVIDIA driver.

A plain module (tests/ is on sys.path through the rootdir conftest); tests/conftest.py
re-exports it.
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType
from typing import NoReturn

import pytest

__all__ = ["REQUIRE", "need", "need_module", "need_root"]

REQUIRE = os.environ.get("KP_REQUIRE_RUNTIME") == "1"

#: How to provide each part, quoted in the failure.
SETUP = {
    "runtime": "run 'make testenv' or 'bash scripts/setup-testenv.sh' as root",
    "slurm": "run 'sudo scripts/slurm-cluster.sh start'",
    "hub": "run 'scripts/setup-hub.sh' as root",
    "browser": "run 'scripts/setup-hub.sh' as root",
    "root": "run the tests as root, as 'make test' does",
    "users": "run 'scripts/setup-users.sh' as root",
    "fuse": "run 'make venv' (mfusepy) and 'make testenv' (fuse3, /dev/fuse)",
}


def need(what: str, part: str = "runtime") -> NoReturn:
    """Skip the test because ``what`` is missing, or fail under KP_REQUIRE_RUNTIME=1."""
    if REQUIRE:
        pytest.fail(f"{what} ({SETUP[part]})")
    pytest.skip(what, allow_module_level=True)


def need_module(name: str, part: str) -> ModuleType:
    """``import name``, or :func:`need` it (in place of pytest.importorskip)."""
    try:
        return importlib.import_module(name)
    except ImportError:
        need(f"Python module {name} is not installed", part)


def need_root(what: str) -> None:
    """:func:`need` root for ``what`` unless the tests run as root."""
    if os.geteuid() != 0:
        need(f"{what} needs root", "root")
