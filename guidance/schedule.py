"""Map the percent settings onto the steps of one sampling schedule (host side, once per run)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

from .settings import GuidanceSettings


@dataclass(frozen=True)
class StepPlan:
    """Where the guards and the static switch fall: step indices (0-based, into the schedule's N steps) and sigmas.

    ``static`` / ``earliest`` may equal ``steps`` (never reached in this schedule); ``latest`` is always a
    real step, so a dynamic sample is never left unguided to the end. A step is past a percent once its index
    reaches the planned step *or* its evaluated sigma is at or below the percent's sigma (samplers such as
    dpm_fast take fewer, larger steps than the schedule has). ``sigma_force``: any evaluation strictly below it
    switches a sample that has not switched yet, even mid-step (a safety net that schedule-following samplers
    never trigger, since their evaluations in step i < k all lie at or above sigma_k). ``all_on``: from this step
    on every sample is on full CFG: the latest guard (dynamic), the static switch (``steps`` if never), 0 (off).
    """

    steps: int
    static: int
    earliest: int
    latest: int
    sigma_static: float = -1.0
    sigma_earliest: float = -1.0
    sigma_latest: float = -1.0
    sigma_force: float = -1.0
    all_on: int = 0


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
    sig = {p: float(percent_to_sigma(p)) for p in (settings.switch_percent, settings.earliest_percent, settings.latest_percent)}
    earliest = first_step_at_or_below(sigmas, sig[settings.earliest_percent])
    latest = min(max(first_step_at_or_below(sigmas, sig[settings.latest_percent]), earliest), steps - 1)
    static = first_step_at_or_below(sigmas, sig[settings.switch_percent])
    all_on = {"dynamic": latest, "static": static}.get(settings.transition, 0)
    force = all_on < steps and settings.transition != "off"
    return StepPlan(steps=steps, static=static, earliest=earliest, latest=latest, sigma_static=sig[settings.switch_percent],
                    sigma_earliest=sig[settings.earliest_percent], sigma_latest=sig[settings.latest_percent],
                    sigma_force=float(sigmas[all_on]) if force else -1.0, all_on=all_on)
