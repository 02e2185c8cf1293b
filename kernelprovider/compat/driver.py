"""The "driver" rule: does a node's NVIDIA driver run the image's CUDA?

Exact minimums from NVIDIA's table, update releases, minor-version compatibility floors, and
CUDA releases the table does not list (bounded by their neighbours or, when newer than every
row, by the newest known driver branch). Called by :func:`.rules.evaluate`.
"""

from __future__ import annotations

from .facts import HostFacts, ImageFacts, Verdict
from .tables import (
    MinorCompat,
    cuda_for_driver,
    cuda_releases,
    min_driver_for_cuda,
    minor_compat,
    newest_branch,
)
from .versions import _fmt, _key, _mm, parse_version


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
