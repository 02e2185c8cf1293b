"""``jupyter kernelprovider doctor``: what a kernel would meet on a node, said before it starts.

For a kernel (an installed kernelspec) or an image path it prints the node's NVIDIA driver and
GPUs, the image's CUDA/cuDNN/TensorFlow and where each was read, the runtime, the exact argv
and container environment the provisioner would use, and the verdicts of
:func:`kernelprovider.compat.evaluate`. ``--driver-version`` / ``--compute-capability`` /
``--gpu-name`` / ``--node`` describe a node that is not this one (an admin planning a driver
upgrade, or the GPU nodes seen from a login node). Without an argument: the host and one verdict
line per installed container kernelspec. ``list`` reuses :func:`kernel_report` for its VERDICT
column.

The formatting functions are pure (facts in, lines out) and unit-tested; :func:`kernel_report`
and :class:`DoctorApp` do the I/O (nvidia-smi, ``apptainer inspect``), blocking, as CLIs may.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from jupyter_client.kernelspec import KernelSpec, KernelSpecManager, NoSuchKernel
from jupyter_core.application import base_aliases, base_flags
from jupyter_core.paths import jupyter_runtime_dir
from traitlets import Bool, TraitError, Unicode, default
from traitlets.config import Application, LoggingConfigurable

from .app import _KernelSpecApp
from .apptainer import (
    Bind,
    RuntimeInfo,
    build_exec_argv,
    check_bind_sources,
    check_image,
    container_env,
    find_runtime,
    is_image_uri,
)
from .compat import (
    FrameworkBuild,
    GpuInfo,
    HostFacts,
    ImageFacts,
    Verdict,
    code_for_gpu,
    cuda_for_driver,
    evaluate,
    parse_version,
    worst,
)
from .errors import KernelProviderError
from .gpu import host_facts
from .image import ImageCompression, compression_note, image_compression, image_facts
from .kernelspec import PROVISIONER_NAME, SLURM_PROVISIONER_NAME, make_kernel_cmd

__all__ = [
    "NO_DRIVER",
    "DoctorApp",
    "KernelReport",
    "exit_status",
    "format_argv",
    "framework_dict",
    "framework_lines",
    "framework_text",
    "host_lines",
    "hypothetical_host",
    "image_lines",
    "kernel_report",
    "kernel_summary",
    "launch_lines",
    "make_provisioner",
    "report_dict",
    "report_lines",
    "short_reason",
    "summary_lines",
    "verdict_lines",
]

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


# --------------------------------------------------------------------------------------------
# Pure: hypothetical nodes, formatting, exit status


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


def format_argv(argv: Sequence[str]) -> str:
    """argv as one line a user can paste into a shell (each argument quoted as needed)."""
    return shlex.join(list(argv))


def _gpu_text(gpu: GpuInfo) -> str:
    index = f"{gpu.index}: " if gpu.index is not None else ""
    if gpu.compute_capability:
        return f"{index}{gpu.name}, compute capability {gpu.compute_capability} ({gpu.sm})"
    return f"{index}{gpu.name}, compute capability unknown"


def host_lines(host: HostFacts, given: Mapping[str, str] | None = None) -> list[str]:
    """The host section: node, driver (or the no-driver sentence), GPUs.

    ``given`` marks facts that came from the command line, not from this host.
    """
    given = dict(given or {})
    title = "Node (hypothetical)" if set(given) - {"node"} else "Node"
    lines = [f"{title}: {host.node}" + (" (from --node)" if "node" in given else "")]
    if host.driver:
        supported = cuda_for_driver(host.driver) if _is_version(host.driver) else None
        extra = []
        if "driver" in given:
            extra.append(f"from {given['driver']}")
        if supported:
            extra.append(f"serves CUDA <= {supported} without compatibility packages")
        suffix = f" ({'; '.join(extra)})" if extra else ""
        lines.append(f"  NVIDIA driver: {host.driver}{suffix}")
    else:
        lines.append(f"  {NO_DRIVER}")
    if host.gpus:
        note = f" (from {given['gpus']})" if "gpus" in given else ""
        lines.append(f"  GPUs: {len(host.gpus)}{note}")
        lines += [f"    {_gpu_text(g)}" for g in host.gpus]
    elif "driver" in given:
        lines.append("  GPUs: not given (add --compute-capability to check the GPU architecture)")
    elif host.driver:
        lines.append("  GPUs: none found (nvidia-smi and NVML list none)")
    else:
        lines.append("  GPUs: none (CPU-only kernels still run here)")
    return lines


def _is_version(text: str) -> bool:
    try:
        parse_version(text)
    except ValueError:
        return False
    return True


_FACT_NAMES = (("cuda", "CUDA"), ("cudnn", "cuDNN"), ("tensorflow", "TensorFlow"))


def image_lines(facts: ImageFacts, host: HostFacts | None = None) -> list[str]:
    """The image's CUDA, cuDNN and TensorFlow, each with where it was read, then what its
    frameworks were built for (see :func:`framework_lines`)."""
    lines = []
    for attr, title in _FACT_NAMES:
        value = getattr(facts, attr)
        if value:
            source = facts.sources.get(attr)
            lines.append(f"  {title}: {value}" + (f" ({source})" if source else ""))
        else:
            lines.append(f"  {title}: not declared (no label, environment variable or file)")
    return lines + framework_lines(facts, host)


def _archs_text(fw: FrameworkBuild) -> str:
    sass, ptx, where = fw.code_archs()
    if not sass and not ptx:
        return ""
    text = ", ".join(f"sm_{a}" for a in sass)
    if ptx:
        text += (" + " if text else "") + "PTX " + ", ".join(f"compute_{a}" for a in ptx)
    return text + (f" ({where})" if where else "")


def framework_text(fw: FrameworkBuild) -> str:
    """One line about what ``fw`` was built for: version, CUDA/cuDNN, the code it carries."""
    if fw.gpu_build is False:
        return f"{fw.label}: CPU-only build"
    parts = []
    if fw.cuda:
        parts.append(f"CUDA {fw.cuda}" + (f", cuDNN {fw.cudnn}" if fw.cudnn else ""))
    archs = _archs_text(fw)
    if archs:
        parts.append(f"code for {archs}")
    elif fw.gpu_build:
        parts.append("no compiled GPU code found (kernels are compiled at run time or unread)")
    return f"{fw.label}: " + ("; ".join(parts) if parts else "build facts not found")


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


def framework_lines(facts: ImageFacts, host: HostFacts | None = None) -> list[str]:
    """What the image's frameworks were built for, where that was read, and how their code
    meets the node's GPUs; then the CUDA runtimes the image ships."""
    lines = []
    if facts.frameworks:
        where = facts.sources.get("frameworks")
        lines.append("  Frameworks" + (f" (read by {where})" if where else "") + ":")
        for fw in facts.frameworks:
            lines.append(f"    {framework_text(fw)}")
            if fw.facts_from:
                lines.append(f"      build facts: {fw.facts_from}")
            on = _on_gpus(fw, host)
            if on:
                lines.append(
                    "      on this node: " + ", ".join(f"{sm}: {how}" for sm, how in on.items())
                )
    elif "frameworks" in facts.sources:
        lines.append(f"  Frameworks: none found (read by {facts.sources['frameworks']})")
    if facts.cudart:
        lines.append("  CUDA runtime in the image: " + ", ".join(facts.cudart))
    return lines


