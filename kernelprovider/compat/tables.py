"""The CSV tables in ``kernelprovider/data`` (each names its source) and lookups over them.

NVIDIA's minimum drivers per CUDA release and its minor-version compatibility floors,
tensorflow.org's tested CUDA/cuDNN pairs and the CUDA toolkits that compile for each GPU
architecture; each table is read once (cached) from the installed package's data files.
"""

from __future__ import annotations

import csv
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from importlib import resources
from types import MappingProxyType

from .versions import _fmt, _key, _mm, parse_version

_DATA_PACKAGE = "kernelprovider"


@dataclass(frozen=True)
class CudaRelease:
    """A CUDA toolkit release and the minimum Linux driver NVIDIA lists for it."""

    release: str
    toolkit: str
    min_driver: str
    source: str = ""

    @property
    def is_branch(self) -> bool:
        """True for a branch row (``R610``: any 610.x or newer) rather than an exact minimum."""
        return self.min_driver.strip().upper().startswith("R")

    @property
    def is_prerelease(self) -> bool:
        """True for a release candidate row (CUDA 11.0.1 RC): not the GA's minimum."""
        return "RC" in self.release.upper().split()


@dataclass(frozen=True)
class MinorCompat:
    """The minor-version compatibility floor of one CUDA major."""

    major: int
    min_driver: str
    max_driver_exclusive: str | None
    note: str


@dataclass(frozen=True)
class TensorflowConfig:
    """A TensorFlow release and the CUDA / cuDNN it was built and tested with."""

    tensorflow: str
    cuda: str
    cudnn: str


@dataclass(frozen=True)
class ArchSupport:
    """The CUDA toolkits that compile native code for one GPU architecture (sm)."""

    sm: str
    major: int
    minor: int
    first_cuda: str
    last_cuda: str | None
    examples: str


def _read_table(filename: str) -> list[dict[str, str]]:
    text = resources.files(_DATA_PACKAGE).joinpath("data").joinpath(filename).read_text("utf-8")
    lines = [ln for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    return [{k: (v or "").strip() for k, v in row.items()} for row in csv.DictReader(lines)]


@cache
def cuda_releases() -> tuple[CudaRelease, ...]:
    """CUDA releases, oldest first (``data/cuda_driver.csv``)."""
    rows = [
        CudaRelease(
            r["cuda_release"], r["toolkit_version"], r["min_linux_driver"], r.get("source", "")
        )
        for r in _read_table("cuda_driver.csv")
    ]
    return tuple(sorted(rows, key=lambda r: _key(parse_version(r.toolkit))))


@cache
def minor_compat() -> Mapping[int, MinorCompat]:
    """Minor-version compatibility floors by CUDA major (``data/cuda_minor_compat.csv``)."""
    return MappingProxyType(
        {
            int(r["cuda_major"]): MinorCompat(
                int(r["cuda_major"]),
                r["min_linux_driver"],
                r["max_driver_exclusive"] or None,
                r["note"],
            )
            for r in _read_table("cuda_minor_compat.csv")
        }
    )


@cache
def tensorflow_configs() -> Mapping[tuple[int, int], TensorflowConfig]:
    """Tested TensorFlow builds by (major, minor) (``data/tensorflow_cuda.csv``)."""
    return MappingProxyType(
        {
            _mm(parse_version(r["tensorflow"])): TensorflowConfig(
                r["tensorflow"], r["cuda"], r["cudnn"]
            )
            for r in _read_table("tensorflow_cuda.csv")
        }
    )


@cache
def arch_support() -> Mapping[str, ArchSupport]:
    """GPU architectures by ``sm_XY`` (``data/cuda_arch.csv``)."""
    table: dict[str, ArchSupport] = {}
    for r in _read_table("cuda_arch.csv"):
        digits = r["sm"].removeprefix("sm_")
        table[r["sm"]] = ArchSupport(
            r["sm"],
            int(digits[:-1]),
            int(digits[-1]),
            r["first_cuda"],
            r["last_cuda"] or None,
            r["examples"],
        )
    return MappingProxyType(table)


def min_driver_for_cuda(cuda: str) -> str | None:
    """The minimum Linux driver for CUDA ``cuda``, as NVIDIA writes it (an exact version such
    as ``396.26`` or a branch such as ``R610``); None if not in the table.

    ``"9.2"`` gives the lowest minimum of any 9.2 release (the GA's, 396.26); a full toolkit
    version such as ``"9.2.148"`` gives that release's row (396.37) when the table has it,
    else the major.minor's minimum. Release candidates count only when asked for exactly:
    ``"11.0"`` gives the 11.0 GA's 450.51.05, not the RC's 450.36.06.
    """
    v = parse_version(cuda)
    releases = cuda_releases()
    if len(v) >= 3:
        for r in releases:
            if _key(parse_version(r.toolkit)) == _key(v):
                return r.min_driver
    same = [r for r in releases if _mm(parse_version(r.toolkit)) == _mm(v)]
    same = [r for r in same if not r.is_prerelease] or same
    if not same:
        return None
    return min(same, key=lambda r: _key(parse_version(r.min_driver))).min_driver


def newest_branch() -> int:
    """The newest driver branch any row of the driver table names (610 for R610)."""
    return max(parse_version(r.min_driver)[0] for r in cuda_releases())


def cuda_for_driver(driver: str) -> str | None:
    """The newest CUDA major.minor whose minimum driver ``driver`` meets (None: older than all)."""
    dv = _key(parse_version(driver))
    best: tuple[int, int] | None = None
    for r in cuda_releases():
        if dv >= _key(parse_version(r.min_driver)):
            mm = _mm(parse_version(r.toolkit))
            best = mm if best is None or mm > best else best
    return None if best is None else _fmt(best)
