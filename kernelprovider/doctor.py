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

import os
import re
import shlex
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from string import Template
from typing import Any

from jupyter_client.kernelspec import KernelSpec
from jupyter_core.paths import jupyter_runtime_dir
from traitlets import TraitError, Unicode
from traitlets.config import LoggingConfigurable

from .apptainer import (
    RuntimeInfo,
    check_bind_sources,
    check_image,
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
    parse_version,
    worst,
)
from .errors import KernelProviderError
from .image import ImageCompression, compression_note, image_compression, image_facts
from .kernelspec import (
    PROVISIONER_NAME,
    SLURM_PROVISIONER_NAME,
    make_kernel_cmd,
    provisioner_class,
)

__all__ = [
    "NO_DRIVER",
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
    cls = provisioner_class(name)
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

    Reads the facts a start reads (runtime, image, node) and prints the provisioner's own
    launch plan (``prov.launch_plan``, the one pre_launch executes), so what doctor prints
    is what a start would run. Launch problems (missing image,
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
        except TimeoutError as e:
            report.verdicts.append(Verdict("warn", str(e), "image"))
        except KernelProviderError as e:
            _fail(report, "image", str(e))

    # What no plan can judge: a kernel without GPU, a node not known yet, a URI image.
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
    if prov.compat_check == "off" and prov.gpu != "none":
        report.notes.append("compat_check is off: a start does not check these verdicts.")

    # Binds, argv and variables: the provisioner's own launch plan, as a start builds it.
    try:
        check_bind_sources(prov.user_binds())
    except KernelProviderError as e:
        _fail(report, "binds", str(e))
    if not node_known and prov.driver_dir:
        report.notes.append(
            f"driver_dir {prov.driver_dir} is chosen on the node, by its driver version."
        )
    runtime = report.runtime or RuntimeInfo(
        "apptainer" if prov.runtime in ("", "auto") else prov.runtime, "apptainer", ""
    )
    connection_file = getattr(prov.parent, "connection_file", "") or ""
    spec_env = (getattr(prov.kernel_spec, "env", None) or {}) if prov.kernel_spec else {}
    # KernelProvisionerBase.pre_launch substitutes ${VAR} in the kernelspec's env this way.
    env.update({k: Template(v).safe_substitute(env) for k, v in spec_env.items()})
    ctx = prov.launch_context(
        prov.inner_command(_inner_argv(prov, connection_file)),
        cwd,
        env,
        host if node_known else None,
        report.facts if node_known and prov.reads_image_facts else None,
        runtime,
    )
    plan = prov.launch_plan(ctx, strict=False)
    if node_known and report.facts is not None and not prov.reads_image_facts:
        # compat_check off: a start reads nothing, but the report still says what it skips.
        report.verdicts.extend(prov.judge(report.facts, host))
    report.verdicts.extend(plan.verdicts)
    report.argv = plan.argv
    report.env = plan.env
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


def kernel_summary(app: Any, name: str, host: HostFacts) -> tuple[str, str, list[FrameworkBuild]]:
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