def framework_dict(fw: FrameworkBuild, host: HostFacts | None = None) -> dict[str, Any]:
    """One framework for ``--json``: its build facts, the code it carries (``sm_80`` /
    ``compute_90`` names) and how that code meets each of the node's GPU architectures."""
    sass, ptx, where = fw.code_archs()
    return {
        "name": fw.name,
        "version": fw.version,
        "location": fw.location,
        "cuda": fw.cuda,
        "cudnn": fw.cudnn,
        "gpu_build": fw.gpu_build,
        "facts_from": fw.facts_from,
        "declared_archs": list(fw.declared_archs),
        "sass": [f"sm_{a}" for a in sass],
        "ptx": [f"compute_{a}" for a in ptx],
        "archs_from": where,
        "on_gpus": _on_gpus(fw, host),
    }


def launch_lines(report: KernelReport) -> list[str]:
    """Runtime, the exact argv and the variables the runtime would get."""
    lines = []
    if report.runtime is not None:
        rt = report.runtime
        lines.append(f"  Runtime: {rt.path} ({rt.flavor} {rt.version})")
    if report.argv:
        lines.append(f"  Command: {format_argv(report.argv)}")
    if report.env:
        lines.append("  Environment for the runtime:")
        lines += [f"    {k}={v}" for k, v in sorted(report.env.items())]
    return lines


