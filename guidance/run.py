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
        n = self.plan.steps
        self.visited: list[bool] = [False] * n
        self.measured: list[bool] = [False] * n
        self.cfgs: list[float] = [float("nan")] * n
        self.all_on = settings.off  # known on the host: every sample is on full CFG from here on
        self.norms = self.on = self.switched = self.flagged = None

    def _allocate(self, B: int, device: torch.device) -> None:
        n = self.plan.steps
        self.norms = torch.full((n, B), float("nan"), dtype=torch.float32, device=device)
        self.on = torch.zeros((n, B), dtype=torch.bool, device=device)  # on[i, b]: sample b had full CFG in step i
        self.on[0] = self.settings.off  # plain CFG from the first step
        self.switched = torch.full((B,), self.settings.off, dtype=torch.bool, device=device)
        self.flagged = torch.ones(B, dtype=torch.bool, device=device)

    @property
    def switch_step(self) -> Optional[torch.Tensor]:
        """First step each sample ran with full CFG (NEVER if none yet), on the device."""
        if self.on is None:
            return None
        return torch.where(self.on.any(0), self.on.to(torch.uint8).argmax(0), NEVER)

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
        self.recorded, self.cfgs[i], self.visited[i], self.measured[i] = i, cfg, True, measured
        if measured:
            self.norms[i] = guidance_norm(cond, uncond, sigma)
        if self.all_on:
            return
        s, p = self.settings, self.plan
        new = switches_at(self.norms, i, _per_sample(sigma, cond.shape[0]), p, s)
        if i == 0:
            plain = not_flagged(self.norms[0], s.detect_threshold)
            self.flagged = ~plain
            new = new | plain
        self._switch(i, new)
        # past() is all-true from the planned step on: every sample is switched
        self.all_on = i >= (p.latest if s.transition == "dynamic" else p.static)

    def _switch(self, i: int, new: torch.Tensor) -> None:
        """Latch the samples in ``new`` to full CFG from step i on."""
        self.switched = self.switched | new
        self.on[i] = self.switched

    def combine(self, cond: torch.Tensor, uncond: torch.Tensor, sigma: torch.Tensor, cfg: float, measured: bool = True):
        """Called once per model evaluation with the denoised predictions; returns (cond', uncond') for CFG."""
        i = min(self.step, self.plan.steps - 1)
        if i != self.recorded:
            self._record(i, cond, uncond, sigma, cfg, measured)
        elif self.plan.sigma_force > 0 and not self.all_on:  # mid-step safety net, see StepPlan
            self._switch(i, _per_sample(sigma, cond.shape[0]).to(self.switched.device) < self.plan.sigma_force)
        if self.settings.off:
            return cond, uncond
        if self.all_on:  # rewrite_conds with every sample kept, without the tensor work
            return cond, (cond if math.isclose(cfg, 1.0) else uncond)
        return rewrite_conds(cond, uncond, self.settings.guidance_before, self.switched, cfg)

    def finish(self, meta: Optional[dict] = None) -> Trace:
        """Bring the run to the host (one synchronisation) and check every measured norm is finite."""
        n = self.plan.steps
        if self.norms is None:
            self._allocate(0, torch.device("cpu"))
        norms, on = self.norms.cpu(), self.on.cpu()
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
        on = torch.cummax(on.to(torch.uint8), 0).values.bool() & visited[:, None]  # switches latch (fast-path rows)
        cfgs = torch.tensor(self.cfgs, dtype=torch.float32)[:, None]
        scales = torch.where(on, cfgs, torch.tensor(self.settings.guidance_before, dtype=torch.float32))
        scales[~visited] = float("nan")
        first = torch.where(on.any(0), on.to(torch.uint8).argmax(0), NEVER)
        cfg = [c for c in self.cfgs if math.isfinite(c)]
        return Trace(
            settings=self.settings,
            sigmas=torch.tensor(self.sigmas, dtype=torch.float32),
            timesteps=torch.tensor(self.timesteps[:n], dtype=torch.float32),
            norms=norms,
            scales=scales,
            visited=visited,
            switch_step=first.to(torch.int64),
            flagged=self.flagged.cpu(),
            cfg=cfg[-1] if cfg else 0.0,
            meta=dict(meta or {}),
        )
