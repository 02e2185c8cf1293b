"""A FUSE passthrough filesystem that hangs on demand, like a hard NFS mount whose server left.

Run as a program (``python hangfs.py BACKING MOUNTPOINT FLAG``), it mirrors the directory
BACKING at MOUNTPOINT in the foreground. While the file FLAG exists (it lives outside the
mount), every operation waits until FLAG is gone before it touches BACKING: a process that
stats, opens or writes a file there blocks in the operating system's kernel, exactly as on
a hung network filesystem. Removing FLAG lets every waiting call finish normally.

Tests use it through :class:`HangFS` (the ``hangfs`` fixture of tests/conftest.py), which
mounts at a temporary directory, waits until the mount is listed, and always releases and
unmounts (``fusermount3 -u -z``) at teardown, so no thread stays blocked and no mount stays.

Needs the Python package mfusepy (the ``test`` extra), libfuse 3 and fusermount3 (Debian
packages fuse3 and libfuse3-3, installed by scripts/setup-testenv.sh) and /dev/fuse.
"""

from __future__ import annotations

import asyncio
import errno
import os
import shutil
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from needs import need

__all__ = ["HangFS", "LoopWatch", "hangfs", "mounted"]

#: How often a blocked operation looks at the flag again (the filesystem's side, not a test's).
POLL = 0.05


def mounted(mountpoint: str | Path) -> bool:
    """Whether ``mountpoint`` is a mount point, read from /proc/self/mountinfo.

    Never touches the mount itself (``os.path.ismount`` would stat it, and hang with it).
    """
    target = os.path.realpath(mountpoint)
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            if len(fields) > 4 and _unescape(fields[4]) == target:
                return True
    return False


def _process_of(tid: int) -> int:
    """The process (thread group) of thread ``tid``: FUSE names the calling thread."""
    try:
        with open(f"/proc/{tid}/status") as f:
            for line in f:
                if line.startswith("Tgid:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return tid


def _lines(path: Path) -> list[str]:
    try:
        return path.read_text().splitlines()
    except FileNotFoundError:
        return []


def _unescape(path: str) -> str:
    for code, char in (("\\040", " "), ("\\011", "\t"), ("\\012", "\n"), ("\\134", "\\")):
        path = path.replace(code, char)
    return path


class HangFS:
    """One hangfs mount run as a subprocess; ``hang()`` and ``release()`` flip its flag.

    Created by the ``hangfs`` fixture; :meth:`stop` (its teardown) releases every blocked
    call, unmounts lazily and waits for the filesystem process to end.
    """

    def __init__(self, base: Path) -> None:
        self.backing = base / "backing"
        self.mountpoint = base / "mnt"
        self.flag = base / "hang.flag"
        self.log = base / "hangfs.log"
        self.waited_log = base / "waited.log"  # written by the filesystem process
        self.resumed_log = base / "resumed.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30) -> None:
        """Mount and return once /proc lists the mount (RuntimeError with the log if not)."""
        self.backing.mkdir(parents=True, exist_ok=True)
        self.mountpoint.mkdir(parents=True, exist_ok=True)
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, __file__, str(self.backing), str(self.mountpoint), str(self.flag)],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + timeout
        while not mounted(self.mountpoint):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(
                    f"hangfs did not mount {self.mountpoint} (exit {self.proc.returncode}): "
                    f"{self.log.read_text(errors='replace')[-2000:]}"
                )
            time.sleep(POLL)

    def hang(self) -> None:
        """From now on every operation on the mount blocks until :meth:`release`."""
        self.flag.touch()

    def release(self) -> None:
        """Let every blocked operation go on; new ones answer at once."""
        self.flag.unlink(missing_ok=True)

    def waited(self, pid: int | None = None) -> list[str]:
        """Paths (relative to the mount, with a leading /) of every operation that found
        the filesystem hung, in order, of process ``pid`` or of every process; an operation
        waits until :meth:`release`. The path is the one the operating system asked for
        first: a lookup of a parent directory hangs before the file itself is reached."""
        rows = [line.split(" ", 1) for line in _lines(self.waited_log)]
        return [path for who, path in rows if pid is None or who == str(pid)]

    def pending(self) -> int:
        """How many operations still wait (after :meth:`release`, until they are answered)."""
        return len(_lines(self.waited_log)) - len(_lines(self.resumed_log))

    def stop(self, timeout: float = 30) -> None:
        """Release, then end the filesystem process (SIGTERM: libfuse unmounts on its way
        out); if the mount is still there, unmount it lazily (``fusermount3 -u -z``: a
        caller still inside lets go on its own) and, as a last resort, kill the process."""
        self.release()
        deadline = time.monotonic() + timeout
        while self.pending() and time.monotonic() < deadline:
            time.sleep(POLL)  # let every waiting caller have its answer before the end
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                pass
        if mounted(self.mountpoint):
            subprocess.run(
                ["fusermount3", "-u", "-z", str(self.mountpoint)],
                capture_output=True,
                timeout=timeout,
                check=False,
            )
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=timeout)


