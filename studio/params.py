"""Parameter dataclasses that are valid from birth, as peft's configs are.

A field made with `ranged` carries its [min, max] range, its UI step and a help line; one made with `choice` carries
its allowed values (and optional labels); `flag` is a yes/no with its help. `Params.__post_init__` checks every such
field and then the class's own rules (`check`), so a notebook, a benchmark and the UI all get the same errors, at
construction. Tabs read the ranges and choices from here, so each is defined once.
"""

import typing
from collections.abc import Mapping, Sequence
from dataclasses import field, fields
from typing import Any


def ranged(default: Any, lo: float, hi: float, step: float, help: str) -> Any:
    """A dataclass field with a default, a [lo, hi] range, a UI step and a one-line help text."""
    return field(default=default, metadata={"min": lo, "max": hi, "step": step, "help": help})


def flag(default: bool, help: str) -> Any:
    """A yes/no field with its help text."""
    return field(default=default, metadata={"help": help})


def choice(default: str, options: Sequence[str] | Mapping[str, str], help: str = "") -> Any:
    """A field that takes one of `options`: values, or {value: label shown in the UI}."""
    labels = dict(options) if isinstance(options, Mapping) else {o: o for o in options}
    if default not in labels:
        raise ValueError(f"default {default!r} is not one of {list(labels)}")
    return field(default=default, metadata={"choices": tuple(labels), "labels": labels, "help": help})


class Params:
    """Base of the studio's parameter dataclasses: checked when built, and again by `dataclasses.replace`."""

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(type(self))
        for f in fields(self):  # type: ignore[arg-type]
            meta, value, name = f.metadata, getattr(self, f.name), f.name.replace("_", " ")
            if "min" in meta:
                whole = hints.get(f.name) is int
                if isinstance(value, bool) or not isinstance(value, (int, float)) or (
                        whole and not float(value).is_integer()):
                    raise ValueError(f"{name} must be a {'whole ' if whole else ''}number, got {value!r}")
                if not meta["min"] <= value <= meta["max"]:
                    raise ValueError(f"{name} must be between {meta['min']:g} and {meta['max']:g}, got {value:g}")
                if whole:
                    setattr(self, f.name, int(value))  # 25.0 from a slider is 25
            if "choices" in meta and value not in meta["choices"]:
                raise ValueError(f"Unknown {name} {value!r}: {name} must be one of {', '.join(meta['choices'])}.")
        self.check()

    def check(self) -> None:
        """The class's own rules beyond ranges and choices; raise ValueError with a message the user can act on."""

    @classmethod
    def meta(cls, name: str) -> Mapping[str, Any]:
        return cls.__dataclass_fields__[name].metadata  # type: ignore[attr-defined]

    @classmethod
    def default(cls, name: str) -> Any:
        f = cls.__dataclass_fields__[name]  # type: ignore[attr-defined]
        return f.default_factory() if callable(f.default_factory) else f.default
