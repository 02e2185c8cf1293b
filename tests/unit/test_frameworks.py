"""_inside_frameworks: framework version files and the fatbin of CUDA libraries, read as they are.

The real files (a published JAX CUDA plugin's libraries, NVIDIA's CUDA runtime wheel) are read
in tests/integration/test_doctor_cli.py from the kp-frameworks test image; here the parsers
get the exact text shapes the published wheels carry and a minimal ELF built byte by byte.
"""

from __future__ import annotations

import ast
import json
import struct
import subprocess
import sys
from importlib import resources
from pathlib import Path

import pytest

from kernelprovider import _inside_frameworks as inside

# tensorflow-2.21.0 (Linux x86_64 wheel): tensorflow/python/platform/build_info.py, its one line.
TF_2_21 = (
    "build_info = collections.OrderedDict([('cpu_compiler', 'clang'), "
    "('cuda_compute_capabilities', ['sm_60', 'sm_70', 'sm_80', 'sm_89', 'compute_90']), "
    "('cuda_version', '12.5.1'), ('cudnn_version', '9'), ('is_cuda_build', True), "
    "('is_rocm_build', False), ('is_tensorrt_build', False)])\n"
)
# TensorFlow 1.13-2.x generated module variables.
TF_1_X = "is_rocm_build = False\nis_cuda_build = True\ncuda_version_number = '10.0'\n"
TF_1_X += "cudnn_version_number = '7'\n"
# torch-2.13.0+cpu: torch/version.py (its assignments).
TORCH_CPU = (
    "from typing import Optional\n\n__version__ = '2.13.0+cpu'\ndebug = False\n"
    "cuda: Optional[str] = None\ngit_version = 'cf30153c'\nhip: Optional[str] = None\n"
)
TORCH_CU124 = TORCH_CPU.replace("2.13.0+cpu", "2.5.1+cu124").replace(
    "cuda: Optional[str] = None", "cuda: Optional[str] = '12.4'"
)


def test_runs_on_python_35_syntax() -> None:
    source = resources.files("kernelprovider").joinpath("_inside_frameworks.py").read_text()
    ast.parse(source, feature_version=(3, 5))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            TF_2_21,
            {
                "cuda": "12.5.1",
                "cudnn": "9",
                "gpu_build": True,
                "archs": ["sm_60", "sm_70", "sm_80", "sm_89", "compute_90"],
            },
        ),
        (TF_1_X, {"cuda": "10.0", "cudnn": "7", "gpu_build": True, "archs": []}),
        (
            "build_info['cuda_version'] = '11.2'\nbuild_info['is_cuda_build'] = True\n"
            "build_info['cuda_compute_capabilities'] = ['3.5', '7.0']\n",
            {"cuda": "11.2", "cudnn": None, "gpu_build": True, "archs": ["3.5", "7.0"]},
        ),
        (
            "build_info = collections.OrderedDict([('is_cuda_build', False)])",
            {"cuda": None, "cudnn": None, "gpu_build": False, "archs": []},
        ),
    ],
)
def test_parse_tf_build_info(text: str, expected: dict[str, object]) -> None:
    assert inside.parse_tf_build_info(text) == expected


def test_parse_torch_version() -> None:
    assert inside.parse_torch_version(TORCH_CPU) == {
        "version": "2.13.0+cpu",
        "cuda": None,
        "hip": None,
    }
    assert inside.parse_torch_version(TORCH_CU124)["cuda"] == "12.4"
    assert inside.parse_torch_version("__version__ = '1.4.0'\ncuda = '10.1'\n")["cuda"] == "10.1"


@pytest.mark.parametrize(
    ("dist", "cuda"),
    [("cupy-cuda12x", "12"), ("cupy-cuda102", "10.2"), ("cupy-cuda92", "9.2"), ("cupy", None)],
)
def test_cuda_from_distribution_name(dist: str, cuda: str | None) -> None:
    assert inside._cuda_from_name(dist) == cuda


# --------------------------------------------------------------------------------------------
# ELF and fatbin


def _entry(kind: int, sm: int, payload: int) -> bytes:
    # kind, version, header size, payload size, ..., sm arch at byte 28 of a 64-byte header.
    head = struct.pack("<HHIQ", kind, 0x101, 64, payload)
    head += struct.pack("<IIHHI", 0, 0, 7, 1, sm)
    head += b"\0" * (64 - len(head))
    return head + b"\xaa" * payload


