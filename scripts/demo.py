"""`make demo`: install a demo kernelspec, start its kernel in the image, run code there.

Prints where the code ran (host, image, labels, Python) and whether a GPU was visible in the
container through the CUDA driver API.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
IMAGE = Path(os.environ.get("KP_DEMO_IMAGE", ROOT / "build" / "images" / "kp-test.sif"))
PREFIX = ROOT / "build" / "demo"

IN_KERNEL = r"""
import ctypes, json, os, platform, socket, sys
labels = json.load(open('/.singularity.d/labels.json'))
print('host       :', socket.gethostname())
print('in image   :', os.path.exists('/.singularity.d'), '| labels:',
      {k: labels[k] for k in sorted(labels) if k.isupper()})
print('python     :', sys.version.split()[0], sys.executable)
print('cwd        :', os.getcwd())
try:
    cuda = ctypes.CDLL('libcuda.so.1')
    rc = cuda.cuInit(0)
    name = ctypes.create_string_buffer(100)
    dev = ctypes.c_int()
    if rc == 0 and cuda.cuDeviceGet(ctypes.byref(dev), 0) == 0:
        cuda.cuDeviceGetName(name, 100, dev)
        print('GPU        : visible:', name.value.decode())
    else:
        print('GPU        : libcuda present but cuInit returned', rc)
except OSError:
    print('GPU        : not visible (no libcuda.so.1 in the container: no NVIDIA driver here)')
"""


async def run() -> int:
    os.environ["JUPYTER_PATH"] = str(PREFIX / "share" / "jupyter")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "kernelprovider.app",
            "install",
            "--image",
            str(IMAGE),
            "--name",
            "kp-demo",
            "--display-name",
            "TF 1.8 / CUDA 9.2 (GPU) [demo]",
            "--prefix",
            str(PREFIX),
            # On a machine without an NVIDIA driver 'enforce' would (rightly) refuse this
            # CUDA-labelled image; the demo shows the verdict and starts anyway.
            "--compat-check",
            "warn",
        ],
        check=True,
    )
    from jupyter_client import AsyncKernelManager

    km = AsyncKernelManager(kernel_name="kp-demo")
    print(f"Starting kernel kp-demo in {IMAGE} ...")
    await km.start_kernel(cwd=str(ROOT))
    kc = km.client()
    kc.start_channels()
    status = "error"
    try:
        await kc.wait_for_ready(timeout=120)
        for v in km.provisioner.verdicts:
            print(f"Compatibility ({v.check}) {v.level}: {v.reason}")
        print(f"Kernel ready; the server holds pid {km.provisioner.pid}. Output from inside:")
        reply = await kc.execute_interactive(IN_KERNEL, timeout=120)
        status = reply["content"]["status"]
    finally:
        kc.stop_channels()
        await km.shutdown_kernel()
    print(
        f"Cell status: {status}; kernel shut down, connection file removed: "
        f"{not Path(km.connection_file).exists()}"
    )
    return 0 if status == "ok" else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(run()))