def verdict_lines(verdicts: Sequence[Verdict]) -> list[str]:
    """One line per verdict: level, which check, the reason (never wrapped: it is greppable)."""
    width = max((len(v.check) for v in verdicts), default=0)
    return [f"    {v.level:<4}  {v.check:<{width}}  {v.reason}" for v in verdicts]


def _policy_line(report: KernelReport) -> str | None:
    if report.level != "fail":
        return None
    if report.compat_check == "enforce":
        return "  compat_check=enforce: a start would be refused with the fail above."
    if report.compat_check == "warn":
        return "  compat_check=warn: a start would go ahead and log the fail above."
    return "  compat_check=off: a start would go ahead without checking."


def report_lines(report: KernelReport) -> list[str]:
    """The full section for one kernel or image."""
    if report.kernel:
        head = f"Kernel {report.kernel}"
        if report.display_name and report.display_name != report.kernel:
            head += f' ("{report.display_name}")'
        head += f" [{report.provisioner}, gpu={report.gpu}, compat_check={report.compat_check}]"
    else:
        head = f"Image {report.image} [gpu={report.gpu}, compat_check={report.compat_check}]"
    lines = [head]
    if report.kernel:
        lines.append(f"  Image: {report.image}")
    if report.compression is not None:
        lines.append(f"  Storage: {compression_note(report.compression)}")
    if report.facts is not None:
        lines += image_lines(report.facts, report.host)
    lines += launch_lines(report)
    lines += [f"  Note: {n}" for n in report.notes]
    lines.append("  Verdicts:")
    lines += verdict_lines(report.verdicts) if report.verdicts else ["    (none)"]
    policy = _policy_line(report)
    if policy:
        lines.append(policy)
    lines.append(f"  Result: {report.level}")
    return lines


def short_reason(verdicts: Sequence[Verdict]) -> str:
    """The first sentence of the worst verdict's reason ("" when there are no verdicts)."""
    if not verdicts:
        return ""
    level = worst(verdicts)
    reason = next(v.reason for v in verdicts if v.level == level)
    head, sep, _ = reason.partition(". ")
    return head + "." if sep else reason


def summary_lines(reports: Sequence[KernelReport]) -> list[str]:
    """One line per kernel: name, verdict, image, the worst verdict's first sentence."""
    if not reports:
        return [
            "No container kernelspecs installed. Add one with 'jupyter kernelprovider install', "
            "or give an image: jupyter kernelprovider doctor /path/to/image.sif"
        ]
    heads = ("NAME", "VERDICT", "IMAGE", "REASON")
    rows = [(r.label, r.level, r.image, short_reason(r.verdicts)) for r in reports]
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(heads[:-1])]
    out = []
    for row in [heads, *rows]:
        cells = [c.ljust(w) for c, w in zip(row[:-1], widths, strict=True)] + [row[-1]]
        out.append("  " + "  ".join(cells).rstrip())
    return out


def exit_status(reports: Sequence[KernelReport]) -> int:
    """1 when any report has a failing verdict, else 0 (usage errors exit 2 elsewhere)."""
    return 1 if any(r.level == "fail" for r in reports) else 0


def _verdict_dict(v: Verdict) -> dict[str, str]:
    return {"level": v.level, "check": v.check, "reason": v.reason}


def report_dict(
    host: HostFacts, given: Mapping[str, str], reports: Sequence[KernelReport]
) -> dict[str, Any]:
    """The ``--json`` document: host, one entry per report, the overall verdict."""
    return {
        "host": {
            "node": host.node,
            "driver": host.driver,
            "cuda_supported": cuda_for_driver(host.driver)
            if host.driver and _is_version(host.driver)
            else None,
            "gpus": [
                {
                    "index": g.index,
                    "name": g.name,
                    "compute_capability": g.compute_capability,
                    "sm": g.sm,
                    "uuid": g.uuid,
                }
                for g in host.gpus
            ],
            "hypothetical": dict(given),
        },
        "reports": [
            {
                "kernel": r.kernel,
                "display_name": r.display_name,
                "provisioner": r.provisioner,
                "image": r.image,
                "gpu": r.gpu,
                "compat_check": r.compat_check,
                "image_facts": None
                if r.facts is None
                else {
                    "cuda": r.facts.cuda,
                    "cudnn": r.facts.cudnn,
                    "tensorflow": r.facts.tensorflow,
                    "sources": dict(r.facts.sources),
                    "frameworks": [framework_dict(fw, host) for fw in r.facts.frameworks],
                    "cudart": list(r.facts.cudart),
                },
                "compression": None
                if r.compression is None
                else {
                    "kind": r.compression.kind,
                    "compressor": r.compression.compressor,
                    "note": compression_note(r.compression),
                },
                "runtime": None if r.runtime is None else asdict(r.runtime),
                "argv": list(r.argv),
                "env": dict(r.env),
                "verdicts": [_verdict_dict(v) for v in r.verdicts],
                "verdict": r.level,
                "verdict_reason": short_reason(r.verdicts),
                "notes": list(r.notes),
            }
            for r in reports
        ],
        "verdict": worst(v for r in reports for v in r.verdicts),
    }