def _container(*entries: bytes) -> bytes:
    body = b"".join(entries)
    return struct.pack("<IHHQ", inside.FATBIN_MAGIC, 1, 16, len(body)) + body


def _elf(sections: dict[str, bytes]) -> bytes:
    """A minimal little-endian ELF64 with the given sections (and .shstrtab)."""
    names = b"\0" + b"".join(n.encode() + b"\0" for n in [*sections, ".shstrtab"])
    data = b""
    offsets = []
    start = 64
    for body in [*sections.values(), names]:
        offsets.append(start + len(data))
        data += body + b"\0" * (-len(body) % 8)
    shoff = start + len(data)
    header = b"\x7fELF\x02\x01\x01" + b"\0" * 9
    header += struct.pack("<HHIQQQIHHHHHH", 3, 62, 1, 0, 0, shoff, 0, 64, 0, 0, 64, 0, 0)
    table = b"\0" * 64  # section 0
    name_at = 1
    count = len(sections) + 2
    for (name, body), off in zip([*sections.items(), (".shstrtab", names)], offsets, strict=True):
        table += struct.pack("<IIQQQQIIQQ", name_at, 1, 0, 0, off, len(body), 0, 0, 8, 0)
        name_at += len(name) + 1
    header = header[:60] + struct.pack("<HH", count, count - 1)
    return header + data + table


def test_fatbin_archs_of_a_library(tmp_path: Path) -> None:
    fatbin = _container(_entry(2, 80, 100), _entry(1, 90, 24))
    fatbin += b"\0" * 8  # padding between containers
    fatbin += _container(_entry(2, 90, 40), _entry(2, 80, 8))
    lib = tmp_path / "libx.so"
    lib.write_bytes(_elf({".text": b"\x90" * 32, ".nv_fatbin": fatbin}))
    assert inside.library_archs(str(lib)) == ([80, 90], [90])


def test_library_without_fatbin_and_non_elf(tmp_path: Path) -> None:
    lib = tmp_path / "libplain.so"
    lib.write_bytes(_elf({".text": b"\x90" * 16}))
    assert inside.library_archs(str(lib)) is None
    text = tmp_path / "README"
    text.write_text("not a library")
    with pytest.raises(ValueError):
        inside.library_archs(str(text))


def test_scan_of_a_root_reads_versions_fatbin_and_cudart(tmp_path: Path) -> None:
    site = tmp_path / "usr/local/lib/python3.11/dist-packages"
    (site / "torch/lib").mkdir(parents=True)
    (site / "torch/version.py").write_text(TORCH_CU124)
    (site / "torch/lib/libtorch_cuda.so").write_bytes(
        _elf({".nv_fatbin": _container(_entry(2, 90, 16), _entry(1, 90, 16))})
    )
    (site / "tensorflow/python/platform").mkdir(parents=True)
    (site / "tensorflow/python/platform/build_info.py").write_text(TF_1_X)
    (site / "tensorflow_gpu-1.15.0.dist-info").mkdir()
    (site / "nvidia/cuda_runtime/lib").mkdir(parents=True)
    (site / "nvidia/cuda_runtime/lib/libcudart.so.12").write_bytes(b"")
    (site / "cupy_cuda12x-13.3.0.dist-info").mkdir()
    # The same module, run as the image's Python runs it: a script printing JSON.
    out = subprocess.run(
        [sys.executable, "-c", inside.__loader__.get_source(inside.__name__), str(tmp_path)],
        capture_output=True,
        text=True,
        check=True,
    )
    doc = json.loads(out.stdout)
    by_name = {fw["name"]: fw for fw in doc["frameworks"]}
    torch = by_name["PyTorch"]
    assert (torch["version"], torch["cuda"], torch["sass"], torch["ptx"]) == (
        "2.5.1+cu124",
        "12.4",
        [90],
        [90],
    )
    assert (
        torch["archs_from"] == "/usr/local/lib/python3.11/dist-packages/torch/lib/libtorch_cuda.so"
    )
    tf = by_name["TensorFlow"]
    assert (tf["version"], tf["cuda"], tf["cudnn"], tf["sass"]) == ("1.15.0", "10.0", "7", [])
    assert by_name["CuPy"]["cuda"] == "12"
    assert doc["cudart"] == [
        "/usr/local/lib/python3.11/dist-packages/nvidia/cuda_runtime/lib/libcudart.so.12"
    ]
    assert doc["errors"] == []
