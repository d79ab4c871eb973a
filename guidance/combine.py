"""The guidance norm and the per-sample CFG combine, in ComfyUI's denoised (x0) space."""
from __future__ import annotations

import math

import torch


def guidance_norm(cond_denoised: torch.Tensor, uncond_denoised: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """d = RMS over non-batch dims of (uncond_denoised - cond_denoised) / sigma, float32, shape [B].

    For eps- and v-models this is ||eps_c - eps_u|| / sqrt(numel) (the paper's quantity up to a constant);
    for flow models it is the velocity difference.
    """
    diff = (uncond_denoised.float() - cond_denoised.float()).flatten(1)
    sig = sigma.float().reshape(-1, 1).clamp_min(1e-8)
    return torch.linalg.vector_norm(diff / sig, dim=1) / math.sqrt(diff.shape[1])


def rewrite_conds(cond: torch.Tensor, uncond: torch.Tensor, scale, keep: torch.Tensor, cfg: float):
    """Return (cond', uncond') so that ComfyUI's ``u' + cfg * (c' - u')`` gives ``u + s_b * (c - u)`` per sample.

    ``scale`` is one float for every sample or a [B] tensor. Samples with ``keep`` (their scale is cfg) pass
    through untouched, so they equal stock CFG bit for bit (at cfg 1 their uncond becomes cond, which reproduces
    stock's cond-only result exactly).
    """
    shape = (-1,) + (1,) * (cond.ndim - 1)
    k = keep.reshape(shape)
    if torch.is_tensor(scale):
        scale = scale.to(cond.dtype).reshape(shape)
    if cfg == 0 or math.isclose(cfg, 1.0):
        guided = torch.lerp(uncond, cond, scale)
        if cfg == 0:
            return torch.where(k, cond, guided), torch.where(k, uncond, guided)
        return torch.where(k, cond, guided), torch.where(k, cond, uncond)
    return torch.where(k, cond, torch.lerp(uncond, cond, scale / cfg)), uncond
