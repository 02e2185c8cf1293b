"""A stand-in Jupyter server for the dead-man and re-attach tests.

``python kp_child.py KERNEL_NAME KERNEL_ID CWD``: starts the kernelspec's kernel through
AsyncKernelManager (so the real SlurmProvisioner submits the job and keeps its lease), prints
one JSON line with the provisioner's record, then idles until it is killed. The Jupyter
paths come from the environment the test hands it.
"""

from __future__ import annotations

import asyncio
import json
import sys

from jupyter_client import AsyncKernelManager


async def main(kernel_name: str, kernel_id: str, cwd: str) -> None:
    km = AsyncKernelManager(kernel_name=kernel_name)
    await km.start_kernel(kernel_id=kernel_id, cwd=cwd)
    record = await km.provisioner.get_provisioner_info()
    print(json.dumps({"record": record, "pid_srun": km.provisioner.pid}), flush=True)
    while True:  # keep the lease fresh until SIGKILL
        await asyncio.sleep(3600)


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:4]))
