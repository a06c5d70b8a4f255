"""Limits an operator sets for a shared studio (a classroom, a public Space): how much one request may ask for.

The parameter classes already refuse what no model can do (their ranges); these are narrower, so that one visitor
cannot take the GPU from everyone else for minutes: steps, image side, images per request, training steps, uploads,
one job's wall time. A request above a limit is refused with a message naming the limit and its flag. On a private
desktop the limits are the ranges themselves (`Limits()`); `Limits.public()` is the default of `--public` and
`--classroom`.
"""

from dataclasses import dataclass, fields
from typing import Any

# Params field -> the limit that bounds it. A params class narrows this with a `LIMITS` class attribute (the trainer's
# `steps` are training steps).
FIELD_LIMITS = {"steps": "max_steps", "width": "max_side", "height": "max_side", "n_images": "max_images"}
FLAGS = {"max_steps": "--max-steps", "max_side": "--max-side", "max_images": "--max-images",
         "max_train_steps": "--max-train-steps", "max_upload_mb": "--max-upload-mb",
         "max_pixels": "--max-pixels", "timeout": "--timeout", "max_batch_images": "--max-batch-images"}


@dataclass(frozen=True)
class Limits:
    """None means no limit beyond the parameters' own ranges."""

    max_steps: int | None = None  # denoising steps of one image
    max_side: int | None = None  # output width and height, training resolution
    max_images: int | None = None  # images per request
    max_train_steps: int | None = None
    max_upload_mb: float | None = None  # any uploaded file, checked before it is read
    max_pixels: int = 64_000_000  # an uploaded image's width x height, checked before it is decoded
    timeout: float | None = None  # seconds one job may run before it is stopped
    max_batch_images: int | None = None  # images in one Classify batch
    training_jobs_per_user: int | None = None

    @classmethod
    def public(cls) -> "Limits":
        """Defaults for many people on one GPU: a request takes seconds, not minutes."""
        return cls(max_steps=50, max_side=768, max_images=4, max_train_steps=1000, max_upload_mb=10,
                   max_pixels=16_000_000, timeout=180, max_batch_images=200, training_jobs_per_user=1)

    def check(self, params: Any) -> Any:
        """`params` if every limited field is within its limit, else a ValueError naming the limit."""
        table = {**FIELD_LIMITS, **getattr(type(params), "LIMITS", {})}
        for f in fields(params):
            limit_name = table.get(f.name)
            limit = getattr(self, limit_name) if limit_name else None
            value = getattr(params, f.name)
            if limit is not None and isinstance(value, (int, float)) and value > limit:
                raise ValueError(self.message(f.name.replace("_", " "), value, limit_name))
        return params

    def message(self, what: str, value: float, limit_name: str) -> str:
        return (f"{what} {value:g} is above this studio's limit of {getattr(self, limit_name):g} (set by whoever runs "
                f"it, with {FLAGS[limit_name]}).")

    def check_value(self, what: str, value: float, limit_name: str) -> None:
        limit = getattr(self, limit_name)
        if limit is not None and value > limit:
            raise ValueError(self.message(what, value, limit_name))
