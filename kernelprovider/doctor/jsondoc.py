"""doctor's ``--json`` document: :func:`report_dict` for the whole run, :func:`framework_dict`
for one framework (``list --json`` reuses it). Pure.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict
from typing import Any

from ..compat import FrameworkBuild, HostFacts, Verdict, cuda_for_driver, worst
from ..compat.versions import is_version
from ..image import compression_note
from .model import KernelReport, _on_gpus, short_reason


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
            if host.driver and is_version(host.driver)
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
