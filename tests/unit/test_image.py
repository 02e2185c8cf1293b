"""image: labels, env scripts and version files as Apptainer shows them; caching; failures."""

from __future__ import annotations

import asyncio
import json
import os
import stat
import subprocess
import time
from pathlib import Path

import pytest

from kernelprovider import image
from kernelprovider.compat import HostFacts, ImageFacts, evaluate
from kernelprovider.errors import ImageNotFound, NotAContainerImage, RuntimeNotFound
from kernelprovider.image import (
    FRAMEWORKS_SCRIPT,
    INSIDE_SCRIPT,
    facts_from_metadata,
    image_facts,
    image_facts_async,
    inside_argv,
    inspect_argv,
    parse_cuda_version_json,
    parse_cuda_version_txt,
    parse_cudnn_header,
    parse_dist_info_name,
    parse_env_script,
    parse_inside_output,
    parse_inspect_json,
)

# What apptainer 1.4.5 prints for `inspect --json --labels --environment` of an image with
# labels and a docker2singularity environment (captured from a real run).
INSPECT_1_4_5 = json.dumps(
    {
        "data": {
            "attributes": {
                "environment": {
                    "/.singularity.d/env/10-docker2singularity.sh": (
                        "#!/bin/sh\n"
                        'export PATH="/usr/local/nvidia/bin:/usr/local/cuda/bin:$PATH"\n'
                        'export CUDA_VERSION="${CUDA_VERSION:-"9.2.148"}"\n'
                        'export NV_CUDA_LIB_VERSION="9.2.148-1"'
                    ),
                    "/.singularity.d/env/90-environment.sh": "#!/bin/sh\nexport FOO=bar",
                },
                "labels": {
                    "CUDA_VERSION": "9.2",
                    "CUDNN_VERSION": "7.1",
                    "TENSORFLOW_VERSION": "1.8",
                    "org.label-schema.build-arch": "amd64",
                    "org.label-schema.usage.apptainer.version": "1.4.5",
                },
            }
        },
        "type": "container",
    },
    indent="\t",
)

NVIDIA_CUDA_ENV = (
    "#!/bin/sh\n"
    'export PATH="/usr/local/nvidia/bin:/usr/local/cuda/bin:${PATH:-}"\n'
    'export NVARCH="${NVARCH:-"x86_64"}"\n'
    'export NV_CUDA_LIB_VERSION="${NV_CUDA_LIB_VERSION:-"12.4.1-1"}"\n'
    'export CUDA_VERSION="${CUDA_VERSION:-"12.4.1"}"\n'
    'export NV_CUDNN_VERSION="${NV_CUDNN_VERSION:-"9.1.0.70-1"}"\n'
    'export LD_LIBRARY_PATH="/usr/local/nvidia/lib:/usr/local/nvidia/lib64"\n'
)

CUDNN7_HEADER = """\
#if !defined(CUDNN_H_)
#define CUDNN_H_

#define CUDNN_MAJOR 7
#define CUDNN_MINOR 1
#define CUDNN_PATCHLEVEL 4

#define CUDNN_VERSION (CUDNN_MAJOR * 1000 + CUDNN_MINOR * 100 + CUDNN_PATCHLEVEL)
"""
CUDNN8_VERSION_H = """\
#ifndef CUDNN_VERSION_H_
#define CUDNN_VERSION_H_
#define CUDNN_MAJOR 8
#define CUDNN_MINOR 9
#define CUDNN_PATCHLEVEL 7
"""


@pytest.fixture(autouse=True)
def fresh_cache() -> None:
    image.clear_cache()


# --------------------------------------------------------------------------------------------
# Pure parsers


