"""scan's pure parts: kernel and display names from image metadata, clashes, the plan, logos."""

from __future__ import annotations

import runpy
import struct
from pathlib import Path

import pytest

from kernelprovider.image import facts_from_metadata
from kernelprovider.scan import (
    Candidate,
    assign_names,
    display_from_template,
    identify,
    logo_sources,
    plan_changes,
    short_version,
)

LOGOS = Path(__file__).resolve().parents[2] / "kernelprovider" / "logos"


def _identify(file: str, labels: dict | None = None, env: dict | None = None):
    labels, env = labels or {}, env or {}
    facts = facts_from_metadata(file, labels, env, path=f"/img/{file}")
    return identify(f"/img/{file}", labels, env, facts)


@pytest.mark.parametrize(
    ("file", "labels", "env", "name", "display", "gpu"),
    [
        # the test image's labels
        (
            "kp-test.sif",
            {"TENSORFLOW_VERSION": "1.8", "CUDA_VERSION": "9.2", "CUDNN_VERSION": "7.1"},
            {},
            "tf18-cuda92-gpu",
            "TF 1.8 / CUDA 9.2 (GPU)",
            True,
        ),
        # NGC-style PyTorch image: versions in the environment, patch levels and build tags
        (
            "pytorch.sif",
            {},
            {"PYTORCH_VERSION": "2.4.0a0+3bcc3cddb5", "CUDA_VERSION": "12.4.1"},
            "pytorch24-cuda124-gpu",
            "PyTorch 2.4 / CUDA 12.4 (GPU)",
            True,
        ),
        # OCI label names, any case
        (
            "torch.sif",
            {"org.pytorch.version": "2.4.1", "com.nvidia.cuda.version": "12.4"},
            {},
            "pytorch24-cuda124-gpu",
            "PyTorch 2.4 / CUDA 12.4 (GPU)",
            True,
        ),
        # a plain Python image (docker's python images set PYTHON_VERSION)
        (
            "python.sif",
            {},
            {"PYTHON_VERSION": "3.11.9"},
            "python311-cpu",
            "Python 3.11 (CPU)",
            False,
        ),
        ("tf-cpu.sif", {"TENSORFLOW_VERSION": "2.15.0"}, {}, "tf215-cpu", "TF 2.15 (CPU)", False),
        ("cuda.sif", {"CUDA_VERSION": "12.4"}, {}, "cuda124-gpu", "CUDA 12.4 (GPU)", True),
        # a framework wins over Python in the names
        (
            "tf.sif",
            {"TENSORFLOW_VERSION": "2.16.1", "PYTHON_VERSION": "3.12"},
            {"CUDA_VERSION": "12.3"},
            "tf216-cuda123-gpu",
            "TF 2.16 / CUDA 12.3 (GPU)",
            True,
        ),
        # nothing known: the file name
        ("My Image_v2.SIF", {}, {}, "my-image_v2", "My Image_v2", False),
        # labels that override
        (
            "kp-test.sif",
            {
                "TENSORFLOW_VERSION": "1.8",
                "CUDA_VERSION": "9.2",
                "org.jupyter.kernel.display_name": "Climate model (TF 1.8, GPU)",
            },
            {},
            "tf18-cuda92-gpu",
            "Climate model (TF 1.8, GPU)",
            True,
        ),
        (
            "x.sif",
            {"KERNEL_NAME": "Climate-GPU", "kernel_display_name": "Climate"},
            {},
            "climate-gpu",
            "Climate",
            False,
        ),
        # a kernel name label Jupyter would refuse is ignored
        (
            "x.sif",
            {"KERNEL_NAME": "bad name!", "CUDA_VERSION": "11.8"},
            {},
            "cuda118-gpu",
            "CUDA 11.8 (GPU)",
            True,
        ),
    ],
)
def test_identify(file, labels, env, name, display, gpu) -> None:
    ident = _identify(file, labels, env)
    assert (ident.name, ident.display_name, ident.gpu) == (name, display, gpu)


