"""Verdicts: an image's CUDA/TensorFlow stack against a node's NVIDIA driver and GPUs.

Everything here is pure: facts in (:class:`ImageFacts` from :mod:`kernelprovider.image`,
:class:`HostFacts` from :mod:`kernelprovider.gpu` or the Slurm probe), :class:`Verdict` objects
out. The numbers come from the CSV tables in ``kernelprovider/data`` (each names its source);
nothing is raised for an incompatible pair: the provisioner decides, through
:func:`evaluate_policy`, whether a ``fail`` stops the kernel (``DriverIncompatible``) or is only
logged, and ``jupyter kernelprovider doctor`` prints every verdict.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import cache
from importlib import resources
from types import MappingProxyType

__all__ = [
    "LEVELS",
    "POLICIES",
    "ArchSupport",
    "CudaRelease",
    "FrameworkBuild",
    "GpuInfo",
    "HostFacts",
    "ImageFacts",
    "MinorCompat",
    "TensorflowConfig",
    "Verdict",
    "arch_support",
    "cuda_for_driver",
    "cuda_releases",
    "code_for_gpu",
    "cudart_soname",
    "evaluate",
    "evaluate_policy",
    "min_driver_for_cuda",
    "minor_compat",
    "newest_branch",
    "parse_version",
    "tensorflow_configs",
    "version_at_least",
    "worst",
]

#: Verdict levels, mildest first.
LEVELS = ("ok", "warn", "fail")
#: Values of the provisioner's compatibility policy (see :func:`evaluate_policy`).
POLICIES = ("enforce", "warn", "off")

_DATA_PACKAGE = "kernelprovider"


# --------------------------------------------------------------------------------------------
# Facts (inputs) and verdicts (outputs)


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


# --------------------------------------------------------------------------------------------
# Versions


def parse_version(s: str) -> tuple[int, ...]:
    """``"580.159.04"`` -> ``(580, 159, 4)``; ``"V9.2.148"`` / ``"CUDA 12.4.1-1"`` read too.

    The first run of dot-separated digits is taken, so labels and file contents can be passed
    as they are. Raises ValueError when there is none.
    """
    text = "" if s is None else str(s)
    start = next((i for i, ch in enumerate(text) if ch.isdigit()), None)
    if start is None:
        raise ValueError(
            f"{s!r} is not a version number; expected digits and dots such as 12.4.1 or 535.104.05."
        )
    parts: list[int] = []
    digits = ""
    for ch in text[start:]:
        if ch.isdigit():
            digits += ch
        elif ch == "." and digits:
            parts.append(int(digits))
            digits = ""
        else:
            break
    if digits:
        parts.append(int(digits))
    return tuple(parts)


def _key(v: Sequence[int]) -> tuple[int, ...]:
    # 570.26 and 570.26.00 are the same driver; 9 and 9.0 the same CUDA.
    t = list(v)
    while len(t) > 1 and t[-1] == 0:
        t.pop()
    return tuple(t)


def version_at_least(version: str, minimum: str) -> bool:
    """``version >= minimum`` for driver or CUDA versions of any number of parts."""
    return _key(parse_version(version)) >= _key(parse_version(minimum))


def cudart_soname(cuda: str) -> str:
    """The soname version of CUDA ``cuda``'s runtime library: ``libcudart.so.9.2`` for 9.2.148,
    ``.so.11.0`` for every 11.x, ``.so.12`` for 12.x (NVIDIA's naming since CUDA 12)."""
    v = parse_version(cuda)
    if v[0] < 11:
        return _fmt(_mm(v))
    if v[0] == 11:
        return "11.0"
    return str(v[0])


def _mm(v: Sequence[int]) -> tuple[int, int]:
    return (v[0], v[1] if len(v) > 1 else 0)


def _fmt(v: Sequence[int]) -> str:
    return ".".join(str(p) for p in v)


def _parse_cc(cc: str | None) -> tuple[int, int] | None:
    if not cc:
        return None
    try:
        v = parse_version(cc)
    except ValueError:
        return None
    return _mm(v)


# --------------------------------------------------------------------------------------------
# Tables


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


# --------------------------------------------------------------------------------------------
# Rules


def evaluate(image: ImageFacts, host: HostFacts) -> list[Verdict]:
    """Judge ``image`` on ``host``: one "driver" verdict (and one more per framework built
    against another CUDA than the image declares), "framework" verdicts for what the image's
    frameworks were built for, one "arch" verdict per distinct GPU compute capability (from the
    code the frameworks really carry when known, else from the image's CUDA toolkit), and a
    "tensorflow" verdict from tensorflow.org's tested pairs when TensorFlow's own build facts
    are unknown.

    Called by the provisioner before every launch (Slurm: once the node is known) and by
    ``jupyter kernelprovider doctor``. Pure; never raises for an incompatible pair.
    """
    gpu_builds = [f for f in image.frameworks if f.gpu_build and f.cuda and _is_version(f.cuda)]
    cpu_only = [_cpu_only_verdict(image.name, f) for f in image.frameworks if f.gpu_build is False]
    cuda = image.cuda
    if not cuda and gpu_builds:
        # No label or toolkit file, but a framework says what it was built against.
        cuda = max((f.cuda or "" for f in gpu_builds), key=lambda c: _key(parse_version(c)))
    if not cuda:
        return [
            Verdict(
                "ok",
                f"{image.name} declares no CUDA (no label, CUDA_VERSION or "
                f"/usr/local/cuda/version file), so node {host.node}'s driver is not checked.",
                "driver",
            ),
            *cpu_only,
        ]
    try:
        cuda_v = parse_version(cuda)
    except ValueError:
        return [
            Verdict(
                "warn",
                f"{image.name} gives CUDA version {cuda!r}, which is not a version number, "
                f"so it cannot be checked against node {host.node}; fix the image's CUDA_VERSION "
                "label.",
                "driver",
            ),
            *cpu_only,
        ]
    judged = replace(image, cuda=cuda) if cuda != image.cuda else image
    verdicts = [_driver_verdict(judged, host, cuda_v)]
    for fw in gpu_builds:
        fw_v = parse_version(fw.cuda or "")
        if _mm(fw_v) != _mm(cuda_v) and len(fw_v) >= 2:
            as_fw = replace(image, name=f"{image.name}'s {fw.label}", cuda=fw.cuda)
            verdicts.append(_driver_verdict(as_fw, host, fw_v))
    verdicts.extend(cpu_only)
    verdicts.extend(_runtime_verdict(image, fw) for fw in gpu_builds)
    with_code = [f for f in gpu_builds if f.code_archs()[0] or f.code_archs()[1]]
    if with_code:
        verdicts.extend(_framework_arch_verdicts(image.name, host, with_code))
    else:
        verdicts.extend(_arch_verdicts(judged, host, cuda_v))
    if not any(f.name == "TensorFlow" and f.gpu_build is not None for f in image.frameworks):
        verdicts.extend(_tensorflow_verdicts(judged, cuda_v))
    return verdicts


def _is_version(text: str) -> bool:
    try:
        parse_version(text)
    except ValueError:
        return False
    return True


def _sm_list(numbers: Iterable[int], prefix: str = "sm_") -> str:
    return ", ".join(f"{prefix}{n}" for n in numbers)


def _cpu_only_verdict(name: str, fw: FrameworkBuild) -> Verdict:
    where = f" ({fw.facts_from})" if fw.facts_from else ""
    return Verdict(
        "warn",
        f"{name}'s {fw.label} is a CPU-only build{where}, so it will not use the node's GPUs; "
        f"pick an image with a CUDA build of {fw.name} to compute on them.",
        "framework",
    )


def _runtime_verdict(image: ImageFacts, fw: FrameworkBuild) -> Verdict:
    """Whether the image ships the CUDA runtime ``fw`` was linked against (libcudart soname)."""
    need = cudart_soname(fw.cuda or "")
    built = f"{image.name}'s {fw.label} was built against CUDA {fw.cuda}" + (
        f" and cuDNN {fw.cudnn}" if fw.cudnn else ""
    )
    have = image.cudart_sonames()
    if have and need not in have:
        shipped = ", ".join(f"libcudart.so.{h}" for h in have)
        return Verdict(
            "fail",
            f"{built}, so it needs libcudart.so.{need}, but the image ships only {shipped}: "
            f"importing {fw.name} fails to load its CUDA libraries. Pick an image whose CUDA "
            f"matches its {fw.name} build.",
            "framework",
        )
    if not have and image.cuda and _is_version(image.cuda):
        declared = cudart_soname(image.cuda)
        if declared != need:
            return Verdict(
                "warn",
                f"{built}, but the image declares CUDA {image.cuda} (libcudart.so.{declared}) "
                f"and no libcudart.so.{need} was found in it; if importing {fw.name} fails to "
                "load libcudart, pick an image whose CUDA matches its build.",
                "framework",
            )
    found = f", and the image ships libcudart.so.{need}" if need in have else ""
    return Verdict("ok", f"{built}{found}.", "framework")


def code_for_gpu(
    sass: Sequence[int], ptx: Sequence[int], cc: tuple[int, int]
) -> tuple[str, int | None]:
    """How code built for ``sass`` (SM numbers: 80 for sm_80) and ``ptx`` runs on a GPU of
    compute capability ``cc``: ("native", the SASS used) when SASS of the same major and a
    minor <= the GPU's is there; ("ptx", the PTX JIT-compiled) when PTX of an architecture <=
    the GPU's is; else ("none", None): "no kernel image is available for execution"."""
    number = cc[0] * 10 + cc[1]
    native = [a for a in sass if a // 10 == cc[0] and a % 10 <= cc[1]]
    if native:
        return "native", max(native)
    jit = [a for a in ptx if a <= number]
    if jit:
        return "ptx", max(jit)
    return "none", None


def _gpus_by_cc(host: HostFacts) -> list[tuple[tuple[int, int], list[str]]]:
    """(compute capability, distinct GPU names) of ``host``, sorted; GPUs without one skipped."""
    by_cc: dict[tuple[int, int], list[str]] = {}
    for gpu in host.gpus:
        cc = _parse_cc(gpu.compute_capability)
        if cc is None:
            continue
        names = by_cc.setdefault(cc, [])
        if gpu.name not in names:
            names.append(gpu.name)
    return sorted(by_cc.items())


def _framework_arch_verdicts(
    name: str, host: HostFacts, frameworks: Sequence[FrameworkBuild]
) -> list[Verdict]:
    # One verdict per (framework, distinct compute capability).
    return [
        _framework_arch_verdict(name, host.node, fw, cc, ", ".join(gpus))
        for fw in frameworks
        for cc, gpus in _gpus_by_cc(host)
    ]


def _framework_arch_verdict(
    name: str, node: str, fw: FrameworkBuild, cc: tuple[int, int], gpus: str
) -> Verdict:
    """The code ``fw`` really carries against one GPU: native SASS of the same major and a
    minor <= the GPU's runs; else PTX of an architecture <= the GPU's runs after JIT
    compilation; else nothing runs ("no kernel image is available")."""
    sass, ptx, where = fw.code_archs()
    sm = f"sm_{cc[0]}{cc[1]}"
    number = cc[0] * 10 + cc[1]
    cuda = f" (CUDA {fw.cuda})" if fw.cuda else ""
    declared = " (declared in its build_info.py)" if where and where == fw.facts_from else ""
    carries = _sm_list(sass) + (f" with PTX {_sm_list(ptx, 'compute_')}" if ptx else "")
    if not sass:
        carries = f"PTX {_sm_list(ptx, 'compute_')} only"
    status, arch = code_for_gpu(sass, ptx, cc)
    if status == "native":
        how = "natively" if arch == number else f"natively (its sm_{arch} code runs on {sm})"
        return Verdict(
            "ok",
            f"{name}'s {fw.label}{cuda} carries {carries}{declared}: it runs {how} on {gpus} "
            f"({sm}) on node {node}.",
            "arch",
        )
    if status == "ptx":
        return Verdict(
            "warn",
            f"{name}'s {fw.label}{cuda} was compiled for {carries}{declared}: on {gpus} ({sm}) "
            f"on node {node} it runs only through PTX JIT compilation of compute_{arch} "
            "(first use compiles for minutes, again whenever the JIT cache in ~/.nv is "
            f"dropped); pick an image built for {sm} for full speed.",
            "arch",
        )
    return Verdict(
        "fail",
        f"{name}'s {fw.label}{cuda} carries {carries}{declared} and nothing that runs on "
        f'{gpus} ({sm}) on node {node}, so its GPU operations fail with "no kernel image is '
        f'available for execution on the device". Pick an image built for {sm} or another '
        "partition.",
        "arch",
    )


def _older_image_hint(driver_v: tuple[int, ...]) -> str:
    """The next step for a driver too old for an image, lower-case, without a full stop."""
    supported = cuda_for_driver(_fmt(driver_v))
    if supported is None:
        return "pick another partition"
    return f"pick an image with CUDA <= {supported} or another partition"


def _too_old(name: str, node: str, minimum: str, cuda: str, driver: str, hint: str) -> Verdict:
    return Verdict(
        "fail",
        f"{name} needs NVIDIA driver >= {minimum} (CUDA {cuda}); node {node} has {driver}. "
        f"{hint[0].upper()}{hint[1:]}.",
        "driver",
    )


def _minor_compat_warn(need: str, node: str, driver: str, floor: MinorCompat) -> Verdict:
    return Verdict(
        "warn",
        f"{need}; node {node} has {driver}, which runs it only through CUDA {floor.major}.x "
        f"minor-version compatibility (driver >= {floor.min_driver}): code with PTX newer than "
        "the driver fails with error 222 (cudaErrorUnsupportedPtxVersion), so if a cell fails "
        "that way pick an image with older CUDA or another partition.",
        "driver",
    )


def _driver_verdict(image: ImageFacts, host: HostFacts, cuda_v: tuple[int, ...]) -> Verdict:
    name, node, cuda = image.name, host.node, image.cuda or ""
    if not host.driver:
        return Verdict(
            "fail",
            f"{name} needs an NVIDIA GPU (CUDA {cuda}) but node {node} has no NVIDIA driver "
            "loaded. Pick a GPU partition or node, or set the kernel's GPU mode to none for a "
            "CPU-only run.",
            "driver",
        )
    try:
        drv_v = parse_version(host.driver)
    except ValueError:
        return Verdict(
            "warn",
            f"Node {node} reports NVIDIA driver {host.driver!r}, which is not a version number, "
            f"so {name} (CUDA {cuda}) cannot be checked; run 'nvidia-smi' on {node} to see why.",
            "driver",
        )
    drv = host.driver.strip()
    dk = _key(drv_v)
    hint = _older_image_hint(drv_v)
    floor = minor_compat().get(cuda_v[0])

    def meets(v: str) -> bool:
        return dk >= _key(parse_version(v))

    minimum = min_driver_for_cuda(cuda)
    if minimum is not None:
        if meets(minimum):
            return Verdict(
                "ok",
                f"{name} needs NVIDIA driver >= {minimum} (CUDA {cuda}); node {node} has {drv}.",
                "driver",
            )
        if len(cuda_v) >= 3:
            # NVIDIA lists update releases with their own, slightly newer, driver; the runtime
            # itself only needs a driver for its major.minor.
            mm = _fmt(_mm(cuda_v))
            mm_min = min_driver_for_cuda(mm)
            if mm_min is not None and mm_min != minimum and meets(mm_min):
                return Verdict(
                    "warn",
                    f"{name} asks for NVIDIA driver >= {minimum} (CUDA {cuda}); node {node} has "
                    f"{drv}, which meets the CUDA {mm} minimum ({mm_min}) and should run it; if "
                    f"CUDA reports error 35 or 803, {hint}.",
                    "driver",
                )
        if floor is not None and meets(floor.min_driver):
            need = f"{name} needs NVIDIA driver >= {minimum} (CUDA {cuda})"
            return _minor_compat_warn(need, node, drv, floor)
        return _too_old(name, node, minimum, cuda, drv, hint)

    # Not in the table. Minimums never decrease from one release to the next, so the
    # neighbouring releases still bound the answer.
    releases = cuda_releases()
    ck = _key(cuda_v)
    newer = [r for r in releases if _key(parse_version(r.toolkit)) > ck]
    older = [r for r in releases if _key(parse_version(r.toolkit)) < ck]
    if not newer:
        return _newer_than_table(name, node, cuda, cuda_v, drv, dk, floor, hint)
    if meets(newer[0].min_driver):
        return Verdict(
            "ok",
            f"{name} uses CUDA {cuda}, which is not in kernelprovider's driver table; node "
            f"{node} has {drv}, enough for the later CUDA {newer[0].toolkit} (driver >= "
            f"{newer[0].min_driver}).",
            "driver",
        )
    if floor is not None:
        if meets(floor.min_driver):
            need = f"{name} uses CUDA {cuda}, which is not in kernelprovider's driver table"
            return _minor_compat_warn(need, node, drv, floor)
        return _too_old(name, node, floor.min_driver, cuda, drv, hint)
    if older and not meets(older[-1].min_driver):
        return _too_old(name, node, older[-1].min_driver, cuda, drv, hint)
    return Verdict(
        "warn",
        f"{name} uses CUDA {cuda}, which is not in kernelprovider's driver table, so node "
        f"{node}'s driver {drv} cannot be checked; if CUDA reports error 35 or 803, {hint}.",
        "driver",
    )


def _newer_than_table(
    name: str,
    node: str,
    cuda: str,
    cuda_v: tuple[int, ...],
    drv: str,
    dk: tuple[int, ...],
    floor: MinorCompat | None,
    hint: str,
) -> Verdict:
    """A CUDA newer than every row of the driver table.

    Same major as a known floor: minor-version compatibility bounds it (ok on a driver branch
    newer than every branch in the table, warn on one at or above the floor, fail below). A
    new major: no known branch serves it (minor-version compatibility never crosses a major),
    so it fails on every driver at or below the newest known branch and is only unknown
    (warn) on a driver newer than all of them.
    """
    last = cuda_releases()[-1]
    branch = newest_branch()
    table = (
        f"newer than kernelprovider's driver table (last: CUDA {last.toolkit}, driver >= "
        f"{last.min_driver})"
    )
    if floor is not None:
        if dk[0] > branch:
            return Verdict(
                "ok",
                f"{name} uses CUDA {cuda}, {table}; node {node} has {drv}, a driver branch newer "
                f"than every one in the table, and CUDA {floor.major}.x runs on any driver >= "
                f"{floor.min_driver}.",
                "driver",
            )
        if dk >= _key(parse_version(floor.min_driver)):
            return _minor_compat_warn(f"{name} uses CUDA {cuda}, {table}", node, drv, floor)
        return _too_old(name, node, floor.min_driver, cuda, drv, hint)
    if dk[0] <= branch:
        known = max((m for m in minor_compat()), default=None)
        serves = f"CUDA {known}.x" if known is not None else "an older CUDA"
        return Verdict(
            "fail",
            f"{name} uses CUDA {cuda}, a newer major than any driver branch kernelprovider knows "
            f"serves (newest: R{branch}, CUDA {last.toolkit}); node {node} has {drv}, which runs "
            f"at most {serves}, and minor-version compatibility never crosses a major. Pick an "
            f"image with CUDA <= {cuda_for_driver(drv) or known} or a node with a newer driver.",
            "driver",
        )
    return Verdict(
        "warn",
        f"{name} uses CUDA {cuda}, {table}; node {node} has {drv}, a driver branch newer than "
        "every one in the table, so the pair cannot be checked; if CUDA reports error 35 or "
        "803, pick an older image or update kernelprovider.",
        "driver",
    )


def _arch_verdicts(image: ImageFacts, host: HostFacts, cuda_v: tuple[int, ...]) -> list[Verdict]:
    # One verdict per distinct compute capability: eight H200s are one finding.
    return [
        _arch_verdict(image.name, host.node, image.cuda or "", _mm(cuda_v), cc, ", ".join(names))
        for cc, names in _gpus_by_cc(host)
    ]


def _arch_verdict(
    name: str, node: str, cuda: str, cuda_mm: tuple[int, int], cc: tuple[int, int], gpus: str
) -> Verdict:
    sm = f"sm_{cc[0]}{cc[1]}"
    table = arch_support()
    # Code built for sm_XY runs on sm_XZ with Z >= Y (same major), so lower entries count.
    family = [a for a in table.values() if a.major == cc[0] and a.minor <= cc[1]]
    if not family:
        newest = max(table.values(), key=lambda a: (a.major, a.minor))
        if cc > (newest.major, newest.minor):
            return Verdict(
                "warn",
                f"{gpus} ({sm}) on node {node} is newer than kernelprovider's architecture "
                f"table (last: {newest.sm}), so {name} (CUDA {cuda}) can run on it only through "
                "PTX JIT compilation, which could take 30 minutes or longer, if at all; test the "
                "image on this GPU or update kernelprovider.",
                "arch",
            )
        return Verdict(
            "warn",
            f"{gpus} ({sm}) on node {node} is not in kernelprovider's architecture table, so "
            f"{name} (CUDA {cuda}) cannot be checked against it; test the image on this GPU.",
            "arch",
        )

    def mm(v: str) -> tuple[int, int]:
        return _mm(parse_version(v))

    supported = [
        a
        for a in family
        if cuda_mm >= mm(a.first_cuda) and (a.last_cuda is None or cuda_mm <= mm(a.last_cuda))
    ]
    exact = table.get(sm)
    if exact is not None and exact in supported:
        return Verdict(
            "ok",
            f"{name} has CUDA {cuda}, which compiles native code for {gpus} ({sm}, CUDA "
            f">= {exact.first_cuda}) on node {node}.",
            "arch",
        )
    if supported:
        best = max(supported, key=lambda a: a.minor)
        native = f" (native {sm} needs CUDA >= {exact.first_cuda})" if exact else ""
        return Verdict(
            "ok",
            f"{name} has CUDA {cuda}, whose {best.sm} code runs on {gpus} ({sm}) on node {node} "
            f"because both are one architecture family{native}.",
            "arch",
        )
    first = exact.first_cuda if exact else min((a.first_cuda for a in family), key=mm)
    if cuda_mm < mm(first):
        return Verdict(
            "warn",
            f"{name} has CUDA {cuda} but {gpus} ({sm}) on node {node} needs CUDA >= {first} for "
            "native code, so the image's GPU code runs only through PTX JIT compilation (which "
            'could take 30 minutes or longer) or fails with "no kernel image is available for '
            f'execution on the device"; pick an image with CUDA >= {first} for this GPU.',
            "arch",
        )
    last = max((a.last_cuda for a in family if a.last_cuda), key=mm)
    return Verdict(
        "fail",
        f"{name} has CUDA {cuda}, which dropped {gpus} ({sm}) on node {node} (last CUDA for "
        f'{sm}: {last}), so its GPU code fails with "no kernel image is available for execution '
        f'on the device". Pick an image with CUDA <= {last} or another partition.',
        "arch",
    )


def _tensorflow_verdicts(image: ImageFacts, cuda_v: tuple[int, ...]) -> list[Verdict]:
    name, tf, cuda = image.name, image.tensorflow, image.cuda
    if not tf:
        return []
    try:
        tf_v = parse_version(tf)
    except ValueError:
        return [
            Verdict(
                "warn",
                f"{name} gives TensorFlow version {tf!r}, which is not a version number, so its "
                f"pairing with CUDA {cuda} cannot be checked; fix the image's TENSORFLOW_VERSION "
                "label.",
                "tensorflow",
            )
        ]
    configs = tensorflow_configs()
    cfg = configs.get(_mm(tf_v))
    if cfg is None:
        known = sorted(configs)
        return [
            Verdict(
                "warn",
                f"{name} pairs TensorFlow {tf} with CUDA {cuda}, which tensorflow.org's tested "
                f"build configurations do not list (they cover TensorFlow {_fmt(known[0])} to "
                f"{_fmt(known[-1])}), so the pair is untested; if TensorFlow cannot load its CUDA "
                "libraries, pick an image with a tested pair.",
                "tensorflow",
            )
        ]
    cfg_cuda = _fmt(_mm(parse_version(cfg.cuda)))
    cuda_same = _mm(cuda_v) == _mm(parse_version(cfg.cuda))
    cudnn_same = True
    if image.cudnn:
        try:
            want = parse_version(cfg.cudnn)
            have = parse_version(image.cudnn)
            # "7" in the table means any 7.x; "8.9" means 8.9.x.
            cudnn_same = have[: len(want)] == want
        except ValueError:
            cudnn_same = False
    have_text = f"CUDA {cuda}" + (f" and cuDNN {image.cudnn}" if image.cudnn else "")
    tested = f"CUDA {cfg_cuda} and cuDNN {cfg.cudnn}"
    if cuda_same and cudnn_same:
        return [
            Verdict(
                "ok",
                f"{name} pairs TensorFlow {tf} with {have_text}, as tested by tensorflow.org "
                f"({tested}).",
                "tensorflow",
            )
        ]
    return [
        Verdict(
            "warn",
            f"{name} pairs TensorFlow {tf} with {have_text}, but TensorFlow {cfg.tensorflow} was "
            f"tested with {tested}; if TensorFlow cannot load libcudart or libcudnn or sees no "
            "GPU, pick an image with the tested pair.",
            "tensorflow",
        )
    ]
