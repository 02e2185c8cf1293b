"""What doctor says, as data: :class:`KernelReport`, the node the command line describes, and
the judgements both renderers share.

:func:`hypothetical_host` turns ``--driver-version`` / ``--compute-capability`` / ``--gpu-name``
/ ``--node`` into the node to judge; :func:`_on_gpus` says how a framework's code meets that
node's GPUs; :func:`short_reason` and :func:`exit_status` sum reports up. Pure.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from ..apptainer import RuntimeInfo
from ..compat import (
    FrameworkBuild,
    GpuInfo,
    HostFacts,
    ImageFacts,
    Verdict,
    code_for_gpu,
    parse_version,
    worst,
)
from ..image import ImageCompression
from ..kernelspec import PROVISIONER_NAME

#: What doctor says on a host without a driver (the sentence users and tests look for).
NO_DRIVER = "No NVIDIA driver on this host (no /proc/driver/nvidia/version, no nvidia-smi)"
#: The kernel id and connection file doctor puts into argv: each real start gets its own.
PLACEHOLDER_ID = "KERNEL_ID"
_CC = re.compile(r"^\d+\.\d+$")


@dataclass
class KernelReport:
    """Everything doctor says about one kernel or image: facts, command, verdicts, notes.

    Built by :func:`kernel_report`; read by the formatters and by ``list``.
    """

    image: str
    kernel: str | None = None
    display_name: str | None = None
    provisioner: str = PROVISIONER_NAME
    gpu: str = "nv"
    compat_check: str = "enforce"
    facts: ImageFacts | None = None
    runtime: RuntimeInfo | None = None
    argv: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    verdicts: list[Verdict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    #: The node the report judged (None for reports made without one).
    host: HostFacts | None = None
    #: How the image is stored (SIF/squashfs compressor, sandbox); None when unknown.
    compression: ImageCompression | None = None

    @property
    def level(self) -> str:
        """The worst verdict level ("ok" when there are no verdicts)."""
        return worst(self.verdicts)

    @property
    def label(self) -> str:
        """The kernel name, else the image's file name: what summaries call this report."""
        return self.kernel or os.path.basename(self.image.rstrip("/")) or self.image


def hypothetical_host(
    real: HostFacts,
    *,
    driver: str | None = None,
    compute_capability: str | None = None,
    gpu_name: str | None = None,
    node: str | None = None,
) -> tuple[HostFacts, dict[str, str]]:
    """The node doctor judges: ``real`` with the values given on the command line replacing
    its own, and {fact: flag} for the facts that were given (for the header).

    A given compute capability or GPU name stands for the whole node: it gets one GPU of that
    kind. Raises ValueError (with the fix) for values that are not versions.
    """
    given: dict[str, str] = {}
    host = HostFacts(node=real.node, driver=real.driver, gpus=list(real.gpus))
    if driver is not None:
        try:
            parse_version(driver)
        except ValueError:
            raise ValueError(
                f"--driver-version {driver!r} is not a driver version; give it as nvidia-smi "
                "prints it, e.g. --driver-version 580.95.05."
            ) from None
        host.driver = driver.strip()
        given["driver"] = "--driver-version"
    if compute_capability is not None and not _CC.match(compute_capability.strip()):
        raise ValueError(
            f"--compute-capability {compute_capability!r} is not a compute capability; give "
            "MAJOR.MINOR, e.g. --compute-capability 9.0 for an H100/H200 (nvidia-smi "
            "--query-gpu=compute_cap --format=csv shows it)."
        )
    if compute_capability is not None or gpu_name is not None:
        cc = compute_capability.strip() if compute_capability else None
        name = gpu_name or f"a GPU of compute capability {cc}"
        host.gpus = [GpuInfo(name=name, compute_capability=cc)]
        given["gpus"] = "--compute-capability" if compute_capability else "--gpu-name"
    if node:
        host.node = node
        given["node"] = "--node"
    return host, given


def _gpu_ccs(host: HostFacts | None) -> list[tuple[str, tuple[int, int]]]:
    seen: list[tuple[str, tuple[int, int]]] = []
    for gpu in host.gpus if host else []:
        try:
            v = parse_version(gpu.compute_capability or "")
        except ValueError:
            continue
        cc = (v[0], v[1] if len(v) > 1 else 0)
        if gpu.sm and all(sm != gpu.sm for sm, _ in seen):
            seen.append((gpu.sm, cc))
    return seen


def _on_gpus(fw: FrameworkBuild, host: HostFacts | None) -> dict[str, str]:
    """{sm_90: "native sm_90" | "PTX JIT of compute_80" | "no code"} for the node's GPUs."""
    sass, ptx, _ = fw.code_archs()
    if not fw.gpu_build or not (sass or ptx):
        return {}
    found = {}
    for sm, cc in _gpu_ccs(host):
        status, arch = code_for_gpu(sass, ptx, cc)
        found[sm] = {
            "native": f"native sm_{arch}",
            "ptx": f"PTX JIT of compute_{arch}",
            "none": "no code",
        }[status]
    return found


def short_reason(verdicts: Sequence[Verdict]) -> str:
    """The first sentence of the worst verdict's reason ("" when there are no verdicts)."""
    if not verdicts:
        return ""
    level = worst(verdicts)
    reason = next(v.reason for v in verdicts if v.level == level)
    head, sep, _ = reason.partition(". ")
    return head + "." if sep else reason


def exit_status(reports: Sequence[KernelReport]) -> int:
    """1 when any report has a failing verdict, else 0 (usage errors exit 2 elsewhere)."""
    return 1 if any(r.level == "fail" for r in reports) else 0