@pytest.mark.parametrize(
    ("script", "expected"),
    [
        ('export CUDA_VERSION="${CUDA_VERSION:-"9.2.148"}"\n', {"CUDA_VERSION": "9.2.148"}),
        ("export CUDA_VERSION=${CUDA_VERSION:-9.0.176}\n", {"CUDA_VERSION": "9.0.176"}),
        ("export CUDA_VERSION=11.8.0\n", {"CUDA_VERSION": "11.8.0"}),
        ("CUDA_VERSION='10.1.243'\nexport CUDA_VERSION\n", {"CUDA_VERSION": "10.1.243"}),
        ("export A=1 B=2  # comment\n", {"A": "1", "B": "2"}),
        ("# export CUDA_VERSION=1.0\n", {}),
        ('if [ -z "$X" ]; then\n  export X=1\nfi\n', {"X": "1"}),
        ('export BROKEN="unterminated\n', {}),
        ("export CUDA_VERSION=9.0\nexport CUDA_VERSION=9.2\n", {"CUDA_VERSION": "9.2"}),
    ],
)
def test_parse_env_script(script: str, expected: dict[str, str]) -> None:
    assert parse_env_script(script) == expected


def test_parse_inspect_json_real_apptainer_output() -> None:
    labels, env = parse_inspect_json(INSPECT_1_4_5)
    assert labels["CUDA_VERSION"] == "9.2" and labels["TENSORFLOW_VERSION"] == "1.8"
    assert env["CUDA_VERSION"] == "9.2.148" and env["FOO"] == "bar"


@pytest.mark.parametrize(
    ("doc", "labels", "env"),
    [
        ({"data": {"attributes": {"labels": None}}}, {}, {}),
        ({"data": {"attributes": {}}}, {}, {}),
        (
            # env scripts are sourced by name: 90-environment.sh overrides the docker layer
            {
                "data": {
                    "attributes": {
                        "environment": {
                            "/.singularity.d/env/90-environment.sh": "export CUDA_VERSION=9.2",
                            "/.singularity.d/env/10-docker2singularity.sh": (
                                "export CUDA_VERSION=9.0"
                            ),
                        }
                    }
                }
            },
            {},
            {"CUDA_VERSION": "9.2"},
        ),
        (
            {"data": {"attributes": {"environment": "export CUDA_VERSION=8.0.61\n"}}},
            {},
            {"CUDA_VERSION": "8.0.61"},
        ),
        (
            {"data": {"attributes": {"labels": '{"CUDA_VERSION": "9.0"}'}}},
            {"CUDA_VERSION": "9.0"},
            {},
        ),
    ],
)
def test_parse_inspect_json_shapes(doc: dict, labels: dict, env: dict) -> None:
    assert parse_inspect_json(json.dumps(doc)) == (labels, env)


@pytest.mark.parametrize("text", ["", "FATAL: could not open image", "[1, 2]"])
def test_parse_inspect_json_rejects_other_output(text: str) -> None:
    with pytest.raises(ValueError, match="apptainer inspect"):
        parse_inspect_json(text)


@pytest.mark.parametrize(
    ("labels", "env", "expected", "sources"),
    [
        (
            {"CUDA_VERSION": "9.2", "CUDNN_VERSION": "7.1", "TENSORFLOW_VERSION": "1.8"},
            {"CUDA_VERSION": "9.2.148"},
            ("9.2", "7.1", "1.8"),
            {"cuda": "label CUDA_VERSION"},
        ),
        ({}, {"CUDA_VERSION": "9.2.148"}, ("9.2.148", None, None), {"cuda": "environment "}),
        (
            {},
            parse_env_script(NVIDIA_CUDA_ENV),
            ("12.4.1", "9.1.0.70", None),
            {"cudnn": "environment NV_CUDNN_VERSION"},
        ),
        (
            {"cuda_version": "11.8", "tensorflow_version": "2.12.0"},
            {},
            ("11.8", None, "2.12.0"),
            {"tensorflow": "label tensorflow_version"},
        ),
        (
            {"com.nvidia.cuda.version": "12.2.2", "com.nvidia.cudnn.version": "8.9.5.29"},
            {"TENSORFLOW_VERSION": "2.15.0"},
            ("12.2.2", "8.9.5.29", "2.15.0"),
            {"tensorflow": "environment TENSORFLOW_VERSION"},
        ),
        ({}, {"NV_CUDA_LIB_VERSION": "11.8.0-1"}, ("11.8.0", None, None), {}),
        ({"CUDA_VERSION": "yes"}, {}, (None, None, None), {}),  # not a version: ignored
        ({}, {}, (None, None, None), {}),
    ],
)
def test_facts_from_metadata(
    labels: dict[str, str],
    env: dict[str, str],
    expected: tuple[str | None, ...],
    sources: dict[str, str],
) -> None:
    facts = facts_from_metadata("x.sif", labels, env)
    assert (facts.cuda, facts.cudnn, facts.tensorflow) == expected
    for fact, where in sources.items():
        assert facts.sources[fact].startswith(where)


