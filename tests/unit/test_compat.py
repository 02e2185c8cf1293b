"""compat: NVIDIA's and tensorflow.org's numbers, and the sentences users read about them."""

from __future__ import annotations

import pytest

from kernelprovider import compat
from kernelprovider.compat import (
    GpuInfo,
    HostFacts,
    ImageFacts,
    Verdict,
    cuda_for_driver,
    evaluate,
    evaluate_policy,
    min_driver_for_cuda,
    parse_version,
    version_at_least,
    worst,
)

IMAGE = "tf-1.8-cuda-9.2.sif"
NODE = "gpu01"


def image(cuda: str | None, tf: str | None = None, cudnn: str | None = None) -> ImageFacts:
    return ImageFacts(name=IMAGE, cuda=cuda, cudnn=cudnn, tensorflow=tf)


def host(driver: str | None, *ccs: str, names: tuple[str, ...] = ()) -> HostFacts:
    gpus = [
        GpuInfo(name=names[i] if i < len(names) else f"GPU cc{cc}", compute_capability=cc, index=i)
        for i, cc in enumerate(ccs)
    ]
    return HostFacts(node=NODE, driver=driver, gpus=gpus)


def beyond_the_tables() -> dict[str, str]:
    """Versions newer than every row of the data tables, computed from them, so that a row
    added for a new CUDA, driver branch or TensorFlow release breaks no test."""
    newest = max(parse_version(r.toolkit)[:2] for r in compat.cuda_releases())
    branch = compat.newest_branch()
    floor = compat.minor_compat()[newest[0]].min_driver
    tf = max(compat.tensorflow_configs())
    return {
        "next_minor": f"{newest[0]}.{newest[1] + 1}",
        "minor_after": f"{newest[0]}.{newest[1] + 2}",
        "next_major": f"{newest[0] + 1}.0",
        "newer_branch": f"{branch + 5}.10",  # a driver of a branch newer than any in the table
        "top_branch": f"{branch}.43.02",  # a driver of the newest branch the table names
        "floor": floor,  # the newest major's minor-version-compatibility floor
        "below_floor": f"{parse_version(floor)[0] - 5}.57.08",
        "next_tf": f"{tf[0]}.{tf[1] + 4}",
    }


BEYOND = beyond_the_tables()


def only(verdicts: list[Verdict], check: str) -> Verdict:
    found = [v for v in verdicts if v.check == check]
    assert len(found) == 1, verdicts
    return found[0]


# --------------------------------------------------------------------------------------------
# Versions


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("515.76", (515, 76)),
        ("580.159.04", (580, 159, 4)),
        ("9.2", (9, 2)),
        ("9.2.148", (9, 2, 148)),
        ("12.4.1", (12, 4, 1)),
        ("V9.2.148", (9, 2, 148)),
        ("CUDA Version 10.0.130", (10, 0, 130)),
        ("12.4.1-1", (12, 4, 1)),
        ("8.9.7.29-1+cuda12.2", (8, 9, 7, 29)),
        (" 535.104.05 \n", (535, 104, 5)),
        ("9", (9,)),
        ("1.8.", (1, 8)),
    ],
)
def test_parse_version(text: str, expected: tuple[int, ...]) -> None:
    assert parse_version(text) == expected


@pytest.mark.parametrize("text", ["", "none", "unknown", "N/A"])
def test_parse_version_rejects_text_without_digits(text: str) -> None:
    with pytest.raises(ValueError, match="not a version number"):
        parse_version(text)


@pytest.mark.parametrize(
    ("version", "minimum", "expected"),
    [
        ("515.76", "515.43.04", True),  # two parts against three
        ("515.43.04", "515.76", False),
        ("570.26", "570.26.00", True),  # trailing zeros do not count
        ("570.26.00", "570.26", True),
        ("396.26", "396.26", True),
        ("396.25", "396.26", False),
        ("1000.0", "999.99.99", True),
    ],
)
def test_version_at_least(version: str, minimum: str, expected: bool) -> None:
    assert version_at_least(version, minimum) is expected


