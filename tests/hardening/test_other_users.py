"""Other users: the Jupyter side runs as an unprivileged user (kpuser1, made by
scripts/setup-users.sh); a second user (kpuser2) tries to read its kernel's key, to talk to the
kernel without it, and to plant symlinks in its state directory.

pytest runs as root and drives each user's side as a child process (kp_user_driver.py, run by
the user venv's python under that user's uid).
"""

from __future__ import annotations

import glob
import json
import os
import secrets
import select
import stat
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from slurm_cluster import cancel_jobs, squeue_jobs

from kernelprovider.kernelspec import (
    SLURM_PROVISIONER_NAME,
    build_kernelspec,
    install_kernelspec,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

DRIVER = Path(__file__).resolve().parent / "kp_user_driver.py"
# Slurm jobs of these tests are named kp-<kernel id>; this prefix is theirs alone.
PREFIX = f"kpu{os.getpid()}x{uuid.uuid4().hex[:6]}"
CELL = "import json, os; print(json.dumps({'uid': os.getuid(), 'cwd': os.getcwd()}))"


class Driver:
    """One kp_user_driver.py process running as ``user``; its stderr goes to a log file."""

    def __init__(self, users: Any, user: Any, mode: str, args: dict[str, Any]) -> None:
        self.log = users.base / f"{user.name}-{mode}-{uuid.uuid4().hex[:6]}.log"
        home = users.base / user.name
        env = {
            "HOME": user.home,
            "USER": user.name,
            "LOGNAME": user.name,
            "PATH": "/usr/local/bin:/usr/bin:/bin",
            "LANG": "C.UTF-8",
            "JUPYTER_PATH": str(users.base / "prefix" / "share" / "jupyter"),
            "JUPYTER_DATA_DIR": str(home / "data"),
            "JUPYTER_CONFIG_DIR": str(home / "config"),
            "JUPYTER_RUNTIME_DIR": str(home / "runtime"),
            "JUPYTER_PLATFORM_DIRS": "0",
        }
        if "SLURM_CONF" in os.environ:  # the same Slurm cluster as the tests' own commands
            env["SLURM_CONF"] = os.environ["SLURM_CONF"]
        with open(self.log, "wb") as err:
            self.proc = subprocess.Popen(
                [users.python, str(DRIVER), mode, json.dumps(args)],
                user=user.uid,
                group=user.gid,
                extra_groups=[],
                env=env,
                cwd=str(home) if home.exists() else "/",
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=err,
                text=True,
            )

    def event(self, timeout: float = 120) -> dict[str, Any]:
        """The next KPEVENT line (other output on stdout is skipped)."""
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            ready, _, _ = select.select([self.proc.stdout], [], [], max(left, 0))
            if not ready:
                raise AssertionError(f"no answer within {timeout} s; log:\n{self.log_tail()}")
            line = self.proc.stdout.readline()
            if not line:
                raise AssertionError(
                    f"driver ended (exit {self.proc.wait()}); log:\n{self.log_tail()}"
                )
            if line.startswith("KPEVENT "):
                return json.loads(line[len("KPEVENT ") :])

    def send(self, **cmd: Any) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()

    def stop(self, timeout: float = 60) -> None:
        if self.proc.poll() is None:
            try:
                self.send(cmd="stop")
                self.proc.wait(timeout)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()

    def log_tail(self, n: int = 40) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])


def run_as(users: Any, user: Any, mode: str, args: dict[str, Any]) -> dict[str, Any]:
    """A one-shot driver mode (read, forge): its single event."""
    d = Driver(users, user, mode, args)
    try:
        return d.event(timeout=60)
    finally:
        d.proc.wait(30)


def user_dir(users: Any, user: Any, *parts: str, mode: int = 0o755) -> Path:
    """``base/<user>/<parts>``, created and owned by ``user`` (every level below base)."""
    top = users.base / user.name
    path = top.joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    for level in [top, *(top.joinpath(*parts[: i + 1]) for i in range(len(parts)))]:
        os.chown(level, user.uid, user.gid)
    path.chmod(mode)
    return path


def install(users: Any, name: str, images: Any, **config: Any) -> str:
    """A kernelspec under the shared prefix (root-owned, readable by everyone)."""
    config.setdefault("gpu", "none")
    provisioner = config.pop("provisioner", "apptainer-provisioner")
    spec = build_kernelspec(name, {"image": str(images.test), **config}, provisioner=provisioner)
    spec["interrupt_mode"] = "message" if provisioner == SLURM_PROVISIONER_NAME else "signal"
    install_kernelspec(spec, name, prefix=str(users.base / "prefix"))
    return name


def mode_of(path: str | Path) -> tuple[int, int]:
    """(permission bits, owner); the sticky bit jupyter_client sets on the directory of each
    connection file it writes is left out."""
    st = os.lstat(path)
    return stat.S_IMODE(st.st_mode) & 0o777, st.st_uid


