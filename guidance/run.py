"""The per-run state machine: observe each model evaluation, decide each sample's scale, build the trace.

The per-call path (``combine``) works on device tensors only: no ``.item()``, no ``.cpu()``, no Python
branch on tensor values. The host touches tensor values once per run, in ``finish``.
"""
from __future__ import annotations

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


class GuidanceRun:
    """One sampling run. Steps come from the schedule, not from model calls.

    The sampler reports each finished step with ``end_step(i)``; evaluations before that belong to step i.
    Only the first evaluation of a step feeds the detector; every evaluation of that step uses its scale.
    """

    def __init__(self, settings: GuidanceSettings, sigmas: Sequence[float], timesteps: Sequence[float],
                 percent_to_sigma: Callable[[float], float], on_step: Optional[Callable[["GuidanceRun", int], None]] = None):
        self.settings = settings
        self.sigmas = [float(s) for s in sigmas]
        self.timesteps = [float(t) for t in timesteps]
        self.plan: StepPlan = plan_steps(self.sigmas, percent_to_sigma, settings)
        self.on_step = on_step
        self.step = 0
        self.recorded = -1
        self.visited: list[bool] = [False] * self.plan.steps
        self.measured: list[bool] = [False] * self.plan.steps
        self.cfg: float = float("nan")
        self.norms = self.scales = self.switched = self.switch_step = self.flagged = self.scale = None

    def _allocate(self, B: int, device: torch.device) -> None:
        n = self.plan.steps
        self.norms = torch.full((n, B), float("nan"), dtype=torch.float32, device=device)
        self.scales = torch.full((n, B), float("nan"), dtype=torch.float32, device=device)
        self.switched = torch.zeros(B, dtype=torch.bool, device=device)
        self.switch_step = torch.full((B,), NEVER, dtype=torch.int64, device=device)
        self.flagged = torch.ones(B, dtype=torch.bool, device=device)

    def end_step(self, i: int) -> None:
        """The sampler finished step i (its callback fired)."""
        if self.on_step is not None and 0 <= i == self.recorded:
            self.on_step(self, i)
        self.step = i + 1

    def _record(self, i: int, cond: torch.Tensor, uncond: torch.Tensor, sigma: torch.Tensor, cfg: float, measured: bool) -> None:
        if self.norms is None:
            self._allocate(cond.shape[0], cond.device)
        if self.norms.shape[1] != cond.shape[0]:
            raise ValueError(f"batch size changed mid-run at step {i}: {self.norms.shape[1]} -> {cond.shape[0]}.")
        self.cfg = cfg
        self.visited[i] = True
        self.measured[i] = measured
        d = self.norms
        if measured:
            d[i] = guidance_norm(cond, uncond, sigma)
        s = self.settings
        new = switches_at(d, i, _per_sample(sigma, cond.shape[0]), self.plan, s)
        if i == 0 and not s.off:
            plain = not_flagged(d[0], s.detect_threshold)
            self.flagged = ~plain
            new = new | plain
        self.recorded = i
        self._switch(i, new, cfg)

    def _switch(self, i: int, new: torch.Tensor, cfg: float) -> None:
        """Latch the samples in ``new`` to full CFG from step i on, and set this step's scales."""
        new = new & ~self.switched
        self.switch_step = torch.where(new, torch.full_like(self.switch_step, i), self.switch_step)
        self.switched = self.switched | new
        self.scale = torch.where(self.switched, torch.full_like(self.scales[i], cfg),
                                 torch.full_like(self.scales[i], self.settings.guidance_before))
        self.scales[i] = self.scale

    def combine(self, cond: torch.Tensor, uncond: torch.Tensor, sigma: torch.Tensor, cfg: float, measured: bool = True):
        """Called once per model evaluation with the denoised predictions; returns (cond', uncond') for CFG."""
        i = min(self.step, self.plan.steps - 1)
        if i != self.recorded:
            self._record(i, cond, uncond, sigma, cfg, measured)
        elif self.plan.sigma_force > 0:  # mid-step safety net, see StepPlan
            self._switch(i, _per_sample(sigma, cond.shape[0]).to(self.switched.device) < self.plan.sigma_force, cfg)
        if self.settings.off:
            return cond, uncond
        return rewrite_conds(cond, uncond, self.scale, self.switched, cfg)

    def finish(self, meta: Optional[dict] = None) -> Trace:
        """Bring the run to the host (one synchronisation) and check every measured norm is finite."""
        n = self.plan.steps
        if self.norms is None:
            self._allocate(0, torch.device("cpu"))
        norms = self.norms.cpu()
        visited = torch.tensor(self.visited, dtype=torch.bool)
        measured = torch.tensor(self.measured, dtype=torch.bool)
        bad = ~torch.isfinite(norms) & measured[:, None]
        if bool(bad.any()):
            i, b = (int(v) for v in bad.nonzero()[0])
            raise NonFiniteGuidance(
                f"Memorization-safe CFG: the guidance norm is {float(norms[i, b])} at step {i} "
                f"(sigma {self.sigmas[i]:.4g}) for sample {b} of the batch: the model returned NaN or inf there. "
                "Check the model, its dtype (try fp32) and the latent; the sampled result is not trustworthy."
            )
        return Trace(
            settings=self.settings,
            sigmas=torch.tensor(self.sigmas, dtype=torch.float32),
            timesteps=torch.tensor(self.timesteps[:n], dtype=torch.float32),
            norms=norms,
            scales=self.scales.cpu(),
            visited=visited,
            switch_step=self.switch_step.cpu(),
            flagged=self.flagged.cpu(),
            cfg=self.cfg if math.isfinite(self.cfg) else 0.0,
            meta=dict(meta or {}),
        )