# --------------------------------------------------------------------------------------------
# Tables: the numbers as NVIDIA publishes them


@pytest.mark.parametrize(
    ("cuda", "driver"),
    [
        ("8.0", "367.48"),
        ("8.0.61", "375.26"),
        ("9.0", "384.81"),
        ("9.1", "390.46"),
        ("9.2", "396.26"),  # the GA's minimum, the lowest of 9.2
        ("9.2.88", "396.26"),
        ("9.2.148", "396.37"),  # the exact update release
        ("10.0", "410.48"),
        ("10.0.130", "410.48"),
        ("10.1", "418.39"),
        ("10.2", "440.33"),
        ("7.0", "346.46"),
        ("7.5.16", "352.31"),
        ("11.0", "450.51.05"),  # the GA's minimum, not the 11.0.1 RC's 450.36.06
        ("11.0.1", "450.36.06"),  # the RC row, asked for exactly
        ("11.0.3", "450.51.06"),
        ("11.0.0", "450.51.05"),  # no such row: the major.minor's GA minimum
        ("11.2", "460.27.03"),
        ("11.4.4", "470.82.01"),
        ("11.8", "520.61.05"),
        ("12.0", "525.60.13"),
        ("12.0.1", "525.85.12"),
        ("12.2.2", "535.104.05"),
        ("12.4", "550.54.14"),
        ("12.4.1", "550.54.15"),
        ("12.8", "570.26"),
        ("12.9.1", "575.57.08"),
        ("13.0", "580.65.06"),
        ("13.2.2", "595.71.05"),
        ("13.3", "R610"),  # NVIDIA gives a driver branch for CUDA 13.3
        ("9", "384.81"),  # a bare major is major.0
    ],
)
def test_min_driver_for_cuda(cuda: str, driver: str) -> None:
    assert min_driver_for_cuda(cuda) == driver


@pytest.mark.parametrize("cuda", ["6.5", "12.7", BEYOND["next_minor"], BEYOND["next_major"]])
def test_min_driver_for_cuda_unknown(cuda: str) -> None:
    assert min_driver_for_cuda(cuda) is None


@pytest.mark.parametrize(
    ("driver", "cuda"),
    [
        ("390.46", "9.1"),
        ("396.26", "9.2"),
        ("520.61.05", "11.8"),
        ("535.104.05", "12.2"),
        ("580.159.04", "13.0"),
        ("610.43.02", "13.3"),  # a branch row: any 610.x
        ("352.31", "7.5"),
        ("300.10", None),
    ],
)
def test_cuda_for_driver(driver: str, cuda: str | None) -> None:
    assert cuda_for_driver(driver) == cuda


def test_tables_load_with_their_source_comments_skipped() -> None:
    releases = compat.cuda_releases()
    assert releases[0].toolkit == "7.0.28"
    by_toolkit = {r.toolkit: r for r in releases}
    assert by_toolkit["13.3.0"].is_branch and not by_toolkit["13.2.2"].is_branch
    assert by_toolkit["11.0.1"].is_prerelease and not by_toolkit["11.0.2"].is_prerelease
    assert all(not r.release.startswith("#") for r in releases)
    drivers = [parse_version(r.min_driver) for r in releases]
    assert all(
        compat.versions._key(a) <= compat.versions._key(b)
        for a, b in zip(drivers, drivers[1:], strict=False)
    ), "NVIDIA's minimums never go down from one release to the next"
    assert {m: c.min_driver for m, c in compat.minor_compat().items()} == {
        11: "450.80.02",
        12: "525",  # NVIDIA's ">= 525", not the older 525.60.13
        13: "580",
    }
    assert compat.tensorflow_configs()[(1, 8)].cuda == "9"
    assert compat.tensorflow_configs()[(2, 15)].cudnn == "8.9"
    assert (2, 19) not in compat.tensorflow_configs()  # no sourced row
    arch = compat.arch_support()
    assert (arch["sm_90"].first_cuda, arch["sm_90"].last_cuda) == ("11.8", None)
    assert (arch["sm_35"].first_cuda, arch["sm_35"].last_cuda) == ("5.0", "11.8")
    assert arch["sm_70"].last_cuda == "12.9"  # CUDA 13.0 dropped Maxwell, Pascal and Volta
    assert (arch["sm_101"].first_cuda, arch["sm_101"].last_cuda) == ("12.8", "12.9")
    assert arch["sm_110"].first_cuda == "13.0"  # Thor, renamed from sm_101 in CUDA 13.0
    assert [arch[s].first_cuda for s in ("sm_103", "sm_121", "sm_88")] == ["12.9", "12.9", "13.0"]


