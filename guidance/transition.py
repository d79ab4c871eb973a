"""Per-sample transition rules, as tensor ops on the device (no host synchronisation)."""
from __future__ import annotations

import torch

from .schedule import StepPlan
from .settings import GuidanceSettings


def first_local_minimum(d: torch.Tensor, i: int) -> torch.Tensor:
    """Algorithm 1, line 6: d_{i-2} > d_{i-1} < d_i, with d_{-1} = d_{-2} = -inf. ``d`` is [steps, B]."""
    if i < 2:
        return torch.zeros(d.shape[1], dtype=torch.bool, device=d.device)
    return (d[i - 2] > d[i - 1]) & (d[i - 1] < d[i])


def past(i: int, step: int, sigma: torch.Tensor, sigma_at: float) -> torch.Tensor:
    """Step i (evaluated at ``sigma`` [B]) is past a percent: its index reached ``step`` or sigma <= ``sigma_at``."""
    return sigma <= sigma_at if i < step else torch.ones_like(sigma, dtype=torch.bool)


def switches_at(d: torch.Tensor, i: int, sigma: torch.Tensor, plan: StepPlan, settings: GuidanceSettings) -> torch.Tensor:
    """Which samples must be guided with full CFG from step i on (before latching and detection).

    dynamic: the step after the first local minimum of d within [earliest, latest], forced at latest.
    static: every sample once past switch_percent. off: everyone.
    """
    if settings.transition == "off":
        return torch.ones(d.shape[1], dtype=torch.bool, device=d.device)
    sigma = sigma.to(d.device).float()
    if settings.transition == "static":
        return past(i, plan.static, sigma, plan.sigma_static)
    allowed = past(i, plan.earliest, sigma, plan.sigma_earliest)
    return past(i, plan.latest, sigma, plan.sigma_latest) | (allowed & first_local_minimum(d, i))


def not_flagged(d0: torch.Tensor, threshold: float) -> torch.Tensor:
    """Detection at the first step: a norm below the threshold means not memorized (plain CFG)."""
    if threshold <= 0:
        return torch.zeros_like(d0, dtype=torch.bool)
    return d0 < threshold
