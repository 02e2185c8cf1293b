"""``jupyter kernelprovider scan``: keep one kernelspec per SIF image found in directories.

The pieces, in the order ``ScanApp.start`` uses them: :func:`find_images` lists ``*.sif``
files; :func:`image_labels` and :func:`kernelprovider.image.image_facts` read each image's
metadata (no kernel started); :func:`identify` turns it into a stable kernel name and a display
name people recognise; :func:`assign_names` settles clashes without renaming what exists;
:func:`plan_changes` compares the wanted kernelspecs with those on disk. Only kernelspecs that
carry the scan's own mark (``metadata.kernelprovider.scan``) are ever updated or removed.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

from .compat import ImageFacts
from .errors import RuntimeNotFound
from .image import inspect_argv, parse_inspect_json
from .kernelspec import name_from_image, valid_kernel_name

__all__ = [
    "SCAN_MARK",
    "Identity",
    "Candidate",
    "Change",
    "assign_names",
    "find_images",
    "identify",
    "image_labels",
    "logo_sources",
    "plan_changes",
    "scan_mark",
    "short_version",
]

#: Key under a kernelspec's ``metadata`` that marks it as made by ``scan``.
SCAN_MARK = "kernelprovider"

# Label (and environment) names, compared case-insensitively, most specific first.
_DISPLAY_NAME_KEYS = ("org.jupyter.kernel.display_name", "KERNEL_DISPLAY_NAME")
_KERNEL_NAME_KEYS = ("org.jupyter.kernel.name", "KERNEL_NAME")
_PYTORCH_KEYS = (
    "PYTORCH_VERSION",
    "TORCH_VERSION",
    "org.pytorch.version",
    "com.nvidia.pytorch.version",
)
_PYTHON_KEYS = ("PYTHON_VERSION", "org.python.version")

_LOGO_NAMES = {"logo-32x32.png": "{kind}-32x32.png", "logo-64x64.png": "{kind}-64x64.png"}
_LOGO_SVG = ("logo-svg.svg", "{kind}.svg")


# --------------------------------------------------------------------------------------------
# Pure parts: names, display names, clashes, the plan


def short_version(value: str | None) -> str | None:
    """``"2.4.0a0+07cecf4"`` -> ``"2.4"``; ``"12"`` -> ``"12"``; None without digits."""
    if not value:
        return None
    m = re.search(r"(\d+)(?:\.(\d+))?", str(value))
    if not m:
        return None
    return m.group(1) if m.group(2) is None else f"{m.group(1)}.{m.group(2)}"


def _lookup(mapping: Mapping[str, str], keys: Iterable[str]) -> str | None:
    by_lower = {k.lower(): v for k, v in mapping.items()}
    for key in keys:
        value = by_lower.get(key.lower())
        if value is not None and str(value).strip():
            return str(value).strip()
    return None


def _tag(version: str) -> str:
    # "1.8" -> "18", "12.4" -> "124": the kernel-name style of the reviewed examples.
    return version.replace(".", "")


@dataclass(frozen=True)
class Identity:
    """What a scanned image is called: ``name`` (kernel name), ``display_name`` (launcher),
    ``gpu`` (the image has CUDA) and the versions the names were made of (for templates)."""

    name: str
    display_name: str
    gpu: bool
    stem: str
    versions: Mapping[str, str] = field(default_factory=dict)
    #: Why the names are what they are, e.g. "labels" or "file name" (printed by --dry-run).
    source: str = "labels"


def identify(
    path: str,
    labels: Mapping[str, str],
    env: Mapping[str, str],
    facts: ImageFacts | None = None,
) -> Identity:
    """Kernel name and display name of the image at ``path`` from its metadata.

    TensorFlow, cuDNN and CUDA come from ``facts`` (:func:`kernelprovider.image.image_facts`),
    PyTorch and Python from labels, then the environment. ``TENSORFLOW_VERSION=1.8`` with
    ``CUDA_VERSION=9.2`` gives ``tf18-cuda92-gpu`` / "TF 1.8 / CUDA 9.2 (GPU)"; an image that
    says nothing is named after its file. The labels ``org.jupyter.kernel.name`` /
    ``KERNEL_NAME`` and ``org.jupyter.kernel.display_name`` / ``KERNEL_DISPLAY_NAME`` win.
    """
    stem = re.sub(r"\.sif$", "", os.path.basename(path), flags=re.IGNORECASE)
    cuda = short_version(facts.cuda if facts else None)
    tensorflow = short_version(facts.tensorflow if facts else None)
    pytorch = short_version(_lookup(labels, _PYTORCH_KEYS) or _lookup(env, _PYTORCH_KEYS))
    python = short_version(_lookup(labels, _PYTHON_KEYS) or _lookup(env, _PYTHON_KEYS))
    versions = {
        k: v
        for k, v in (
            ("cuda", cuda),
            ("tensorflow", tensorflow),
            ("pytorch", pytorch),
            ("python", python),
        )
        if v
    }
    gpu = cuda is not None
    kind = "GPU" if gpu else "CPU"

    words: list[str] = []  # display name parts
    tags: list[str] = []  # kernel name parts
    if tensorflow:
        words.append(f"TF {tensorflow}")
        tags.append(f"tf{_tag(tensorflow)}")
    if pytorch:
        words.append(f"PyTorch {pytorch}")
        tags.append(f"pytorch{_tag(pytorch)}")
    if not words and python:
        words.append(f"Python {python}")
        tags.append(f"python{_tag(python)}")
    if cuda:
        words.append(f"CUDA {cuda}")
        tags.append(f"cuda{_tag(cuda)}")
    if words:
        name = "-".join([*tags, kind.lower()])
        display = f"{' / '.join(words)} ({kind})"
        source = "labels"
    else:
        name = name_from_image(path)
        display = stem
        source = "file name"

    label_name = _lookup(labels, _KERNEL_NAME_KEYS)
    if label_name and valid_kernel_name(label_name):
        name, source = label_name.lower(), "label"
    label_display = _lookup(labels, _DISPLAY_NAME_KEYS)
    if label_display:
        display, source = label_display, "label"
    return Identity(name, display, gpu, stem, versions, source)


def display_from_template(template: str, ident: Identity) -> str:
    """Apply ``--display-name``: placeholders ``{auto}`` (the label's or generated display
    name), ``{name}``, ``{stem}``, ``{kind}``, ``{cuda}``, ``{tensorflow}``, ``{pytorch}``,
    ``{python}`` (empty when unknown). Raises KeyError/ValueError for a bad template."""
    values = {"cuda": "", "tensorflow": "", "pytorch": "", "python": ""}
    values.update(ident.versions)
    values.update(
        auto=ident.display_name,
        name=ident.name,
        stem=ident.stem,
        kind="GPU" if ident.gpu else "CPU",
    )
    return template.format(**values).strip()


@dataclass(frozen=True)
class Candidate:
    """An image found by this scan and what it would be called before clashes are settled."""

    image: str
    source_dir: str
    identity: Identity


def scan_mark(spec: Mapping[str, Any]) -> dict[str, Any] | None:
    """The scan's mark of a kernel.json (``{"image": ..., "source_dir": ...}``), or None."""
    meta = spec.get("metadata")
    mark = meta.get(SCAN_MARK) if isinstance(meta, Mapping) else None
    scan = mark.get("scan") if isinstance(mark, Mapping) else None
    if isinstance(scan, Mapping) and isinstance(scan.get("image"), str):
        return dict(scan)
    return None


