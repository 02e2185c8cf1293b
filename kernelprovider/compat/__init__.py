"""Verdicts: an image's CUDA/TensorFlow stack against a node's NVIDIA driver and GPUs.

Everything here is pure: facts in (:class:`ImageFacts` from :mod:`kernelprovider.image`,
:class:`HostFacts` from :mod:`kernelprovider.gpu` or the Slurm probe), :class:`Verdict` objects
out. The numbers come from the CSV tables in ``kernelprovider/data`` (each names its source);
nothing is raised for an incompatible pair: the provisioner decides, through
:func:`evaluate_policy`, whether a ``fail`` stops the kernel (``DriverIncompatible``) or is only
logged, and ``jupyter kernelprovider doctor`` prints every verdict.

The package re-exports its public names; each lives in one module: :mod:`.versions` (parsing
and comparing versions), :mod:`.facts` (the facts, :class:`Verdict`, the policy),
:mod:`.tables` (the CSV tables and lookups), :mod:`.rules` (:func:`evaluate` and the framework
and TensorFlow rules), :mod:`.driver` and :mod:`.arch` (the driver and GPU architecture rules).
"""

from __future__ import annotations

from .arch import code_for_gpu
from .facts import (
    LEVELS,
    POLICIES,
    FrameworkBuild,
    GpuInfo,
    HostFacts,
    ImageFacts,
    Verdict,
    evaluate_policy,
    worst,
)
from .rules import evaluate
from .tables import (
    ArchSupport,
    CudaRelease,
    MinorCompat,
    TensorflowConfig,
    arch_support,
    cuda_for_driver,
    cuda_releases,
    min_driver_for_cuda,
    minor_compat,
    newest_branch,
    tensorflow_configs,
)
from .versions import cudart_soname, parse_version, version_at_least

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
