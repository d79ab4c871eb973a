"""Map the percent settings onto the steps of one sampling schedule (host side, once per run)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

from .settings import GuidanceSettings


@dataclass(frozen=True)
class StepPlan:
    """Step indices (0-based, into the schedule's N steps) where the guards and the static switch fall.

    ``static`` / ``earliest`` may equal ``steps`` (never reached in this schedule); ``latest`` is always a
    real step, so a dynamic sample is never left unguided to the end.
    """

    steps: int
    static: int
    earliest: int
    latest: int


def first_step_at_or_below(sigmas: Sequence[float], sigma: float) -> int:
    """First step i whose sigma_i <= sigma (the sampler has reached that noise level); len(steps) if none."""
    steps = len(sigmas) - 1
    for i in range(steps):
        if sigmas[i] <= sigma:
            return i
    return steps


def plan_steps(sigmas: Sequence[float], percent_to_sigma: Callable[[float], float], settings: GuidanceSettings) -> StepPlan:
    """Compare in sigma, as ComfyUI does: step i is past percent p once sigma_i <= percent_to_sigma(p).

    A schedule whose sigma rises mid-run (restart-style) is handled by the first crossing; switches latch.
    """
    steps = len(sigmas) - 1
    if steps < 1:
        raise ValueError("sigmas: the schedule has no step; pass at least two sigmas.")
    at = lambda p: first_step_at_or_below(sigmas, float(percent_to_sigma(p)))  # noqa: E731
    earliest = at(settings.earliest_percent)
    latest = min(max(at(settings.latest_percent), earliest), steps - 1)
    return StepPlan(steps=steps, static=at(settings.switch_percent), earliest=earliest, latest=latest)