# --------------------------------------------------------------------------------------------
# I/O: provisioner instances and reports


class _KernelStandIn(LoggingConfigurable):
    """Stands in for the KernelManager a provisioner normally belongs to.

    The provisioner reads its kernel name and connection file from its parent; config (site
    ``c.ContainerProvisioner.*`` values) flows through it from the app.
    """

    kernel_name = Unicode("")
    connection_file = Unicode("")


def make_provisioner(
    parent: Any,
    *,
    kernel: str | None = None,
    spec: KernelSpec | None = None,
    image: str | None = None,
) -> Any:
    """A ContainerProvisioner or SlurmProvisioner configured exactly as a start would be:
    the kernelspec's ``kernel_provisioner.config`` over the site config over the defaults.

    Called by :class:`DoctorApp` and ``list``. For a bare ``image`` a ContainerProvisioner
    with that image (and the site config) stands for "a kernel of this image". Raises
    TraitError for a config value the provisioner refuses.
    """
    prov_cfg: dict[str, Any] = {}
    name = PROVISIONER_NAME
    if spec is not None:
        stanza = (spec.metadata or {}).get("kernel_provisioner", {})
        name = stanza.get("provisioner_name", PROVISIONER_NAME)
        prov_cfg = dict(stanza.get("config") or {})
    if image is not None:
        prov_cfg["image"] = image
    if name == SLURM_PROVISIONER_NAME:
        from .slurm import SlurmProvisioner as cls  # imported on use: Slurm mode only
    else:
        from .provisioner import ContainerProvisioner as cls
    stand_in = _KernelStandIn(parent=parent, kernel_name=kernel or "")
    if name == SLURM_PROVISIONER_NAME:
        stand_in.connection_file = ""  # set below, once state_dir is known
    else:
        stand_in.connection_file = os.path.join(
            jupyter_runtime_dir(), f"kernel-{PLACEHOLDER_ID}.json"
        )
    ks = spec or KernelSpec(argv=make_kernel_cmd(), display_name=kernel or "", language="python")
    prov = cls(kernel_id=PLACEHOLDER_ID, kernel_spec=ks, parent=stand_in, **prov_cfg)
    if name == SLURM_PROVISIONER_NAME:
        stand_in.connection_file = os.path.join(prov.state_dir, f"kernel-{PLACEHOLDER_ID}.json")
    return prov


def _inner_argv(prov: Any, connection_file: str) -> list[str]:
    """The kernelspec's argv with its placeholders filled, as KernelManager would."""
    spec = prov.kernel_spec
    argv = list(spec.argv) if spec is not None and spec.argv else make_kernel_cmd()
    ns = {
        "connection_file": connection_file,
        "resource_dir": getattr(spec, "resource_dir", "") or "",
        "prefix": sys.prefix,
    }
    return [re.sub(r"\{([A-Za-z_]+)\}", lambda m: ns.get(m.group(1), m.group(0)), a) for a in argv]


def _fail(report: KernelReport, check: str, message: str) -> None:
    report.verdicts.append(Verdict("fail", message, check))


