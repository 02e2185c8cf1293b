"""One setting of the option table (:class:`Option`) and the traits made from rows."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from traitlets import (
    Bool,
    CaselessStrEnum,
    Dict,
    Float,
    HasTraits,
    Int,
    List,
    TraitError,
    TraitType,
    Unicode,
    validate,
)

#: An argv builder: (this option's value, every option's value) -> sbatch arguments.
ArgvBuilder = Callable[[Any, Mapping[str, Any]], list[str]]


@dataclass(frozen=True)
class Option:
    """One setting: its trait, how sbatch gets it, and how ``install`` spells it.

    ``kind`` is one of str, int, float, bool, list, dict, enum. ``sbatch`` is a flag
    (``--partition``: passed as ``--partition=VALUE`` when the value is set) or an argv
    builder. ``cli`` is the install flag (``--time``), ``cli_attr`` the install app's trait
    when the option's own name is taken there. ``hint`` holds words of an sbatch refusal
    that point at this option. ``slurm_value``: refuse newlines, NUL and a leading '-'.
    """

    name: str
    kind: str
    default: Any
    help: str
    cli: str | None = None
    cli_help: str = ""
    cli_attr: str | None = None
    sbatch: str | ArgvBuilder | None = None
    hint: tuple[str, ...] = ()
    values: tuple[str, ...] = ()
    slurm_value: bool = False

    def trait(self) -> TraitType:
        """The provisioner trait (configurable per kernelspec and site-wide)."""
        kind, default, help_text = self.kind, self.default, self.help
        if kind == "str":
            t: TraitType = Unicode(default, help=help_text)
        elif kind == "int":
            t = Int(default, help=help_text)
        elif kind == "float":
            t = Float(default, help=help_text)
        elif kind == "bool":
            t = Bool(default, help=help_text)
        elif kind == "list":
            t = List(Unicode(), default_value=list(default or ()), help=help_text)
        elif kind == "dict":
            t = Dict(value_trait=Unicode(), help=help_text)
        else:
            t = CaselessStrEnum(list(self.values), default_value=default, help=help_text)
        return t.tag(config=True)

    def cli_trait(self) -> TraitType:
        """The install app's trait: unset by default, so only given values are written."""
        kind, help_text = self.kind, self.cli_help or self.help
        if kind == "str":
            t: TraitType = Unicode("", help=help_text)
        elif kind == "int":
            t = Int(0, help=help_text)
        elif kind == "float":
            t = Float(None, allow_none=True, help=help_text)
        elif kind == "bool":
            t = Bool(False, help=help_text)
        elif kind == "list":
            t = List(Unicode(), help=help_text)
        elif kind == "dict":
            t = Dict(value_trait=Unicode(), help=help_text)
        else:
            t = CaselessStrEnum(
                list(self.values), default_value=None, allow_none=True, help=help_text
            )
        return t.tag(config=True)

    @property
    def attr(self) -> str:
        """The install app's trait name for this option."""
        return self.cli_attr or self.name

    def spec_value(self, value: Any) -> Any:
        """What ``install`` writes for a command-line value (None: not written)."""
        if self.kind == "list":
            return list(value)
        if self.kind == "dict":
            return dict(value)
        if self.kind in ("float", "enum"):
            return value
        return value or None

    def argv(self, value: Any, values: Mapping[str, Any]) -> list[str]:
        """This option's sbatch arguments for ``value``."""
        if self.sbatch is None:
            return []
        if callable(self.sbatch):
            return self.sbatch(value, values)
        return [f"{self.sbatch}={value}"] if value else []


def check_slurm_value(name: str, value: str) -> str:
    """Refuse a value that could smuggle another option into sbatch's argv (TraitError)."""
    if any(c in value for c in "\n\0") or value.startswith("-"):
        raise TraitError(f"{name}: {value!r} is not a valid Slurm value.")
    return value


def options_mixin(name: str, options: Sequence[Option], doc: str) -> type[HasTraits]:
    """A HasTraits class with one trait per option (and the Slurm-value check)."""
    namespace: dict[str, Any] = {o.name: o.trait() for o in options}
    namespace["__doc__"] = doc
    checked = [o.name for o in options if o.slurm_value]
    if checked:

        def _validate_slurm_value(self: HasTraits, proposal: dict[str, Any]) -> str:
            return check_slurm_value(proposal["trait"].name, proposal["value"])

        namespace["_validate_slurm_value"] = validate(*checked)(_validate_slurm_value)
    return type(name, (HasTraits,), namespace)