def start_kernel(users: Any, name: str, kernel_id: str) -> tuple[Driver, dict[str, Any]]:
    work = user_dir(users, users.victim, "work")
    d = Driver(
        users,
        users.victim,
        "kernel",
        {"kernel_name": name, "kernel_id": kernel_id, "cwd": str(work), "code": CELL},
    )
    return d, d.event(timeout=180)


def assert_forged_requests_dropped(users: Any, conn: dict[str, Any]) -> None:
    """kpuser2 knows the ports (here: is told them) but not the key: an execute_request
    signed with a wrong key, or not signed, gets no reply and runs nothing."""
    marker = users.base / users.victim.name / "work" / "FORGED"
    code = f"open({str(marker)!r}, 'w').write('forged')"
    result = run_as(
        users,
        users.other,
        "forge",
        {"conn": conn, "keys": [secrets.token_hex(16), ""], "code": code, "wait": 5},
    )
    assert result == {"event": "forged", "replies": 0, "iopub": 0, "clients": 2}
    assert not marker.exists()


def assert_other_user_cannot_read(users: Any, path: str) -> None:
    result = run_as(users, users.other, "read", {"path": path})
    assert result["ok"] is False
    assert result["type"] == "PermissionError"


def test_local_kernel_as_unprivileged_user(users, images) -> None:
    name = install(users, "kp-user-local", images)
    kernel_id = f"{PREFIX}-{uuid.uuid4().hex[:8]}"
    d, started = start_kernel(users, name, kernel_id)
    try:
        assert started["event"] == "started", started
        inside = json.loads(started["out"])
        assert inside == {
            "uid": users.victim.uid,
            "cwd": str(users.base / users.victim.name / "work"),
        }
        conn_file = started["connection_file"]
        runtime = users.base / users.victim.name / "runtime"
        assert Path(conn_file).parent == runtime
        assert mode_of(conn_file) == (0o600, users.victim.uid)
        assert mode_of(runtime) == (0o700, users.victim.uid)

        assert_other_user_cannot_read(users, conn_file)
        # the file's own mode protects the key even where the directory is searchable
        runtime.chmod(0o711)
        try:
            assert_other_user_cannot_read(users, conn_file)
        finally:
            runtime.chmod(0o700)

        assert_forged_requests_dropped(users, started["conn"])
        d.send(cmd="run", code="print(6 * 7)")
        ran = d.event()
        assert (ran["status"], ran["out"].strip()) == ("ok", "42")
    finally:
        d.stop()
    assert not Path(conn_file).exists()


@pytest.mark.slurm
def test_slurm_kernel_as_unprivileged_user(users, images, slurm_for_users) -> None:
    state = users.base / users.victim.name / "state"  # created by the provisioner
    user_dir(users, users.victim)
    name = install(
        users,
        "kp-user-slurm",
        images,
        provisioner=SLURM_PROVISIONER_NAME,
        state_dir=str(state),
        partition=slurm_for_users.default_partition,
        gpus="0",
        time_limit="20:00",
        queue_timeout=60.0,
        lease_seconds=30,
    )
    kernel_id = f"{PREFIX}-{uuid.uuid4().hex[:8]}"
    d, started = start_kernel(users, name, kernel_id)
    try:
        assert started["event"] == "started", f"{started}\n{d.log_tail()}"
        assert json.loads(started["out"])["uid"] == users.victim.uid
        jobs = squeue_jobs(f"kp-{kernel_id}")
        assert [(j["state"], j["user"]) for j in jobs] == [("RUNNING", users.victim.name)]
        conn_file = state / f"kernel-{kernel_id}.json"
        assert started["connection_file"] == str(conn_file)
        assert mode_of(state) == (0o700, users.victim.uid)
        assert mode_of(conn_file) == (0o600, users.victim.uid)
        assert_other_user_cannot_read(users, str(conn_file))
        assert_forged_requests_dropped(users, started["conn"])
        d.send(cmd="run", code="print(6 * 7)")
        assert d.event()["out"].strip() == "42"
    finally:
        d.stop()
        cancel_jobs(f"kp-{PREFIX}-")
    assert squeue_jobs(f"kp-{kernel_id}") == []


