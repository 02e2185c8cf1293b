"""Draw the launcher logos of scanned kernels (a chip on a coloured tile): PNG and SVG.

Pure Python (zlib + struct), no imaging library. The shipped files in this directory are its
output; ``python kernelprovider/logos/make_logos.py`` writes them again, and a unit test checks
that they are byte-for-byte what this code draws. ``jupyter kernelprovider scan`` copies the
``gpu-*`` set into kernelspecs of CUDA images and the ``cpu-*`` set into the others.
"""

from __future__ import annotations

import struct
import sys
import zlib
from pathlib import Path

__all__ = ["COLOURS", "png", "draw", "svg", "logo_files", "main"]

#: Tile colour per kind: green for GPU images, blue for CPU-only ones.
COLOURS = {"gpu": (0x2E, 0x7D, 0x32), "cpu": (0x15, 0x65, 0xC0)}
_WHITE = (0xFF, 0xFF, 0xFF)

# Geometry on a 64-unit canvas: (x0, y0, x1, y1) rectangles, in drawing order.
_TILE = (2, 2, 62, 62)
_TILE_RADIUS = 10
_CHIP = (18, 18, 46, 46)
_CORE = (25, 25, 39, 39)
_PINS = [
    rect
    for offset in (22, 30.5, 39)
    for rect in (
        (offset, 11, offset + 3, 18),  # top
        (offset, 46, offset + 3, 53),  # bottom
        (11, offset, 18, offset + 3),  # left
        (46, offset, 53, offset + 3),  # right
    )
]


def png(width: int, height: int, rgba: bytes) -> bytes:
    """A PNG file of ``width`` x ``height`` 8-bit RGBA pixels (row-major, no filtering)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    stride = width * 4
    raw = b"".join(b"\0" + rgba[y * stride : (y + 1) * stride] for y in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 6, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(raw, 9))
        + chunk(b"IEND", b"")
    )


def _inside_rounded(x: float, y: float, rect: tuple[float, ...], r: float) -> bool:
    x0, y0, x1, y1 = rect
    if not (x0 <= x < x1 and y0 <= y < y1):
        return False
    cx = min(max(x, x0 + r), x1 - r)
    cy = min(max(y, y0 + r), y1 - r)
    return (x - cx) ** 2 + (y - cy) ** 2 <= r * r


def _inside(x: float, y: float, rect: tuple[float, ...]) -> bool:
    return rect[0] <= x < rect[2] and rect[1] <= y < rect[3]


def _colour_at(x: float, y: float, tile: tuple[int, int, int]) -> tuple[int, int, int] | None:
    """The colour at canvas point (x, y), or None outside the tile."""
    if not _inside_rounded(x, y, _TILE, _TILE_RADIUS):
        return None
    if _inside(x, y, _CORE):
        return tile
    if _inside(x, y, _CHIP) or any(_inside(x, y, p) for p in _PINS):
        return _WHITE
    return tile


def draw(size: int, kind: str, samples: int = 4) -> bytes:
    """RGBA pixels of the ``kind`` logo at ``size`` x ``size``, ``samples``^2 samples a pixel."""
    tile = COLOURS[kind]
    scale = 64 / size
    out = bytearray()
    for py in range(size):
        for px in range(size):
            acc = [0, 0, 0, 0]
            for sy in range(samples):
                for sx in range(samples):
                    x = (px + (sx + 0.5) / samples) * scale
                    y = (py + (sy + 0.5) / samples) * scale
                    c = _colour_at(x, y, tile)
                    if c is not None:
                        acc[0] += c[0]
                        acc[1] += c[1]
                        acc[2] += c[2]
                        acc[3] += 1
            n = samples * samples
            if acc[3]:
                out += bytes(
                    (acc[0] // acc[3], acc[1] // acc[3], acc[2] // acc[3], 255 * acc[3] // n)
                )
            else:
                out += b"\0\0\0\0"
    return bytes(out)


def svg(kind: str) -> str:
    """The same logo as SVG (what JupyterLab's launcher prefers when a kernelspec has one)."""
    r, g, b = COLOURS[kind]
    fill = f"#{r:02x}{g:02x}{b:02x}"

    def rect(box: tuple[float, ...], colour: str, extra: str = "") -> str:
        x0, y0, x1, y1 = box
        return (
            f'<rect x="{x0:g}" y="{y0:g}" width="{x1 - x0:g}" height="{y1 - y0:g}" '
            f'fill="{colour}"{extra}/>'
        )

    parts = [
        '<svg xmlns="http://www.w3.org/2000/svg" width="64" height="64" viewBox="0 0 64 64">',
        f"<title>{kind.upper()} container kernel</title>",
        rect(_TILE, fill, f' rx="{_TILE_RADIUS}"'),
        *(rect(p, "#ffffff") for p in _PINS),
        rect(_CHIP, "#ffffff"),
        rect(_CORE, fill),
        "</svg>",
    ]
    return "\n".join(parts) + "\n"


def logo_files() -> dict[str, bytes]:
    """Every shipped logo file: name -> content."""
    files: dict[str, bytes] = {}
    for kind in COLOURS:
        for size in (32, 64):
            files[f"{kind}-{size}x{size}.png"] = png(size, size, draw(size, kind))
        files[f"{kind}.svg"] = svg(kind).encode()
    return files


def main(argv: list[str] | None = None) -> None:
    """Write the logo files into the directory given (default: this file's directory)."""
    args = sys.argv[1:] if argv is None else argv
    target = Path(args[0]) if args else Path(__file__).resolve().parent
    for name, data in logo_files().items():
        (target / name).write_bytes(data)
        print(f"wrote {target / name}")


if __name__ == "__main__":
    main()
