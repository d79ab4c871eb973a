"""Step attribution: which schedule step a model evaluation belongs to, decided on the device.

ComfyUI's samplers fire their callback right after the *first* evaluation of step i. An evaluation after callback
i is therefore either an extra evaluation of step i (dpm_2's midpoint, heun's corrector, ...) or the first
evaluation of step i+1, and its sigma tells which: at or below sigma_{i+1}, it is step i+1's. That comparison
stays on the device (one op, no host read). dpm_fast and dpm_adaptive take their own steps and their callbacks
ignore the schedule: with ``follow_sigma`` each evaluation goes to the step whose sigma band holds it, read on
the host (one synchronisation per evaluation, for these two samplers only).
"""
from __future__ import annotations

import bisect
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import torch


@dataclass(frozen=True)
class Tick:
    """Where one model evaluation falls. ``step`` may equal the number of steps: after the last callback."""

    step: int  # step j: the evaluation is step j's, or (for samples not in ``entered``) an extra one of step j-1
    starts: torch.Tensor  # [B] bool: this is step j's first evaluation for these samples (their norm is step j's)
    entered: torch.Tensor  # [B] bool: samples in step j after this evaluation (the others are still in step j-1) ...
    below_floor: torch.Tensor  # [B] bool: evaluated strictly below the floor sigma (the latch's safety net)
    whole: bool  # the host knows every sample is in step j (step 0, a sigma band): ``entered`` is everyone
    sigma: Optional[float]  # the evaluation's sigma when the host read it (follow_sigma), else None
    also: Optional[torch.Tensor] = None  # ... together with these (``entered | also``, left to whoever needs it)

    def in_step(self) -> torch.Tensor:
        """[B] bool: samples in step j after this evaluation (one op when ``also`` is set)."""
        return self.entered if self.also is None else self.entered | self.also


class StepClock:
    """Schedule steps from sampler callbacks and evaluation sigmas; host state is two ints and one mask.

    ``floor``: a sigma the caller wants to know an evaluation went strictly below (-1: never). The clock compares
    sigma against step j's top and the floor in one op (a [B, 2] comparison against a row of ``bounds``).
    """

    def __init__(self, sigmas: Sequence[float], steps: int, follow_sigma: bool = False, floor: float = -1.0):
        self.steps = steps
        self.step = 0  # the step whose first evaluation comes next: 0, or i + 1 after callback i
        self.evals = 0  # evaluations since the last callback (or since the start)
        self.top = [s * (1 + 1e-5) + 1e-12 for s in sigmas[:steps]]  # step i's first evaluation is at or below top[i]
        self.ascending = self.top[::-1]
        self.follow_sigma = follow_sigma and all(a >= b for a, b in zip(sigmas, sigmas[1:]))
        self.floor = floor
        self.started = [False] * steps  # follow_sigma only: the host knows which bands have had their first evaluation
        self.bounds: Optional[torch.Tensor] = None

    def place(self, device: torch.device) -> None:
        """Put the step bounds on ``device`` ahead of the run (the caller knows it): a non-blocking host -> device
        copy, so the host never waits for the device here (a blocking one waits for the queued model work)."""
        # bounds[j] = (top[j], the largest float32 below the floor): "sigma <= bounds[j]" answers both questions
        below = float(np.nextafter(np.float32(self.floor), np.float32(-np.inf)))  # on the host: no op, no read
        rows = torch.tensor([[t, below] for t in self.top], dtype=torch.float32).reshape(len(self.top), 2)
        self.bounds = rows.to(device, non_blocking=True)

    def start(self, batch: int, device: torch.device) -> None:
        """The device constants, once the first evaluation shows the batch and the device (two ops; the latch
        shares ``everyone`` and ``nobody``, which nothing modifies in place)."""
        self.everyone = torch.ones(batch, dtype=torch.bool, device=device)
        self.nobody = torch.zeros(batch, dtype=torch.bool, device=device)
        self.entered = self.nobody  # samples already in step ``step`` (after an earlier evaluation since the callback)
        self.fresh: Optional[torch.Tensor] = None  # the last evaluation's entries, not yet folded into ``entered``
        if self.bounds is None or self.bounds.device != self.everyone.device:
            self.place(device)

    def callback(self, i: int) -> None:
        """The sampler's callback for step i (ignored with follow_sigma: those callbacks are off the schedule)."""
        if not self.follow_sigma:
            self.step, self.evals = i + 1, 0  # the next evaluation sets ``entered`` afresh

    def tick(self, sigma: torch.Tensor) -> Tick:
        """Place one evaluation at ``sigma`` ([B] float on the device)."""
        if self.follow_sigma:
            return self._band(sigma)
        j, k = self.step, self.evals
        self.evals += 1
        hits = sigma[:, None] <= self.bounds[min(j, self.steps - 1)]  # [B, 2]: below step j's top, below the floor
        below_top, below_floor = hits[:, 0], hits[:, 1]
        if j == 0 or j >= self.steps:  # before any callback every evaluation is step 0's; after the last, extras
            starts = self.everyone if j == 0 and k == 0 else self.nobody
            return Tick(j, starts, self.everyone, below_floor, True, None)
        if k == 0:  # nobody is in step j yet
            self.entered, self.fresh = below_top, None
            return Tick(j, below_top, below_top, below_floor, False, None)
        if self.fresh is not None:  # a third evaluation since the callback: fold the second one's entries in now
            self.entered = self.entered | self.fresh
        starts = below_top > self.entered  # on bools: below step j's top and not in step j yet, in one op
        self.fresh = below_top
        return Tick(j, starts, self.entered, below_floor, False, None, also=below_top)

    def _band(self, sigma: torch.Tensor) -> Tick:
        value = float(sigma[0])  # the host read (follow_sigma only)
        band = self.steps - 1 - bisect.bisect_left(self.ascending, value)
        j = self.step = min(max(self.step, band, 0), self.steps - 1)  # never back
        first = not self.started[j]
        self.started[j] = True
        below_floor = self.everyone if value < self.floor else self.nobody
        return Tick(j, self.everyone if first else self.nobody, self.everyone, below_floor, True, value)
