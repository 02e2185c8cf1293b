"""The real Slurm test cluster for tests: a session fixture and squeue helpers.

Nothing here fakes Slurm: the fixture starts the cluster with ``scripts/slurm-cluster.sh``
(root only; otherwise it uses a cluster that is already up) and every helper runs the real
``squeue``/``scancel``. Use it from a conftest with::

    pytest_plugins = ["slurm_cluster"]          # tests/ is on sys.path (rootdir conftest)

or ``from slurm_cluster import slurm_cluster, squeue_jobs``. See docs/slurm-testenv.md for
what the cluster looks like and the flags measured against it.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from needs import REQUIRE, need

from kernelprovider.slurm import FINISHED_STATES

__all__ = [
    "SlurmCluster",
    "cancel_jobs",
    "cluster_facts",
    "dead_controller_conf",
    "require_multi_node",
    "slurm_cluster",
    "squeue_jobs",
    "wait_job_state",
]

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "slurm-cluster.sh"

# Same switch as conftest: under `make test` a missing cluster is a broken test environment.

# squeue fields, in order; the separator is one no job name here contains.
_SEP = "\x1f"
_FIELDS = {
    "id": "%i",
    "name": "%j",
    "state": "%T",
    "reason": "%r",
    "node": "%N",
    "partition": "%P",
    "user": "%u",
    "start": "%S",
    "time_limit": "%l",
}


@dataclass(frozen=True)
class SlurmCluster:
    """What the running test cluster offers, read back from Slurm itself.

    Multi-node mode (the default): the compute nodes (``nodes``) live in network namespaces
    of their own, with their own addresses and hostnames; the server (this process) is on
    ``server_host``. Single-node mode (KP_SLURM_NODES=1): ``nodes == (server_host,)``.
    """

    node: str  # the first compute node of the default partition (squeue %N, scontrol)
    node_addr: str  # its NodeAddr from `scontrol show node`
    nodes: tuple[str, ...]  # every node of the default partition
    node_addrs: dict[str, str]  # NodeAddr of every node of the cluster
    server_host: str  # short hostname of the machine that runs slurmctld and the tests
    partitions: tuple[str, ...]  # every partition, default first
    default_partition: str  # "gpu"
    shared_partition: str  # "gpu-shared": UP, a second choice
    held_partition: str  # "held": always DOWN; jobs there stay PENDING (PartitionDown)
    gpus: int  # gres gpu count on the node
    cpus: int  # CPUs Slurm schedules (more than the machine has, on purpose)
    local_partition: str | None = None  # "local": a node on the server's host (multi-node)
    firewalled_partition: str | None = None  # "firewalled": kpwall1, drops inbound TCP
    firewalled_node: str | None = None

    @property
    def multi_node(self) -> bool:
        """True when the default partition's nodes are hosts other than the server's."""
        return self.server_host not in self.nodes


def require_multi_node(cluster: SlurmCluster) -> None:
    """Skip (fail under KP_REQUIRE_RUNTIME=1, unless KP_SLURM_NODES=1 chose it) a test that
    needs compute nodes other than the server's host."""
    if cluster.multi_node and cluster.firewalled_partition and cluster.local_partition:
        return
    what = "the Slurm test cluster is single-node (start it with KP_SLURM_NODES=2 or more)"
    if REQUIRE and os.environ.get("KP_SLURM_NODES") != "1":
        pytest.fail(what)
    pytest.skip(what)


def _run(argv: list[str], timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)


def _need(what: str) -> None:
    need(what, "slurm")


def _cluster_up() -> bool:
    try:
        ping = _run(["scontrol", "ping"], timeout=15)
        if ping.returncode != 0 or "UP" not in ping.stdout:
            return False
        states = _run(["sinfo", "-h", "-o", "%T"], timeout=15).stdout.split()
    except (OSError, subprocess.TimeoutExpired):
        return False
    return any(s.rstrip("*~#$@+").lower() in {"idle", "mixed", "allocated"} for s in states)