def test_data_files_name_their_source() -> None:
    from importlib import resources

    data = resources.files("kernelprovider").joinpath("data")
    for name, source in [
        ("cuda_driver.csv", "Table 3"),
        ("cuda_minor_compat.csv", "minor-version-compatibility"),
        ("tensorflow_cuda.csv", "tensorflow.org"),
        ("cuda_arch.csv", "clang"),
    ]:
        text = data.joinpath(name).read_text("utf-8")
        header = [ln for ln in text.splitlines() if ln.startswith("#")]
        assert any(source in ln for ln in header), name
        assert any("Gathered: " in ln for ln in header), name


def test_every_driver_row_names_a_source_the_file_describes() -> None:
    from importlib import resources

    text = resources.files("kernelprovider").joinpath("data/cuda_driver.csv").read_text("utf-8")
    described = {
        ln.split()[1] for ln in text.splitlines() if ln.startswith("#   ") and ln[4:5] != " "
    }
    for r in compat.cuda_releases():
        assert r.source in described, r


# --------------------------------------------------------------------------------------------
# Driver verdicts


@pytest.mark.parametrize(
    ("cuda", "driver", "level"),
    [
        ("9.2", "396.26", "ok"),  # exactly the minimum
        ("9.2", "396.25", "fail"),  # one below
        ("9.2", "390.46", "fail"),
        ("9.2", "580.159.04", "ok"),
        ("9.2", "515.76", "ok"),  # two-part driver version
        ("9.2.148", "396.37", "ok"),
        ("9.2.148", "396.26", "warn"),  # meets 9.2 but not the update's own row
        ("9.2.148", "390.46", "fail"),
        ("10.0.130", "410.48", "ok"),
        ("10.0.130", "410.47", "fail"),
        ("11.8", "520.61.05", "ok"),
        ("11.8", "450.80.02", "warn"),  # 11.x minor-version compatibility floor, exactly
        ("11.8", "450.80.01", "fail"),
        ("12.0", "525.60.13", "ok"),
        ("12.4", "550.54.14", "ok"),
        ("12.4", "525.60.13", "warn"),  # minor-version compatibility
        ("12.4", "525.60.12", "warn"),  # NVIDIA's 12.x floor is the R525 branch, not 525.60.13
        ("12.4", "520.61.05", "fail"),
        ("12.4", "520", "fail"),
        ("12.4", "520.61.05", "fail"),
        ("12.8", "570.26", "ok"),
        ("12.8", "570.26.00", "ok"),
        ("13.0", "580", "warn"),  # 13.x floor is 580 but 13.0 GA asks for 580.65.06
        ("13.0", "580.65.06", "ok"),
        ("13.2", "580.159.04", "warn"),
        ("13.2", "575.57.08", "fail"),
        ("12.7", "570.26", "ok"),  # no 12.7 release: 12.8's minimum is enough
        ("7.5", "352.31", "ok"),
        ("7.0", "346.45", "fail"),
        ("11.0", "450.51.05", "ok"),  # the GA's minimum
        ("11.0", "450.36.06", "fail"),  # the RC's driver is below the GA's and the 11.x floor
        ("11.0.1", "450.36.06", "ok"),  # the RC itself
        ("13.3", "610.43.02", "ok"),  # branch row R610
        ("13.3", "595.71.05", "warn"),  # below R610, above the 13.x floor
        ("13.3", "575.57.08", "fail"),  # below the 13.x floor
        # newer than the driver table (computed from it, see beyond_the_tables)
        (BEYOND["next_minor"], BEYOND["newer_branch"], "ok"),  # on a newer branch than any
        (BEYOND["next_minor"], BEYOND["top_branch"], "warn"),  # minor-version compatibility
        (BEYOND["minor_after"], BEYOND["floor"], "warn"),
        (BEYOND["next_minor"], BEYOND["below_floor"], "fail"),
        (BEYOND["next_major"], BEYOND["newer_branch"], "warn"),  # driver newer than all known
        (BEYOND["next_major"], BEYOND["top_branch"], "fail"),  # on the newest known branch
        (BEYOND["next_major"], "535.104.05", "fail"),
    ],
)
def test_driver_levels(cuda: str, driver: str, level: str) -> None:
    v = only(evaluate(image(cuda), host(driver)), "driver")
    assert v.level == level, v.reason
    assert IMAGE in v.reason and NODE in v.reason and driver in v.reason and cuda in v.reason


