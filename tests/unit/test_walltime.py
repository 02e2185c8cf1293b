"""The allocation's clock: Slurm durations, end messages, and the in-kernel hook (compiled as
the oldest supported Python would, and run against a stand-in for IPython's event manager)."""

from __future__ import annotations

import ast
import io
import sys
import time
from typing import Any

import pytest

from kernelprovider.walltime import (
    KERNEL_HOOK,
    ended_message,
    format_duration,
    parse_duration,
)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("8:00:00", 8 * 3600),
        ("59:59", 59 * 60 + 59),
        ("1:00", 60),
        ("10", 600),
        ("1-00:00:00", 86400),
        ("2-12", 2 * 86400 + 12 * 3600),
        ("1-02:03", 86400 + 2 * 3600 + 3 * 60),
        ("0:00", 0),
        ("UNLIMITED", None),
        ("NOT_SET", None),
        ("", None),
    ],
)
def test_parse_duration(text: str, seconds: int | None) -> None:
    assert parse_duration(text) == seconds


def test_format_duration() -> None:
    assert format_duration(8 * 3600) == "8:00:00"
    assert format_duration(61) == "0:01:01"
    assert format_duration(86400 + 3661) == "1-01:01:01"
    assert format_duration(-5) == "0:00:00"


@pytest.mark.parametrize(
    ("state", "reason", "expected"),
    [
        ("TIMEOUT", "TimeLimit", "Slurm ended job 4242 at its time limit of 8:00:00"),
        ("CANCELLED by 0", "None", "Slurm ended job 4242 because it was cancelled"),
        ("PREEMPTED", "None", "Slurm ended job 4242 because it was preempted"),
        ("NODE_FAIL", "NodeDown", "Slurm ended job 4242 because its node gpu01 failed"),
        ("OUT_OF_MEMORY", "None", "Slurm ended job 4242 because it ran out of memory"),
        ("FAILED", "NonZeroExitCode", "Slurm ended job 4242 (state FAILED, reason: NonZero"),
        ("", "", "Slurm ended job 4242 (it is no longer in squeue; 'sacct -j 4242'"),
    ],
)
def test_ended_message_says_why_in_words(state: str, reason: str, expected: str) -> None:
    assert ended_message("4242", state, reason, "8:00:00", "gpu01").startswith(expected)


def test_kernel_hook_is_python_3_5_syntax() -> None:
    # ast with feature_version (3, 5) refuses f-strings, walrus, positional-only parameters...
    ast.parse(KERNEL_HOOK, feature_version=(3, 5))
    assert "f'" not in KERNEL_HOOK and 'f"' not in KERNEL_HOOK


class _Events:
    def __init__(self) -> None:
        self.callbacks: list[Any] = []

    def register(self, event: str, callback: Any) -> None:
        assert event == "pre_run_cell"
        self.callbacks.append(callback)


class _Shell:
    def __init__(self) -> None:
        self.events = _Events()


def _run_cells(env: dict[str, str], cells: int, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    shell = _Shell()
    for key in ("KP_SLURM_JOB_END", "KP_SLURM_END_WARNING", "KP_SLURM_NOTE"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    namespace = {"get_ipython": lambda: shell}
    exec(KERNEL_HOOK, namespace)
    assert "_kernelprovider_hook" not in namespace  # nothing left in the user's namespace
    outputs = []
    for _ in range(cells):
        err = io.StringIO()
        monkeypatch.setattr(sys, "stderr", err)
        for callback in shell.events.callbacks:
            callback(object())  # IPython >= 7 passes an ExecutionInfo
        monkeypatch.setattr(sys, "stderr", sys.__stderr__)
        outputs.append(err.getvalue())
    return outputs


def test_kernel_hook_warns_once_when_the_end_is_near(monkeypatch: pytest.MonkeyPatch) -> None:
    end = int(time.time()) + 300
    outputs = _run_cells({"KP_SLURM_JOB_END": str(end), "KP_SLURM_END_WARNING": "600"}, 3,
                         monkeypatch)  # fmt: skip
    first = outputs[0].splitlines()
    assert len(first) == 1
    assert "Slurm job 4242 ends at " + time.strftime("%H:%M:%S", time.localtime(end)) in first[0]
    assert "(in 4 min)" in first[0] or "(in 5 min)" in first[0]
    assert "save the notebook" in first[0] and "checkpoint" in first[0]
    assert outputs[1:] == ["", ""]


def test_kernel_hook_stays_quiet_far_from_the_end_and_prints_a_note_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    end = int(time.time()) + 3600
    outputs = _run_cells(
        {"KP_SLURM_JOB_END": str(end), "KP_SLURM_END_WARNING": "600", "KP_SLURM_NOTE": "why"},
        2,
        monkeypatch,
    )
    assert outputs == ["kernelprovider: why\n", ""]
    assert _run_cells({"KP_SLURM_JOB_END": str(end - 3500), "KP_SLURM_END_WARNING": "0"}, 1,
                      monkeypatch) == [""]  # fmt: skip