def assign_names(
    candidates: Sequence[Candidate],
    existing: Mapping[str, Mapping[str, Any]],
    image_exists: Callable[[str], bool] = os.path.exists,
) -> dict[str, tuple[str, str]]:
    """Settle kernel names: image -> (kernel name, display name).

    ``existing`` maps kernel names already in the target directory to their kernel.json.
    Stable across runs: an image keeps the name a scan gave it before (as long as that name
    still fits its metadata); a new image gets its generated name when free, else the name
    plus its file name (``tf18-cuda92-gpu-tf-b``, display "... [tf-b]"), else a number. A
    name held by a kernelspec the scan did not make is never taken; one held by a scanned
    kernelspec whose image is gone is reused (a moved image keeps its kernel name).
    """
    ours = {n: m["image"] for n, s in existing.items() if (m := scan_mark(s)) is not None}
    current = {c.image for c in candidates}
    result: dict[str, tuple[str, str]] = {}
    taken: set[str] = set()

    def label(c: Candidate, name: str) -> str:
        base = c.identity.display_name
        return base if name == c.identity.name else f"{base} [{c.identity.stem}]"

    for c in candidates:
        base = c.identity.name
        for name, image in sorted(ours.items()):
            if (
                image == c.image
                and name not in taken
                and (name == base or name.startswith(base + "-"))
            ):
                result[c.image] = (name, label(c, name))
                taken.add(name)
                break

    def free(name: str) -> bool:
        if name in taken or not valid_kernel_name(name):
            return False
        if name not in existing:
            return True
        image = ours.get(name)
        return image is not None and image not in current and not image_exists(image)

    for c in candidates:
        if c.image in result:
            continue
        base = c.identity.name
        suffix = name_from_image(c.image)
        options = [base] if suffix == base else [base, f"{base}-{suffix}"]
        options += (f"{options[-1]}-{i}" for i in range(2, 1000))
        name = next(n for n in options if free(n))
        result[c.image] = (name, label(c, name))
        taken.add(name)
    return result