def test_driver_too_old_message_is_the_one_users_read() -> None:
    v = only(evaluate(image("9.2"), host("390.46")), "driver")
    assert v == Verdict(
        "fail",
        "tf-1.8-cuda-9.2.sif needs NVIDIA driver >= 396.26 (CUDA 9.2); node gpu01 has 390.46. "
        "Pick an image with CUDA <= 9.1 or another partition.",
        "driver",
    )


def test_driver_ok_message_names_both_numbers() -> None:
    v = only(evaluate(image("12.2.2"), host("535.104.05")), "driver")
    assert v.reason == (
        "tf-1.8-cuda-9.2.sif needs NVIDIA driver >= 535.104.05 (CUDA 12.2.2); node gpu01 has "
        "535.104.05."
    )


def test_minor_compat_warning_mentions_ptx_error_222() -> None:
    v = only(evaluate(image("12.4"), host("525.60.13")), "driver")
    assert v.level == "warn"
    assert "needs NVIDIA driver >= 550.54.14 (CUDA 12.4)" in v.reason
    assert "node gpu01 has 525.60.13" in v.reason
    assert "CUDA 12.x minor-version compatibility (driver >= 525)" in v.reason
    assert "PTX" in v.reason and "222" in v.reason


def test_below_minor_compat_floor_fails_with_next_step() -> None:
    v = only(evaluate(image("12.4"), host("520.61.05")), "driver")
    assert v.reason == (
        "tf-1.8-cuda-9.2.sif needs NVIDIA driver >= 550.54.14 (CUDA 12.4); node gpu01 has "
        "520.61.05. Pick an image with CUDA <= 11.8 or another partition."
    )


def test_driver_older_than_every_cuda_gives_partition_hint_only() -> None:
    v = only(evaluate(image("8.0"), host("340.108")), "driver")
    assert v.level == "fail"
    assert v.reason.endswith("node gpu01 has 340.108. Pick another partition.")


def test_unknown_future_major_cannot_be_checked_above_every_known_branch() -> None:
    cuda, driver = BEYOND["next_major"], BEYOND["newer_branch"]
    v = only(evaluate(image(cuda), host(driver)), "driver")
    assert v.level == "warn"
    assert f"CUDA {cuda}" in v.reason and "cannot be checked" in v.reason
    assert driver in v.reason and NODE in v.reason


def _driver_of(minimum: str) -> str:
    # A driver of a table row: the exact minimum, or the top of a branch row (R610 -> 610.99.99).
    return f"{minimum[1:]}.99.99" if minimum.startswith("R") else minimum


