"""The verdicts of an image on a node: :func:`evaluate` and the framework and TensorFlow rules.

:func:`evaluate` runs every rule: the driver rules of :mod:`.driver`, the architecture rules of
:mod:`.arch`, and here what the image's frameworks were built for (CPU-only builds, the
libcudart they need) and tensorflow.org's tested CUDA pairs.
"""

from __future__ import annotations

from dataclasses import replace

from .arch import _arch_verdicts, _framework_arch_verdicts
from .driver import _driver_verdict
from .facts import FrameworkBuild, HostFacts, ImageFacts, Verdict
from .tables import tensorflow_configs
from .versions import _fmt, _key, _mm, cudart_soname, is_version, parse_version


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
    gpu_builds = [f for f in image.frameworks if f.gpu_build and f.cuda and is_version(f.cuda)]
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
    if not have and image.cuda and is_version(image.cuda):
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