class LoopWatch:
    """Checks, from a thread of its own, that the running asyncio loop stays free.

    ``with LoopWatch(fs):`` inside a coroutine: every ``every`` seconds the thread asks the
    loop to run a callback. If the loop has not run it after ``limit`` seconds, the loop is
    blocked (on the hung filesystem, most likely): the watch records where the loop's thread
    is stuck, releases ``fs`` so the test goes on instead of hanging, and :meth:`check`
    (called on exit) fails the test with that stack, which names the blocking call.
    """

    def __init__(self, fs: HangFS, limit: float = 20.0, every: float = 0.5) -> None:
        self.fs, self.limit, self.every = fs, limit, every
        self.blocked_at: str | None = None
        self._stop = threading.Event()

    def __enter__(self) -> LoopWatch:
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self._thread = threading.Thread(target=self._watch, name="loop-watch", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.check()  # a blocked loop explains whatever else went wrong: report it first

    def _watch(self) -> None:
        while not self._stop.wait(self.every):
            beat = threading.Event()
            self._loop.call_soon_threadsafe(beat.set)
            deadline = time.monotonic() + self.limit
            while not beat.wait(POLL):
                if self._stop.is_set():  # __exit__ runs on the loop: it cannot beat now
                    return
                if time.monotonic() > deadline:
                    frame = sys._current_frames().get(self._loop_thread)
                    self.blocked_at = "".join(traceback.format_stack(frame)) if frame else "?"
                    self.fs.release()
                    return

    def check(self) -> None:
        """Fail if the loop was found blocked."""
        assert self.blocked_at is None, (
            f"the event loop was blocked for over {self.limit:.0f} s while {self.fs.mountpoint} "
            f"hung; the loop's thread was here:\n{self.blocked_at}"
        )


def need_fuse() -> None:
    """:func:`needs.need` what a hangfs mount takes: /dev/fuse, fusermount3, mfusepy."""
    if not os.path.exists("/dev/fuse"):
        need("/dev/fuse is missing", "fuse")
    if not shutil.which("fusermount3"):
        need("fusermount3 is not installed", "fuse")
    try:
        import mfusepy  # noqa: F401 - loads libfuse too
    except (ImportError, OSError) as e:
        need(f"mfusepy or libfuse 3 cannot be loaded ({e})", "fuse")


@pytest.fixture
def hangfs(tmp_path: Path) -> Iterator[HangFS]:
    """A mounted :class:`HangFS` (not hung yet); released and unmounted at teardown, which
    fails the test if the mount stays."""
    need_fuse()
    fs = HangFS(tmp_path / "hangfs")
    fs.start()
    try:
        yield fs
    finally:
        fs.stop()
    assert not mounted(fs.mountpoint), f"{fs.mountpoint} is still mounted after teardown"
    assert fs.proc is not None and fs.proc.returncode == 0, fs.log.read_text(errors="replace")


def _serve(backing: str, mountpoint: str, flag: str) -> None:
    """The filesystem process: passthrough of ``backing`` gated by ``flag``."""
    import mfusepy as fuse

    waited = os.path.join(os.path.dirname(os.path.abspath(flag)), "waited.log")
    resumed = os.path.join(os.path.dirname(os.path.abspath(flag)), "resumed.log")

    class Passthrough(fuse.Operations):  # type: ignore[misc]
        use_ns = True

        def __init__(self) -> None:
            self.root = os.path.realpath(backing)

        def _path(self, path: str) -> str:
            if os.path.exists(flag):
                with open(waited, "a") as f:  # outside the mount: tests read who waited
                    f.write(f"{_process_of(fuse.fuse_get_context()[2])} {path}\n")
                while os.path.exists(flag):  # hung: wait as a dead NFS server's client would
                    time.sleep(POLL)
                with open(resumed, "a") as f:
                    f.write(path + "\n")
            return os.path.join(self.root, path.lstrip("/"))

        def access(self, path: str, amode: int) -> int:
            if not os.access(self._path(path), amode):
                raise fuse.FuseOSError(errno.EACCES)
            return 0

        def getattr(self, path: str, fh: int | None = None) -> dict[str, Any]:
            st = os.fstat(fh) if fh is not None else os.lstat(self._path(path))
            keys = ("st_mode", "st_nlink", "st_uid", "st_gid", "st_size", "st_ino", "st_dev")
            attrs: dict[str, Any] = {k: getattr(st, k) for k in keys}
            attrs.update(st_atime=st.st_atime_ns, st_mtime=st.st_mtime_ns, st_ctime=st.st_ctime_ns)
            return attrs

        def readdir(self, path: str, fh: int) -> list[str]:
            return [".", "..", *os.listdir(self._path(path))]

        def readlink(self, path: str) -> str:
            return os.readlink(self._path(path))

        def mkdir(self, path: str, mode: int) -> int:
            os.mkdir(self._path(path), mode)
            return 0

        def rmdir(self, path: str) -> int:
            os.rmdir(self._path(path))
            return 0

        def unlink(self, path: str) -> int:
            os.unlink(self._path(path))
            return 0

        def symlink(self, target: str, source: str) -> int:
            os.symlink(source, self._path(target))
            return 0

        def link(self, target: str, source: str) -> int:
            os.link(self._path(source), self._path(target))
            return 0

        def rename(self, old: str, new: str) -> int:
            os.rename(self._path(old), self._path(new))
            return 0

        def chmod(self, path: str, mode: int) -> int:
            os.chmod(self._path(path), mode)
            return 0

        def chown(self, path: str, uid: int, gid: int) -> int:
            os.chown(self._path(path), uid, gid)
            return 0

        def utimens(self, path: str, times: tuple[int, int] | None = None) -> int:
            real = self._path(path)
            if times is None:
                os.utime(real)
                return 0
            # libfuse passes UTIME_NOW/UTIME_OMIT in tv_nsec (tv_sec undefined) and mfusepy
            # folds them into nanoseconds: (2**30 - 1) or (2**30 - 2) modulo 10**9.
            st = os.lstat(real)
            now = time.time_ns()
            old = (st.st_atime_ns, st.st_mtime_ns)
            special = {(2**30 - 1) % 10**9: None, (2**30 - 2) % 10**9: "omit"}
            ns = []
            for t, before in zip(times, old, strict=True):
                kind = special.get(t % 10**9, t)
                ns.append(now if kind is None else before if kind == "omit" else t)
            os.utime(real, ns=(ns[0], ns[1]))
            return 0

        def truncate(self, path: str, length: int, fh: int | None = None) -> int:
            os.truncate(fh if fh is not None else self._path(path), length)
            return 0

        def open(self, path: str, flags: int) -> int:
            return os.open(self._path(path), flags)

        def create(self, path: str, mode: int, fi: Any = None) -> int:
            return os.open(self._path(path), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)

        def read(self, path: str, size: int, offset: int, fh: int) -> bytes:
            self._path(path)
            return os.pread(fh, size, offset)

        def write(self, path: str, data: bytes, offset: int, fh: int) -> int:
            self._path(path)
            return os.pwrite(fh, data, offset)

        def flush(self, path: str, fh: int) -> int:
            self._path(path)
            return 0

        def fsync(self, path: str, datasync: int, fh: int) -> int:
            self._path(path)
            os.fsync(fh)
            return 0

        def release(self, path: str, fh: int) -> int:
            os.close(fh)
            return 0

        def statfs(self, path: str) -> dict[str, int]:
            sv = os.statvfs(self._path(path))
            keys = ("f_bavail", "f_bfree", "f_blocks", "f_bsize", "f_favail", "f_ffree")
            return {k: getattr(sv, k) for k in (*keys, "f_files", "f_flag", "f_frsize")}

    # No kernel caches: every stat, lookup and open reaches the (possibly hung) filesystem.
    try:
        fuse.FUSE(
            Passthrough(),
            mountpoint,
            foreground=True,
            fsname="hangfs",
            attr_timeout=0,
            entry_timeout=0,
            negative_timeout=0,
        )
    except RuntimeError as e:
        # libfuse >= 3.13 answers 8 when its loop ended on SIGTERM (HangFS.stop): a clean end
        if str(e) != "8":
            raise


if __name__ == "__main__":
    _serve(*sys.argv[1:4])