@pytest.mark.parametrize(
    ("text", "version"),
    [
        ('{"cuda": {"name": "CUDA SDK", "version": "12.4.1"}}', "12.4.1"),
        (
            '{"cuda": {"name": "CUDA SDK", "version": "11.8.20220929"}, '
            '"cuda_cudart": {"name": "CUDA Runtime (cudart)", "version": "11.8.89"}}',
            "11.8.20220929",
        ),
        ('{"cuda_cudart": {"version": "12.0.107"}}', None),
        ("not json", None),
    ],
)
def test_parse_cuda_version_json(text: str, version: str | None) -> None:
    assert parse_cuda_version_json(text) == version


@pytest.mark.parametrize(
    ("text", "version"),
    [
        ("CUDA Version 9.2.148\n", "9.2.148"),
        ("CUDA Version 10.0.130", "10.0.130"),
        ("CUDA Version 8.0.61\nPatch 2 (cuBLAS)\n", "8.0.61"),
        ("", None),
    ],
)
def test_parse_cuda_version_txt(text: str, version: str | None) -> None:
    assert parse_cuda_version_txt(text) == version


@pytest.mark.parametrize(
    ("text", "version"),
    [(CUDNN7_HEADER, "7.1.4"), (CUDNN8_VERSION_H, "8.9.7"), ("#include <cudnn_version.h>", None)],
)
def test_parse_cudnn_header(text: str, version: str | None) -> None:
    assert parse_cudnn_header(text) == version


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("/usr/lib/python3/dist-packages/tensorflow-2.15.0.dist-info", ("tensorflow", "2.15.0")),
        ("tensorflow_gpu-1.8.0.dist-info", ("tensorflow-gpu", "1.8.0")),
        ("tensorflow_gpu-1.8.0-py3.5.egg-info", ("tensorflow-gpu", "1.8.0")),
        ("tensorflow_estimator-1.13.0.dist-info", ("tensorflow-estimator", "1.13.0")),
        ("nvidia_cuda_runtime_cu12-12.2.140.dist-info", ("nvidia-cuda-runtime-cu12", "12.2.140")),
        ("tensorflow", None),
    ],
)
def test_parse_dist_info_name(name: str, expected: tuple[str, str] | None) -> None:
    assert parse_dist_info_name(name) == expected


def test_parse_inside_output() -> None:
    out = (
        "@@kernelprovider file /usr/local/cuda/version.txt\nCUDA Version 9.2.148\n\n"
        "@@kernelprovider cudnn /usr/include/cudnn.h\n"
        "#define CUDNN_MAJOR 7\n#define CUDNN_MINOR 1\n#define CUDNN_PATCHLEVEL 4\n"
        "@@kernelprovider dist /usr/local/lib/python3.6/dist-packages/"
        "tensorflow_estimator-1.13.0.dist-info\n"
        "@@kernelprovider dist /usr/local/lib/python3.6/dist-packages/"
        "tensorflow_gpu-1.8.0.dist-info\n"
        "@@kernelprovider end\n"
    )
    assert parse_inside_output(out) == {
        "cuda": ("9.2.148", "/usr/local/cuda/version.txt"),
        "cudnn": ("7.1.4", "/usr/include/cudnn.h"),
        "tensorflow": ("1.8.0", "pip package tensorflow-gpu"),
    }


