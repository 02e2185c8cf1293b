"""Site defaults in a Jupyter config file, through a real jupyter_server started with --config.

Precedence, trait by trait: the kernelspec's ``kernel_provisioner.config`` beats the site
config, which beats the trait defaults. What is checked is what a user or admin would check:
whether the running container got ``--nv`` (read from the Apptainer process of that kernel
with psutil), what a cell prints, which partition the Slurm job went to, and what the server
log says while a job waits in the queue.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest
from integration.test_server import Server, ws_execute
from slurm_cluster import squeue_jobs, wait_job_state
from tornado.httpclient import HTTPClientError

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

SLURM = "slurm-apptainer-provisioner"


def apptainer_config(server: Server, kernel_id: str) -> dict:
    """The engine configuration of the Apptainer process that runs ``kernel_id``.

    Apptainer's CLI re-executes itself as its "starter" (cmdline "Apptainer runtime parent:
    IMAGE") and hands it the whole configuration, --nv included ("nvLegacy"), in its
    environment (ENGINE_CONFIG1...); the kernel's argv there names its connection file.
    """
    for proc in psutil.Process(server.proc.pid).children(recursive=True):
        try:
            env = proc.environ()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        if "ENGINE_CONFIG1" not in env:
            continue
        # A long configuration is split over ENGINE_CONFIG1..N (N in ENGINE_CONFIG_CHUNKS).
        chunks = int(env.get("ENGINE_CONFIG_CHUNKS", "1"))
        config = json.loads("".join(env[f"ENGINE_CONFIG{i}"] for i in range(1, chunks + 1)))
        engine = config.get("engineConfig", {})
        args = engine.get("ociConfig", {}).get("process", {}).get("args", [])
        if any(f"kernel-{kernel_id}.json" in a for a in args):
            return engine["jsonConfig"]
    raise AssertionError(
        f"no Apptainer process runs kernel {kernel_id}: "
        + repr([p.cmdline() for p in psutil.Process(server.proc.pid).children(recursive=True)])
    )


@pytest.fixture
def site_server(jupyter_dirs, tmp_path: Path) -> Iterator[Callable[[str], Server]]:
    """Start jupyter_server with a site config file (its text given); stopped at teardown."""
    servers: list[Server] = []

    def start(config_text: str) -> Server:
        config = tmp_path / "jupyter_server_config.py"
        config.write_text(config_text)
        srv = Server(jupyter_dirs["work"], tmp_path / "server.log", [f"--config={config}"])
        servers.append(srv)
        return srv

    yield start
    for srv in servers:
        srv.stop()


LOCAL_SITE = """
c.ContainerProvisioner.gpu = "none"
c.ContainerProvisioner.container_env = {"GREETING": "from the site config"}
"""


async def test_kernelspec_beats_site_config_beats_defaults(images, install_kernel, site_server):
    server = site_server(LOCAL_SITE)
    install_kernel("site-defaults", images.test)
    install_kernel(
        "own-settings", images.test, gpu="nv", container_env={"GREETING": "from the kernelspec"}
    )
    seen = {}
    for name in ("site-defaults", "own-settings"):
        kernel = await server.request("POST", "/api/kernels", {"name": name})
        nv = apptainer_config(server, kernel["id"]).get("nvLegacy", False)
        status, out = await ws_execute(
            server, kernel["id"], "import os; print(os.environ['GREETING'])"
        )
        assert status == "ok"
        seen[name] = (nv, out.strip())
        await server.request("DELETE", f"/api/kernels/{kernel['id']}")
    # The trait default is gpu="nv": the site's "none" replaced it; the kernelspec's "nv" won.
    assert seen == {
        "site-defaults": (False, "from the site config"),
        "own-settings": (True, "from the kernelspec"),
    }


SLURM_SITE = """
c.SlurmProvisioner.partition = "held"
c.SlurmProvisioner.pending_log_interval = 1.0
c.SlurmProvisioner.queue_timeout = 8.0
c.SlurmProvisioner.gpus = "1"
c.SlurmProvisioner.time_limit = "0:10:00"
# A start that waits in the queue returns its kernel id at once, as "starting".
c.MappingKernelManager.use_pending_kernels = True
"""


@pytest.mark.slurm
async def test_slurm_site_partition_and_the_queue_wait_in_the_server_log(
    images, install_kernel, slurm_cluster, site_server, tmp_path
):
    server = site_server(SLURM_SITE)
    state = str(tmp_path / "state")
    install_kernel("queued", images.test, provisioner=SLURM, interrupt_mode="message",
                   state_dir=state)  # fmt: skip
    install_kernel("own-partition", images.test, provisioner=SLURM, interrupt_mode="message",
                   state_dir=state, partition=slurm_cluster.default_partition)  # fmt: skip

    queued = await server.request("POST", "/api/kernels", {"name": "queued"})
    assert queued["execution_state"] == "starting"
    job = None
    deadline = time.monotonic() + 30
    while job is None and time.monotonic() < deadline:
        job = next(iter(squeue_jobs(f"kp-{queued['id']}")), None)
        await asyncio.sleep(0.2)
    assert job is not None, "the queued kernel's job never showed up in squeue"
    # No partition in the kernelspec: the site's "held" (always down) applies.
    assert job["partition"] == slurm_cluster.held_partition
    assert job["state"] == "PENDING"
    model = await server.request("GET", f"/api/kernels/{queued['id']}")
    assert model["execution_state"] == "starting"

    # The kernelspec's own partition beats the site's: this one starts.
    kernel = await server.request("POST", "/api/kernels", {"name": "own-partition"})
    status, out = await ws_execute(
        server, kernel["id"], "import os; print(os.environ['SLURM_JOB_PARTITION'])"
    )
    assert (status, out.strip()) == ("ok", slurm_cluster.default_partition)
    await server.request("DELETE", f"/api/kernels/{kernel['id']}")

    # The queued one gives up after queue_timeout and its job is cancelled.
    assert wait_job_state(job["id"], {"GONE"}, timeout=60) is not None
    # With pending kernels the failure reaches a client when it connects (JupyterLab does at
    # once): the websocket is refused with the message, and the kernel turns "dead" with it.
    message = (
        f"Slurm job {job['id']} for kernel queued waited 8 s in the queue (PartitionDown) and "
        "was cancelled."
    )
    with pytest.raises(HTTPClientError) as refused:
        await ws_execute(server, queued["id"], "1")
    assert refused.value.code == 500
    assert message in refused.value.response.body.decode()
    model = await server.request("GET", f"/api/kernels/{queued['id']}")
    assert model["execution_state"] == "dead"
    assert model["reason"].startswith(message)
    await server.request("DELETE", f"/api/kernels/{queued['id']}")
    assert await server.request("GET", "/api/kernels") == []

    log = server.log.read_text()
    pending = [
        line
        for line in log.splitlines()
        if f"Slurm job {job['id']} PENDING (reason: PartitionDown" in line
    ]
    assert len(pending) >= 2, log[-3000:]
    assert message in log


def test_the_sample_site_config_names_real_settings_with_valid_values() -> None:
    """examples/jupyter_server_config.py loads, and every setting in it exists and validates."""
    from jupyter_server.services.kernels.kernelmanager import AsyncMappingKernelManager
    from traitlets.config.loader import PyFileConfigLoader

    from kernelprovider.provisioner import ContainerProvisioner
    from kernelprovider.slurm import SlurmProvisioner

    sample = Path(__file__).resolve().parents[2] / "examples" / "jupyter_server_config.py"
    config = PyFileConfigLoader(sample.name, str(sample.parent)).load_config()
    # jupyter_server's kernel manager is AsyncMappingKernelManager, a MappingKernelManager:
    # settings of the "MappingKernelManager" section reach it.
    from jupyter_server.serverapp import ServerApp

    from kernelprovider.manager import SlurmAwareKernelManager

    classes = {
        "ContainerProvisioner": ContainerProvisioner,
        "SlurmProvisioner": SlurmProvisioner,
        "MappingKernelManager": AsyncMappingKernelManager,
        "ServerApp": ServerApp,
    }
    assert set(config) <= set(classes), set(config) - set(classes)
    for section, values in config.items():
        traits = classes[section].class_traits(config=True)
        assert set(values) <= set(traits), f"{section}: {set(values) - set(traits)}"
    # Loading the config runs each trait's own validation; the values arrive as written.
    slurm = SlurmProvisioner(config=config)
    for section in ("ContainerProvisioner", "SlurmProvisioner"):
        for name, value in config[section].items():
            assert getattr(slurm, name) == value, name
    manager = AsyncMappingKernelManager(config=config)
    for name, value in config.MappingKernelManager.items():
        assert getattr(manager, name) == value, name
    assert config.SlurmProvisioner.partition == "gpu"
    assert config.MappingKernelManager.use_pending_kernels is True
    # the one line that turns on kernelprovider's kernel manager names an importable class
    # that jupyter_server accepts (a subclass of its AsyncMappingKernelManager)
    assert set(config.ServerApp) == {"kernel_manager_class"}
    assert ServerApp(config=config).kernel_manager_class is SlurmAwareKernelManager
    assert issubclass(SlurmAwareKernelManager, AsyncMappingKernelManager)
