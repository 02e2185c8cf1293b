"""Pure parsers of what an image says about itself: labels and environment, version files.

``apptainer inspect --json --labels --environment`` (:func:`inspect_argv`,
:func:`parse_inspect_json`, the ``/.singularity.d/env`` scripts) gives labels and environment,
from which :func:`facts_from_metadata` takes the CUDA, cuDNN and TensorFlow versions; the
parsers of CUDA's version files, cuDNN's header and pip's ``*.dist-info`` names serve what
:mod:`.inside` reads from the image's files.
"""

from __future__ import annotations

import json
import os
import re
import shlex
from collections.abc import Mapping
from typing import Any

from ..compat import ImageFacts, parse_version

# Label names, compared case-insensitively, most common first. OCI labels of NVIDIA's and NGC's
# images survive the conversion to SIF.
_LABELS = {
    "cuda": ("cuda_version", "com.nvidia.cuda.version", "org.nvidia.cuda.version", "cuda"),
    "cudnn": ("cudnn_version", "com.nvidia.cudnn.version", "org.nvidia.cudnn.version", "cudnn"),
    "tensorflow": (
        "tensorflow_version",
        "com.nvidia.tensorflow.version",
        "org.tensorflow.version",
        "tensorflow",
    ),
}
_ENV = {
    "cuda": ("CUDA_VERSION", "NV_CUDA_LIB_VERSION"),
    "cudnn": ("CUDNN_VERSION", "NV_CUDNN_VERSION"),
    "tensorflow": ("TENSORFLOW_VERSION",),
}
_FACTS = ("cuda", "cudnn", "tensorflow")


# --------------------------------------------------------------------------------------------
# Pure parsers


def _clean_version(value: object) -> str | None:
    """``"12.4.1-1"`` -> ``"12.4.1"``; None for values without a version (``"yes"``, "")."""
    if value is None:
        return None
    text = str(value).strip()
    if not text or not any(ch.isdigit() for ch in text):
        return None
    try:
        return ".".join(str(p) for p in parse_version(text))
    except ValueError:
        return None


_ASSIGN = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)=(.*)$", re.S)
_DEFAULT = re.compile(r"^\$\{([A-Za-z_][A-Za-z0-9_]*):?[-=](.*)\}$", re.S)


def parse_env_script(text: str) -> dict[str, str]:
    """Variables that an image's ``/.singularity.d/env/*.sh`` script exports.

    Reads ``export A=1``, ``A=1`` and docker2singularity's ``export A="${A:-"1"}"`` (whose
    default is the image's value). Lines that are not plain assignments are skipped; nothing
    is executed.
    """
    found: dict[str, str] = {}
    for line in text.splitlines():
        try:
            tokens = shlex.split(line, comments=True)
        except ValueError:
            continue
        if tokens and tokens[0] == "export":
            tokens = tokens[1:]
        for token in tokens:
            m = _ASSIGN.match(token)
            if not m:
                break
            value = m.group(2)
            d = _DEFAULT.match(value)
            found[m.group(1)] = d.group(2) if d else value
    return found


def parse_inspect_json(text: str) -> tuple[dict[str, str], dict[str, str]]:
    """(labels, environment) from ``apptainer inspect --json --labels --environment``.

    The environment merges the image's env scripts in the order Apptainer sources them (by
    file name, later ones winning). Raises ValueError when ``text`` is not inspect's JSON.
    """
    try:
        doc = json.loads(text)
        attrs = doc.get("data", {}).get("attributes", {}) or {}
    except (ValueError, AttributeError) as e:
        raise ValueError(f"Not the JSON of 'apptainer inspect': {text.strip()[:200]!r}") from e
    labels_raw: Any = attrs.get("labels") or {}
    if isinstance(labels_raw, str):  # very old singularity nested the labels as a string
        try:
            labels_raw = json.loads(labels_raw)
        except ValueError:
            labels_raw = {}
    labels = {str(k): str(v) for k, v in dict(labels_raw).items()} if labels_raw else {}
    env_raw: Any = attrs.get("environment") or {}
    env: dict[str, str] = {}
    if isinstance(env_raw, str):
        env.update(parse_env_script(env_raw))
    elif isinstance(env_raw, Mapping):
        for _, script in sorted(env_raw.items()):
            env.update(parse_env_script(str(script)))
    return labels, env


