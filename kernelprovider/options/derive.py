"""What derives from the rows: sbatch argv, refusal keys, the install/scan command line."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from traitlets import (
    TraitType,
)

from .model import Option
from .rows import CONTAINER_OPTIONS, SLURM_OPTIONS, TRANSPORT_OPTIONS


def sbatch_option_argv(values: Mapping[str, Any]) -> list[str]:
    """The sbatch arguments of every Slurm option in ``values``, in table order."""
    argv: list[str] = []
    for option in SLURM_OPTIONS:
        if option.name in values:
            argv += option.argv(values[option.name], values)
    return argv


def sbatch_settings(prov: Any) -> dict[str, Any]:
    """The values of the options that reach sbatch's argv, by name, from a provisioner."""
    return {o.name: getattr(prov, o.name) for o in SLURM_OPTIONS if o.sbatch is not None}


def rejection_keys(slurm_says: str, settings: Mapping[str, Any]) -> list[str]:
    """The settings to quote for a job sbatch refused with ``slurm_says``.

    The options whose hint words the refusal contains, then the partition (where the
    limits live); every setting when no option matches.
    """
    low = slurm_says.lower()
    keys = [o.name for o in SLURM_OPTIONS if any(word in low for word in o.hint)]
    if not keys:
        return list(settings)
    if "partition" not in keys:
        keys.append("partition")
    return keys


def _install_options() -> list[Option]:
    return [o for o in (*CONTAINER_OPTIONS, *SLURM_OPTIONS, *TRANSPORT_OPTIONS) if o.cli]


def cli_traits() -> dict[str, TraitType]:
    """The install app's traits, one per option with a command-line flag."""
    return {o.attr: o.cli_trait() for o in _install_options()}


def cli_aliases(app: str) -> dict[str, str]:
    """``--flag=VALUE`` aliases of ``app`` (the class name) for the valued options."""
    return {o.cli: f"{app}.{o.attr}" for o in _install_options() if o.kind != "bool" and o.cli}


def cli_flags(app: str) -> dict[str, tuple[dict[str, dict[str, Any]], str]]:
    """``--flag`` switches of ``app`` for the boolean options."""
    return {
        o.cli: ({app: {o.attr: True}}, o.cli_help)
        for o in _install_options()
        if o.kind == "bool" and o.cli
    }


def spec_values(app: Any, slurm: bool) -> dict[str, Any]:
    """The provisioner config values an install app stands for (None: not given).

    Slurm options are written only for a Slurm kernel.
    """
    options = [*CONTAINER_OPTIONS, *((*SLURM_OPTIONS, *TRANSPORT_OPTIONS) if slurm else ())]
    return {o.name: o.spec_value(getattr(app, o.attr)) for o in options if o.cli}
