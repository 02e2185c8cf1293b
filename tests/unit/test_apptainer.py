"""Table-driven tests of the pure argv builder, bind parser and runtime-version parser."""

from __future__ import annotations

import pytest

from kernelprovider.apptainer import (
    Bind,
    build_exec_argv,
    container_env,
    image_kind,
    is_image_uri,
    parse_bind,
    parse_runtime_version,
)
from kernelprovider.errors import InvalidBind

KERNEL = ["python3", "-m", "ipykernel_launcher", "-f", "/run/u/kernel-1.json"]


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        (
            {},
            ["apptainer", "exec", "--nv", "/img.sif", *KERNEL],
        ),
        (
            {"gpu": "none"},
            ["apptainer", "exec", "/img.sif", *KERNEL],
        ),
        (
            {"gpu": "nvccli"},
            ["apptainer", "exec", "--nv", "--nvccli", "/img.sif", *KERNEL],
        ),
        (
            {"gpu": "rocm"},
            ["apptainer", "exec", "--rocm", "/img.sif", *KERNEL],
        ),
        (
            {
                "binds": [Bind("/run/u", "/run/u"), Bind("/data", "/mnt", "ro")],
                "pwd": "/home/u/my notebooks",
            },
            [
                "apptainer",
                "exec",
                "--nv",
                "--bind",
                "/run/u",
                "--bind",
                "/data:/mnt:ro",
                "--pwd",
                "/home/u/my notebooks",
                "/img.sif",
                *KERNEL,
            ],
        ),
        (
            # --nv stays first even when a site adds its own arguments
            {"cleanenv": True, "contain": True, "extra_args": ["--writable-tmpfs"]},
            [
                "apptainer",
                "exec",
                "--nv",
                "--cleanenv",
                "--contain",
                "--writable-tmpfs",
                "/img.sif",
                *KERNEL,
            ],
        ),
        (
            # the same bind twice (cwd == connection dir) is given once
            {"binds": [Bind("/w", "/w"), Bind("/w", "/w")], "pwd": "/w"},
            ["apptainer", "exec", "--nv", "--bind", "/w", "--pwd", "/w", "/img.sif", *KERNEL],
        ),
        (
            # a value that a shell would expand stays one literal argument
            {"pwd": "/home/u/$(touch x); `id`"},
            ["apptainer", "exec", "--nv", "--pwd", "/home/u/$(touch x); `id`", "/img.sif", *KERNEL],
        ),
    ],
)
def test_build_exec_argv(kwargs: dict, expected: list[str]) -> None:
    assert build_exec_argv("apptainer", "/img.sif", KERNEL, **kwargs) == expected


def test_gpu_flags_before_image_always() -> None:
    argv = build_exec_argv("singularity", "/i.sif", ["python3"], extra_args=["--env", "A=1"])
    assert argv.index("--nv") < argv.index("/i.sif")
    assert argv[-2:] == ["/i.sif", "python3"]


def test_unknown_gpu_mode_is_an_error() -> None:
    with pytest.raises(ValueError, match="not one of nv, nvccli, rocm, none"):
        build_exec_argv("apptainer", "/i.sif", ["python3"], gpu="cuda")


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("/data", Bind("/data", "/data", "")),
        ("/data:/mnt", Bind("/data", "/mnt", "")),
        ("/data:/mnt:ro", Bind("/data", "/mnt", "ro")),
        ("/data::rw", Bind("/data", "/data", "rw")),
        ("/path with space", Bind("/path with space", "/path with space", "")),
    ],
)
def test_parse_bind(value: str, expected: Bind) -> None:
    assert parse_bind(value) == expected


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("", "Empty bind"),
        ("data", "relative"),
        ("/data:mnt", "relative"),
        ("/data:/mnt:rx", "not one of ro, rw"),
        ("/a,b", "','"),
        ("/a:/b:ro:x", "separators"),
        ("/a\nb", "newline"),
    ],
)
def test_parse_bind_refuses(value: str, message: str) -> None:
    with pytest.raises(InvalidBind, match=message):
        parse_bind(value)


def test_bind_spec_round_trip() -> None:
    for value in ["/a", "/a:/b", "/a:/b:ro"]:
        assert parse_bind(value).spec() == value


@pytest.mark.parametrize(
    ("flavor", "expected"),
    [
        ("apptainer", {"APPTAINERENV_PYTHONNOUSERSITE": "1"}),
        ("singularity", {"SINGULARITYENV_PYTHONNOUSERSITE": "1"}),
    ],
)
def test_container_env(flavor: str, expected: dict) -> None:
    assert container_env(flavor, {"PYTHONNOUSERSITE": "1"}) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("apptainer version 1.4.5\n", ("apptainer", "1.4.5")),
        ("singularity-ce version 4.1.2-jammy", ("singularity", "4.1.2-jammy")),
        ("singularity version 3.8.7-1.el8", ("singularity", "3.8.7-1.el8")),
        ("2.6.1-dist", ("singularity", "2.6.1-dist")),
    ],
)
def test_parse_runtime_version(text: str, expected: tuple[str, str]) -> None:
    assert parse_runtime_version(text) == expected