@pytest.mark.parametrize("release", compat.cuda_releases(), ids=lambda r: r.toolkit)
def test_new_major_fails_on_every_known_driver(release: compat.CudaRelease) -> None:
    # Minor-version compatibility never crosses a major: no driver that NVIDIA names for a
    # CUDA release in the table runs the next major.
    newest_major = max(parse_version(r.toolkit)[0] for r in compat.cuda_releases())
    v = only(
        evaluate(image(f"{newest_major + 1}.0"), host(_driver_of(release.min_driver))), "driver"
    )
    assert v.level == "fail", v.reason
    assert "never crosses a major" in v.reason and "Pick an image with CUDA <=" in v.reason


@pytest.mark.parametrize("release", compat.cuda_releases(), ids=lambda r: r.toolkit)
def test_every_release_is_ok_on_its_own_minimum(release: compat.CudaRelease) -> None:
    v = only(evaluate(image(release.toolkit), host(_driver_of(release.min_driver))), "driver")
    assert v.level == "ok", v.reason
    assert "not in kernelprovider's driver table" not in v.reason


def test_no_driver_on_node_fails_with_next_step() -> None:
    verdicts = evaluate(image("9.2"), host(None))
    v = only(verdicts, "driver")
    assert v.level == "fail"
    assert "node gpu01 has no NVIDIA driver" in v.reason
    assert IMAGE in v.reason and "CUDA 9.2" in v.reason
    assert "Pick a GPU partition" in v.reason
    assert not [x for x in verdicts if x.check == "arch"]


@pytest.mark.parametrize("driver", [None, "535.104.05"])
def test_image_without_cuda_is_ok(driver: str | None) -> None:
    verdicts = evaluate(image(None, tf="2.15"), host(driver, "9.0"))
    assert verdicts == [verdicts[0]] and verdicts[0].level == "ok"
    assert verdicts[0].check == "driver"
    assert "declares no CUDA" in verdicts[0].reason and NODE in verdicts[0].reason


def test_unreadable_versions_warn_instead_of_crashing() -> None:
    v = only(evaluate(image("latest"), host("535.104.05")), "driver")
    assert v.level == "warn" and "'latest'" in v.reason
    v = only(evaluate(image("12.2"), host("unknown")), "driver")
    assert v.level == "warn" and "'unknown'" in v.reason and "nvidia-smi" in v.reason


# --------------------------------------------------------------------------------------------
# GPU architecture verdicts


@pytest.mark.parametrize(
    ("cuda", "cc", "level", "words"),
    [
        ("9.2", "9.0", "warn", ["sm_90", "CUDA >= 11.8", "30 minutes", "no kernel image"]),
        ("11.7", "9.0", "warn", ["sm_90", "CUDA >= 11.8"]),
        ("11.8", "9.0", "ok", ["native", "sm_90"]),
        ("12.0", "3.5", "fail", ["dropped", "sm_35", "11.8", "no kernel image"]),
        ("11.8", "3.5", "ok", ["native", "sm_35"]),
        ("11.0", "3.0", "fail", ["sm_30", "10.2"]),
        ("13.0", "7.0", "fail", ["sm_70", "12.9"]),  # Volta left with CUDA 13.0
        ("12.9", "7.0", "ok", ["native", "sm_70"]),
        ("11.0", "8.6", "ok", ["sm_80 code runs", "sm_86"]),  # same family, binary compatible
        ("12.4", "10.0", "warn", ["sm_100", "CUDA >= 12.8"]),
        ("12.8", "12.0", "ok", ["sm_120"]),
        ("12.8", "10.3", "ok", ["code runs", "sm_103", "native sm_103 needs CUDA >= 12.9"]),
        ("9.2", "5.2", "ok", ["native", "sm_52"]),
        ("12.4", "15.0", "warn", ["sm_150", "newer than", "PTX"]),
    ],
)
def test_arch_levels(cuda: str, cc: str, level: str, words: list[str]) -> None:
    v = only(evaluate(image(cuda), host("580.159.04", cc, names=("NVIDIA TEST",))), "arch")
    assert v.level == level, v.reason
    assert IMAGE in v.reason and NODE in v.reason and "NVIDIA TEST" in v.reason
    assert f"CUDA {cuda}" in v.reason
    for word in words:
        assert word in v.reason