@pytest.fixture
def slurm_for_users(slurm_cluster: Any) -> Any:
    """The Slurm test cluster, usable by other users' batch jobs.

    scripts/slurm-cluster.sh creates SlurmdSpoolDir 0700 (on every start), so slurmstepd
    cannot exec a non-root user's batch script from it ("execve(): .../slurm_script:
    Permission denied"); production spools are 0755. Made searchable here until that
    script does it itself (a no-op then); nothing is stopped or restarted.
    """
    out = subprocess.run(
        ["scontrol", "show", "config"], capture_output=True, text=True, check=True
    ).stdout
    spool = next(
        line.split("=", 1)[1].strip()
        for line in out.splitlines()
        if line.startswith("SlurmdSpoolDir")
    )
    # one spool per node (".../slurmd/%n") on the multi-node test cluster
    for path in glob.glob(spool.replace("%n", "*").replace("%h", "*")):
        if stat.S_IMODE(os.stat(path).st_mode) & 0o011 != 0o011:
            os.chmod(path, 0o755)
    return slurm_cluster


def slurm_spec(users: Any, images: Any, cluster: Any, state_dir: Path, name: str) -> str:
    return install(
        users,
        name,
        images,
        provisioner=SLURM_PROVISIONER_NAME,
        state_dir=str(state_dir),
        partition=cluster.default_partition,
        gpus="0",
        time_limit="5:00",
        queue_timeout=60.0,
        lease_seconds=30,
    )


def attempt(users: Any, name: str, kernel_id: str) -> dict[str, Any]:
    """Start the kernel as the victim; return what happened; stop whatever started."""
    d, result = start_kernel(users, name, kernel_id)
    try:
        # a refused start must leave no allocation behind, even while the server still runs
        if result["event"] == "error":
            result["jobs"] = squeue_jobs(f"kp-{kernel_id}")
    finally:
        d.stop()
        cancel_jobs(f"kp-{PREFIX}-")
    return result


def as_other(users: Any, path: Path, *, is_dir: bool = False, mode: int = 0o777) -> None:
    os.lchown(path, users.other.uid, users.other.gid)
    if is_dir:
        path.chmod(mode)


@pytest.mark.slurm
@pytest.mark.parametrize("trick", ["symlink", "other-owner"])
def test_state_dir_planted_by_another_user_is_refused(
    users, images, slurm_for_users, trick: str
) -> None:
    """kpuser2 creates the victim's state directory first, in a shared sticky /tmp-like
    place: as a symlink to a directory of its own, or as its own world-writable directory.
    The victim's start fails with StateDirError; nothing lands in kpuser2's directory."""
    shared = users.base / "shared"
    shared.mkdir(mode=0o1777)
    shared.chmod(0o1777)
    trap = shared / "trap"
    trap.mkdir()
    as_other(users, trap, is_dir=True)
    state = shared / "kp-state"
    if trick == "symlink":
        state.symlink_to(trap)
        as_other(users, state)
    else:
        state.mkdir()
        as_other(users, state, is_dir=True)
    user_dir(users, users.victim)
    name = slurm_spec(users, images, slurm_for_users, state, f"kp-trap-{trick}")
    result = attempt(users, name, f"{PREFIX}-{uuid.uuid4().hex[:8]}")
    assert result["event"] == "error", result
    assert "StateDirError" in result["classes"]
    says = "is a symlink" if trick == "symlink" else f"belongs to uid {users.other.uid}"
    assert says in result["message"]
    assert result["jobs"] == []
    assert list(trap.iterdir()) == []
    if trick == "other-owner":
        assert list(state.iterdir()) == []


@pytest.mark.slurm
@pytest.mark.parametrize(
    "which",
    [
        "lease",
        "log",
        "json",
    ],
)
def test_planted_file_symlink_is_never_written_through(
    users, images, slurm_for_users, which: str
) -> None:
    """The victim's own state directory holds kernel-<id>.<which> as a symlink to a file of
    the victim's (what a planted or stale link looks like): the start is refused with a
    clear error, or goes ahead without following the link, and the file stays untouched."""
    state = user_dir(users, users.victim, "state", mode=0o700)
    precious = users.base / users.victim.name / "precious.txt"
    precious.write_text("precious\n")
    os.chown(precious, users.victim.uid, users.victim.gid)
    before = (precious.read_text(), os.stat(precious).st_mtime_ns)
    kernel_id = f"{PREFIX}-{uuid.uuid4().hex[:8]}"
    link = state / f"kernel-{kernel_id}.{which}"
    link.symlink_to(precious)
    os.lchown(link, users.victim.uid, users.victim.gid)
    name = slurm_spec(users, images, slurm_for_users, state, f"kp-link-{which}")
    result = attempt(users, name, kernel_id)
    time.sleep(1)  # Slurm writes its last words into the job's output after scancel
    assert (precious.read_text(), os.stat(precious).st_mtime_ns) == before, result
    if result["event"] == "error":
        # a named error, or the O_NOFOLLOW refusal naming the path (lease: no job submitted);
        # for json, ipykernel on the node fails to read the link's target as connection info
        assert "KernelProviderError" in result["classes"] or result["errno"] == 40, result
        assert str(link) in result["message"] or "symlink" in result["message"], result
        assert result["jobs"] == [], result
    else:
        assert not link.is_symlink()
