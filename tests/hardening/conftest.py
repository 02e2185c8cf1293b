"""Fixtures of the hardening tests: the canary that proves no shell ran, the unprivileged users."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from needs import need_root

ROOT = Path(__file__).resolve().parents[2]
SETUP_USERS = ROOT / "scripts" / "setup-users.sh"
USER_VENV = Path(os.environ.get("KP_USER_VENV", ROOT / "build" / "venv-user"))
TEST_USERS = tuple(os.environ.get("KP_TEST_USERS", "kpuser1 kpuser2").split())


@dataclass(frozen=True)
class TestUser:
    """An unprivileged account made by scripts/setup-users.sh."""

    name: str
    uid: int
    gid: int
    home: str

    __test__ = False  # not a test class, whatever its name says


@dataclass(frozen=True)
class Users:
    victim: TestUser  # the one whose kernel runs
    other: TestUser  # the one who tries to get at it
    python: str  # the user venv's python (runnable by both)
    base: Path  # a root-owned 0755 scratch directory for this test


def _user(name: str) -> TestUser:
    pw = pwd.getpwnam(name)
    return TestUser(pw.pw_name, pw.pw_uid, pw.pw_gid, pw.pw_dir)


@pytest.fixture(scope="session")
def _users_ready() -> tuple[TestUser, TestUser, str]:
    """Run scripts/setup-users.sh (idempotent, ~0.5 s once done) and return the users."""
    need_root("switching to the unprivileged test users")
    proc = subprocess.run(
        ["bash", str(SETUP_USERS)], capture_output=True, text=True, timeout=900, check=False
    )
    if proc.returncode != 0:
        pytest.fail(f"{SETUP_USERS} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    victim, other = (_user(n) for n in TEST_USERS[:2])
    return victim, other, str(USER_VENV / "bin" / "python")


@pytest.fixture
def users(_users_ready: tuple[TestUser, TestUser, str]) -> Iterator[Users]:
    """The two test users and a scratch directory both can reach (not under pytest's 0700
    tmp_path); removed afterwards."""
    victim, other, python = _users_ready
    base = Path(tempfile.mkdtemp(prefix="kp-users-", dir="/tmp"))
    base.chmod(0o755)
    try:
        yield Users(victim, other, python, base)
    finally:
        shutil.rmtree(base, ignore_errors=True)
