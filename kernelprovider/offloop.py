"""Blocking filesystem work of the server, run off the event loop with a deadline."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import os
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from .errors import FilesystemTimeout

__all__ = ["in_thread", "unlink_quietly"]

T = TypeVar("T")


async def in_thread(fn: Callable[..., T], *args: Any, timeout: float, what: str) -> T:
    """``fn(*args)`` in a worker thread; FilesystemTimeout after ``timeout`` seconds.

    Called for every filesystem call a start or a lease refresh makes on a possibly shared
    filesystem (image and bind checks, state directory, connection file, lease), so a hung
    mount fails the start with a message while the server keeps serving other kernels. The
    thread itself stays stuck until the filesystem answers; the loop does not wait for it.
    ``what`` names the object for the message ("Image /x.sif", "State directory /s").

    Each call gets a daemon thread of its own, not one of the loop's shared pool: calls stuck
    on a hung mount would otherwise use up the pool's few workers, so that every later call,
    on a healthy disk too, timed out blaming its own directory; and the pool's threads are
    joined when the process ends, so a server with one stuck call could not be stopped.
    """
    loop = asyncio.get_running_loop()
    done: asyncio.Future[T] = loop.create_future()
    context = contextvars.copy_context()

    def deliver(error: BaseException | None, value: Any) -> None:
        if done.done():  # given up on (timeout) or cancelled meanwhile
            return
        if error is not None:
            done.set_exception(error)
        else:
            done.set_result(value)

    def work() -> None:
        try:
            value, error = context.run(fn, *args), None
        except BaseException as e:  # delivered to the caller, raised there
            value, error = None, e
        try:
            loop.call_soon_threadsafe(deliver, error, value)
        except RuntimeError:  # the loop closed while the filesystem hung: nobody waits
            pass

    threading.Thread(target=work, name=f"in_thread: {what}", daemon=True).start()
    try:
        return await asyncio.wait_for(done, timeout)
    except asyncio.TimeoutError:
        raise FilesystemTimeout(
            f"{what} did not answer within {timeout:.0f} s: its filesystem seems hung. The "
            "start was given up; try again later, or tell your admins which filesystem hangs."
        ) from None


def unlink_quietly(path: str) -> None:
    """Remove ``path``; a file that is gone already is fine (blocking: call it in a thread)."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