@pytest.mark.parametrize(
    ("value", "short"),
    [
        ("1.8", "1.8"),
        ("9.2.148", "9.2"),
        ("2.4.0a0+07cecf4", "2.4"),
        ("v12.4.1-1", "12.4"),
        ("12", "12"),
        ("yes", None),
        ("", None),
        (None, None),
    ],
)
def test_short_version(value, short) -> None:
    assert short_version(value) == short


@pytest.mark.parametrize(
    ("template", "display"),
    [
        ("{auto} on Slurm", "TF 1.8 / CUDA 9.2 (GPU) on Slurm"),
        ("TensorFlow {tensorflow} ({kind}, {stem})", "TensorFlow 1.8 (GPU, kp-test)"),
        ("Site {name} {pytorch}", "Site tf18-cuda92-gpu"),
    ],
)
def test_display_name_template(template, display) -> None:
    ident = _identify("kp-test.sif", {"TENSORFLOW_VERSION": "1.8", "CUDA_VERSION": "9.2"})
    assert display_from_template(template, ident) == display


def test_display_name_template_rejects_unknown_placeholders() -> None:
    ident = _identify("kp-test.sif")
    with pytest.raises(KeyError):
        display_from_template("{framework}", ident)


# --- clashes --------------------------------------------------------------------------------

TF = {"TENSORFLOW_VERSION": "1.8", "CUDA_VERSION": "9.2"}


def _candidate(path: str, labels: dict | None = None) -> Candidate:
    ident = _identify(Path(path).name, labels if labels is not None else TF)
    return Candidate(path, str(Path(path).parent), ident)


def _scanned(image: str, display: str = "x") -> dict:
    return {
        "display_name": display,
        "metadata": {"kernelprovider": {"scan": {"image": image, "source_dir": "/img"}}},
    }


def test_same_metadata_gets_the_file_name_as_suffix() -> None:
    names = assign_names([_candidate("/img/tf-a.sif"), _candidate("/img/tf-b.sif")], {})
    assert names == {
        "/img/tf-a.sif": ("tf18-cuda92-gpu", "TF 1.8 / CUDA 9.2 (GPU)"),
        "/img/tf-b.sif": ("tf18-cuda92-gpu-tf-b", "TF 1.8 / CUDA 9.2 (GPU) [tf-b]"),
    }


def test_names_stay_when_an_image_sorting_first_is_added() -> None:
    existing = {
        "tf18-cuda92-gpu": _scanned("/img/tf-a.sif"),
        "tf18-cuda92-gpu-tf-b": _scanned("/img/tf-b.sif"),
    }
    cands = [_candidate(p) for p in ("/img/tf-0.sif", "/img/tf-a.sif", "/img/tf-b.sif")]
    names = assign_names(cands, existing, image_exists=lambda p: True)
    assert names["/img/tf-a.sif"][0] == "tf18-cuda92-gpu"
    assert names["/img/tf-b.sif"][0] == "tf18-cuda92-gpu-tf-b"
    assert names["/img/tf-0.sif"][0] == "tf18-cuda92-gpu-tf-0"


def test_a_name_the_scan_did_not_make_is_never_taken() -> None:
    existing = {"tf18-cuda92-gpu": {"display_name": "hand-made", "metadata": {}}}
    names = assign_names([_candidate("/img/tf-a.sif")], existing, image_exists=lambda p: False)
    assert names["/img/tf-a.sif"][0] == "tf18-cuda92-gpu-tf-a"


def test_a_moved_image_takes_over_the_name_of_its_gone_path() -> None:
    existing = {"tf18-cuda92-gpu": _scanned("/img/old/tf.sif")}
    names = assign_names([_candidate("/img/tf-new.sif")], existing, image_exists=lambda p: False)
    assert names["/img/tf-new.sif"][0] == "tf18-cuda92-gpu"


def test_numbers_when_name_and_suffix_are_both_taken() -> None:
    existing = {
        "tf18-cuda92-gpu": {"metadata": {}},
        "tf18-cuda92-gpu-tf": {"metadata": {}},
    }
    names = assign_names([_candidate("/img/tf.sif")], existing, image_exists=lambda p: True)
    assert names["/img/tf.sif"][0] == "tf18-cuda92-gpu-tf-2"


