"""One flight per key: concurrent callers of the same slow lookup share one run of it."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable
from typing import Any, TypeVar

__all__ = ["shared"]

_T = TypeVar("_T")
_inflight: dict[tuple[int, Hashable], asyncio.Future[Any]] = {}


async def shared(key: Hashable, factory: Callable[[], Awaitable[_T]]) -> _T:
    """Await ``factory()``, or the run of it already under way for ``key`` on this loop.

    Called by the cached lookups of a start (runtime version, host facts, image facts): 16
    kernels started at once on a cold cache run one ``apptainer inspect``, not 16. A caller
    that is cancelled leaves the run to the others; its result or error goes to all of them.
    """
    loop = asyncio.get_running_loop()
    slot = (id(loop), key)
    fut = _inflight.get(slot)
    if fut is None or fut.get_loop() is not loop:
        fut = asyncio.ensure_future(factory())
        _inflight[slot] = fut

        def _forget(done: asyncio.Future[Any]) -> None:
            if _inflight.get(slot) is done:
                del _inflight[slot]

        fut.add_done_callback(_forget)
    return await asyncio.shield(fut)
