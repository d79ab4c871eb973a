"""The transition decision: per sample, when to leave the pre-transition phase for full CFG (Algorithm 1, the
static switch, the guards, first-step detection), as a latch on the device (no host synchronisation)."""
from __future__ import annotations

from typing import Optional, Sequence

import torch

from .clock import Tick
from .schedule import StepPlan
from .settings import GuidanceSettings


def first_local_minimum(d: Sequence[torch.Tensor], i: int) -> torch.Tensor:
    """Algorithm 1, line 6: d_{i-2} > d_{i-1} < d_i, with d_{-1} = d_{-2} = -inf.

    ``d`` holds one [B] row per step ([steps, B] tensor or a list of rows). Written as
    d_{i-1} < min(d_{i-2}, d_i): the same strict test, and a NaN (unmeasured) anywhere still makes it false.
    """
    if i < 2:
        return torch.zeros_like(d[i], dtype=torch.bool)
    return d[i - 1] < torch.minimum(d[i - 2], d[i])


def due(i: int, step: int, sigma: Optional[float], sigma_at: float) -> bool:
    """Step i is past a percent planned at ``step``: its index reached it, or, when the host knows the evaluated
    sigma (off-schedule samplers), that sigma is at or below the percent's. Schedule-following samplers evaluate
    step i < ``step`` above that sigma, so for them the index alone decides."""
    return i >= step or (sigma is not None and sigma <= sigma_at)


def not_flagged(d0: torch.Tensor, threshold: float) -> torch.Tensor:
    """Detection at the first step: a norm below the threshold means not memorized (plain CFG)."""
    if threshold <= 0:
        return torch.zeros_like(d0, dtype=torch.bool)
    return d0 < threshold


class Latch:
    """Who is on full CFG. ``switched`` [B]: latched on (nothing ever switches a sample back); ``flagged`` [B]:
    detection judged the sample memorized; ``on[i]`` [B]: who had full CFG in step i (None: no evaluation yet;
    complete once ``settle`` has run). ``all_on`` (host): every sample is on full CFG from here on, so the caller
    can skip the per-sample combine. The [B] constants are never modified in place, so the host tells "nobody
    switched yet" by identity (``switched is nobody``) and skips the ``or`` with it."""

    def __init__(self, plan: StepPlan, settings: GuidanceSettings, batch: int, device: torch.device,
                 everyone: Optional[torch.Tensor] = None, nobody: Optional[torch.Tensor] = None):
        """``everyone`` / ``nobody``: [B] bool constants to share (``StepClock``'s), else made here."""
        self.plan, self.settings = plan, settings
        self.everyone = torch.ones(batch, dtype=torch.bool, device=device) if everyone is None else everyone
        self.nobody = torch.zeros(batch, dtype=torch.bool, device=device) if nobody is None else nobody
        self.switched = self.everyone if settings.off else self.nobody
        self.plain: Optional[torch.Tensor] = None  # detection: [B] judged not memorized at the first step
        self.on: list[Optional[torch.Tensor]] = [None] * plan.steps
        self.late: list[tuple[int, Tick, torch.Tensor, torch.Tensor]] = []  # see decide, applied by settle
        self.all_on = settings.off

    @property
    def flagged(self) -> torch.Tensor:
        """[B] bool: detection judged the sample memorized (everyone without detection). One op per call: read it
        once, at the run's end."""
        return self.everyone if self.plain is None else ~self.plain

    def decide(self, tick: Tick, norms: Sequence[torch.Tensor]) -> torch.Tensor:
        """Latch who switches at this evaluation (``norms``: the recorded [B] row of every step); return who has
        full CFG for it. Every evaluation of a step uses that step's scale, extras of step j-1 included."""
        j = tick.step
        if j >= self.plan.steps:  # an extra evaluation after the last callback
            return self.switched
        if self.all_on:
            self.on[j] = self.everyone
            return self.everyone
        before = switched = self.switched
        for reason in self._reasons(tick, norms):
            if reason is self.nobody or switched is self.everyone:
                continue
            switched = reason if switched is self.nobody or reason is self.everyone else switched | reason
        if j > 0 and not tick.whole and self.plan.sigma_force > 0:
            # samples still in step j-1 (an extra evaluation) can only switch through the safety net: their
            # step-(j-1) row takes it; the others left step j-1 with ``before``. Only the trace reads that row (the
            # live curve sent it at callback j-1), so it is written at the run's end (``settle``), not per evaluation.
            self.late.append((j - 1, tick, switched, before))
        self.on[j] = self.switched = switched
        return switched

    def settle(self) -> None:
        """Write the step rows that extra evaluations changed (see ``decide``), in order: once, at the run's end."""
        for row, tick, switched, before in self.late:
            last = self.on[row] if self.on[row] is not None else before
            self.on[row] = torch.where(tick.in_step(), last, switched)
        self.late = []

    def _reasons(self, tick: Tick, norms: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """[B] masks of samples that switch now. Index rules switch the samples starting step j; Algorithm 1
        reads the recorded rows (a sample not yet in step j has a NaN row there, so it never sees a minimum)."""
        s, p, j = self.settings, self.plan, tick.step
        reasons = []
        if s.transition == "static":
            if due(j, p.static, tick.sigma, p.sigma_static):
                reasons.append(tick.starts)
        elif due(j, p.latest, tick.sigma, p.sigma_latest):
            reasons.append(tick.starts)
        elif j >= 2 and due(j, p.earliest, tick.sigma, p.sigma_earliest) and all(norms[k] is not None for k in (j - 2, j - 1, j)):
            reasons.append(first_local_minimum(norms, j))  # a row nobody started (None) is NaN: never a minimum
        if j == 0 and s.detect_threshold > 0:
            self.plain = not_flagged(norms[0], s.detect_threshold)  # the first step's row, at every evaluation
            reasons.append(self.plain)
        if p.sigma_force > 0:  # the safety net, see StepPlan.sigma_force
            reasons.append(tick.below_floor)
        return reasons

    def step_done(self, i: int) -> None:
        """Callback i: past the last planned switch every sample is on full CFG (known on the host)."""
        if not self.all_on and i >= self.plan.all_on:
            self.all_on = True
            self.switched = self.everyone
            self.on[i] = self.everyone