# --- the plan -------------------------------------------------------------------------------


def _plan(wanted, existing, logos=None, found=(), prune=False, exists=lambda p: False):
    changes = plan_changes(wanted, existing, logos or {}, ["/img"], found, prune, exists)
    return [(c.verb, c.name) for c in changes]


def test_plan_add_update_unchanged() -> None:
    spec = _scanned("/img/a.sif", "A")
    logos = {"logo-64x64.png": b"png"}
    wanted = {
        "a": ("/img/a.sif", spec, logos),
        "b": ("/img/b.sif", _scanned("/img/b.sif", "B"), logos),
        "c": ("/img/c.sif", _scanned("/img/c.sif", "C new"), logos),
    }
    existing = {"a": _scanned("/img/a.sif", "A"), "c": _scanned("/img/c.sif", "C")}
    on_disk = {"a": logos, "c": logos}
    got = _plan(wanted, existing, on_disk, found=["/img/a.sif", "/img/b.sif", "/img/c.sif"])
    assert got == [("unchanged", "a"), ("add", "b"), ("update", "c")]


def test_plan_update_when_only_a_logo_differs() -> None:
    spec = _scanned("/img/a.sif", "A")
    wanted = {"a": ("/img/a.sif", spec, {"logo-64x64.png": b"new"})}
    got = _plan(wanted, {"a": spec}, {"a": {"logo-64x64.png": b"old"}}, found=["/img/a.sif"])
    assert got == [("update", "a")]


def test_prune_removes_only_scanned_kernelspecs_whose_image_is_gone() -> None:
    existing = {
        "gone": _scanned("/img/gone.sif"),
        "hand-made": {"metadata": {"kernel_provisioner": {"config": {"image": "/img/x.sif"}}}},
        "other-dir": {
            "metadata": {"kernelprovider": {"scan": {"image": "/b/x.sif", "source_dir": "/b"}}}
        },
    }
    assert _plan({}, existing, prune=False) == [("stale", "gone")]
    assert _plan({}, existing, prune=True) == [("remove", "gone")]
    # an image that still exists is never pruned
    assert _plan({}, existing, prune=True, exists=lambda p: True) == []


def test_a_kernelspec_whose_image_is_now_scanned_under_another_name_is_replaced() -> None:
    existing = {"tf18-cuda92-gpu": _scanned("/img/a.sif")}
    wanted = {"tf19-cuda92-gpu": ("/img/a.sif", _scanned("/img/a.sif"), {})}
    got = _plan(wanted, existing, found=["/img/a.sif"], exists=lambda p: True)
    assert got == [("remove", "tf18-cuda92-gpu"), ("add", "tf19-cuda92-gpu")]


# --- logos ----------------------------------------------------------------------------------


def test_shipped_logos_are_what_the_generator_draws() -> None:
    module = runpy.run_path(str(LOGOS / "make_logos.py"))
    files = module["logo_files"]()
    assert sorted(files) == sorted(p.name for p in LOGOS.iterdir() if p.suffix in (".png", ".svg"))
    for name, data in files.items():
        assert (LOGOS / name).read_bytes() == data, f"{name}: run make_logos.py again"


@pytest.mark.parametrize("gpu", [True, False])
def test_logo_sources_are_pngs_of_the_sizes_jupyter_expects(gpu: bool) -> None:
    sources = logo_sources(gpu)
    assert sorted(sources) == ["logo-32x32.png", "logo-64x64.png", "logo-svg.svg"]
    for dest, src in sources.items():
        data = Path(src).read_bytes()
        if dest.endswith(".png"):
            size = int(dest.split("x")[1].split(".")[0])
            assert data[:8] == b"\x89PNG\r\n\x1a\n"
            assert struct.unpack(">II", data[16:24]) == (size, size)
        else:
            assert data.startswith(b"<svg")
    assert ("gpu" if gpu else "cpu") in Path(sources["logo-svg.svg"]).name