def test_parse_inside_output_pip_cuda_wheels() -> None:
    site = "/usr/local/lib/python3.11/site-packages"
    out = (
        f"@@kernelprovider dist {site}/nvidia_cuda_runtime_cu12-12.2.140.dist-info\n"
        f"@@kernelprovider dist {site}/nvidia_cudnn_cu12-8.9.4.25.dist-info\n"
        f"@@kernelprovider dist {site}/tensorflow-2.15.1.dist-info\n"
        "@@kernelprovider end\n"
    )
    found = parse_inside_output(out)
    assert {k: v[0] for k, v in found.items()} == {
        "cuda": "12.2.140",
        "cudnn": "8.9.4.25",
        "tensorflow": "2.15.1",
    }


def test_parse_inside_output_json_before_txt() -> None:
    out = (
        '@@kernelprovider file /usr/local/cuda/version.json\n{"cuda": {"version": "11.2.2"}}\n'
        "@@kernelprovider file /usr/local/cuda/version.txt\nCUDA Version 11.2.152\n"
    )
    assert parse_inside_output(out)["cuda"] == ("11.2.2", "/usr/local/cuda/version.json")


def test_argv_are_lists_without_shell() -> None:
    assert inspect_argv("/usr/bin/apptainer", "/img/a b.sif") == [
        "/usr/bin/apptainer",
        "inspect",
        "--json",
        "--labels",
        "--environment",
        "/img/a b.sif",
    ]
    argv = inside_argv("apptainer", "/img/a b.sif")
    assert argv[:5] == ["apptainer", "exec", "--cleanenv", "--contain", "/img/a b.sif"]
    assert argv[5:] == ["/bin/sh", "-c", INSIDE_SCRIPT, "kernelprovider-inside", FRAMEWORKS_SCRIPT]
    assert inside_argv("apptainer", "/img/a", frameworks=False)[-1] == ""


def test_inside_script_is_valid_posix_sh(tmp_path: Path) -> None:
    # Run against this host's own (CUDA-less) files: it must parse, only read and end cleanly.
    out = subprocess.run(["sh", "-c", INSIDE_SCRIPT], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert out.stdout.rstrip().endswith("@@kernelprovider end")


# --------------------------------------------------------------------------------------------
# image_facts with a stand-in runtime (the real one is exercised below, when present)


def fake_runtime(
    tmp_path: Path, inspect: str, inside: str = "", rc: int = 0, delay: int = 0
) -> str:
    """A script that answers like apptainer and logs each call's subcommand."""
    (tmp_path / "inspect.json").write_text(inspect)
    (tmp_path / "inside.txt").write_text(inside)
    log = tmp_path / "calls.log"
    script = tmp_path / "fake-apptainer"
    script.write_text(
        "#!/bin/sh\n"
        f'echo "$1" >> "{log}"\n'
        f"sleep {delay}\n"
        'case "$1" in\n'
        f'  inspect) if [ {rc} -ne 0 ]; then echo "FATAL:   could not open image: image format '
        f'not recognized" >&2; exit {rc}; fi; cat "{tmp_path / "inspect.json"}" ;;\n'
        f'  exec) cat "{tmp_path / "inside.txt"}" ;;\n'
        "esac\n"
    )
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return str(script)


def calls(tmp_path: Path) -> list[str]:
    log = tmp_path / "calls.log"
    return log.read_text().split() if log.exists() else []


def sif(tmp_path: Path, name: str = "tf-1.8-cuda-9.2.sif") -> Path:
    path = tmp_path / "images" / name
    path.parent.mkdir(exist_ok=True)
    path.write_bytes(b"SIF_MAGIC" + b"\0" * 64)
    return path


def test_image_facts_from_labels_and_one_exec_for_the_frameworks(tmp_path: Path) -> None:
    runtime = fake_runtime(tmp_path, INSPECT_1_4_5)
    facts = image_facts(str(sif(tmp_path)), runtime, use_disk_cache=False)
    assert facts == ImageFacts(
        name="tf-1.8-cuda-9.2.sif",
        cuda="9.2",
        cudnn="7.1",
        tensorflow="1.8",
        path=str(tmp_path / "images" / "tf-1.8-cuda-9.2.sif"),
        sources={
            "cuda": "label CUDA_VERSION",
            "cudnn": "label CUDNN_VERSION",
            "tensorflow": "label TENSORFLOW_VERSION",
        },
    )
    # Labels win; the one exec is for what the frameworks were built for.
    assert calls(tmp_path) == ["inspect", "exec"]


def test_image_facts_looks_inside_for_what_is_missing(tmp_path: Path) -> None:
    inspect = json.dumps({"data": {"attributes": {"labels": {"TENSORFLOW_VERSION": "1.8"}}}})
    inside = "@@kernelprovider file /usr/local/cuda/version.txt\nCUDA Version 9.2.148\n"
    runtime = fake_runtime(tmp_path, inspect, inside)
    facts = image_facts(str(sif(tmp_path)), runtime, use_disk_cache=False)
    assert (facts.cuda, facts.tensorflow, facts.cudnn) == ("9.2.148", "1.8", None)
    assert facts.sources["cuda"] == "/usr/local/cuda/version.txt"
    assert calls(tmp_path) == ["inspect", "exec"]


def test_image_facts_look_inside_can_be_turned_off(tmp_path: Path) -> None:
    runtime = fake_runtime(tmp_path, json.dumps({"data": {"attributes": {}}}))
    facts = image_facts(str(sif(tmp_path)), runtime, use_disk_cache=False, look_inside=False)
    assert facts.cuda is None
    assert calls(tmp_path) == ["inspect"]


def test_image_facts_cached_in_memory_and_on_disk(tmp_path: Path) -> None:
    runtime = fake_runtime(tmp_path, INSPECT_1_4_5)
    path = sif(tmp_path)
    cache = tmp_path / "cache" / "facts.json"
    first = image_facts(str(path), runtime, cache_file=cache)
    assert image_facts(str(path), runtime, cache_file=cache) == first
    assert calls(tmp_path) == ["inspect", "exec"]
    image.clear_cache()  # a new process: the disk cache answers
    assert image_facts(str(path), runtime, cache_file=cache) == first
    assert calls(tmp_path) == ["inspect", "exec"]
    assert json.loads(cache.read_text())["images"][str(path)]["facts"]["cuda"] == "9.2"
    # a rebuilt image (new mtime) is read again
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10**9))
    image_facts(str(path), runtime, cache_file=cache)
    assert calls(tmp_path) == ["inspect", "exec", "inspect", "exec"]


