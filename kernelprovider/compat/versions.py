"""Version numbers of drivers, CUDA and compute capabilities: parsing and comparing.

Pure and table-free; every other module of :mod:`kernelprovider.compat` (and ``gpu``, ``image``,
``doctor``) reads versions through these functions.
"""

from __future__ import annotations

from collections.abc import Sequence


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


def is_version(text: str) -> bool:
    """True when ``text`` parses as a version (``12.4``, ``580.159.04``)."""
    try:
        parse_version(text)
    except ValueError:
        return False
    return True


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
