"""``jupyter kernelprovider doctor``: what a kernel would meet on a node, said before it starts.

For a kernel (an installed kernelspec) or an image path it prints the node's NVIDIA driver and
GPUs, the image's CUDA/cuDNN/TensorFlow and where each was read, the runtime, the exact argv
and container environment the provisioner would use, and the verdicts of
:func:`kernelprovider.compat.evaluate`. ``--driver-version`` / ``--compute-capability`` /
``--gpu-name`` / ``--node`` describe a node that is not this one (an admin planning a driver
upgrade, or the GPU nodes seen from a login node). Without an argument: the host and one verdict
line per installed container kernelspec. ``list`` reuses :func:`kernel_report` for its VERDICT
column.

The package re-exports its public names; each lives in one module: :mod:`.model` (the report
as data, the hypothetical node, what renderers share), :mod:`.text` and :mod:`.jsondoc` (the
pure formatting: facts in, lines or a JSON document out; unit-tested) and :mod:`.report`
(:func:`kernel_report` and :func:`make_provisioner`, the I/O: nvidia-smi, ``apptainer
inspect``, blocking, as CLIs may). The command itself is :mod:`kernelprovider.cli.doctor`.
"""

from __future__ import annotations

from .jsondoc import framework_dict, report_dict
from .model import (
    NO_DRIVER,
    PLACEHOLDER_ID,
    KernelReport,
    exit_status,
    hypothetical_host,
    short_reason,
)
from .report import kernel_report, kernel_summary, kernel_verdict, make_provisioner
from .text import (
    format_argv,
    framework_lines,
    framework_text,
    host_lines,
    image_lines,
    launch_lines,
    report_lines,
    summary_lines,
    verdict_lines,
)

__all__ = [
    "NO_DRIVER",
    "PLACEHOLDER_ID",
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
    "kernel_verdict",
    "launch_lines",
    "make_provisioner",
    "report_dict",
    "report_lines",
    "short_reason",
    "summary_lines",
    "verdict_lines",
]
