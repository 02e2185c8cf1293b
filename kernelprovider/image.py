"""Image metadata (CUDA, cuDNN, TensorFlow versions) read without starting a kernel; cached.

Order of evidence: the image's labels, then its environment (``CUDA_VERSION`` as nvidia/cuda
images set it, kept by Apptainer in ``/.singularity.d/env/10-docker2singularity.sh``), both from
one ``apptainer inspect --json --labels --environment``; then, for what is still unknown, files
inside the image (``/usr/local/cuda/version.json`` or ``version.txt``, cuDNN headers, the
``*.dist-info`` of pip's tensorflow and nvidia-* wheels) read by one short ``apptainer exec``.
The same exec runs :mod:`kernelprovider._inside_frameworks` with the image's own Python: what
its PyTorch, TensorFlow, JAX or CuPy were built for (their version files and the SM
architectures in the ``.nv_fatbin`` of their CUDA libraries) and which libcudart it ships; for
a sandbox directory that module reads the files from this host instead. Results are cached
by (real path, size, mtime) in memory and in a small JSON file, so the provisioner pays for
this once per image, not once per kernel.

The parsers are pure; :func:`image_facts` blocks (CLI, threads) and :func:`image_facts_async`
is for the provisioner's event loop.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import shlex
import shutil
import signal
import struct
import tempfile
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields, replace
from importlib import resources
from pathlib import Path
from typing import Any

from . import _inside_frameworks
from .aio import shared
from .compat import FrameworkBuild, ImageFacts, parse_version
from .errors import ImageNotFound, ImageNotReadable, NotAContainerImage, RuntimeNotFound

__all__ = [
    "FRAMEWORKS_SCRIPT",
    "INSIDE_SCRIPT",
    "ImageFacts",
    "COMPRESSION_COST",
    "ImageCompression",
    "apply_framework_scan",
    "clear_cache",
    "compression_note",
    "image_compression",
    "default_cache_file",
    "facts_from_metadata",
    "image_facts",
    "image_facts_async",
    "inside_argv",
    "inspect_argv",
    "parse_cuda_version_json",
    "parse_cuda_version_txt",
    "parse_cudnn_header",
    "parse_dist_info_name",
    "parse_env_script",
    "parse_frameworks_output",
    "parse_inside_output",
    "parse_inspect_json",
]

log = logging.getLogger(__name__)

#: Seconds one ``inspect`` or ``exec`` may take before it is given up.
DEFAULT_TIMEOUT = 60.0
_CACHE_FORMAT = 3

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
    resources.files(__package__ or "kernelprovider")
    .joinpath("_inside_frameworks.py")
    .read_text("utf-8")
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


# --------------------------------------------------------------------------------------------
# Compression of the image's squashfs: read from its superblock, no tools


#: squashfs superblock compression ids (``squashfs_fs.h``).
_SQUASHFS_COMPRESSORS = {1: "gzip", 2: "lzma", 3: "lzo", 4: "xz", 5: "lz4", 6: "zstd"}
_SIF_DESCR_SIZE = 585  # sif.rawDescriptor, packed little-endian
_SIF_PARTITION = 0x4004  # sif.DataPartition

#: What each compressor costs a kernel start (read once per start from the image, 2 cores,
#: bench/bench_start.py): the kernel's own files are decompressed on every import.
COMPRESSION_COST = {
    "gzip": "fast to read (apptainer's default)",
    "zstd": "fast to read, smaller than gzip",
    "lz4": "fastest to read, largest",
    "lzo": "fast to read, large",
    "xz": "slow to read: every kernel start imports its Python about twice as slowly as from "
    "gzip or zstd; rebuild with --mksquashfs-args '-comp zstd' (or gzip)",
    "lzma": "slow to read (like xz); rebuild with --mksquashfs-args '-comp zstd' (or gzip)",
}


@dataclass(frozen=True)
class ImageCompression:
    """How an image's root filesystem is stored: ``kind`` (sif, squashfs, sandbox, ext3), the
    squashfs ``compressor`` (gzip, xz, zstd, ...; None where there is none) and the byte
    ``offset`` of the root filesystem in the file (``unsquashfs -o``)."""

    kind: str
    compressor: str | None = None
    offset: int = 0


def _squashfs_compressor(head: bytes) -> str | None:
    if len(head) < 22 or head[:4] != b"hsqs":
        return None
    (cid,) = struct.unpack_from("<H", head, 20)
    return _SQUASHFS_COMPRESSORS.get(cid, f"unknown ({cid})")


def image_compression(path: str) -> ImageCompression | None:
    """The compression of the image at ``path``, read from its SIF descriptors and squashfs
    superblock (pure Python, a few hundred bytes read); None when it is no image we know.

    Called by ``doctor`` (blocking; the provisioner does not need it) and the start benchmark.
    Raises OSError when the file cannot be read.
    """
    if os.path.isdir(path):
        return ImageCompression("sandbox")
    with open(path, "rb") as f:
        head = f.read(128)
        if head[:4] == b"hsqs":
            f.seek(0)
            return ImageCompression("squashfs", _squashfs_compressor(f.read(96)))
        if head[32:41] != b"SIF_MAGIC":
            f.seek(1080)
            return ImageCompression("ext3") if f.read(2) == b"\x53\xef" else None
        dtotal, descroff = struct.unpack_from("<qq", head, 88)
        for i in range(max(0, min(dtotal, 64))):
            f.seek(descroff + i * _SIF_DESCR_SIZE)
            descr = f.read(_SIF_DESCR_SIZE)
            if len(descr) < 33:
                break
            dtype, used = struct.unpack_from("<i?", descr, 0)
            (offset,) = struct.unpack_from("<q", descr, 17)
            if dtype != _SIF_PARTITION or not used:
                continue
            f.seek(offset)
            comp = _squashfs_compressor(f.read(96))
            if comp is not None:
                return ImageCompression("sif", comp, offset)
            f.seek(offset + 1080)
            if f.read(2) == b"\x53\xef":
                return ImageCompression("sif", None, offset)
    return ImageCompression("sif")


def compression_note(comp: ImageCompression) -> str:
    """One line for ``doctor``: how the image is stored and what that costs a kernel start."""
    if comp.kind == "sandbox":
        return (
            "sandbox directory (no decompression; many small files on a shared filesystem "
            "can be slower than one SIF)"
        )
    if comp.compressor is None:
        return f"{comp.kind} (not squashfs)"
    cost = COMPRESSION_COST.get(comp.compressor, "unknown cost")
    return f"{comp.kind}, squashfs {comp.compressor}: {cost}"


# --------------------------------------------------------------------------------------------
# Commands


def inspect_argv(runtime: str, path: str) -> list[str]:
    """The one inspect call that gives labels and environment as JSON."""
    return [runtime, "inspect", "--json", "--labels", "--environment", path]


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


def _resolve_runtime(runtime: str) -> str:
    names = ("apptainer", "singularity") if runtime in ("", "auto") else (runtime,)
    for name in names:
        found = shutil.which(name)
        if found:
            return found
    raise RuntimeNotFound(
        f"Container runtime {runtime!r} not found or not executable, so the image's CUDA "
        "version cannot be read. Install Apptainer or set ContainerProvisioner.runtime to its "
        "full path."
    )


def _inspect_failed(runtime: str, path: str, rc: int, stderr: str) -> NotAContainerImage:
    last = next((ln.strip() for ln in reversed(stderr.splitlines()) if ln.strip()), "")
    return NotAContainerImage(
        f"{os.path.basename(runtime)} inspect could not read {path} (exit {rc}: {last[:300]}). "
        f"Check that it is a SIF/squashfs image or a sandbox directory, e.g. with "
        f"'{os.path.basename(runtime)} inspect {path}'."
    )


def _timed_out(what: str, path: str, timeout: float) -> TimeoutError:
    return TimeoutError(
        f"'{what}' did not answer within {timeout:g} s for {path}; its filesystem may be slow "
        "or hung. Try again, or check the filesystem the image is on."
    )


def _needs_inside(facts: ImageFacts) -> bool:
    return any(getattr(facts, f) is None for f in _FACTS)


def _merge_inside(facts: ImageFacts, found: Mapping[str, tuple[str, str]]) -> None:
    for fact, (value, where) in found.items():
        if getattr(facts, fact) is None:
            setattr(facts, fact, value)
            facts.sources[fact] = where


# --------------------------------------------------------------------------------------------
# Cache

_memory: dict[tuple[str, int, int, bool], ImageFacts] = {}


def clear_cache() -> None:
    """Forget the in-memory cache (tests; the disk cache is keyed by mtime and stays valid)."""
    _memory.clear()


def default_cache_file() -> Path:
    """Where image facts are kept between processes: Jupyter's runtime directory when
    jupyter_core is importable, else ``$XDG_CACHE_HOME/kernelprovider`` (``~/.cache``)."""
    try:
        from jupyter_core.paths import jupyter_runtime_dir

        return Path(jupyter_runtime_dir()) / "kernelprovider-image-facts.json"
    except ImportError:
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        return Path(base) / "kernelprovider" / "image-facts.json"


def _image_key(path: str) -> tuple[str, int, int]:
    if "://" in path:
        raise NotAContainerImage(
            f"{path} is a URI; image metadata can only be read from a local image. Pull it first "
            "('apptainer pull') and point the kernelspec at the SIF file."
        )
    real = os.path.realpath(path)
    try:
        st = os.stat(real)
    except FileNotFoundError as e:
        raise ImageNotFound(
            f"Image {path} not found. Check the path in the kernelspec or run "
            "'jupyter kernelprovider list'."
        ) from e
    except PermissionError as e:
        raise ImageNotReadable(
            f"Image {path} cannot be read by this user ({e.strerror}). Ask the admin to make it "
            "readable (chmod a+r) or copy it somewhere you can read."
        ) from e
    if not os.access(real, os.R_OK):
        raise ImageNotReadable(
            f"Image {path} cannot be read by this user. Ask the admin to make it readable "
            "(chmod a+r) or copy it somewhere you can read."
        )
    return real, st.st_size, st.st_mtime_ns


def _copy(facts: ImageFacts) -> ImageFacts:
    return replace(facts, sources=dict(facts.sources))


def _image_name(path: str) -> str:
    return os.path.basename(path.rstrip("/")) or path


def _named(facts: ImageFacts, path: str) -> ImageFacts:
    # The cache is keyed by the real path; messages use the name the kernelspec gave.
    return replace(facts, name=_image_name(path), path=path)


def _disk_load(cache_file: Path, key: tuple[str, int, int], look_inside: bool) -> ImageFacts | None:
    try:
        doc = json.loads(cache_file.read_text("utf-8"))
        entry = doc["images"][key[0]]
        if doc.get("format") != _CACHE_FORMAT or [entry["size"], entry["mtime_ns"]] != [
            key[1],
            key[2],
        ]:
            return None
        if look_inside and not entry.get("look_inside"):
            return None
        return ImageFacts(**entry["facts"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _disk_store(
    cache_file: Path, key: tuple[str, int, int], look_inside: bool, facts: ImageFacts
) -> None:
    # Best effort: a cache that cannot be written costs time, never a kernel.
    try:
        try:
            doc = json.loads(cache_file.read_text("utf-8"))
            if doc.get("format") != _CACHE_FORMAT or not isinstance(doc.get("images"), dict):
                raise ValueError("other format")
        except (OSError, ValueError):
            doc = {"format": _CACHE_FORMAT, "images": {}}
        doc["images"][key[0]] = {
            "size": key[1],
            "mtime_ns": key[2],
            "look_inside": look_inside,
            "facts": asdict(facts),
        }
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=cache_file.parent, prefix=".image-facts-", suffix=".tmp")
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(doc, f, indent=1, sort_keys=True)
        os.replace(tmp, cache_file)
    except OSError as e:
        log.debug("Could not write the image facts cache %s: %s", cache_file, e)


def _cache_get(
    key: tuple[str, int, int], look_inside: bool, cache_file: Path | None
) -> ImageFacts | None:
    for inside in (True, False) if not look_inside else (True,):
        hit = _memory.get((*key, inside))
        if hit is not None:
            return _copy(hit)
    if cache_file is not None:
        hit = _disk_load(cache_file, key, look_inside)
        if hit is not None:
            _memory[(*key, look_inside)] = hit
            return _copy(hit)
    return None


def _cache_put(
    key: tuple[str, int, int], look_inside: bool, cache_file: Path | None, facts: ImageFacts
) -> None:
    _memory[(*key, look_inside)] = _copy(facts)
    if cache_file is not None:
        _disk_store(cache_file, key, look_inside, facts)


def _cache_path(cache_file: str | os.PathLike[str] | None, use_disk_cache: bool) -> Path | None:
    if not use_disk_cache:
        return None
    return Path(cache_file) if cache_file is not None else default_cache_file()


# --------------------------------------------------------------------------------------------
# Entry points


def image_facts(
    path: str,
    runtime: str = "apptainer",
    *,
    timeout: float = DEFAULT_TIMEOUT,
    look_inside: bool = True,
    use_disk_cache: bool = True,
    cache_file: str | os.PathLike[str] | None = None,
) -> ImageFacts:
    """CUDA, cuDNN and TensorFlow versions of the image at ``path`` (blocking).

    Called by ``jupyter kernelprovider scan/doctor`` and, in a thread, by anything that is
    not async. ``runtime`` is a command name, an absolute path or "auto". ``look_inside``
    allows one ``exec`` for facts the labels and environment lack. Raises ImageNotFound,
    ImageNotReadable, NotAContainerImage, RuntimeNotFound or TimeoutError.
    """
    # One implementation: the async one, on a loop of its own (the CLI has none running).
    return asyncio.run(
        image_facts_async(
            path,
            runtime,
            timeout=timeout,
            look_inside=look_inside,
            use_disk_cache=use_disk_cache,
            cache_file=cache_file,
        )
    )


def _kill_group(pid: int) -> None:
    # The runtime runs in a session of its own (start_new_session), so its helpers
    # (starter, squashfuse) go with it and cannot hold our pipes open past the timeout.
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


async def _run_async(argv: list[str], timeout: float) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        start_new_session=True,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except asyncio.TimeoutError:
        _kill_group(proc.pid)
        if proc.returncode is None:
            proc.kill()
        await proc.wait()
        raise
    return proc.returncode or 0, out.decode(errors="replace"), err.decode(errors="replace")


async def image_facts_async(
    path: str,
    runtime: str = "apptainer",
    *,
    timeout: float = DEFAULT_TIMEOUT,
    look_inside: bool = True,
    use_disk_cache: bool = True,
    cache_file: str | os.PathLike[str] | None = None,
) -> ImageFacts:
    """Like :func:`image_facts`, for the provisioner's ``pre_launch``: subprocesses through
    ``asyncio.create_subprocess_exec``, file-system work in a thread; never blocks the loop.
    """
    key = await asyncio.to_thread(_image_key, path)
    disk = _cache_path(cache_file, use_disk_cache)
    cached = await asyncio.to_thread(_cache_get, key, look_inside, disk)
    if cached is None:
        # Kernels started together on a cold cache share one inspect and one exec.
        cached = _copy(
            await shared(
                ("image-facts", key, look_inside, disk, runtime, timeout),
                lambda: _read_facts(path, key, runtime, timeout, look_inside, disk),
            )
        )
    return _named(cached, path)


async def _read_facts(
    path: str,
    key: tuple[str, int, int],
    runtime: str,
    timeout: float,
    look_inside: bool,
    disk: Path | None,
) -> ImageFacts:
    exe = await asyncio.to_thread(_resolve_runtime, runtime)
    try:
        rc, out, err = await _run_async(inspect_argv(exe, key[0]), timeout)
    except asyncio.TimeoutError as e:
        raise _timed_out(f"{os.path.basename(exe)} inspect", path, timeout) from e
    if rc != 0:
        raise _inspect_failed(exe, path, rc, err)
    facts = _facts_from_inspect(exe, path, out, err)
    if look_inside:
        # A sandbox directory's files are read from here; a SIF's through one exec.
        sandbox = os.path.isdir(key[0])
        if _needs_inside(facts) or not sandbox:
            try:
                argv = inside_argv(exe, key[0], frameworks=not sandbox)
                _, inner, _ = await _run_async(argv, timeout)
                _merge_inside(facts, parse_inside_output(inner))
                scan = None if sandbox else parse_frameworks_output(inner)
                if scan is not None:
                    apply_framework_scan(facts, scan, "the image's Python")
            except (OSError, asyncio.TimeoutError) as e:
                log.debug("Could not read version files inside %s: %s", path, e)
        if sandbox:
            try:
                scan = await asyncio.wait_for(
                    asyncio.to_thread(_inside_frameworks.scan, key[0]), timeout
                )
                apply_framework_scan(facts, scan, "the sandbox's files")
            except (OSError, ValueError, asyncio.TimeoutError) as e:
                log.debug("Could not read the frameworks of %s: %s", path, e)
    await asyncio.to_thread(_cache_put, key, look_inside, disk, facts)
    return facts


def _facts_from_inspect(exe: str, path: str, stdout: str, stderr: str) -> ImageFacts:
    try:
        labels, env = parse_inspect_json(stdout)
    except ValueError as e:
        raise _inspect_failed(exe, path, 0, stderr or str(e)) from e
    return facts_from_metadata(_image_name(path), labels, env, path=path)
