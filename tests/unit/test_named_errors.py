"""Built-in errors met during a start become named errors with a next step (one table)."""

from __future__ import annotations

import errno
import socket
from pathlib import Path
from typing import Any

import pytest
from jupyter_client.manager import AsyncKernelManager
from tornado.web import HTTPError
from traitlets import TraitError

from kernelprovider.errors import (
    HostFileError,
    HostNameError,
    ImageNotFound,
    KernelConfigError,
    KernelStartTimeout,
    named_error,
    named_errors,
)

CASES = [
    # (raised inside a hook, named class, built-in still caught, words of the next step)
    (TraitError("binds: 'rel' is not absolute"), KernelConfigError, ValueError, "doctor k1"),
    (ValueError("bad template {x}"), KernelConfigError, ValueError, "kernel_provisioner"),
    (
        socket.gaierror(socket.EAI_NONAME, "Name or service not known"),
        HostNameError,
        OSError,
        "kernel_ip",
    ),
    (TimeoutError("fsync"), KernelStartTimeout, TimeoutError, "admins"),
    (
        OSError(errno.ENOSPC, "No space left on device", "/state"),
        HostFileError,
        OSError,
        "free space",
    ),
    (
        PermissionError(errno.EACCES, "Permission denied", "/x"),
        HostFileError,
        OSError,
        "permissions",
    ),
]


@pytest.mark.parametrize(("error", "named", "builtin", "step"), CASES)
def test_each_builtin_maps_to_a_named_error(error, named, builtin, step) -> None:
    with pytest.raises(named) as info:
        with named_errors("k1"):
            raise error
    e = info.value
    assert isinstance(e, builtin) and isinstance(e, HTTPError)  # JupyterLab shows its text
    assert "k1" in str(e) and step in str(e)
    assert e.__cause__ is error


def test_named_errors_pass_unchanged() -> None:
    original = ImageNotFound("Image /x.sif not found (kernel k1).")
    with pytest.raises(ImageNotFound) as info:
        with named_errors("k1"):
            raise original
    assert info.value is original
    assert named_error(original, "k1") is original


def test_other_errors_are_not_touched() -> None:
    with pytest.raises(KeyError):
        with named_errors("k1"):
            raise KeyError("x")
    assert named_error(KeyError("x"), "k1") is None


async def test_a_kernel_without_image_fails_with_a_named_error(
    install_kernel: Any, jupyter_dirs: dict[str, Path]
) -> None:
    install_kernel("noimage", "")  # no runtime needed: the start ends before it
    km = AsyncKernelManager(kernel_name="noimage")
    with pytest.raises(KernelConfigError, match="noimage") as info:
        await km.start_kernel(cwd=str(jupyter_dirs["work"]))
    assert "kernel_provisioner" in str(info.value)
    assert not list(jupyter_dirs["runtime"].glob("kernel-*.json"))  # the key is gone
