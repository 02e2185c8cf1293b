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

The package re-exports its public names; each lives in one module: :mod:`.metadata` (labels,
environment and version-file parsers), :mod:`.inside` (the exec inside the image and its
output), :mod:`.compression` (how the image is stored), :mod:`.cache` (the facts cache) and
:mod:`.facts` (the entry points).
"""

from __future__ import annotations

from ..compat import ImageFacts
from .cache import clear_cache, default_cache_file
from .compression import COMPRESSION_COST, ImageCompression, compression_note, image_compression
from .facts import DEFAULT_TIMEOUT, image_facts, image_facts_async
from .inside import (
    FRAMEWORKS_SCRIPT,
    INSIDE_SCRIPT,
    apply_framework_scan,
    inside_argv,
    parse_frameworks_output,
    parse_inside_output,
)
from .metadata import (
    facts_from_metadata,
    inspect_argv,
    parse_cuda_version_json,
    parse_cuda_version_txt,
    parse_cudnn_header,
    parse_dist_info_name,
    parse_env_script,
    parse_inspect_json,
)

__all__ = [
    "DEFAULT_TIMEOUT",
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
