"""kernel.json for container kernels: pure builders, then the one function that installs."""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from collections.abc import Mapping
from typing import Any

from jupyter_client.kernelspec import KernelSpecManager

__all__ = [
    "PROVISIONER_NAME",
    "SLURM_PROVISIONER_NAME",
    "PROVISIONER_NAMES",
    "make_kernel_cmd",
    "build_kernelspec",
    "provisioner_config",
    "write_kernelspec",
    "install_kernelspec",
    "container_kernelspecs",
    "valid_kernel_name",
]

PROVISIONER_NAME = "apptainer-provisioner"
SLURM_PROVISIONER_NAME = "slurm-apptainer-provisioner"
PROVISIONER_NAMES = (PROVISIONER_NAME, SLURM_PROVISIONER_NAME)

_NAME_RE = re.compile(r"^[a-z0-9._-]+$", re.IGNORECASE)


def make_kernel_cmd(python: str = "python3") -> list[str]:
    """The argv that runs inside the image: the image's own python, not the server's."""
    return [python, "-m", "ipykernel_launcher", "-f", "{connection_file}"]


def valid_kernel_name(name: str) -> bool:
    """Kernel names jupyter_client accepts: letters, digits, '.', '_', '-'; not only dots.

    Stricter than jupyter_client on two points that make the name a path elsewhere: '.' and
    '..' (KernelSpecManager would replace the kernels directory or its parent), and a
    trailing newline (which '$' lets through).
    """
    return bool(_NAME_RE.fullmatch(name)) and name.strip(".") != ""


def provisioner_config(**values: Any) -> dict[str, Any]:
    """Keep only the values set explicitly (not None, not empty).

    A kernelspec that states only what differs from the defaults lets a site's Jupyter
    config still decide the rest (kernelspec config wins over site config key by key).
    """
    return {k: v for k, v in values.items() if v is not None and v != [] and v != {}}


def build_kernelspec(
    display_name: str,
    config: Mapping[str, Any],
    *,
    provisioner: str = PROVISIONER_NAME,
    python: str = "python3",
    interrupt_mode: str = "signal",
    env: Mapping[str, str] | None = None,
    metadata: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Build the kernel.json dict (the ipykernel.kernelspec shape plus a provisioner).

    ``config`` holds provisioner trait values (image, gpu, binds, ...), as from
    :func:`provisioner_config`.
    """
    meta: dict[str, Any] = dict(metadata or {})
    meta["kernel_provisioner"] = {"provisioner_name": provisioner, "config": dict(config)}
    spec: dict[str, Any] = {
        "argv": make_kernel_cmd(python),
        "display_name": display_name,
        "language": "python",
        "interrupt_mode": interrupt_mode,
        "metadata": meta,
    }
    if env:
        spec["env"] = dict(env)
    return spec


def write_kernelspec(
    path: str, spec: Mapping[str, Any], logos: Mapping[str, str] | None = None
) -> str:
    """Write kernel.json (and logo files, name -> source path) into directory ``path``."""
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, "kernel.json"), "w", encoding="utf-8") as f:
        json.dump(spec, f, indent=1, sort_keys=True)
        f.write("\n")
    for name, src in (logos or {}).items():
        shutil.copyfile(src, os.path.join(path, name))
    return path


def install_kernelspec(
    spec: Mapping[str, Any],
    name: str,
    *,
    user: bool = False,
    prefix: str | None = None,
    logos: Mapping[str, str] | None = None,
    ksm: KernelSpecManager | None = None,
) -> str:
    """Install ``spec`` as kernel ``name`` through KernelSpecManager; return its directory.

    Called by the CLI's ``install`` and ``scan``. Without ``user`` or ``prefix`` it goes to
    the system-wide Jupyter data directory (JupyterHub: every user's server reads it).
    """
    if not valid_kernel_name(name):
        raise ValueError(
            f"Kernel name {name!r} may contain only letters, digits, '.', '_' and '-' "
            "(and not only dots)."
        )
    ksm = ksm or KernelSpecManager()
    with tempfile.TemporaryDirectory() as tmp:
        src = write_kernelspec(os.path.join(tmp, name), spec, logos)
        return ksm.install_kernel_spec(src, name, user=user, prefix=prefix)


def container_kernelspecs(
    ksm: KernelSpecManager | None = None,
) -> dict[str, tuple[str, dict[str, Any]]]:
    """Every installed kernelspec that uses a kernelprovider provisioner: name -> (dir, spec)."""
    ksm = ksm or KernelSpecManager()
    found = {}
    for name, info in sorted(ksm.get_all_specs().items()):
        spec = info.get("spec", {})
        prov = spec.get("metadata", {}).get("kernel_provisioner", {})
        if prov.get("provisioner_name") in PROVISIONER_NAMES:
            found[name] = (info["resource_dir"], spec)
    return found