def kernel_report(
    prov: Any,
    host: HostFacts,
    *,
    kernel: str | None = None,
    display_name: str | None = None,
    node_known: bool = True,
    cwd: str | None = None,
    env: Mapping[str, str] | None = None,
) -> KernelReport:
    """Judge one configured provisioner against ``host``: image, runtime, binds, CUDA.

    Follows ContainerProvisioner.pre_launch / gpu_setup step by step without starting
    anything, so what doctor prints is what a start would do. Launch problems (missing image,
    runtime, bind source, driver directory) become "fail" verdicts with the provisioner's own
    message. ``node_known`` is False for a Slurm kernel judged without a node's facts: then the
    CUDA verdicts and driver directory are left out with a note. Blocking.
    """
    slurm = hasattr(prov, "srun_args")  # SlurmProvisioner, without importing slurm.py
    report = KernelReport(
        image=prov.image,
        kernel=kernel,
        display_name=display_name,
        provisioner=SLURM_PROVISIONER_NAME if slurm else PROVISIONER_NAME,
        gpu=prov.gpu,
        compat_check=prov.compat_check,
        host=host if node_known else None,
    )
    cwd = os.path.abspath(cwd or os.getcwd())
    env = dict(os.environ if env is None else env)
    if not prov.image:
        _fail(
            report,
            "image",
            f"Kernel {kernel or '?'} has no image configured. Set 'image' in the kernelspec's "
            "kernel_provisioner config.",
        )
        return report
    uri = is_image_uri(prov.image)
    image_ok = True
    try:
        check_image(prov.image, kernel or "")
    except KernelProviderError as e:
        image_ok = False
        _fail(report, "image", str(e))
    if image_ok and not uri:
        try:
            report.compression = image_compression(prov.image)
        except OSError:
            pass  # check_image has just read it; a race is not doctor's business
    try:
        report.runtime = find_runtime(prov.runtime)
    except (KernelProviderError, OSError, subprocess.SubprocessError) as e:
        _fail(report, "runtime", str(e))
    if image_ok and report.runtime is not None and not uri:
        try:
            report.facts = image_facts(prov.image, runtime=report.runtime.path)
            prov.image_facts = report.facts
        except TimeoutError as e:
            report.verdicts.append(Verdict("warn", str(e), "image"))
        except KernelProviderError as e:
            _fail(report, "image", str(e))

    # CUDA verdicts, as check_compatibility would give them.
    if prov.gpu == "none":
        report.verdicts.append(
            Verdict(
                "ok",
                f"{report.label} runs without a GPU (gpu=none), so the driver is not checked.",
                "gpu",
            )
        )
    elif not node_known:
        report.notes.append(
            "Slurm picks the node at start, so the CUDA verdicts need that node's facts: add "
            "--driver-version and --compute-capability of the partition's nodes (nvidia-smi "
            "--query-gpu=driver_version,compute_cap --format=csv on one of them)."
        )
    elif uri:
        report.verdicts.append(
            Verdict(
                "warn",
                f"{prov.image} is a URI, so its CUDA version cannot be read before a start; pull "
                "it ('apptainer pull') and point the kernel at the SIF file to have it checked.",
                "image",
            )
        )
    elif report.facts is not None:
        report.verdicts.extend(evaluate(report.facts, host))
    if prov.compat_check == "off" and prov.gpu != "none":
        report.notes.append("compat_check is off: a start does not check these verdicts.")

    # Binds and variables, as pre_launch and gpu_setup would build them.
    binds: list[Bind] = [*prov.connection_binds(cwd)]
    try:
        user = prov.user_binds()
        check_bind_sources(user)
        binds += user
    except KernelProviderError as e:
        _fail(report, "binds", str(e))
    runtime_vars: dict[str, str] = {}
    container_vars: dict[str, str] = {}
    if node_known and prov.uses_gpu_setup:
        try:
            gpu_binds, container_vars = prov.driver_setup(host)
            binds += gpu_binds
        except (KernelProviderError, ValueError) as e:
            _fail(report, "driver_dir", str(e))
        runtime_vars, selection = prov.gpu_selection(env)
        container_vars.update(selection)
    elif not node_known and prov.driver_dir:
        report.notes.append(
            f"driver_dir {prov.driver_dir} is chosen on the node, by its driver version."
        )

    runtime_path = report.runtime.path if report.runtime else (prov.runtime or "apptainer")
    if runtime_path == "auto":
        runtime_path = "apptainer"
    flavor = report.runtime.flavor if report.runtime else "apptainer"
    connection_file = getattr(prov.parent, "connection_file", "") or ""
    inner = prov.inner_command(_inner_argv(prov, connection_file))
    prefix: list[str] = []
    if slurm:
        from .slurm import build_srun_argv

        inner = [*inner, f"--ip={prov.kernel_bind_ip('NODE_ADDR')}"]  # transport: tunnel
        prefix = build_srun_argv("JOB_ID", f"kp-{PLACEHOLDER_ID}-kernel", cwd, prov.srun_args)
    report.argv = prefix + build_exec_argv(
        runtime_path,
        prov.image,
        inner,
        gpu=prov.gpu,
        binds=binds,
        pwd=cwd,
        cleanenv=prov.cleanenv,
        contain=prov.contain,
        extra_args=prov.extra_args,
    )
    report.env = {
        **runtime_vars,
        **container_env(flavor, {**container_vars, **prov.container_variables()}),
    }
    if slurm:  # transport: which private path the kernel's traffic takes (issue 11)
        from .transport import transport_verdict

        checkable = image_ok and not uri and report.runtime is not None
        level, reason = transport_verdict(prov, runtime_path if checkable else None)
        report.verdicts.append(Verdict(level, reason, "transport"))
    report.notes.insert(
        0,
        f"{PLACEHOLDER_ID} and the connection file are placeholders: each start gets its own."
        + (" JOB_ID and NODE_ADDR come from Slurm." if slurm else ""),
    )
    return report