def cluster_facts() -> SlurmCluster:
    """Read nodes, partitions and GRES of the running cluster from sinfo/scontrol."""
    out = _run(["sinfo", "-h", "-N", "-o", f"%R{_SEP}%N{_SEP}%G{_SEP}%c"]).stdout
    rows = [line.split(_SEP) for line in out.splitlines() if line]
    if not rows:
        raise RuntimeError("sinfo lists no partitions")
    # `scontrol show partition` marks the default one; sinfo only appends '*' with %P.
    default = ""
    for line in _run(["sinfo", "-h", "-o", "%P"]).stdout.split():
        if line.endswith("*"):
            default = line.rstrip("*")
    names = list(dict.fromkeys(r[0] for r in rows))
    partitions = tuple(sorted(names, key=lambda n: (n != default, names.index(n))))
    members: dict[str, list[str]] = {}
    for r in rows:
        members.setdefault(r[0], []).append(r[1])
    nodes = tuple(sorted(members[default or names[0]]))
    first = next(r for r in rows if r[1] == nodes[0])
    gpus = 0
    for gres in first[2].split(","):
        # "gpu:4" or "gpu:type:4", possibly with "(S:0)" socket info
        parts = gres.split("(")[0].split(":")
        if parts[0] == "gpu" and parts[-1].isdigit():
            gpus = int(parts[-1])
    addrs = {}
    for line in _run(["scontrol", "-o", "show", "nodes"]).stdout.splitlines():
        fields = dict(kv.split("=", 1) for kv in line.split() if "=" in kv)
        if "NodeName" in fields:
            addrs[fields["NodeName"]] = fields.get("NodeAddr", fields["NodeName"])
    firewalled = members.get("firewalled", [])
    return SlurmCluster(
        node=nodes[0],
        node_addr=addrs.get(nodes[0], nodes[0]),
        nodes=nodes,
        node_addrs=addrs,
        server_host=socket.gethostname().split(".")[0],
        partitions=partitions,
        default_partition=default,
        shared_partition="gpu-shared",
        held_partition="held",
        gpus=gpus,
        cpus=int(first[3]),
        local_partition="local" if "local" in members else None,
        firewalled_partition="firewalled" if firewalled else None,
        firewalled_node=firewalled[0] if firewalled else None,
    )


@pytest.fixture(scope="session")
def slurm_cluster() -> Iterator[SlurmCluster]:
    """The real Slurm test cluster, started if needed; left running after the session."""
    if not shutil.which("sbatch"):
        _need("Slurm is not installed (no sbatch on PATH)")
    if os.geteuid() == 0:
        proc = _run([str(SCRIPT), "start"], timeout=300)
        if proc.returncode != 0:
            pytest.fail(f"{SCRIPT} start failed:\n{proc.stdout}{proc.stderr}")
    elif not _cluster_up():
        _need("the Slurm test cluster is not running and only root can start it")
    yield cluster_facts()


def squeue_jobs(
    name_prefix: str | None = None, all_states: bool = False, user: str | None = None
) -> list[dict[str, str]]:
    """Jobs the real squeue lists, as dicts with the keys of ``_FIELDS``.

    Without ``all_states`` squeue's default applies: pending, running, completing... (finished
    jobs disappear from it at once). With it, finished jobs show too for MinJobAge seconds.
    """
    argv = ["squeue", "-h", "-o", _SEP.join(_FIELDS.values())]
    if all_states:
        argv += ["-t", "all"]
    if user:
        argv += ["-u", user]
    proc = _run(argv)
    if proc.returncode != 0:
        raise RuntimeError(f"squeue failed ({proc.returncode}): {proc.stderr.strip()}")
    jobs = []
    for line in proc.stdout.splitlines():
        values = line.split(_SEP)
        if len(values) != len(_FIELDS):
            continue
        job = dict(zip(_FIELDS, (v.strip() for v in values), strict=True))
        if name_prefix is None or job["name"].startswith(name_prefix):
            jobs.append(job)
    return jobs


def wait_job_state(
    job_id: str | int, states: Iterable[str], timeout: float = 10.0
) -> dict[str, str] | None:
    """Poll squeue until job ``job_id`` is in one of ``states``; its row, or None on timeout.

    "GONE" in ``states`` matches a job that squeue no longer lists as active.
    """
    wanted = {s.upper() for s in states}
    deadline = time.monotonic() + timeout
    while True:
        rows = [j for j in squeue_jobs(all_states=True) if j["id"] == str(job_id)]
        row = rows[0] if rows else None
        if row and row["state"] in wanted:
            return row
        if "GONE" in wanted and (row is None or row["state"] in FINISHED_STATES):
            return row or {"id": str(job_id), "state": "GONE"}
        if time.monotonic() >= deadline:
            return None
        time.sleep(0.1)


def cancel_jobs(name_prefix: str, timeout: float = 15.0) -> list[str]:
    """scancel every active job whose name starts with ``name_prefix``; wait until gone.

    For test teardown: returns the ids cancelled. (scancel --name takes one exact name, so
    the ids are collected with squeue.)
    """
    ids = [j["id"] for j in squeue_jobs(name_prefix)]
    if not ids:
        return []
    _run(["scancel", *ids])
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(j["id"] in ids for j in squeue_jobs(name_prefix)):
        time.sleep(0.1)
    return ids


def dead_controller_conf(directory: Path) -> str:
    """A copy of the cluster's slurm.conf that points clients at a port no controller
    listens on; hand it to one process through SLURM_CONF (the cluster stays untouched)."""
    conf = Path(os.environ.get("SLURM_CONF", "/etc/slurm/slurm.conf"))
    lines = [ln for ln in conf.read_text().splitlines() if not ln.startswith("SlurmctldPort")]
    dead = directory / "dead-controller-slurm.conf"
    dead.write_text("\n".join([*lines, "SlurmctldPort=6999", ""]))
    return str(dead)
