"""Pure parts of the private path to a Slurm kernel: the ssh argv, the Curve support verdict,
the encryption decision, the first connection file."""

from __future__ import annotations

import json

import pytest

from kernelprovider.encryption import (
    CurveSupport,
    decide_curve,
    first_connection_info,
    parse_curve_support,
)
from kernelprovider.tunnel import WATCH_SCRIPT, build_ssh_argv


def test_ssh_argv_forwards_five_ports_and_holds_no_secret() -> None:
    forwards = [(40001 + i, "127.0.0.1", 50001 + i) for i in range(5)]
    argv = build_ssh_argv(
        ["ssh"], ["-i", "/k/id"], "10.0.0.5", forwards, "/state/kernel-a.tunnel-1", 90
    )
    assert argv[:2] == ["ssh", "-T"]
    assert "BatchMode=yes" in argv and "ExitOnForwardFailure=yes" in argv
    assert "ConnectTimeout=10" in argv
    assert argv[argv.index("-i") + 1] == "/k/id"
    assert [argv[i + 1] for i, a in enumerate(argv) if a == "-L"] == [
        f"127.0.0.1:{40001 + i}:127.0.0.1:{50001 + i}" for i in range(5)
    ]
    assert argv[-3:-1] == ["--", "10.0.0.5"]
    assert argv[-1] == (f"sh -c '{WATCH_SCRIPT}' kp-tunnel /state/kernel-a.tunnel-1 90 2")


def test_a_lease_path_with_spaces_stays_one_word() -> None:
    argv = build_ssh_argv(["ssh"], [], "n1", [], "/home/a b/x.tunnel-1", 30)
    assert argv[-1].endswith("kp-tunnel '/home/a b/x.tunnel-1' 30 2")


@pytest.mark.parametrize(
    "found, supported, words",
    [
        (
            {"ipykernel": "7.4.0", "kernel_curve": True, "client_curve": True, "zmq_curve": True},
            True,
            "ipykernel 7.4.0 supports CurveZMQ",
        ),
        (
            {
                "ipykernel": "6.17.0",
                "kernel_curve": False,
                "client_curve": False,
                "zmq_curve": True,
            },
            False,
            "ipykernel 6.17.0 has no CurveZMQ support",
        ),
        (
            {"ipykernel": "7.4.0", "kernel_curve": True, "client_curve": True, "zmq_curve": False},
            False,
            "without libsodium",
        ),
    ],
)
def test_curve_support_verdict(found: dict, supported: bool, words: str) -> None:
    got = parse_curve_support("noise\n" + json.dumps(found) + "\n")
    assert got.supported is supported and words in got.why


def test_no_answer_means_no_curve() -> None:
    assert not parse_curve_support("Traceback ...").supported


NEW = CurveSupport(True, "7.4.0", "its ipykernel 7.4.0 supports CurveZMQ")
OLD = CurveSupport(False, "6.17.0", "its ipykernel 6.17.0 has no CurveZMQ support")


def test_auto_uses_curve_where_both_sides_can() -> None:
    assert decide_curve("auto", "disabled", True, NEW, "new.sif")[0] is True
    assert decide_curve("auto", "disabled", True, OLD, "old.sif")[0] is False
    assert decide_curve("auto", "disabled", False, NEW, "new.sif")[0] is False
    assert decide_curve("off", "disabled", True, NEW, "new.sif")[0] is False


@pytest.mark.parametrize("policy, manager", [("curve", "disabled"), ("auto", "required")])
def test_required_curve_with_an_old_image_names_the_way_out(policy: str, manager: str) -> None:
    with pytest.raises(ValueError) as err:
        decide_curve(policy, manager, True, OLD, "old.sif")
    assert "old.sif" in str(err.value) and "tunnel='ssh'" in str(err.value)


def test_first_connection_file_holds_no_key_and_no_ports() -> None:
    info = first_connection_info("10.0.0.5", b"P" * 40, b"S" * 40)
    assert info["ip"] == "10.0.0.5" and info["curve_secretkey"] == "S" * 40
    assert "key" not in info and not any(k.endswith("_port") for k in info)