def test_cache_hit_through_a_symlink_keeps_the_name_users_gave(tmp_path: Path) -> None:
    runtime = fake_runtime(tmp_path, INSPECT_1_4_5)
    path = sif(tmp_path)
    link = tmp_path / "images" / "current.sif"
    link.symlink_to(path)
    assert image_facts(str(path), runtime, use_disk_cache=False).name == "tf-1.8-cuda-9.2.sif"
    assert image_facts(str(link), runtime, use_disk_cache=False).name == "current.sif"
    assert calls(tmp_path) == ["inspect", "exec"]


def test_unwritable_disk_cache_costs_nothing_but_time(tmp_path: Path) -> None:
    runtime = fake_runtime(tmp_path, INSPECT_1_4_5)
    blocker = tmp_path / "file"
    blocker.write_text("")
    facts = image_facts(str(sif(tmp_path)), runtime, cache_file=blocker / "sub" / "c.json")
    assert facts.cuda == "9.2"


def test_missing_image_names_path_and_next_step(tmp_path: Path) -> None:
    runtime = fake_runtime(tmp_path, INSPECT_1_4_5)
    missing = tmp_path / "nope" / "tf-1.8-cuda-9.2.sif"
    with pytest.raises(ImageNotFound) as e:
        image_facts(str(missing), runtime, use_disk_cache=False)
    assert str(missing) in str(e.value) and "jupyter kernelprovider list" in str(e.value)
    assert isinstance(e.value, FileNotFoundError)
    assert calls(tmp_path) == []


def test_missing_runtime(tmp_path: Path) -> None:
    with pytest.raises(RuntimeNotFound, match="no-such-apptainer"):
        image_facts(str(sif(tmp_path)), "no-such-apptainer", use_disk_cache=False)