def test_parse_runtime_version_refuses_other_programs() -> None:
    with pytest.raises(ValueError):
        parse_runtime_version("Docker version 28.2.2, build e6534b4")


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("docker://nvcr.io/nvidia/tensorflow:24.01-tf2-py3", True),
        ("/img.sif", False),
        ("oras://ghcr.io/x/y:1", True),
        ("relative.sif", False),
    ],
)
def test_is_image_uri(uri: str, expected: bool) -> None:
    assert is_image_uri(uri) is expected


def test_image_kind_reads_headers(tmp_path) -> None:
    sif = tmp_path / "a.sif"
    sif.write_bytes(b"#!/usr/bin/env run-singularity\n\0" + b"SIF_MAGIC\0" + b"\0" * 2000)
    sqfs = tmp_path / "b.sqsh"
    sqfs.write_bytes(b"hsqs" + b"\0" * 2000)
    junk = tmp_path / "c.sif"
    junk.write_bytes(b"not an image at all" * 100)
    sandbox = tmp_path / "sandbox"
    sandbox.mkdir()
    assert image_kind(str(sif)) == "sif"
    assert image_kind(str(sqfs)) == "squashfs"
    assert image_kind(str(junk)) is None
    assert image_kind(str(sandbox)) == "sandbox"


def _prelude_env(prelude: list[str], env: dict[str, str]) -> dict[str, str]:
    """Run ``prelude`` + ``env -0`` under /bin/sh with ``env``; the environment it hands on."""
    import subprocess

    out = subprocess.run(
        [*prelude, "env", "-0"], env=env, capture_output=True, check=True
    ).stdout.decode()
    return dict(item.split("=", 1) for item in out.split("\0") if "=" in item)


def test_step_gpu_prelude_only_where_the_step_choice_would_be_lost() -> None:
    from kernelprovider.apptainer import build_step_gpu_prelude

    assert build_step_gpu_prelude("apptainer", "nv", cleanenv=False) == []
    assert build_step_gpu_prelude("apptainer", "none", cleanenv=True) == []
    assert build_step_gpu_prelude("apptainer", "nv", cleanenv=True)[:2] == ["/bin/sh", "-c"]


def test_step_gpu_prelude_hands_the_step_gpus_into_the_container() -> None:
    from kernelprovider.apptainer import build_step_gpu_prelude

    step = {"PATH": "/usr/bin:/bin", "CUDA_VISIBLE_DEVICES": "1", "SLURM_STEP_GPUS": "1"}
    # --cleanenv: the runtime's own variable carries the step's choice past it
    env = _prelude_env(build_step_gpu_prelude("apptainer", "nv", cleanenv=True), step)
    assert env["APPTAINERENV_CUDA_VISIBLE_DEVICES"] == "1"
    env = _prelude_env(build_step_gpu_prelude("singularity", "nv", cleanenv=True), step)
    assert env["SINGULARITYENV_CUDA_VISIBLE_DEVICES"] == "1"
    # --nvccli mounts the node's GPU 1 only, not "all"
    env = _prelude_env(build_step_gpu_prelude("apptainer", "nvccli", cleanenv=False), step)
    assert env["NVIDIA_VISIBLE_DEVICES"] == "1"
    assert "APPTAINERENV_CUDA_VISIBLE_DEVICES" not in env
    # a step without GPUs: nothing invented
    env = _prelude_env(build_step_gpu_prelude("apptainer", "nv", cleanenv=True), {"PATH": "/bin"})
    assert not any(k.endswith("CUDA_VISIBLE_DEVICES") for k in env)


def test_step_gpu_prelude_keeps_every_gpu_of_a_multi_gpu_step() -> None:
    from kernelprovider.apptainer import build_step_gpu_prelude

    step = {"PATH": "/bin", "CUDA_VISIBLE_DEVICES": "2,3", "SLURM_STEP_GPUS": "2,3"}
    env = _prelude_env(build_step_gpu_prelude("apptainer", "nvccli", cleanenv=True), step)
    assert env["APPTAINERENV_CUDA_VISIBLE_DEVICES"] == "2,3"
    assert env["NVIDIA_VISIBLE_DEVICES"] == "2,3"
    # a site that already chose (NVIDIA_VISIBLE_DEVICES in the step) keeps its choice
    env = _prelude_env(
        build_step_gpu_prelude("apptainer", "nvccli", cleanenv=False),
        {**step, "NVIDIA_VISIBLE_DEVICES": "GPU-abc"},
    )
    assert env["NVIDIA_VISIBLE_DEVICES"] == "GPU-abc"
