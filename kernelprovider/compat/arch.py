"""The "arch" rules: does the image's GPU code run on a node's GPU architectures?

From the SASS/PTX a framework really carries when known (:func:`code_for_gpu`), else from the
architectures the image's CUDA toolkit compiles for (the architecture table); one verdict per
distinct compute capability. Called by :func:`.rules.evaluate`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from .facts import FrameworkBuild, HostFacts, ImageFacts, Verdict
from .tables import arch_support
from .versions import _mm, _parse_cc, parse_version


def _sm_list(numbers: Iterable[int], prefix: str = "sm_") -> str:
    return ", ".join(f"{prefix}{n}" for n in numbers)


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
