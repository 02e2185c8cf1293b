"""The one ``apptainer exec`` that reads an image's files: its script, argv and output.

:data:`INSIDE_SCRIPT` prints CUDA's version files, cuDNN's headers and pip's dist-info names
after marker lines, and runs :data:`FRAMEWORKS_SCRIPT` (:mod:`kernelprovider._inside_frameworks`)
with the image's own Python; :func:`parse_inside_output`, :func:`parse_frameworks_output` and
:func:`apply_framework_scan` turn that output into :class:`~kernelprovider.compat.ImageFacts`.
Pure, but for reading the framework scanner's source once at import.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import fields
from importlib import resources
from typing import Any

from ..compat import FrameworkBuild, ImageFacts
from .metadata import (
    _DISTS,
    _FACTS,
    _clean_version,
    parse_cuda_version_json,
    parse_cuda_version_txt,
    parse_cudnn_header,
    parse_dist_info_name,
)

log = logging.getLogger(__name__)


_MARK = "@@kernelprovider"

#: POSIX sh run inside the image (``exec IMAGE /bin/sh -c INSIDE_SCRIPT``): prints the files
#: that tell CUDA, cuDNN and TensorFlow versions, each after a marker line; only reads.
INSIDE_SCRIPT = f"""\
for f in /usr/local/cuda/version.json /usr/local/cuda/version.txt; do
  if [ -r "$f" ]; then echo "{_MARK} file $f"; cat "$f"; echo; fi
done
for f in /usr/include/cudnn_version.h /usr/include/x86_64-linux-gnu/cudnn_version_v*.h \
/usr/local/cuda/include/cudnn_version.h /usr/include/cudnn.h \
/usr/include/x86_64-linux-gnu/cudnn_v*.h /usr/local/cuda/include/cudnn.h; do
  if [ -r "$f" ]; then
    echo "{_MARK} cudnn $f"
    sed -n -e '/define CUDNN_MAJOR/p' -e '/define CUDNN_MINOR/p' \
-e '/define CUDNN_PATCHLEVEL/p' "$f"
  fi
done
for d in /usr/local/lib/python*/*-packages /usr/lib/python*/*-packages \
/usr/local/lib64/python*/*-packages /opt/*/lib/python*/site-packages; do
  [ -d "$d" ] || continue
  for t in "$d"/tensorflow*-info "$d"/tf_nightly*-info "$d"/nvidia_cuda_runtime*-info \
"$d"/nvidia_cudnn*-info; do
    if [ -e "$t" ]; then echo "{_MARK} dist $t"; fi
  done
done
if [ -n "$1" ]; then
  for p in python3 python; do
    if command -v "$p" >/dev/null 2>&1; then
      echo "{_MARK} frameworks $p"
      "$p" -c "$1" /
      echo
      break
    fi
  done
fi
echo "{_MARK} end"
"""

#: The source of :mod:`kernelprovider._inside_frameworks`, run inside an image as
#: ``python -c FRAMEWORKS_SCRIPT /`` (its first argument, ``$1``, of :data:`INSIDE_SCRIPT`).
FRAMEWORKS_SCRIPT = (
    resources.files("kernelprovider").joinpath("_inside_frameworks.py").read_text("utf-8")
)


def parse_inside_output(text: str) -> dict[str, tuple[str, str]]:
    """{fact: (version, where)} from :data:`INSIDE_SCRIPT`'s output; first evidence wins."""
    found: dict[str, tuple[str, str]] = {}
    sections: list[tuple[str, str, list[str]]] = []
    for line in text.splitlines():
        if line.startswith(_MARK + " "):
            kind, _, where = line[len(_MARK) + 1 :].partition(" ")
            sections.append((kind, where.strip(), []))
        elif sections:
            sections[-1][2].append(line)
    for kind, where, body in sections:
        content = "\n".join(body)
        if kind == "file" and "cuda" not in found:
            value = (
                parse_cuda_version_json(content)
                if where.endswith(".json")
                else parse_cuda_version_txt(content)
            )
            if value:
                found["cuda"] = (value, where)
        elif kind == "cudnn" and "cudnn" not in found:
            value = parse_cudnn_header(content)
            if value:
                found["cudnn"] = (value, where)
        elif kind == "dist":
            parsed = parse_dist_info_name(where)
            if parsed is None:
                continue
            dist, version = parsed
            for fact, names in _DISTS.items():
                if dist in names and fact not in found:
                    value = _clean_version(version)
                    if value:
                        found[fact] = (value, f"pip package {dist}")
    return found


def parse_frameworks_output(text: str) -> dict[str, Any] | None:
    """The JSON that :data:`FRAMEWORKS_SCRIPT` printed in :data:`INSIDE_SCRIPT`'s output, or
    None when it did not run (no Python in the image) or printed no JSON."""
    inside = False
    for line in text.splitlines():
        if line.startswith(_MARK):
            if inside:
                return None
            inside = line.startswith(f"{_MARK} frameworks ")
        elif inside and line.startswith("{"):
            try:
                doc = json.loads(line)
            except ValueError:
                return None
            return doc if isinstance(doc, dict) else None
    return None


_FW_FIELDS = {f.name for f in fields(FrameworkBuild)}


def apply_framework_scan(facts: ImageFacts, scan: Mapping[str, Any], where: str) -> None:
    """Put a framework scan (:func:`kernelprovider._inside_frameworks.scan`) into ``facts``:
    the frameworks, the libcudart files, and TensorFlow's version when nothing else gave it."""
    facts.frameworks = [
        FrameworkBuild(**{k: v for k, v in fw.items() if k in _FW_FIELDS})
        for fw in scan.get("frameworks") or []
        if isinstance(fw, Mapping) and fw.get("name")
    ]
    facts.cudart = [str(p) for p in scan.get("cudart") or []]
    facts.sources["frameworks"] = where
    for fw in facts.frameworks:
        if fw.name == "TensorFlow" and fw.version and facts.tensorflow is None:
            facts.tensorflow = _clean_version(fw.version)
            facts.sources["tensorflow"] = fw.location or where
    for err in scan.get("errors") or []:
        log.debug("Framework scan of %s: %s", facts.name, err)


def inside_argv(runtime: str, path: str, frameworks: bool = True) -> list[str]:
    """The exec that reads version files inside the image: no GPU, no home, no host env.
    ``frameworks``: also run :data:`FRAMEWORKS_SCRIPT` with the image's Python."""
    script = FRAMEWORKS_SCRIPT if frameworks else ""
    return [
        runtime,
        "exec",
        "--cleanenv",
        "--contain",
        path,
        "/bin/sh",
        "-c",
        INSIDE_SCRIPT,
        "kernelprovider-inside",
        script,
    ]


def _needs_inside(facts: ImageFacts) -> bool:
    return any(getattr(facts, f) is None for f in _FACTS)


def _merge_inside(facts: ImageFacts, found: Mapping[str, tuple[str, str]]) -> None:
    for fact, (value, where) in found.items():
        if getattr(facts, fact) is None:
            setattr(facts, fact, value)
            facts.sources[fact] = where
