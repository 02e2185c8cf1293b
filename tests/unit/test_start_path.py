"""The start path's shared lookups and the image compression reader (pure, no runtime)."""

from __future__ import annotations

import asyncio
import struct
from pathlib import Path

import pytest

from kernelprovider.aio import shared
from kernelprovider.image import ImageCompression, compression_note, image_compression


def test_concurrent_callers_share_one_run() -> None:
    runs = []

    async def lookup() -> str:
        runs.append(1)
        await asyncio.sleep(0)
        return "facts"

    async def main() -> list[str]:
        return await asyncio.gather(*(shared("k", lookup) for _ in range(16)))

    assert asyncio.run(main()) == ["facts"] * 16
    assert len(runs) == 1


def test_a_later_call_runs_again_and_errors_reach_every_caller() -> None:
    runs = []

    async def failing() -> None:
        runs.append(1)
        await asyncio.sleep(0)
        raise OSError("image gone")

    async def main() -> list[object]:
        first = await asyncio.gather(
            *(shared("k", failing) for _ in range(3)), return_exceptions=True
        )
        second = await asyncio.gather(shared("k", failing), return_exceptions=True)
        return [*first, *second]

    results = asyncio.run(main())
    assert [str(r) for r in results] == ["image gone"] * 4
    assert len(runs) == 2  # one flight, then a new one: failures are not cached


def test_a_cancelled_caller_leaves_the_run_to_the_others() -> None:
    async def slow() -> int:
        await asyncio.sleep(0.01)
        return 7

    async def main() -> int:
        first = asyncio.ensure_future(shared("k", slow))
        second = asyncio.ensure_future(shared("k", slow))
        await asyncio.sleep(0)
        first.cancel()
        return await second

    assert asyncio.run(main()) == 7


def _superblock(compression_id: int) -> bytes:
    # squashfs 4.0 superblock: magic, inodes, mkfs_time, block_size, fragments, compression
    return b"hsqs" + struct.pack("<IIII", 1, 0, 131072, 0) + struct.pack("<H", compression_id)


def _sif(partition: bytes) -> bytes:
    """A minimal SIF: global header, one partition descriptor, the partition's bytes."""
    descr_off, data_off = 4096, 8192
    header = bytearray(128)
    header[32:42] = b"SIF_MAGIC\0"
    struct.pack_into("<qqqqqq", header, 80, 0, 1, descr_off, 585, data_off, len(partition))
    descr = bytearray(585)
    struct.pack_into("<i?III", descr, 0, 0x4004, True, 1, 0, 0)
    struct.pack_into("<qq", descr, 17, data_off, len(partition))
    blob = bytearray(data_off + len(partition))
    blob[:128] = header
    blob[descr_off : descr_off + 585] = descr
    blob[data_off:] = partition
    return bytes(blob)


@pytest.mark.parametrize(
    ("cid", "name"), [(1, "gzip"), (4, "xz"), (6, "zstd"), (5, "lz4"), (9, "unknown (9)")]
)
def test_compression_of_a_sif_and_a_bare_squashfs(tmp_path: Path, cid: int, name: str) -> None:
    sif = tmp_path / "img.sif"
    sif.write_bytes(_sif(_superblock(cid) + bytes(200)))
    assert image_compression(str(sif)) == ImageCompression("sif", name, 8192)
    sqfs = tmp_path / "img.sqfs"
    sqfs.write_bytes(_superblock(cid) + bytes(200))
    assert image_compression(str(sqfs)) == ImageCompression("squashfs", name)


def test_compression_of_a_sandbox_and_of_other_files(tmp_path: Path) -> None:
    assert image_compression(str(tmp_path)) == ImageCompression("sandbox")
    other = tmp_path / "notes.txt"
    other.write_bytes(b"not an image" * 200)
    assert image_compression(str(other)) is None


def test_the_note_names_the_cost_and_the_fix_for_xz() -> None:
    note = compression_note(ImageCompression("sif", "xz"))
    assert "xz" in note and "-comp zstd" in note
    assert "gzip" in compression_note(ImageCompression("sif", "gzip"))
    assert compression_note(ImageCompression("sandbox")).startswith("sandbox")


def test_the_state_dir_check_runs_in_many_threads_at_once(tmp_path: Path) -> None:
    """Slurm starts check the state directory in threads, 16 at a time in a burst."""
    from concurrent.futures import ThreadPoolExecutor

    from kernelprovider.slurm import ensure_state_dir

    state = tmp_path / "state"
    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(lambda _: ensure_state_dir(str(state)), range(64)))
    assert results == [str(state)] * 64
    assert list(state.iterdir()) == []  # every write test removed its own file