def test_inspect_failure_carries_runtimes_words(tmp_path: Path) -> None:
    runtime = fake_runtime(tmp_path, "", rc=255)
    path = sif(tmp_path)
    with pytest.raises(NotAContainerImage) as e:
        image_facts(str(path), runtime, use_disk_cache=False)
    assert "image format not recognized" in str(e.value) and str(path) in str(e.value)
    assert "exit 255" in str(e.value)


def test_uri_is_not_inspected(tmp_path: Path) -> None:
    with pytest.raises(NotAContainerImage, match="apptainer pull"):
        image_facts("docker://nvidia/cuda:12.4.1-base-ubuntu22.04", use_disk_cache=False)


def test_inspect_timeout_is_kept_even_when_children_hold_the_pipes(tmp_path: Path) -> None:
    runtime = fake_runtime(tmp_path, INSPECT_1_4_5, delay=30)  # `sleep` inherits stdout
    started = time.monotonic()
    with pytest.raises(TimeoutError, match="did not answer within 0.5 s"):
        image_facts(str(sif(tmp_path)), runtime, use_disk_cache=False, timeout=0.5)
    assert time.monotonic() - started < 10


def test_async_variant_never_calls_subprocess_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    inspect = json.dumps({"data": {"attributes": {"labels": {"TENSORFLOW_VERSION": "1.8"}}}})
    inside = '@@kernelprovider file /usr/local/cuda/version.json\n{"cuda": {"version": "9.2"}}\n'
    runtime = fake_runtime(tmp_path, inspect, inside)

    def forbidden(*args: object, **kwargs: object) -> None:
        raise AssertionError("subprocess.run inside async code")

    monkeypatch.setattr(subprocess, "run", forbidden)
    path = str(sif(tmp_path))
    facts = asyncio.run(image_facts_async(path, runtime, cache_file=tmp_path / "c.json"))
    assert (facts.cuda, facts.tensorflow) == ("9.2", "1.8")
    assert calls(tmp_path) == ["inspect", "exec"]
    image.clear_cache()
    again = asyncio.run(image_facts_async(path, runtime, cache_file=tmp_path / "c.json"))
    assert again == facts and calls(tmp_path) == ["inspect", "exec"]


def test_async_timeout_and_failure(tmp_path: Path) -> None:
    runtime = fake_runtime(tmp_path, INSPECT_1_4_5, delay=30)
    started = time.monotonic()
    with pytest.raises(TimeoutError, match="did not answer"):
        asyncio.run(
            image_facts_async(str(sif(tmp_path)), runtime, use_disk_cache=False, timeout=0.5)
        )
    assert time.monotonic() - started < 10
    runtime = fake_runtime(tmp_path, "", rc=1)
    with pytest.raises(NotAContainerImage, match="image format not recognized"):
        asyncio.run(image_facts_async(str(sif(tmp_path)), runtime, use_disk_cache=False))
    with pytest.raises(ImageNotFound):
        asyncio.run(image_facts_async(str(tmp_path / "gone.sif"), runtime, use_disk_cache=False))


def test_default_cache_file_follows_jupyter_runtime_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(tmp_path / "rt"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    path = image.default_cache_file()
    assert str(path).startswith(str(tmp_path)) and path.suffix == ".json"


# --------------------------------------------------------------------------------------------
# The real runtime and the project's test image


@pytest.mark.integration
def test_real_image_labels(images: object, apptainer: str, tmp_path: Path) -> None:
    path = images.test  # type: ignore[attr-defined]
    facts = image_facts(str(path), apptainer, cache_file=tmp_path / "c.json")
    assert (facts.cuda, facts.cudnn, facts.tensorflow) == ("9.2", "7.1", "1.8")
    assert facts.sources["cuda"] == "label CUDA_VERSION"
    inside = subprocess.run(
        inside_argv(apptainer, str(path)), capture_output=True, text=True, timeout=120
    )
    assert parse_inside_output(inside.stdout)["cuda"][0] == "9.2.148"
    v = evaluate(facts, HostFacts("gpu01", "390.46", []))[0]
    assert v.reason == (
        "kp-test.sif needs NVIDIA driver >= 396.26 (CUDA 9.2); node gpu01 has 390.46. "
        "Pick an image with CUDA <= 9.1 or another partition."
    )
