"""One sampling run: place each model evaluation (``StepClock``), decide each sample's scale (``Latch``), record
the norms, and bring the trace to the host once, in ``finish``.

The per-evaluation path (``combine``) works on device tensors only: no ``.item()``, no ``.cpu()``, no Python
branch on tensor values (the clock's ``follow_sigma`` mode, for dpm_fast and dpm_adaptive, is the one exception).
"""
from __future__ import annotations

import math
from typing import Callable, Optional, Sequence

import torch

from .clock import StepClock
from .combine import guidance_norm, rewrite_conds
from .schedule import StepPlan, plan_steps
from .settings import GuidanceSettings
from .trace import NEVER, Trace
from .transition import Latch


class NonFiniteGuidance(ValueError):
    """The model returned NaN or inf: the guidance norm of some step and sample is not finite."""


def _per_sample(sigma: torch.Tensor, batch: int, device: torch.device) -> torch.Tensor:
    """ComfyUI passes sigma as [B] (or [1]); return float [B]."""
    sigma = sigma.reshape(-1).float().to(device)
    return sigma.expand(batch) if sigma.numel() == 1 else sigma


def first_on(on: torch.Tensor) -> torch.Tensor:
    """Per sample, the first step of ``on`` [steps, B] that is true; NEVER if none."""
    return torch.where(on.any(0), on.to(torch.uint8).argmax(0), NEVER)