def test_cuda_92_on_h200_warns_about_ptx_jit() -> None:
    v = only(evaluate(image("9.2"), host("580.159.04", "9.0", names=("NVIDIA H200",))), "arch")
    assert v.reason == (
        "tf-1.8-cuda-9.2.sif has CUDA 9.2 but NVIDIA H200 (sm_90) on node gpu01 needs "
        "CUDA >= 11.8 for native code, so the image's GPU code runs only through PTX JIT "
        'compilation (which could take 30 minutes or longer) or fails with "no kernel image is '
        'available for execution on the device"; pick an image with CUDA >= 11.8 for this GPU.'
    )


def test_cuda_12_on_k40_fails() -> None:
    v = only(evaluate(image("12.0"), host("470.82.01", "3.5", names=("Tesla K40m",))), "arch")
    assert v.level == "fail"
    assert v.reason.startswith("tf-1.8-cuda-9.2.sif has CUDA 12.0, which dropped Tesla K40m")
    assert v.reason.endswith("Pick an image with CUDA <= 11.8 or another partition.")


def test_one_arch_verdict_per_compute_capability() -> None:
    h = host("580.159.04", "9.0", "9.0", "8.0", None, names=("H200", "H200", "A100", "X"))
    arch = [v for v in evaluate(image("12.4"), h) if v.check == "arch"]
    assert [v.level for v in arch] == ["ok", "ok"]
    assert "A100 (sm_80," in arch[0].reason and "H200 (sm_90," in arch[1].reason


# --------------------------------------------------------------------------------------------
# TensorFlow / CUDA pairs


@pytest.mark.parametrize(
    ("tf", "cuda", "cudnn", "level"),
    [
        ("1.8", "9.2", "7.1", "warn"),  # tensorflow.org: 1.8 was built with CUDA 9(.0)
        ("1.8.0", "9.0", "7.1", "ok"),
        ("1.8", "9.0.176", None, "ok"),
        ("1.13", "10.0", "7.4", "ok"),
        ("1.13", "10.0", "7.6", "warn"),
        ("2.15", "12.2", "8.9.7.29", "ok"),
        ("2.15.0.post1", "12.2.2", "8.9", "ok"),
        ("2.15", "12.3", "8.9", "warn"),
        ("2.12", "11.8", "8.6.0", "ok"),
        ("1.10", "9.0", "7", "ok"),  # 1.10 is not 1.1
        (BEYOND["next_tf"], "12.5", None, "warn"),  # newer than the table: untested
        ("0.12", "8.0", None, "warn"),
    ],
)
def test_tensorflow_levels(tf: str, cuda: str, cudnn: str | None, level: str) -> None:
    v = only(evaluate(image(cuda, tf=tf, cudnn=cudnn), host("580.159.04")), "tensorflow")
    assert v.level == level, v.reason
    assert IMAGE in v.reason and f"TensorFlow {tf}" in v.reason and f"CUDA {cuda}" in v.reason


def test_tf18_with_cuda92_names_the_tested_pair() -> None:
    v = only(evaluate(image("9.2", tf="1.8", cudnn="7.1"), host("396.26")), "tensorflow")
    assert v.reason == (
        "tf-1.8-cuda-9.2.sif pairs TensorFlow 1.8 with CUDA 9.2 and cuDNN 7.1, but TensorFlow "
        "1.8 was tested with CUDA 9.0 and cuDNN 7; if TensorFlow cannot load libcudart or "
        "libcudnn or sees no GPU, pick an image with the tested pair."
    )


def test_untested_tensorflow_says_so() -> None:
    v = only(evaluate(image("12.5", tf=BEYOND["next_tf"]), host("580.159.04")), "tensorflow")
    assert "untested" in v.reason and "tested build configurations" in v.reason