def facts_from_metadata(
    name: str, labels: Mapping[str, str], env: Mapping[str, str], path: str | None = None
) -> ImageFacts:
    """ImageFacts from labels (first) and environment (second); files are not looked at."""
    by_lower = {k.lower(): k for k in labels}
    facts = ImageFacts(name=name, path=path, ld_library_path=env.get("LD_LIBRARY_PATH"))
    for fact in _FACTS:
        for key in _LABELS[fact]:
            original = by_lower.get(key)
            value = _clean_version(labels[original]) if original is not None else None
            if value:
                setattr(facts, fact, value)
                facts.sources[fact] = f"label {original}"
                break
        if getattr(facts, fact) is not None:
            continue
        for key in _ENV[fact]:
            value = _clean_version(env.get(key))
            if value:
                setattr(facts, fact, value)
                facts.sources[fact] = f"environment {key}"
                break
    return facts


def parse_cuda_version_json(text: str) -> str | None:
    """``/usr/local/cuda/version.json`` (CUDA 11.1+): ``{"cuda": {"version": "12.4.1"}}``."""
    try:
        doc = json.loads(text)
        return _clean_version(doc["cuda"]["version"])
    except (ValueError, KeyError, TypeError):
        return None


def parse_cuda_version_txt(text: str) -> str | None:
    """``/usr/local/cuda/version.txt`` (CUDA 11.0 and older): ``CUDA Version 9.2.148``."""
    m = re.search(r"CUDA Version\s+(\d+(?:\.\d+)+)", text)
    return m.group(1) if m else None


def parse_cudnn_header(text: str) -> str | None:
    """cuDNN's version from the ``#define CUDNN_MAJOR/MINOR/PATCHLEVEL`` lines of its header."""
    parts = {}
    for key in ("MAJOR", "MINOR", "PATCHLEVEL"):
        m = re.search(rf"#\s*define\s+CUDNN_{key}\s+(\d+)", text)
        if m:
            parts[key] = m.group(1)
    if "MAJOR" not in parts or "MINOR" not in parts:
        return None
    return ".".join(parts[k] for k in ("MAJOR", "MINOR", "PATCHLEVEL") if k in parts)


# pip distribution names (normalized) whose version is the fact itself.
_DISTS = {
    "tensorflow": ("tensorflow", "tensorflow-gpu", "tensorflow-cpu", "tf-nightly"),
    "cuda": ("nvidia-cuda-runtime-cu13", "nvidia-cuda-runtime-cu12", "nvidia-cuda-runtime-cu11"),
    "cudnn": ("nvidia-cudnn-cu13", "nvidia-cudnn-cu12", "nvidia-cudnn-cu11"),
}


def parse_dist_info_name(dirname: str) -> tuple[str, str] | None:
    """``tensorflow_gpu-1.8.0.dist-info`` -> ``("tensorflow-gpu", "1.8.0")``; also egg-info."""
    base = os.path.basename(dirname.rstrip("/"))
    m = re.match(r"^([A-Za-z0-9_.]+?)-(\d[^-]*?)(?:-py\d.*)?\.(?:dist|egg)-info$", base)
    if not m:
        return None
    return m.group(1).lower().replace("_", "-").replace(".", "-"), m.group(2)


def inspect_argv(runtime: str, path: str) -> list[str]:
    """The one inspect call that gives labels and environment as JSON."""
    return [runtime, "inspect", "--json", "--labels", "--environment", path]
