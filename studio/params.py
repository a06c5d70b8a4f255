"""Parameter dataclasses whose fields carry their range and help text, so a UI defines each slider once."""

from dataclasses import field
from typing import Any


def ranged(default: Any, lo: float, hi: float, step: float, help: str) -> Any:
    """A dataclass field with a default, a [lo, hi] range, a UI step and a one-line help text."""
    return field(default=default, metadata={"min": lo, "max": hi, "step": step, "help": help})


class Ranged:
    """Mixin for parameter dataclasses built with `ranged` fields."""

    @classmethod
    def meta(cls, name: str) -> dict:
        return cls.__dataclass_fields__[name].metadata  # type: ignore[attr-defined]