def kernel_verdict(app: Any, name: str, host: HostFacts) -> tuple[str, str]:
    """(level, short reason) of installed kernel ``name`` on ``host``; see
    :func:`kernel_summary`."""
    level, reason, _ = kernel_summary(app, name, host)
    return level, reason


def kernel_summary(
    app: Any, name: str, host: HostFacts
) -> tuple[str, str, list[FrameworkBuild]]:
    """(level, short reason, the image's frameworks) of installed kernel ``name`` on ``host``.

    Called by ``jupyter kernelprovider list`` (``app`` is the ListApp: its config and
    KernelSpecManager) for its VERDICT and FRAMEWORKS columns; doctor NAME prints the full
    story.
    """
    spec = app.kernel_spec_manager.get_kernel_spec(name)
    try:
        prov = make_provisioner(app, kernel=name, spec=spec)
    except (TraitError, ValueError) as e:
        return "fail", f"The kernel's provisioner config is invalid: {e}", []
    slurm = hasattr(prov, "srun_args")
    report = kernel_report(prov, host, kernel=name, node_known=not slurm)
    frameworks = list(report.facts.frameworks) if report.facts is not None else []
    if slurm and report.level == "ok":
        return (
            "ok",
            "Image and runtime are fine here; the CUDA verdicts need the node Slurm picks "
            f"(jupyter kernelprovider doctor {name} --driver-version ...).",
            frameworks,
        )
    return report.level, short_reason(report.verdicts), frameworks


# --------------------------------------------------------------------------------------------
# The command


