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
    "name_from_image",
    "install_spec",
    "provisioner_class",
    "validated_config",
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


def name_from_image(image: str) -> str:
    """A kernel name from an image file name: ``TF-1.8_cuda9.2.sif`` -> ``tf-1.8_cuda9.2``."""
    stem = os.path.basename(image.rstrip("/"))
    stem = re.sub(r"\.(sif|simg|img|sqsh|squashfs)$", "", stem, flags=re.IGNORECASE)
    name = re.sub(r"[^a-z0-9._-]+", "-", stem.lower()).strip("-.")
    return name or "container"


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


def install_spec(
    image: str,
    display_name: str,
    values: Mapping[str, Any],
    *,
    slurm: bool = False,
    python: str = "python3",
    interrupt_mode: str | None = None,
) -> dict[str, Any]:
    """kernel.json for one image and the option values given (None: not given).

    The one builder behind ``install`` and ``scan``: the image path made absolute (URIs
    kept), only given values written, the Slurm provisioner and message interrupts for a
    Slurm kernel.
    """
    if "://" not in image:
        image = os.path.abspath(os.path.expanduser(image))
    return build_kernelspec(
        display_name,
        provisioner_config(image=image, **values),
        provisioner=SLURM_PROVISIONER_NAME if slurm else PROVISIONER_NAME,
        python=python,
        interrupt_mode=interrupt_mode or ("message" if slurm else "signal"),
    )


def provisioner_class(provisioner_name: str | None) -> type:
    """The provisioner class a kernelspec's ``provisioner_name`` stands for.

    The one place that chooses (install's validation, doctor, list); imported on use, so
    reading kernel.json files does not load Slurm support.
    """
    if provisioner_name == SLURM_PROVISIONER_NAME:
        from .slurm import SlurmProvisioner

        return SlurmProvisioner
    from .provisioner import ContainerProvisioner

    return ContainerProvisioner


def validated_config(spec: Mapping[str, Any]) -> dict[str, Any]:
    """Run a kernelspec's provisioner config through the provisioner's own trait validation.

    Called by ``install`` and ``scan`` before writing, so a value that every kernel start
    would refuse (a relative bind, a bad variable name) is refused now, with the same words.
    Raises TraitError.
    """
    prov = spec["metadata"]["kernel_provisioner"]
    cls = provisioner_class(prov["provisioner_name"])
    cls(kernel_id="validate", kernel_spec=None, **prov["config"])
    return dict(prov["config"])


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
