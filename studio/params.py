"""Parameter dataclasses whose fields carry their range and help text, so a UI defines each slider once."""

from dataclasses import field, fields
from typing import Any


def ranged(default: Any, lo: float, hi: float, step: float, help: str) -> Any:
    """A dataclass field with a default, a [lo, hi] range, a UI step and a one-line help text."""
    return field(default=default, metadata={"min": lo, "max": hi, "step": step, "help": help})


class Ranged:
    """Mixin for parameter dataclasses built with `ranged` fields."""

    @classmethod
    def meta(cls, name: str) -> dict:
        return cls.__dataclass_fields__[name].metadata  # type: ignore[attr-defined]

    def check_ranges(self) -> None:
        """Refuse the first `ranged` field whose value lies outside its range, naming it as the UI does."""
        for f in fields(self):  # type: ignore[arg-type]
            meta, value = f.metadata, getattr(self, f.name)
            if "min" in meta and not isinstance(value, bool) and not meta["min"] <= value <= meta["max"]:
                raise ValueError(f"{f.name.replace('_', ' ')} must be between {meta['min']} and {meta['max']}, "
                                 f"got {value}")
