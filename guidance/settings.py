"""Guidance settings: one validated, immutable record shared by every entry point."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

TRANSITIONS = ("dynamic", "static", "off")


@dataclass(frozen=True)
class GuidanceSettings:
    """Settings of memorization-safe CFG (Jain et al., Algorithm 1 plus static / detection variants).

    Percent inputs follow ComfyUI's convention: a position on the model's own noise scale, turned into a
    sigma through ``model_sampling.percent_to_sigma`` (0.5 is t = 500 of 1000 on SD-style models).
    """

    guidance_before: float = 0.0
    transition: str = "dynamic"
    switch_percent: float = 0.5
    earliest_percent: float = 0.0
    latest_percent: float = 0.5
    detect_threshold: float = 0.0

    def __post_init__(self):
        self.validate()

    def validate(self) -> None:
        """Raise ValueError naming the input and the fix."""
        if self.transition not in TRANSITIONS:
            raise ValueError(f"transition: '{self.transition}' is not one of {', '.join(TRANSITIONS)}; pick one of them.")
        for name in ("guidance_before", "switch_percent", "earliest_percent", "latest_percent", "detect_threshold"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
                raise ValueError(f"{name}: {value!r} is not a finite number; enter a number.")
        for name in ("switch_percent", "earliest_percent", "latest_percent"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name}: {value} is outside 0..1; percents are fractions of the schedule, e.g. 0.5.")
        if self.latest_percent < self.earliest_percent:
            raise ValueError(
                f"latest_percent ({self.latest_percent}) is before earliest_percent ({self.earliest_percent}); "
                "set latest_percent >= earliest_percent."
            )
        if self.detect_threshold < 0:
            raise ValueError(f"detect_threshold: {self.detect_threshold} is negative; use 0 to disable detection or a positive norm.")

    @property
    def off(self) -> bool:
        return self.transition == "off"

    @property
    def phase_label(self) -> str:
        """Name of the pre-transition phase: zero, opposite or conditional-only guidance."""
        s = self.guidance_before
        if s == 0:
            return "zero guidance"
        if s < 0:
            return f"opposite guidance ({s:g})"
        if s == 1:
            return "conditional only"
        return f"guidance {s:g}"

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "GuidanceSettings":
        fields = cls.__dataclass_fields__
        return cls(**{k: (str(v) if k == "transition" else float(v)) for k, v in d.items() if k in fields})
