"""How an image's root filesystem is stored (SIF, squashfs, sandbox, ext3) and its compressor,
read from the SIF descriptors and the squashfs superblock with no tools, and what that costs a
kernel start (:data:`COMPRESSION_COST`). Read by ``doctor`` and the start benchmark.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass

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
