"""doctor's text: the host, image, framework, launch and verdict sections, and the summary table.

Pure (facts and :class:`~.model.KernelReport` in, lines out); ``jupyter kernelprovider doctor``
prints them and ``list`` reuses :func:`framework_text`.
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping, Sequence

from ..compat import FrameworkBuild, GpuInfo, HostFacts, ImageFacts, Verdict, cuda_for_driver
from ..compat.versions import is_version
from ..image import compression_note
from .model import NO_DRIVER, KernelReport, _on_gpus, short_reason


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
        supported = cuda_for_driver(host.driver) if is_version(host.driver) else None
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