@dataclass
class Change:
    """One line of the plan: ``verb`` is add, update, unchanged, remove, stale or skip."""

    verb: str
    name: str
    display_name: str = ""
    image: str = ""
    detail: str = ""
    spec: dict[str, Any] | None = None
    logos: dict[str, str] = field(default_factory=dict)


def _differences(old: Any, new: Any, path: str = "") -> list[str]:
    if isinstance(old, Mapping) and isinstance(new, Mapping):
        out: list[str] = []
        for key in sorted(set(old) | set(new)):
            sub = f"{path}.{key}" if path else str(key)
            if key not in old or key not in new:
                out.append(sub)
            else:
                out += _differences(old[key], new[key], sub)
        return out
    return [] if old == new else [path or "(all)"]


def plan_changes(
    wanted: Mapping[str, tuple[str, dict[str, Any], dict[str, bytes]]],
    existing: Mapping[str, Mapping[str, Any]],
    existing_logos: Mapping[str, Mapping[str, bytes]],
    scanned_dirs: Iterable[str],
    found_images: Iterable[str],
    prune: bool,
    image_exists: Callable[[str], bool] = os.path.exists,
) -> list[Change]:
    """What to do, kernel by kernel, sorted by name.

    ``wanted`` maps kernel name -> (image, kernel.json, logo name -> bytes). A wanted kernel
    equal to what is on disk (JSON and logos) is "unchanged"; nothing is written for it.
    A scanned kernelspec that no wanted one replaces: "remove" when its image was found under
    another name now (its metadata changed), or when its image is gone from a scanned
    directory and ``prune`` is set ("stale" without ``prune``); anything else is left alone.
    """
    scanned = {os.path.abspath(d) for d in scanned_dirs}
    found = set(found_images)
    changes: list[Change] = []
    for name, (image, spec, logos) in wanted.items():
        display = spec.get("display_name", name)
        if name not in existing:
            changes.append(Change("add", name, display, image, spec=spec))
            continue
        diff = _differences(existing[name], json.loads(json.dumps(spec)))
        old_logos = existing_logos.get(name, {})
        diff += [f for f, data in sorted(logos.items()) if old_logos.get(f) != data]
        verb = "update" if diff else "unchanged"
        detail = f"changed: {', '.join(diff)}" if diff else ""
        changes.append(Change(verb, name, display, image, detail, spec if diff else None))
    for name, spec in existing.items():
        mark = scan_mark(spec)
        if name in wanted or mark is None:
            continue
        image = mark["image"]
        display = str(spec.get("display_name", name))
        if image in found:
            changes.append(
                Change(
                    "remove", name, display, image, "the image is now scanned under another name"
                )
            )
        elif os.path.abspath(str(mark.get("source_dir", ""))) in scanned and not image_exists(
            image
        ):
            if prune:
                changes.append(Change("remove", name, display, image, "image gone"))
            else:
                changes.append(
                    Change("stale", name, display, image, "image gone; --prune removes it")
                )
    return sorted(changes, key=lambda c: (c.name, c.verb))


