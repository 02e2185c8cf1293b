"""Entry points: :func:`image_facts` (blocking) and :func:`image_facts_async` (the event loop).

One ``apptainer inspect`` for labels and environment, then, for what is still unknown, one
``exec`` inside the image (:mod:`.inside`), or for a sandbox directory
:mod:`kernelprovider._inside_frameworks` on this host; results go through :mod:`.cache`.
Subprocesses run in a session of their own and are killed as a group after ``timeout``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import signal
from pathlib import Path

from .. import _inside_frameworks
from ..aio import shared
from ..compat import ImageFacts
from ..errors import NotAContainerImage, RuntimeNotFound
from .cache import _cache_get, _cache_path, _cache_put, _copy, _image_key, _image_name, _named
from .inside import (
    _merge_inside,
    _needs_inside,
    apply_framework_scan,
    inside_argv,
    parse_frameworks_output,
    parse_inside_output,
)
from .metadata import facts_from_metadata, inspect_argv, parse_inspect_json

log = logging.getLogger(__name__)

#: Seconds one ``inspect`` or ``exec`` may take before it is given up.
DEFAULT_TIMEOUT = 60.0


def _resolve_runtime(runtime: str) -> str:
    names = ("apptainer", "singularity") if runtime in ("", "auto") else (runtime,)
    for name in names:
        found = shutil.which(name)
        if found:
            return found
    raise RuntimeNotFound(
        f"Container runtime {runtime!r} not found or not executable, so the image's CUDA "
        "version cannot be read. Install Apptainer or set ContainerProvisioner.runtime to its "
        "full path."
    )


def _inspect_failed(runtime: str, path: str, rc: int, stderr: str) -> NotAContainerImage:
    last = next((ln.strip() for ln in reversed(stderr.splitlines()) if ln.strip()), "")
    return NotAContainerImage(
        f"{os.path.basename(runtime)} inspect could not read {path} (exit {rc}: {last[:300]}). "
        f"Check that it is a SIF/squashfs image or a sandbox directory, e.g. with "
        f"'{os.path.basename(runtime)} inspect {path}'."
    )


def _timed_out(what: str, path: str, timeout: float) -> TimeoutError:
    return TimeoutError(
        f"'{what}' did not answer within {timeout:g} s for {path}; its filesystem may be slow "
        "or hung. Try again, or check the filesystem the image is on."
    )


def image_facts(
    path: str,
    runtime: str = "apptainer",
    *,
    timeout: float = DEFAULT_TIMEOUT,
    look_inside: bool = True,
    use_disk_cache: bool = True,
    cache_file: str | os.PathLike[str] | None = None,
) -> ImageFacts:
    """CUDA, cuDNN and TensorFlow versions of the image at ``path`` (blocking).

    Called by ``jupyter kernelprovider scan/doctor`` and, in a thread, by anything that is
    not async. ``runtime`` is a command name, an absolute path or "auto". ``look_inside``
    allows one ``exec`` for facts the labels and environment lack. Raises ImageNotFound,
    ImageNotReadable, NotAContainerImage, RuntimeNotFound or TimeoutError.
    """
    # One implementation: the async one, on a loop of its own (the CLI has none running).
    return asyncio.run(
        image_facts_async(
            path,
            runtime,
            timeout=timeout,
            look_inside=look_inside,
            use_disk_cache=use_disk_cache,
            cache_file=cache_file,
        )
    )


def _kill_group(pid: int) -> None:
    # The runtime runs in a session of its own (start_new_session), so its helpers
    # (starter, squashfuse) go with it and cannot hold our pipes open past the timeout.
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


async def _run_async(argv: list[str], timeout: float) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        start_new_session=True,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except asyncio.TimeoutError:
        _kill_group(proc.pid)
        if proc.returncode is None:
            proc.kill()
        await proc.wait()
        raise
    return proc.returncode or 0, out.decode(errors="replace"), err.decode(errors="replace")


async def image_facts_async(
    path: str,
    runtime: str = "apptainer",
    *,
    timeout: float = DEFAULT_TIMEOUT,
    look_inside: bool = True,
    use_disk_cache: bool = True,
    cache_file: str | os.PathLike[str] | None = None,
) -> ImageFacts:
    """Like :func:`image_facts`, for the provisioner's ``pre_launch``: subprocesses through
    ``asyncio.create_subprocess_exec``, file-system work in a thread; never blocks the loop.
    """
    key = await asyncio.to_thread(_image_key, path)
    disk = _cache_path(cache_file, use_disk_cache)
    cached = await asyncio.to_thread(_cache_get, key, look_inside, disk)
    if cached is None:
        # Kernels started together on a cold cache share one inspect and one exec.
        cached = _copy(
            await shared(
                ("image-facts", key, look_inside, disk, runtime, timeout),
                lambda: _read_facts(path, key, runtime, timeout, look_inside, disk),
            )
        )
    return _named(cached, path)


async def _read_facts(
    path: str,
    key: tuple[str, int, int],
    runtime: str,
    timeout: float,
    look_inside: bool,
    disk: Path | None,
) -> ImageFacts:
    exe = await asyncio.to_thread(_resolve_runtime, runtime)
    try:
        rc, out, err = await _run_async(inspect_argv(exe, key[0]), timeout)
    except asyncio.TimeoutError as e:
        raise _timed_out(f"{os.path.basename(exe)} inspect", path, timeout) from e
    if rc != 0:
        raise _inspect_failed(exe, path, rc, err)
    facts = _facts_from_inspect(exe, path, out, err)
    if look_inside:
        # A sandbox directory's files are read from here; a SIF's through one exec.
        sandbox = os.path.isdir(key[0])
        if _needs_inside(facts) or not sandbox:
            try:
                argv = inside_argv(exe, key[0], frameworks=not sandbox)
                _, inner, _ = await _run_async(argv, timeout)
                _merge_inside(facts, parse_inside_output(inner))
                scan = None if sandbox else parse_frameworks_output(inner)
                if scan is not None:
                    apply_framework_scan(facts, scan, "the image's Python")
            except (OSError, asyncio.TimeoutError) as e:
                log.debug("Could not read version files inside %s: %s", path, e)
        if sandbox:
            try:
                scan = await asyncio.wait_for(
                    asyncio.to_thread(_inside_frameworks.scan, key[0]), timeout
                )
                apply_framework_scan(facts, scan, "the sandbox's files")
            except (OSError, ValueError, asyncio.TimeoutError) as e:
                log.debug("Could not read the frameworks of %s: %s", path, e)
    await asyncio.to_thread(_cache_put, key, look_inside, disk, facts)
    return facts


def _facts_from_inspect(exe: str, path: str, stdout: str, stderr: str) -> ImageFacts:
    try:
        labels, env = parse_inspect_json(stdout)
    except ValueError as e:
        raise _inspect_failed(exe, path, 0, stderr or str(e)) from e
    return facts_from_metadata(_image_name(path), labels, env, path=path)