def test_no_tensorflow_no_tensorflow_verdict() -> None:
    assert not [v for v in evaluate(image("12.2"), host("535.104.05")) if v.check == "tensorflow"]


# --------------------------------------------------------------------------------------------
# Levels and policy

OK = Verdict("ok", "fine", "driver")
WARN = Verdict("warn", "hm", "arch")
FAIL = Verdict("fail", "no", "driver")


@pytest.mark.parametrize(
    ("verdicts", "level"),
    [([], "ok"), ([OK], "ok"), ([OK, WARN], "warn"), ([WARN, FAIL, OK], "fail")],
)
def test_worst(verdicts: list[Verdict], level: str) -> None:
    assert worst(verdicts) == level


@pytest.mark.parametrize(
    ("policy", "blocking"),
    [
        ("enforce", [FAIL]),
        ("ENFORCE", [FAIL]),
        ("warn", []),
        ("off", []),
    ],
)
def test_evaluate_policy(policy: str, blocking: list[Verdict]) -> None:
    assert evaluate_policy([OK, WARN, FAIL], policy) == blocking


def test_evaluate_policy_rejects_unknown_values() -> None:
    with pytest.raises(ValueError, match="enforce, warn, off"):
        evaluate_policy([FAIL], "strict")


def test_the_headline_case_end_to_end() -> None:
    """The issue's example: TF 1.8 / CUDA 9.2 on an H200 node with an old driver."""
    verdicts = evaluate(
        image("9.2", tf="1.8", cudnn="7.1"),
        host("390.46", "9.0", names=("NVIDIA H200",)),
    )
    assert [(v.check, v.level) for v in verdicts] == [
        ("driver", "fail"),
        ("arch", "warn"),
        ("tensorflow", "warn"),
    ]
    assert worst(verdicts) == "fail"
    assert [v.check for v in evaluate_policy(verdicts, "enforce")] == ["driver"]


# --------------------------------------------------------------------------------------------
# What the image's frameworks were built for outranks the tables


def fw(name: str = "PyTorch", version: str = "2.5.1+cu124", **kw: object) -> compat.FrameworkBuild:
    kw.setdefault("gpu_build", True)
    return compat.FrameworkBuild(name, version, **kw)  # type: ignore[arg-type]


def with_fw(
    *builds: compat.FrameworkBuild, cuda: str | None = None, cudart: tuple = ()
) -> ImageFacts:
    return ImageFacts(name=IMAGE, cuda=cuda, frameworks=list(builds), cudart=list(cudart))


CUDART12 = "/usr/local/lib/python3.11/dist-packages/nvidia/cuda_runtime/lib/libcudart.so.12"


@pytest.mark.parametrize(
    ("sass", "ptx", "cc", "level", "words"),
    [
        ([80, 90], [90], "9.0", "ok", ["sm_80, sm_90", "runs natively on", "(sm_90)"]),
        ([80, 86], [], "8.9", "ok", ["its sm_86 code runs on sm_89"]),
        ([35, 52], [52], "9.0", "warn", ["PTX JIT", "compute_52", "sm_35, sm_52"]),
        ([50, 60, 70, 80, 90, 100, 120], [120], "12.1", "ok", ["sm_120 code runs on sm_121"]),
        (
            [80, 90],
            [90],
            "7.0",
            "fail",
            ["no kernel image is available", "Pick an image built for sm_70"],
        ),
        ([], [80], "9.0", "warn", ["PTX compute_80 only", "PTX JIT"]),
        ([90], [], "10.0", "fail", ["no kernel image"]),
    ],
)
def test_framework_code_against_the_gpu(
    sass: list[int], ptx: list[int], cc: str, level: str, words: list[str]
) -> None:
    image_ = with_fw(
        fw(cuda="12.4", sass=sass, ptx=ptx, archs_from="torch/lib/x.so"), cudart=(CUDART12,)
    )
    v = only(evaluate(image_, host("580.95.05", cc, names=("NVIDIA TEST",))), "arch")
    assert v.level == level, v.reason
    assert "PyTorch 2.5.1+cu124 (CUDA 12.4)" in v.reason and "NVIDIA TEST" in v.reason
    for word in words:
        assert word in v.reason


