"""Blocking filesystem work of the server, run off the event loop with a deadline."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, TypeVar

from .errors import FilesystemTimeout

__all__ = ["in_thread"]

T = TypeVar("T")


async def in_thread(fn: Callable[..., T], *args: Any, timeout: float, what: str) -> T:
    """``fn(*args)`` in a worker thread; FilesystemTimeout after ``timeout`` seconds.

    Called for every filesystem call a start or a lease refresh makes on a possibly shared
    filesystem (image and bind checks, state directory, connection file, lease), so a hung
    mount fails the start with a message while the server keeps serving other kernels. The
    thread itself stays stuck until the filesystem answers; the loop does not wait for it.
    ``what`` names the object for the message ("Image /x.sif", "State directory /s").
    """
    try:
        return await asyncio.wait_for(asyncio.to_thread(fn, *args), timeout)
    except asyncio.TimeoutError:
        raise FilesystemTimeout(
            f"{what} did not answer within {timeout:.0f} s: its filesystem seems hung. The "
            "start was given up; try again later, or tell your admins which filesystem hangs."
        ) from None