# --------------------------------------------------------------------------------------------
# I/O: finding images, reading labels, logos


def find_images(directory: str, recursive: bool = False) -> list[str]:
    """Absolute paths of the ``*.sif`` files in ``directory`` (and below it with
    ``recursive``), sorted; hidden files and directories and broken links are skipped. Paths
    are kept as found, links not resolved, so a ``latest.sif`` link keeps pointing the
    kernelspec at whatever it links to."""
    root = os.path.abspath(directory)
    found: list[str] = []
    if recursive:
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            found += (os.path.join(dirpath, f) for f in filenames)
    else:
        with os.scandir(root) as entries:
            found += (e.path for e in entries)
    return sorted(
        p
        for p in found
        if p.lower().endswith(".sif")
        and not os.path.basename(p).startswith(".")
        and os.path.isfile(p)
    )


def _runtime_exe(runtime: str) -> str:
    if runtime and os.path.isabs(runtime):
        return runtime
    names = (runtime,) if runtime and runtime != "auto" else ("apptainer", "singularity")
    for name in names:
        found = shutil.which(name)
        if found:
            return found
    raise RuntimeNotFound(
        f"Container runtime {runtime or 'apptainer'!r} not found, so images cannot be read. "
        "Install Apptainer or pass --runtime with its full path."
    )


def image_labels(path: str, runtime: str = "", timeout: float = 60.0) -> tuple[dict, dict]:
    """(labels, environment) of the image at ``path`` from one ``apptainer inspect``.

    Called by ``scan`` after :func:`kernelprovider.image.image_facts` accepted the image, for
    the labels that facts do not carry (display-name overrides, PyTorch, Python)."""
    argv = inspect_argv(_runtime_exe(runtime), path)
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    if proc.returncode != 0:
        return {}, {}
    return parse_inspect_json(proc.stdout)


def logo_sources(gpu: bool) -> dict[str, str]:
    """Kernelspec logo file name -> path of the shipped logo for a GPU or CPU image."""
    kind = "gpu" if gpu else "cpu"
    base = resources.files("kernelprovider") / "logos"
    names = {**_LOGO_NAMES, _LOGO_SVG[0]: _LOGO_SVG[1]}
    return {dest: str(base / src.format(kind=kind)) for dest, src in names.items()}


def _read_existing(kernels_dir: str) -> tuple[dict[str, dict], dict[str, dict[str, bytes]]]:
    specs: dict[str, dict] = {}
    logos: dict[str, dict[str, bytes]] = {}
    if not os.path.isdir(kernels_dir):
        return specs, logos
    for name in sorted(os.listdir(kernels_dir)):
        folder = os.path.join(kernels_dir, name)
        try:
            with open(os.path.join(folder, "kernel.json"), encoding="utf-8") as f:
                spec = json.load(f)
        except (OSError, ValueError):
            # Not a kernelspec we can read: its name is still taken.
            specs[name] = {}
            continue
        specs[name] = spec if isinstance(spec, dict) else {}
        logos[name] = {}
        for logo in (*_LOGO_NAMES, _LOGO_SVG[0]):
            try:
                with open(os.path.join(folder, logo), "rb") as f:
                    logos[name][logo] = f.read()
            except OSError:
                pass
    return specs, logos