class DoctorApp(_KernelSpecApp):
    """``jupyter kernelprovider doctor [KERNEL|IMAGE]``: driver, GPUs, image, argv, verdicts."""

    name = "jupyter-kernelprovider-doctor"
    description = (
        "Show this node's NVIDIA driver and GPUs and, for a kernel or image, its CUDA/TF, the "
        "command it would run and the verdicts. Exit 1 when a verdict fails."
    )
    examples = """
    jupyter kernelprovider doctor                       # host + every container kernel
    jupyter kernelprovider doctor tf18-cuda92-gpu       # one installed kernel
    jupyter kernelprovider doctor /software/images/tf-1.8-cuda-9.2.sif --driver-version 390.46
    jupyter kernelprovider doctor IMAGE --compute-capability 9.0 --gpu-name "NVIDIA H200"
    """
    aliases = {
        **base_aliases,
        "driver-version": "DoctorApp.driver_version",
        "compute-capability": "DoctorApp.compute_capability",
        "gpu-name": "DoctorApp.gpu_name",
        "node": "DoctorApp.node",
    }
    flags = {
        **base_flags,
        "json": ({"DoctorApp": {"json_output": True}}, "Print JSON."),
    }

    driver_version = Unicode(
        None, allow_none=True, help="Judge a node with this NVIDIA driver (e.g. 580.95.05)."
    ).tag(config=True)
    compute_capability = Unicode(
        None, allow_none=True, help="Judge a node whose GPUs have this compute capability."
    ).tag(config=True)
    gpu_name = Unicode(None, allow_none=True, help="Name of the hypothetical node's GPU.").tag(
        config=True
    )
    node = Unicode(None, allow_none=True, help="Name of the node (default: this host).").tag(
        config=True
    )
    json_output = Bool(False, help="Print JSON instead of text.").tag(config=True)

    @default("kernel_spec_manager")
    def _kernel_spec_manager_default(self) -> KernelSpecManager:
        # Only container kernels matter here: no warning about the server's own python3.
        return KernelSpecManager(parent=self, data_dir=self.data_dir, ensure_native_kernel=False)

    def initialize(self, argv: Any = None) -> None:
        """Parse the command line, then also read the single-user servers' config file
        (``jupyter_server_config``), where site-wide ``c.ContainerProvisioner.*`` defaults
        live, so the provisioners built here resolve their traits as the server would."""
        super().initialize(argv)
        try:
            Application.load_config_file(self, "jupyter_server_config", path=self.config_file_paths)
        except Exception as e:  # a broken server config must not hide the diagnosis
            self.log.warning("Could not read jupyter_server_config: %s", e)

    def usage_error(self, message: str) -> None:
        """End with one line and exit status 2 (1 means: a verdict failed)."""
        print(f"jupyter kernelprovider doctor: {message}", file=sys.stderr)
        self.exit(2)

    def node_facts(self) -> tuple[HostFacts, dict[str, str], bool]:
        """(facts, which were given on the command line, whether any were) for the node."""
        real = host_facts(node=self.node or None)
        try:
            host, given = hypothetical_host(
                real,
                driver=self.driver_version,
                compute_capability=self.compute_capability,
                gpu_name=self.gpu_name,
                node=self.node,
            )
        except ValueError as e:
            self.usage_error(str(e))
        return host, given, bool(set(given) - {"node"})

    def report_for(
        self, host: HostFacts, hypothetical: bool, kernel: str | None, image: str | None
    ) -> KernelReport:
        """Build the provisioner for a kernel name or an image path and judge it."""
        spec = None
        if kernel is not None:
            spec = self.kernel_spec_manager.get_kernel_spec(kernel)
        try:
            prov = make_provisioner(self, kernel=kernel, spec=spec, image=image)
        except (TraitError, ValueError) as e:
            configured = ((spec.metadata if spec else {}) or {}).get("kernel_provisioner", {})
            report = KernelReport(
                image=image or configured.get("config", {}).get("image") or "?", kernel=kernel
            )
            _fail(report, "config", f"The kernel's provisioner config is invalid: {e}")
            return report
        slurm = prov.__class__.__name__ == "SlurmProvisioner"
        return kernel_report(
            prov,
            host,
            kernel=kernel,
            display_name=spec.display_name if spec is not None else None,
            node_known=hypothetical or not slurm,
        )

    def start(self) -> None:
        """Print the host, then one full report (KERNEL|IMAGE) or a summary of every kernel."""
        if len(self.extra_args) > 1:
            self.usage_error("give at most one KERNEL or IMAGE (see --help).")
        host, given, hypothetical = self.node_facts()
        from .kernelspec import container_kernelspecs

        reports: list[KernelReport] = []
        if self.extra_args:
            target = self.extra_args[0]
            kernels = container_kernelspecs(self.kernel_spec_manager)
            if target in kernels:
                reports.append(self.report_for(host, hypothetical, target, None))
            elif os.path.exists(target) or "/" in target or is_image_uri(target):
                image = target if is_image_uri(target) else os.path.abspath(target)
                reports.append(self.report_for(host, hypothetical, None, image))
            else:
                try:
                    self.kernel_spec_manager.get_kernel_spec(target)
                    known = True
                except NoSuchKernel:
                    known = False
                if known:
                    self.usage_error(
                        f"Kernel {target!r} does not run in a container (it uses no "
                        "kernelprovider provisioner); nothing to check."
                    )
                self.usage_error(
                    f"No container kernel named {target!r} and no image at {target}. See "
                    "'jupyter kernelprovider list', or give the image's path."
                )
        else:
            for name in container_kernelspecs(self.kernel_spec_manager):
                reports.append(self.report_for(host, hypothetical, name, None))

        if self.json_output:
            print(json.dumps(report_dict(host, given, reports), indent=1))
            self.exit(exit_status(reports))
        lines = host_lines(host, given)
        if self.extra_args:
            for report in reports:
                lines += ["", *report_lines(report)]
        else:
            lines += ["", f"Kernels ({len(reports)}):", *summary_lines(reports)]
            if reports:
                lines.append("Details: jupyter kernelprovider doctor NAME")
        print("\n".join(lines))
        self.exit(exit_status(reports))


if __name__ == "__main__":
    DoctorApp.launch_instance()