class GuidanceRun:
    """One sampling run. Steps come from the schedule, not from model calls (see ``clock.StepClock``); only the
    first evaluation of a step feeds the detector, and every evaluation of a step uses that step's scale."""

    def __init__(self, settings: GuidanceSettings, sigmas: Sequence[float], timesteps: Sequence[float],
                 percent_to_sigma: Callable[[float], float], on_step: Optional[Callable[["GuidanceRun", int], None]] = None,
                 follow_sigma: bool = False, device: Optional[torch.device] = None):
        """``on_step(run, i)`` runs at each schedule callback. ``follow_sigma``: for samplers whose callbacks ignore
        the schedule (dpm_fast, dpm_adaptive), place each evaluation by its sigma band (a host read per call).
        ``device``: where the model's predictions will be, if known: the step bounds go there before the run."""
        self.settings = settings
        self.sigmas = [float(s) for s in sigmas]
        self.timesteps = [float(t) for t in timesteps]
        self.plan: StepPlan = plan_steps(self.sigmas, percent_to_sigma, settings)
        self.on_step = on_step
        n = self.plan.steps
        self.clock = StepClock(self.sigmas, n, follow_sigma, self.plan.sigma_force)
        if device is not None:
            self.clock.place(device)
        self.follow_sigma = self.clock.follow_sigma
        self.cfgs = [math.nan] * n  # the cfg each step was called with (host)
        self.unmeasured = [False] * n  # a step had an evaluation without uncond pass (stock's cfg-1 shortcut)
        self.batch = -1
        self.latch: Optional[Latch] = None  # built at the first evaluation, when batch and device are known
        self.unknown: Optional[torch.Tensor] = None  # [B] NaN, made when first needed (``_unknown``)
        self.norms: list[Optional[torch.Tensor]] = []  # per step: [B] norm of the step's first evaluation, else NaN;
        # None while no sample has started the step (a NaN row, known on the host)
        self.started: list[tuple[int, torch.Tensor]] = []  # (step, samples whose first evaluation of it this was)
        self.carried: Optional[torch.Tensor] = None  # finish's ``carry``, on the host

    def _start(self, batch: int, device: torch.device) -> None:
        self.batch = batch
        self.clock.start(batch, device)
        self.latch = Latch(self.plan, self.settings, batch, device, everyone=self.clock.everyone, nobody=self.clock.nobody)
        self.norms = [None] * self.plan.steps

    def _unknown(self) -> torch.Tensor:
        """The [B] NaN row (one op, once per run, at its first use)."""
        if self.unknown is None:
            self.unknown = torch.full((self.batch,), math.nan, dtype=torch.float32, device=self.clock.everyone.device)
        return self.unknown

    def combine(self, cond: torch.Tensor, uncond: torch.Tensor, sigma: torch.Tensor, cfg: float, measured: bool = True):
        """Called once per model evaluation with the denoised predictions; returns (cond', uncond') for CFG.
        ``measured`` False: uncond is not a real unconditional prediction (stock's cfg-1 shortcut skipped it)."""
        if self.latch is None:
            self._start(cond.shape[0], cond.device)
        if cond.shape[0] != self.batch:
            raise ValueError(f"batch size changed mid-run at step {self.clock.step}: {self.batch} -> {cond.shape[0]}.")
        tick = self.clock.tick(_per_sample(sigma, self.batch, self.clock.everyone.device))
        if tick.step < self.plan.steps:
            self._record(tick.step, tick.starts, cond, uncond, sigma, cfg, measured)
        keep = self.latch.decide(tick, self.norms)
        if self.follow_sigma:  # dpm_fast / dpm_adaptive: no schedule callbacks; the sigma band is the step
            self.latch.step_done(tick.step)
        if self.settings.off:
            return cond, uncond
        if self.latch.all_on:  # rewrite_conds with every sample kept, without the tensor work
            return cond, (cond if math.isclose(cfg, 1.0) else uncond)
        return rewrite_conds(cond, uncond, self.settings.guidance_before, keep, cfg)

    def _record(self, j: int, starts: torch.Tensor, cond, uncond, sigma, cfg: float, measured: bool) -> None:
        """Keep the norm for the samples whose first evaluation of step j this is. The host skips what it knows:
        nobody starts (no norm needed), everyone starts (the norm is the row), the row is still unset (NaN)."""
        self.cfgs[j] = cfg
        self.unmeasured[j] |= not measured
        if starts is self.clock.nobody:
            return
        d = guidance_norm(cond, uncond, sigma) if measured else self._unknown()
        row = self.norms[j]
        self.norms[j] = d if starts is self.clock.everyone else torch.where(starts, d, self._unknown() if row is None else row)
        self.started.append((j, starts))

    def end_step(self, i: int) -> None:
        """The sampler's callback for step i: its first evaluation has happened."""
        self.clock.callback(i)
        if self.follow_sigma or self.latch is None or not 0 <= i < self.plan.steps:
            return
        self.latch.step_done(i)
        if self.on_step is not None:
            self.on_step(self, i)

    def norm_row(self, i: int) -> torch.Tensor:
        """Step i's guidance norm per sample ([B], on the device; NaN where not measured)."""
        row = self.norms[i]
        return self._unknown() if row is None else row

    def on_row(self, i: int) -> torch.Tensor:
        """Who had full CFG in step i ([B] bool, on the device)."""
        row = self.latch.on[i]
        return row if row is not None else self.latch.nobody

    def everyone_on(self, i: int) -> bool:
        """The host knows every sample had full CFG in step i (then ``on_row(i)`` is all true without a read)."""
        return self.latch is not None and self.latch.on[i] is self.latch.everyone

    def finish(self, meta: Optional[dict] = None, carry: Optional[torch.Tensor] = None) -> Trace:
        """Bring the run to the host (one transfer) and check every measured norm is finite. ``carry``: a float32
        vector on the run's device that comes along in the same transfer (the caller's own bit of the run, e.g.
        a fingerprint of its output); its host copy is ``self.carried``."""
        n = self.plan.steps
        if self.latch is None:
            self._start(0, torch.device("cpu"))
        B = self.batch
        self.latch.settle()
        steps_started = torch.tensor([j for j, _ in self.started], dtype=torch.int64)
        rows = [*(self.norm_row(i) for i in range(n)), *(self.on_row(i).float() for i in range(n)), self.latch.flagged.float(),
                *(s.float() for _, s in self.started)]
        host = (torch.stack(rows) if rows else torch.zeros(0, B)).detach()  # the trace holds values, not a graph
        carry = None if carry is None else carry.detach()
        if carry is not None and carry.device == host.device:
            host = torch.cat((host.reshape(-1), carry.reshape(-1).float())).cpu()  # the run's one device -> host transfer
            host, self.carried = host[:len(rows) * B].reshape(len(rows), B), host[len(rows) * B:]
        else:
            host = host.cpu()  # the run's one device -> host transfer
            self.carried = None if carry is None else carry.reshape(-1).float().cpu()  # another device: its own
        norms, on, flagged, starts = host[:n], host[n:2 * n].bool(), host[2 * n].bool(), host[2 * n + 1:].bool()
        got = torch.zeros(n, B, dtype=torch.int64).index_add_(0, steps_started, starts.long()) > 0
        visited = got.any(1)  # an evaluation was attributed to the step
        bad = ~torch.isfinite(norms) & got & ~torch.tensor(self.unmeasured, dtype=torch.bool)[:, None]
        if bool(bad.any()):
            i, b = (int(v) for v in bad.nonzero()[0])
            raise NonFiniteGuidance(
                f"Memorization-safe CFG: the guidance norm is {float(norms[i, b])} at step {i} "
                f"(sigma {self.sigmas[i]:.4g}) for sample {b} of the batch: the model returned NaN or inf there. "
                "Check the model, its dtype (try fp32) and the latent; the sampled result is not trustworthy."
            )
        on = on & visited[:, None]
        cfgs = torch.tensor(self.cfgs, dtype=torch.float32)[:, None]
        scales = torch.where(on, cfgs, torch.tensor(self.settings.guidance_before, dtype=torch.float32))
        scales[~visited] = math.nan
        cfg = [c for c in self.cfgs if math.isfinite(c)]
        return Trace(
            settings=self.settings,
            sigmas=torch.tensor(self.sigmas, dtype=torch.float32),
            timesteps=torch.tensor(self.timesteps[:n], dtype=torch.float32),
            norms=norms,
            scales=scales,
            visited=visited,
            switch_step=first_on(on).to(torch.int64),
            flagged=flagged,
            cfg=cfg[-1] if cfg else 0.0,
            meta=dict(meta or {}),
        )
