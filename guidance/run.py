"""The per-run state machine: observe each model evaluation, decide each sample's scale, build the trace.

The per-call path (``combine``) works on device tensors only: no ``.item()``, no ``.cpu()``, no Python
branch on tensor values. The host touches tensor values once per run, in ``finish``. The one exception is
``follow_sigma``, for the two samplers whose callbacks ignore the schedule (dpm_fast, dpm_adaptive).
"""
from __future__ import annotations

import bisect
import math
from typing import Callable, Optional, Sequence

import torch

from .combine import guidance_norm, rewrite_conds
from .schedule import StepPlan, plan_steps
from .settings import GuidanceSettings
from .trace import NEVER, Trace
from .transition import not_flagged, switches_at


class NonFiniteGuidance(ValueError):
    """The model returned NaN or inf: the guidance norm of some step and sample is not finite."""


def _per_sample(sigma: torch.Tensor, B: int) -> torch.Tensor:
    """ComfyUI passes sigma as [B] (or [1]); return float [B]."""
    sigma = sigma.reshape(-1).float()
    return sigma.expand(B) if sigma.numel() == 1 else sigma


def _first_on(on: torch.Tensor) -> torch.Tensor:
    """Per sample, the first step of ``on`` [steps, B] that is true; NEVER if none."""
    return torch.where(on.any(0), on.to(torch.uint8).argmax(0), NEVER)