def test_tf18_compiled_for_35_52_runs_on_sm90_only_through_ptx() -> None:
    tf = fw(
        "TensorFlow",
        "1.8.0",
        cuda="9.2",
        cudnn="7.1",
        declared_archs=["3.5", "5.2"],
        facts_from="/usr/local/lib/python3.6/dist-packages/tensorflow/python/platform/build_info.py",
    )
    verdicts = evaluate(
        with_fw(tf, cuda="9.2", cudart=("/usr/local/cuda-9.2/lib64/libcudart.so.9.2.148",)),
        host("580.95.05", "9.0", names=("NVIDIA H200",)),
    )
    arch = only(verdicts, "arch")
    assert arch.level == "warn"
    assert (
        "compiled for sm_35, sm_52 with PTX compute_52 (declared in its build_info.py)"
        in arch.reason
    )
    assert "PTX JIT" in arch.reason and "first use compiles for minutes" in arch.reason
    # A site's TF built against CUDA 9.2 is not told "tested with 9.0": its own facts win.
    assert not [v for v in verdicts if v.check == "tensorflow"]
    assert only(verdicts, "framework").level == "ok"


def test_framework_built_against_a_cuda_the_image_does_not_ship_fails() -> None:
    tf = fw("TensorFlow", "1.8.0", cuda="9.0", cudnn="7")
    v = only(
        evaluate(
            with_fw(tf, cuda="9.2", cudart=("/usr/local/cuda-9.2/lib64/libcudart.so.9.2.148",)),
            host("580.95.05"),
        ),
        "framework",
    )
    assert v.level == "fail"
    assert "needs libcudart.so.9.0" in v.reason and "ships only libcudart.so.9.2" in v.reason
    assert "Pick an image" in v.reason


def test_framework_cuda_against_declared_cuda_without_libraries_warns() -> None:
    v = only(evaluate(with_fw(fw(cuda="12.4"), cuda="11.8"), host("580.95.05")), "framework")
    assert v.level == "warn" and "libcudart.so.12" in v.reason and "CUDA 11.8" in v.reason


def test_framework_cuda_is_checked_against_the_driver_too() -> None:
    # A pip PyTorch for CUDA 12.8 in an image whose toolkit is 11.8.
    verdicts = evaluate(
        with_fw(fw(version="2.7.0+cu128", cuda="12.8"), cuda="11.8", cudart=(CUDART12,)),
        host("535.104.05"),
    )
    drivers = [v for v in verdicts if v.check == "driver"]
    assert [v.level for v in drivers] == ["ok", "warn"]
    assert "PyTorch 2.7.0+cu128 needs NVIDIA driver >= 570.26 (CUDA 12.8)" in drivers[1].reason


def test_image_without_cuda_label_is_judged_by_its_framework() -> None:
    v = only(evaluate(with_fw(fw(cuda="12.4"), cudart=(CUDART12,)), host("520.61.05")), "driver")
    assert v.level == "fail" and "needs NVIDIA driver >= 550.54.14 (CUDA 12.4)" in v.reason


def test_cpu_only_build_warns_that_the_gpu_stays_idle() -> None:
    verdicts = evaluate(
        with_fw(fw(version="2.13.0+cpu", gpu_build=False)), host("580.95.05", "9.0")
    )
    v = only(verdicts, "framework")
    assert v.level == "warn" and "CPU-only build" in v.reason and "PyTorch 2.13.0+cpu" in v.reason


def test_cudart_sonames() -> None:
    assert [compat.cudart_soname(c) for c in ("9.2.148", "10.0", "11.8", "12.4.127", "13")] == [
        "9.2",
        "10.0",
        "11.0",
        "12",
        "13",
    ]
