"""The inputs and outputs of the verdicts: facts about a node, its GPUs and an image, and
:class:`Verdict` with its levels and the provisioner's policy over them.

Plain dataclasses filled by :mod:`kernelprovider.image` (images), :mod:`kernelprovider.gpu` or
the Slurm probe (nodes); :func:`worst` and :func:`evaluate_policy` read verdicts.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from .versions import _parse_cc, cudart_soname

#: Verdict levels, mildest first.
LEVELS = ("ok", "warn", "fail")
#: Values of the provisioner's compatibility policy (see :func:`evaluate_policy`).
POLICIES = ("enforce", "warn", "off")


@dataclass(frozen=True)
class GpuInfo:
    """One GPU as nvidia-smi, NVML or the Slurm probe reports it."""

    name: str
    compute_capability: str | None = None
    index: int | None = None
    uuid: str | None = None

    @property
    def sm(self) -> str | None:
        """``sm_90`` for compute capability ``9.0``; None when the capability is unknown."""
        cc = _parse_cc(self.compute_capability)
        return None if cc is None else f"sm_{cc[0]}{cc[1]}"


@dataclass
class FrameworkBuild:
    """What one framework inside an image was built for, from its own files (read by
    :mod:`kernelprovider._inside_frameworks` without starting a kernel).

    ``cuda``: the CUDA it was built against (None: CPU-only build or not said); ``gpu_build``:
    False for a CPU-only build, None when unknown. ``sass`` / ``ptx``: SM numbers (80 for
    sm_80) of the native code and PTX found in the ``.nv_fatbin`` of ``archs_from``;
    ``declared_archs``: what TensorFlow's build_info.py says it was compiled for.
    """

    name: str
    version: str | None = None
    location: str | None = None
    cuda: str | None = None
    cudnn: str | None = None
    gpu_build: bool | None = None
    declared_archs: list[str] = field(default_factory=list)
    sass: list[int] = field(default_factory=list)
    ptx: list[int] = field(default_factory=list)
    archs_from: str | None = None
    facts_from: str | None = None

    @property
    def label(self) -> str:
        """``PyTorch 2.5.1+cu124`` (the version left out when unknown)."""
        return f"{self.name} {self.version}" if self.version else self.name

    def code_archs(self) -> tuple[list[int], list[int], str | None]:
        """(sass, ptx, where) this build carries: the fatbin's when read, else the archs
        build_info.py declares (``sm_70``/``compute_80``, or ``7.0`` meaning SASS for each and
        PTX for the highest, as TensorFlow's configure builds them), else nothing."""
        if self.sass or self.ptx:
            return list(self.sass), list(self.ptx), self.archs_from
        sass: list[int] = []
        ptx: list[int] = []
        for item in self.declared_archs:
            text = item.strip().lower()
            digits = "".join(ch for ch in text if ch.isdigit())
            if not digits:
                continue
            number = int(digits)
            if text.startswith("compute_"):
                ptx.append(number)
            else:
                sass.append(number)
        if sass and not ptx and all("_" not in a for a in self.declared_archs):
            ptx.append(max(sass))
        where = self.facts_from if sass or ptx else None
        return sorted(set(sass)), sorted(set(ptx)), where


@dataclass
class ImageFacts:
    """What an image holds, read without starting a kernel (see :mod:`kernelprovider.image`).

    ``name`` is what messages call the image (its file name); a version is None when the
    image does not say. ``sources`` records where each version was found, for ``doctor``.
    """

    name: str
    cuda: str | None = None
    cudnn: str | None = None
    tensorflow: str | None = None
    path: str | None = None
    sources: dict[str, str] = field(default_factory=dict)
    #: LD_LIBRARY_PATH the image's environment sets (None: not set), so the provisioner can
    #: put the host driver's libraries in front of any libcuda the image ships.
    ld_library_path: str | None = None
    #: The frameworks found in the image's site-packages and what each was built for.
    frameworks: list[FrameworkBuild] = field(default_factory=list)
    #: Paths (inside the image) of the CUDA runtime libraries it ships (libcudart.so.*).
    cudart: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        # The image-facts cache stores plain dicts.
        self.frameworks = [
            f if isinstance(f, FrameworkBuild) else FrameworkBuild(**f) for f in self.frameworks
        ]

    def cudart_sonames(self) -> list[str]:
        """The libcudart soname versions the image ships: "9.2", "11.0", "12" ..."""
        found = []
        for path in self.cudart:
            base = path.rsplit("/", 1)[-1]
            _, sep, tail = base.partition(".so.")
            if not sep:
                continue
            try:
                soname = cudart_soname(tail)
            except ValueError:
                continue
            if soname not in found:
                found.append(soname)
        return found


@dataclass
class HostFacts:
    """The node a kernel will run on: its name, NVIDIA driver version (None: no driver), GPUs."""

    node: str
    driver: str | None = None
    gpus: list[GpuInfo] = field(default_factory=list)


@dataclass(frozen=True)
class Verdict:
    """One finding. ``level`` is "ok", "warn" or "fail"; ``reason`` is the sentence a user
    reads; ``check`` says which rule spoke: "driver", "arch" or "tensorflow"."""

    level: str
    reason: str
    check: str


def worst(verdicts: Iterable[Verdict]) -> str:
    """The most severe level among ``verdicts`` ("ok" when there are none)."""
    rank = max((LEVELS.index(v.level) for v in verdicts), default=0)
    return LEVELS[rank]


def evaluate_policy(verdicts: Iterable[Verdict], policy: str) -> list[Verdict]:
    """The verdicts that must stop a kernel under ``policy``; the provisioner calls this
    before launch and raises ``DriverIncompatible`` with their reasons when any are returned.

    ``enforce``: every ``fail`` blocks. ``warn``: nothing blocks (the caller logs fails and
    warns). ``off``: nothing blocks (the caller need not evaluate at all).
    """
    policy = (policy or "").strip().lower()
    if policy not in POLICIES:
        raise ValueError(
            f"Unknown compatibility policy {policy!r}; use one of {', '.join(POLICIES)}."
        )
    if policy != "enforce":
        return []
    return [v for v in verdicts if v.level == "fail"]