class GuidanceRun:
    """One sampling run. Steps come from the schedule, not from model calls.

    ComfyUI's samplers fire their callback right after the *first* evaluation of step i. An evaluation after
    callback i is therefore either an extra evaluation of step i (heun's corrector, dpm_2's midpoint, ...) or the
    first evaluation of step i+1; its sigma tells which (at or below sigma_{i+1}: step i+1), decided on the device.
    Only the first evaluation of a step feeds the detector; every evaluation of a step uses that step's scale
    (heun's corrector sits exactly at sigma_{i+1} and so counts for step i+1).
    """

    def __init__(self, settings: GuidanceSettings, sigmas: Sequence[float], timesteps: Sequence[float],
                 percent_to_sigma: Callable[[float], float], on_step: Optional[Callable[["GuidanceRun", int], None]] = None,
                 follow_sigma: bool = False):
        """``follow_sigma``: for samplers whose callbacks ignore the schedule (dpm_fast, dpm_adaptive), place each
        evaluation in the schedule step whose sigma band holds it; this reads sigma on the host (one sync per call)."""
        self.settings = settings
        self.sigmas = [float(s) for s in sigmas]
        self.timesteps = [float(t) for t in timesteps]
        self.plan: StepPlan = plan_steps(self.sigmas, percent_to_sigma, settings)
        self.on_step = on_step
        self.step = 0  # the step whose first evaluation comes next (after callback i: i + 1)
        n = self.plan.steps
        self.unmeasured: list[bool] = [False] * n  # an evaluation in this step had no uncond pass (stock cfg-1 shortcut)
        self.cfgs: list[float] = [float("nan")] * n
        self.all_on = settings.off  # known on the host: every sample is on full CFG from here on
        self.sigma_first = [sg * (1 + 1e-5) + 1e-12 for sg in self.sigmas[:n]]  # step i starts at or below this
        self.follow_sigma = follow_sigma and all(a >= b for a, b in zip(self.sigmas, self.sigmas[1:]))
        self.ascending = self.sigma_first[::-1]
        self.norms = self.on = self.got = self.switched = self.flagged = None

    def _allocate(self, B: int, device: torch.device) -> None:
        n = self.plan.steps
        self.norms = torch.full((n, B), float("nan"), dtype=torch.float32, device=device)
        self.on = torch.zeros((n, B), dtype=torch.bool, device=device)  # on[i, b]: sample b had full CFG in step i
        self.on[0] = self.settings.off  # plain CFG from the first step
        self.got = torch.zeros((n, B), dtype=torch.bool, device=device)  # got[i]: step i's first evaluation was seen
        self.switched = torch.full((B,), self.settings.off, dtype=torch.bool, device=device)
        self.flagged = torch.ones(B, dtype=torch.bool, device=device)

    @property
    def switch_step(self) -> Optional[torch.Tensor]:
        """First step each sample ran with full CFG (NEVER if none yet), on the device."""
        return None if self.on is None else _first_on(self.on)

    def end_step(self, i: int) -> None:
        """The sampler's callback for step i: its first evaluation has happened."""
        if self.follow_sigma:
            return
        if 0 <= i < self.plan.steps and self.norms is not None:
            self._check_all_on(i)
            if self.on_step is not None:
                self.on_step(self, i)
        self.step = i + 1

    def _check_all_on(self, i: int) -> None:
        """Past the last planned switch, past() is all-true: every sample is switched (known on the host)."""
        if not self.all_on and i >= self.plan.all_on:
            self.all_on = True
            self.switched.fill_(True)
            self.on[i] = True

    def combine(self, cond: torch.Tensor, uncond: torch.Tensor, sigma: torch.Tensor, cfg: float, measured: bool = True):
        """Called once per model evaluation with the denoised predictions; returns (cond', uncond') for CFG."""
        B = cond.shape[0]
        if self.norms is None:
            self._allocate(B, cond.device)
        if self.norms.shape[1] != B:
            raise ValueError(f"batch size changed mid-run at step {self.step}: {self.norms.shape[1]} -> {B}.")
        sig = _per_sample(sigma, B).to(self.norms.device)
        i, n = self.step, self.plan.steps
        if self.follow_sigma:  # the band holding this sigma; never back
            band = n - 1 - bisect.bisect_left(self.ascending, float(sig[0]))
            i = self.step = max(self.step, band, 0)
        if i >= n:  # after the last callback: extra evaluations of the last step
            keep = self.on[n - 1] | self.switched
        else:
            self.cfgs[i] = cfg
            self.unmeasured[i] |= not measured
            d = guidance_norm(cond, uncond, sigma) if measured else self.norms[i]
            if i == 0 or self.follow_sigma:  # step 0 before any callback, or the band: known on the host
                take = ~self.got[i]
                nxt = True
            else:
                nxt = sig <= self.sigma_first[i]
                take = nxt & ~self.got[i]
            self.norms[i] = torch.where(take, d, self.norms[i])
            self.got[i] = self.got[i] | take
            keep = self._decide(i, take, nxt, sig)
            if self.follow_sigma:
                self._check_all_on(i)
        if self.settings.off:
            return cond, uncond
        if self.all_on:  # rewrite_conds with every sample kept, without the tensor work
            return cond, (cond if math.isclose(cfg, 1.0) else uncond)
        return rewrite_conds(cond, uncond, self.settings.guidance_before, keep, cfg)

    def _decide(self, i: int, take: torch.Tensor, nxt, sig: torch.Tensor) -> torch.Tensor:
        """Latch the samples that switch at step i (if this is its first evaluation); return who has full CFG now."""
        if self.all_on:
            return self.switched
        s = self.settings
        new = switches_at(self.norms, i, sig, self.plan, s)
        if i == 0:
            plain = not_flagged(self.norms[0], s.detect_threshold)
            self.flagged = torch.where(take, ~plain, self.flagged)
            new = new | plain
        force = sig < self.plan.sigma_force  # mid-step safety net, see StepPlan (all False when it is off)
        self.switched = torch.where(take, self.switched | new | force, self.switched | force)
        self.on[i] = torch.where(take, self.switched, self.on[i] | (force & nxt))
        if nxt is True:
            return self.switched
        self.on[i - 1] = self.on[i - 1] | (force & ~nxt)  # a forced switch inside step i-1 (an extra evaluation)
        return torch.where(nxt, self.switched, self.on[i - 1])

    def finish(self, meta: Optional[dict] = None) -> Trace:
        """Bring the run to the host (one synchronisation) and check every measured norm is finite."""
        n = self.plan.steps
        if self.norms is None:
            self._allocate(0, torch.device("cpu"))
        norms, on, got = self.norms.cpu(), self.on.cpu(), self.got.cpu()
        visited = got.any(1)  # an evaluation was attributed to the step
        bad = ~torch.isfinite(norms) & got & ~torch.tensor(self.unmeasured)[:, None]
        if bool(bad.any()):
            i, b = (int(v) for v in bad.nonzero()[0])
            raise NonFiniteGuidance(
                f"Memorization-safe CFG: the guidance norm is {float(norms[i, b])} at step {i} "
                f"(sigma {self.sigmas[i]:.4g}) for sample {b} of the batch: the model returned NaN or inf there. "
                "Check the model, its dtype (try fp32) and the latent; the sampled result is not trustworthy."
            )
        on = torch.cummax(on.to(torch.uint8), 0).values.bool() & visited[:, None]  # switches latch (fast-path rows)
        cfgs = torch.tensor(self.cfgs, dtype=torch.float32)[:, None]
        scales = torch.where(on, cfgs, torch.tensor(self.settings.guidance_before, dtype=torch.float32))
        scales[~visited] = float("nan")
        cfg = [c for c in self.cfgs if math.isfinite(c)]
        return Trace(
            settings=self.settings,
            sigmas=torch.tensor(self.sigmas, dtype=torch.float32),
            timesteps=torch.tensor(self.timesteps[:n], dtype=torch.float32),
            norms=norms,
            scales=scales,
            visited=visited,
            switch_step=_first_on(on).to(torch.int64),
            flagged=self.flagged.cpu(),
            cfg=cfg[-1] if cfg else 0.0,
            meta=dict(meta or {}),
        )
