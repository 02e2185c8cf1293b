"""The state directory the server and the nodes share: its checks, the kernel's files in it."""

from __future__ import annotations

import contextlib
import getpass
import json
import os
import pwd
import stat
import threading
import time
from collections.abc import Iterable, Mapping
from typing import Any

from ..errors import (
    StateDirError,
)
from ..offloop import unlink_quietly


def ensure_state_dir(path: str) -> str:
    """Create or check the per-user state directory: a real directory, ours, mode 0700.

    Refuses a symlink or a directory another user owns or can read, since the kernel's
    connection file (with its key) is written there.
    """
    try:
        os.makedirs(path, mode=0o700, exist_ok=True)
        st = os.lstat(path)
    except OSError as e:
        raise StateDirError(
            f"Cannot create the state directory {path}: {e.strerror}. Set "
            "SlurmProvisioner.state_dir to a writable directory on a filesystem the GPU "
            "nodes share."
        ) from e
    if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode):
        raise StateDirError(f"State directory {path} is a symlink or not a directory; refusing.")
    if st.st_uid != os.getuid():
        raise StateDirError(
            f"State directory {path} belongs to uid {st.st_uid}, not to you; refusing. "
            "Remove it or set SlurmProvisioner.state_dir."
        )
    if stat.S_IMODE(st.st_mode) & 0o7777 != 0o700:
        try:
            os.chmod(path, 0o700)
        except OSError as e:
            raise StateDirError(
                f"State directory {path} has mode {stat.S_IMODE(st.st_mode):o}, not 700, and "
                f"cannot be changed ({e.strerror}); fix its permissions."
            ) from e
    # A real write, not os.access: root passes access() on a read-only or full filesystem.
    # One name per thread: starts run this check concurrently, each in a thread of its own.
    probe = os.path.join(path, f".write-test-{os.getpid()}-{threading.get_ident()}")
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        try:
            os.write(fd, b"kernelprovider state directory write test\n" * 4)
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as e:
        raise StateDirError(
            f"Cannot write to the state directory {path}: {e.strerror}. Free space there or "
            "set SlurmProvisioner.state_dir to a writable directory the GPU nodes share."
        ) from e
    finally:
        with contextlib.suppress(OSError):  # EROFS, not ENOENT, on a read-only filesystem
            os.unlink(probe)
    return path


def check_state_files(paths: Iterable[str]) -> None:
    """Refuse to use a kernel's state file that someone planted as a symlink or non-file.

    Called before a job is submitted: sbatch's --output follows symlinks, so a planted
    kernel-<id>.log link would let Slurm write into another user's file.
    """
    for path in paths:
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            continue
        if stat.S_ISLNK(st.st_mode) or not stat.S_ISREG(st.st_mode) or st.st_uid != os.getuid():
            raise StateDirError(
                f"{path} is a symlink, not a regular file, or not yours; refusing to use it. "
                "Remove it (someone may be trying to make Slurm write into their file)."
            )


def tail_file(path: str, lines: int = 30) -> str:
    """The last lines of a log file ('' if it does not exist)."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 16384))
            data = f.read().decode(errors="replace")
    except OSError:
        return ""
    # blank lines (srun and apptainer end with some) must not use up the budget
    return "\n".join([line for line in data.splitlines() if line.strip()][-lines:])


def _read_connection_file(path: str) -> dict[str, Any] | None:
    """The connection info a kernel wrote, or None while it is absent or half-written."""
    try:
        with open(path) as f:
            info = json.load(f)
    except (OSError, ValueError):
        return None
    needed = ("key", "ip", "shell_port", "iopub_port", "stdin_port", "control_port", "hb_port")
    return info if all(k in info for k in needed) else None


def _write_connection_file(path: str, info: Mapping[str, Any]) -> None:
    """Write connection info as the kernel would (0600, no symlink followed)."""
    unlink_quietly(path)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(dict(info), f, indent=2)


def _user() -> str:
    """The user Slurm sees for this process (by uid, not by $USER)."""
    try:
        return pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        return getpass.getuser()


def _signal_group(pid: int | None, signum: int) -> None:
    if pid:
        try:
            os.killpg(pid, signum)
        except OSError:
            pass


def prune_old_logs(state_dir: str, days: float = 7) -> None:
    """Remove kernel logs older than ``days`` from the state directory; called (in a thread)
    by each Slurm start, so a server's logs do not pile up there."""
    cutoff = time.time() - days * 86400
    try:
        for entry in os.scandir(state_dir):
            if entry.name.endswith(".log") and entry.stat().st_mtime < cutoff:
                unlink_quietly(entry.path)
    except OSError:
        pass
