"""The option table: every container and Slurm setting, written once.

The provisioners' traits (:func:`options_mixin`), the sbatch argv (:func:`sbatch_option_argv`),
the settings quoted when Slurm rejects a job (:func:`rejection_keys`) and the ``install``/
``scan`` command line (:func:`cli_traits`, :func:`cli_aliases`, :func:`cli_flags`,
:func:`spec_values`) all derive from :data:`CONTAINER_OPTIONS` and :data:`SLURM_OPTIONS`.
Adding a setting is one row here.
"""

from __future__ import annotations

from .derive import (
    cli_aliases,
    cli_flags,
    cli_traits,
    rejection_keys,
    sbatch_option_argv,
    sbatch_settings,
    spec_values,
)
from .model import Option, check_slurm_value, options_mixin
from .rows import CONTAINER_OPTIONS, SLURM_OPTIONS, TRANSPORT_OPTIONS

__all__ = [
    "Option",
    "CONTAINER_OPTIONS",
    "TRANSPORT_OPTIONS",
    "SLURM_OPTIONS",
    "options_mixin",
    "sbatch_option_argv",
    "sbatch_settings",
    "rejection_keys",
    "cli_traits",
    "cli_aliases",
    "cli_flags",
    "spec_values",
    "check_slurm_value",
]
