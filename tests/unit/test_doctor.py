"""doctor's pure parts: the hypothetical node, every formatted section, JSON, exit status, and
how a kernelspec's config and the site config meet in the provisioner doctor builds."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from jupyter_client.kernelspec import KernelSpec
from traitlets.config import Application, Config

from kernelprovider.apptainer import RuntimeInfo
from kernelprovider.compat import FrameworkBuild, GpuInfo, HostFacts, ImageFacts, Verdict
from kernelprovider.doctor import (
    NO_DRIVER,
    KernelReport,
    exit_status,
    format_argv,
    framework_dict,
    host_lines,
    hypothetical_host,
    image_lines,
    kernel_report,
    launch_lines,
    make_provisioner,
    report_dict,
    report_lines,
    short_reason,
    summary_lines,
    verdict_lines,
)
from kernelprovider.kernelspec import build_kernelspec, provisioner_config

H200 = GpuInfo("NVIDIA H200", "9.0", 0, "GPU-1")
NODE = HostFacts("gpu01", "580.159.04", [H200])
EMPTY = HostFacts("login1")

OK = Verdict(
    "ok", "x.sif needs NVIDIA driver >= 396.26 (CUDA 9.2); node gpu01 has 580.159.04.", "driver"
)
WARN = Verdict(
    "warn", "x.sif pairs TensorFlow 1.8 with CUDA 9.2. Pick the tested pair.", "tensorflow"
)
FAIL = Verdict(
    "fail",
    "x.sif needs NVIDIA driver >= 396.26 (CUDA 9.2); node gpu01 has 390.46. Pick an image with "
    "CUDA <= 9.1 or another partition.",
    "driver",
)


# --------------------------------------------------------------------------------------------
# hypothetical_host


@pytest.mark.parametrize(
    ("kwargs", "driver", "gpus", "node", "given"),
    [
        ({}, "580.159.04", [H200], "gpu01", {}),
        ({"driver": "390.46"}, "390.46", [H200], "gpu01", {"driver": "--driver-version"}),
        ({"driver": " 595.45.04 "}, "595.45.04", [H200], "gpu01", {"driver": "--driver-version"}),
        (
            {"compute_capability": "8.0"},
            "580.159.04",
            [GpuInfo("a GPU of compute capability 8.0", "8.0")],
            "gpu01",
            {"gpus": "--compute-capability"},
        ),
        (
            {"compute_capability": "9.0", "gpu_name": "NVIDIA H100"},
            "580.159.04",
            [GpuInfo("NVIDIA H100", "9.0")],
            "gpu01",
            {"gpus": "--compute-capability"},
        ),
        (
            {"gpu_name": "Tesla V100"},
            "580.159.04",
            [GpuInfo("Tesla V100", None)],
            "gpu01",
            {"gpus": "--gpu-name"},
        ),
        ({"node": "qgpu01"}, "580.159.04", [H200], "qgpu01", {"node": "--node"}),
    ],
)
def test_hypothetical_host(kwargs, driver, gpus, node, given) -> None:
    host, got = hypothetical_host(NODE, **kwargs)
    assert (host.driver, host.gpus, host.node, got) == (driver, gpus, node, given)
    assert NODE.driver == "580.159.04" and NODE.gpus == [H200]  # the real facts stay


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"driver": "latest"}, "--driver-version 'latest' is not a driver version"),
        ({"compute_capability": "sm_90"}, "--compute-capability 'sm_90' is not a compute capa"),
        ({"compute_capability": "9"}, "give MAJOR.MINOR, e.g. --compute-capability 9.0"),
    ],
)
def test_hypothetical_host_refuses_bad_values(kwargs, message) -> None:
    with pytest.raises(ValueError, match=message.replace(".", r"\.")):
        hypothetical_host(NODE, **kwargs)


# --------------------------------------------------------------------------------------------
# Sections


@pytest.mark.parametrize(
    ("host", "given", "lines"),
    [
        (
            NODE,
            {},
            [
                "Node: gpu01",
                "  NVIDIA driver: 580.159.04 (serves CUDA <= 13.0 without compatibility packages)",
                "  GPUs: 1",
                "    0: NVIDIA H200, compute capability 9.0 (sm_90)",
            ],
        ),
        (
            EMPTY,
            {},
            [
                "Node: login1",
                f"  {NO_DRIVER}",
                "  GPUs: none (CPU-only kernels still run here)",
            ],
        ),
        (
            HostFacts("login1", "390.46"),
            {"driver": "--driver-version"},
            [
                "Node (hypothetical): login1",
                "  NVIDIA driver: 390.46 (from --driver-version; serves CUDA <= 9.1 without "
                "compatibility packages)",
                "  GPUs: not given (add --compute-capability to check the GPU architecture)",
            ],
        ),
        (
            HostFacts("n1", "580.159.04", [GpuInfo("NVIDIA A100", "8.0")]),
            {"gpus": "--compute-capability", "node": "--node"},
            [
                "Node (hypothetical): n1 (from --node)",
                "  NVIDIA driver: 580.159.04 (serves CUDA <= 13.0 without compatibility packages)",
                "  GPUs: 1 (from --compute-capability)",
                "    NVIDIA A100, compute capability 8.0 (sm_80)",
            ],
        ),
        (
            HostFacts(
                "n2",
                "580.159.04",
                [],
            ),
            {},
            [
                "Node: n2",
                "  NVIDIA driver: 580.159.04 (serves CUDA <= 13.0 without compatibility packages)",
                "  GPUs: none found (nvidia-smi and NVML list none)",
            ],
        ),
        (
            HostFacts("n3", "200.1", [GpuInfo("Old GPU", None, 3)]),
            {},
            [
                "Node: n3",
                "  NVIDIA driver: 200.1",
                "  GPUs: 1",
                "    3: Old GPU, compute capability unknown",
            ],
        ),
        (
            HostFacts("n4", "garbage"),
            {},
            [
                "Node: n4",
                "  NVIDIA driver: garbage",
                "  GPUs: none found (nvidia-smi and NVML list none)",
            ],
        ),
    ],
)
def test_host_lines(host, given, lines) -> None:
    assert host_lines(host, given) == lines


@pytest.mark.parametrize(
    ("facts", "lines"),
    [
        (
            ImageFacts(
                "kp-test.sif",
                cuda="9.2",
                cudnn="7.1",
                tensorflow="1.8",
                sources={
                    "cuda": "label CUDA_VERSION",
                    "cudnn": "/usr/include/cudnn.h",
                    "tensorflow": "pip package tensorflow-gpu",
                },
            ),
            [
                "  CUDA: 9.2 (label CUDA_VERSION)",
                "  cuDNN: 7.1 (/usr/include/cudnn.h)",
                "  TensorFlow: 1.8 (pip package tensorflow-gpu)",
            ],
        ),
        (
            ImageFacts("plain.sif"),
            [
                "  CUDA: not declared (no label, environment variable or file)",
                "  cuDNN: not declared (no label, environment variable or file)",
                "  TensorFlow: not declared (no label, environment variable or file)",
            ],
        ),
        (
            ImageFacts("nosrc.sif", cuda="12.4"),
            [
                "  CUDA: 12.4",
                "  cuDNN: not declared (no label, environment variable or file)",
                "  TensorFlow: not declared (no label, environment variable or file)",
            ],
        ),
    ],
)
def test_image_lines(facts, lines) -> None:
    assert image_lines(facts) == lines


@pytest.mark.parametrize(
    ("argv", "line"),
    [
        (["apptainer", "exec", "--nv", "/i.sif", "python3"], "apptainer exec --nv /i.sif python3"),
        (["a", "--bind", "/work dir"], "a --bind '/work dir'"),
        (["a", "$(rm -rf /)"], "a '$(rm -rf /)'"),
    ],
)
def test_format_argv(argv, line) -> None:
    assert format_argv(argv) == line


def test_launch_lines() -> None:
    report = KernelReport(
        image="/i.sif",
        runtime=RuntimeInfo("/usr/bin/apptainer", "apptainer", "1.4.5"),
        argv=["/usr/bin/apptainer", "exec", "--nv", "--bind", "/w d", "/i.sif", "python3"],
        env={"APPTAINERENV_B": "2", "APPTAINERENV_A": "1"},
    )
    assert launch_lines(report) == [
        "  Runtime: /usr/bin/apptainer (apptainer 1.4.5)",
        "  Command: /usr/bin/apptainer exec --nv --bind '/w d' /i.sif python3",
        "  Environment for the runtime:",
        "    APPTAINERENV_A=1",
        "    APPTAINERENV_B=2",
    ]
    assert launch_lines(KernelReport(image="/i.sif")) == []


@pytest.mark.parametrize(
    ("verdicts", "lines"),
    [
        ([], []),
        ([OK], [f"    ok    driver  {OK.reason}"]),
        (
            [FAIL, WARN],
            [f"    fail  driver      {FAIL.reason}", f"    warn  tensorflow  {WARN.reason}"],
        ),
    ],
)
def test_verdict_lines(verdicts, lines) -> None:
    assert verdict_lines(verdicts) == lines


@pytest.mark.parametrize(
    ("verdicts", "reason"),
    [
        ([], ""),
        ([OK], OK.reason),
        ([OK, WARN], "x.sif pairs TensorFlow 1.8 with CUDA 9.2."),
        (
            [WARN, FAIL, OK],
            "x.sif needs NVIDIA driver >= 396.26 (CUDA 9.2); node gpu01 has 390.46.",
        ),
    ],
)
def test_short_reason_is_the_worst_verdicts_first_sentence(verdicts, reason) -> None:
    assert short_reason(verdicts) == reason


@pytest.mark.parametrize(
    ("levels", "status"),
    [([], 0), ([[OK]], 0), ([[OK], [WARN]], 0), ([[OK], [WARN, FAIL]], 1), ([[FAIL]], 1)],
)
def test_exit_status(levels, status) -> None:
    reports = [KernelReport(image="/i.sif", verdicts=v) for v in levels]
    assert exit_status(reports) == status


def test_report_lines_for_a_kernel() -> None:
    report = KernelReport(
        image="/img/tf.sif",
        kernel="tf18",
        display_name="TF 1.8 / CUDA 9.2 (GPU)",
        facts=ImageFacts("tf.sif", cuda="9.2", sources={"cuda": "label CUDA_VERSION"}),
        argv=["apptainer", "exec", "--nv", "/img/tf.sif"],
        verdicts=[FAIL, WARN],
        notes=["a note"],
    )
    assert report_lines(report) == [
        'Kernel tf18 ("TF 1.8 / CUDA 9.2 (GPU)") [apptainer-provisioner, gpu=nv, '
        "compat_check=enforce]",
        "  Image: /img/tf.sif",
        "  CUDA: 9.2 (label CUDA_VERSION)",
        "  cuDNN: not declared (no label, environment variable or file)",
        "  TensorFlow: not declared (no label, environment variable or file)",
        "  Command: apptainer exec --nv /img/tf.sif",
        "  Note: a note",
        "  Verdicts:",
        f"    fail  driver      {FAIL.reason}",
        f"    warn  tensorflow  {WARN.reason}",
        "  compat_check=enforce: a start would be refused with the fail above.",
        "  Result: fail",
    ]


@pytest.mark.parametrize(
    ("compat_check", "line"),
    [
        ("enforce", "  compat_check=enforce: a start would be refused with the fail above."),
        ("warn", "  compat_check=warn: a start would go ahead and log the fail above."),
        ("off", "  compat_check=off: a start would go ahead without checking."),
    ],
)
def test_report_lines_say_what_the_policy_does_with_a_fail(compat_check, line) -> None:
    lines = report_lines(KernelReport(image="/i.sif", compat_check=compat_check, verdicts=[FAIL]))
    assert lines[0] == f"Image /i.sif [gpu=nv, compat_check={compat_check}]"
    assert lines[-2:] == [line, "  Result: fail"]
    ok = report_lines(KernelReport(image="/i.sif", compat_check=compat_check, verdicts=[OK]))
    assert ok[-2:] == [f"    ok    driver  {OK.reason}", "  Result: ok"]


def test_report_lines_without_verdicts() -> None:
    assert report_lines(KernelReport(image="/i.sif"))[-2:] == ["    (none)", "  Result: ok"]


def test_summary_lines() -> None:
    reports = [
        KernelReport(image="/img/a.sif", kernel="a", verdicts=[OK]),
        KernelReport(image="/img/long-name.sif", kernel="bee", verdicts=[OK, FAIL]),
        KernelReport(image="/img/c.sif", verdicts=[]),
    ]
    assert summary_lines(reports) == [
        "  NAME   VERDICT  IMAGE               REASON",
        f"  a      ok       /img/a.sif          {OK.reason}",
        "  bee    fail     /img/long-name.sif  x.sif needs NVIDIA driver >= 396.26 (CUDA 9.2); "
        "node gpu01 has 390.46.",
        "  c.sif  ok       /img/c.sif",
    ]
    assert summary_lines([]) == [
        "No container kernelspecs installed. Add one with 'jupyter kernelprovider install', "
        "or give an image: jupyter kernelprovider doctor /path/to/image.sif"
    ]


def test_report_dict_is_json() -> None:
    report = KernelReport(
        image="/img/tf.sif",
        kernel="tf18",
        facts=ImageFacts("tf.sif", cuda="9.2", sources={"cuda": "label CUDA_VERSION"}),
        runtime=RuntimeInfo("/usr/bin/apptainer", "apptainer", "1.4.5"),
        argv=["apptainer", "exec"],
        env={"APPTAINERENV_X": "1"},
        verdicts=[WARN],
    )
    doc = json.loads(json.dumps(report_dict(NODE, {"driver": "--driver-version"}, [report])))
    assert doc["host"] == {
        "node": "gpu01",
        "driver": "580.159.04",
        "cuda_supported": "13.0",
        "gpus": [
            {
                "index": 0,
                "name": "NVIDIA H200",
                "compute_capability": "9.0",
                "sm": "sm_90",
                "uuid": "GPU-1",
            }
        ],
        "hypothetical": {"driver": "--driver-version"},
    }
    (entry,) = doc["reports"]
    assert entry["image_facts"] == {
        "cuda": "9.2",
        "cudnn": None,
        "tensorflow": None,
        "sources": {"cuda": "label CUDA_VERSION"},
        "frameworks": [],
        "cudart": [],
    }
    assert entry["runtime"] == {
        "path": "/usr/bin/apptainer",
        "flavor": "apptainer",
        "version": "1.4.5",
    }
    assert entry["verdicts"] == [{"level": "warn", "check": "tensorflow", "reason": WARN.reason}]
    assert (entry["verdict"], entry["verdict_reason"]) == (
        "warn",
        "x.sif pairs TensorFlow 1.8 with CUDA 9.2.",
    )
    assert doc["verdict"] == "warn"
    empty = report_dict(EMPTY, {}, [])
    assert (empty["host"]["driver"], empty["host"]["cuda_supported"], empty["verdict"]) == (
        None,
        None,
        "ok",
    )


# --------------------------------------------------------------------------------------------
# Provisioner config: kernelspec over site over defaults


def spec_of(**config) -> KernelSpec:
    d = build_kernelspec("K", provisioner_config(**config))
    return KernelSpec(**d)


def test_make_provisioner_applies_kernelspec_over_site_config(tmp_path: Path) -> None:
    app = Application()
    app.config = Config(
        {"ContainerProvisioner": {"gpu": "none", "binds": ["/scratch"], "cleanenv": True}}
    )
    prov = make_provisioner(app, kernel="k", spec=spec_of(image="/img/a.sif", gpu="nv"))
    assert (prov.image, prov.gpu, prov.binds, prov.cleanenv) == (
        "/img/a.sif",
        "nv",  # the kernelspec wins
        ["/scratch"],  # the site config fills in
        True,
    )
    assert prov.kernel_name == "k"
    assert prov.parent.connection_file.endswith("kernel-KERNEL_ID.json")


def test_make_provisioner_for_a_bare_image_uses_the_site_config() -> None:
    app = Application()
    app.config = Config({"ContainerProvisioner": {"compat_check": "warn"}})
    prov = make_provisioner(app, image="/img/b.sif")
    assert (prov.image, prov.compat_check, prov.gpu) == ("/img/b.sif", "warn", "nv")
    assert prov.kernel_spec.argv == [
        "python3",
        "-m",
        "ipykernel_launcher",
        "-f",
        "{connection_file}",
    ]


def test_make_provisioner_refuses_what_the_provisioner_refuses() -> None:
    with pytest.raises(Exception, match="image must be an absolute path"):
        make_provisioner(Application(), spec=spec_of(image="relative.sif"))


def test_kernel_report_of_a_missing_image_and_runtime(monkeypatch) -> None:
    """Launch problems become fail verdicts with the provisioner's own sentences; the argv is
    still shown (with the configured runtime's name)."""
    monkeypatch.setenv("PATH", "/nonexistent")
    prov = make_provisioner(Application(), kernel="gone", spec=spec_of(image="/software/x.sif"))
    report = kernel_report(prov, NODE, kernel="gone", cwd="/tmp")
    checks = [(v.level, v.check) for v in report.verdicts]
    assert checks == [("fail", "image"), ("fail", "runtime")]
    assert report.verdicts[0].reason == (
        "Image /software/x.sif not found (kernel gone). Check the path in the kernelspec or run "
        "'jupyter kernelprovider list'."
    )
    assert "Neither apptainer nor singularity is on PATH" in report.verdicts[1].reason
    assert report.argv[:3] == ["apptainer", "exec", "--nv"]
    assert report.argv[-6:-5] == ["/software/x.sif"]
    assert report.argv[-1].endswith("/.kernel-KERNEL_ID.json.kernel")  # the kernel's own copy
    assert report.level == "fail"


def test_kernel_report_gpu_none_skips_the_driver(monkeypatch) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    prov = make_provisioner(
        Application(), kernel="cpu", spec=spec_of(image="/software/x.sif", gpu="none")
    )
    report = kernel_report(prov, EMPTY, kernel="cpu", cwd="/tmp")
    assert (
        Verdict("ok", "cpu runs without a GPU (gpu=none), so the driver is not checked.", "gpu")
        in report.verdicts
    )
    assert "--nv" not in report.argv


# --------------------------------------------------------------------------------------------
# What the image's frameworks were built for


TORCH = FrameworkBuild(
    "PyTorch",
    "2.5.1+cu124",
    location="/usr/local/lib/python3.11/dist-packages/torch",
    cuda="12.4",
    gpu_build=True,
    sass=[50, 60, 70, 75, 80, 86, 90],
    ptx=[90],
    archs_from="/usr/local/lib/python3.11/dist-packages/torch/lib/libtorch_cuda.so",
    facts_from="/usr/local/lib/python3.11/dist-packages/torch/version.py",
)
TF18 = FrameworkBuild(
    "TensorFlow",
    "1.8.0",
    cuda="9.0",
    cudnn="7",
    gpu_build=True,
    declared_archs=["3.5", "5.2"],
    facts_from="/usr/lib/python3/dist-packages/tensorflow/python/platform/build_info.py",
)


def test_framework_lines_show_build_facts_and_the_node_gpus() -> None:
    facts = ImageFacts(
        "pt.sif",
        frameworks=[TORCH, TF18, FrameworkBuild("PyTorch", "2.13.0+cpu", gpu_build=False)],
        cudart=["/usr/local/cuda-12.4/lib64/libcudart.so.12"],
        sources={"frameworks": "the image's Python"},
    )
    text = "\n".join(image_lines(facts, NODE))
    assert "Frameworks (read by the image's Python):" in text
    assert "PyTorch 2.5.1+cu124: CUDA 12.4; code for sm_50" in text
    assert (
        "+ PTX compute_90 (/usr/local/lib/python3.11/dist-packages/torch/lib/libtorch_cuda.so)"
        in text
    )
    assert "on this node: sm_90: native sm_90" in text
    assert "TensorFlow 1.8.0: CUDA 9.0, cuDNN 7; code for sm_35, sm_52 + PTX compute_52" in text
    assert "sm_90: PTX JIT of compute_52" in text
    assert "PyTorch 2.13.0+cpu: CPU-only build" in text
    assert "CUDA runtime in the image: /usr/local/cuda-12.4/lib64/libcudart.so.12" in text


def test_framework_dict_is_machine_readable() -> None:
    doc = json.loads(json.dumps(framework_dict(TORCH, NODE)))
    assert doc["sass"][-1] == "sm_90" and doc["ptx"] == ["compute_90"]
    assert doc["cuda"] == "12.4" and doc["gpu_build"] is True
    assert doc["on_gpus"] == {"sm_90": "native sm_90"}
    assert doc["archs_from"].endswith("libtorch_cuda.so")
    tf = framework_dict(TF18, NODE)
    assert tf["sass"] == ["sm_35", "sm_52"] and tf["ptx"] == ["compute_52"]
    assert tf["on_gpus"] == {"sm_90": "PTX JIT of compute_52"}
