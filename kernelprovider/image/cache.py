"""The image-facts cache: in memory and in a small JSON file, keyed by (real path, size, mtime).

:func:`_image_key` also checks that the image exists and is readable (the named errors a user
meets first); :func:`.facts.image_facts_async` reads and fills the cache through threads.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from dataclasses import asdict, replace
from pathlib import Path

from ..compat import ImageFacts
from ..errors import ImageNotFound, ImageNotReadable, NotAContainerImage

log = logging.getLogger(__name__)


_CACHE_FORMAT = 3


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
