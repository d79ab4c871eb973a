"""Load the shipped testbed UNet and sample it in plain torch through the pack's guidance core.

The sampler is DDIM (eta 0), written as Euler in ComfyUI's sigma space: x = x0 + sigma * eps. Its schedule is
ComfyUI's ``ddim_uniform`` (timesteps 981, 961, ..., 1, then sigma 0), so ``euler`` + ``ddim_uniform`` in ComfyUI
walks the same path. Every model evaluation goes through ``GuidanceRun.combine`` exactly as the ComfyUI hook does.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from . import guidance
from .data import HERE
from .model import TestbedUNet, sigmas as model_sigmas

WEIGHTS = HERE / "testbed_unet.safetensors"
SIGMAS = model_sigmas()
LOG_SIGMAS = SIGMAS.log()


def load_unet(path=WEIGHTS) -> TestbedUNet:
    """The EMA weights, in eval mode (float32, CPU)."""
    from safetensors import safe_open

    if not Path(path).is_file():
        raise FileNotFoundError(f"testbed weights: {path} is missing; run `python -m testbed.train` to rebuild them.")
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
        sd = {k: f.get_tensor(k) for k in f.keys()}
    unet = TestbedUNet(channels=tuple(json.loads(meta.get("channels", "[32, 64, 96]"))))
    unet.load_state_dict(sd)
    return unet.eval().requires_grad_(False)


def weights_metadata(path=WEIGHTS) -> dict:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return dict(f.metadata() or {})


def percent_to_sigma(percent: float) -> float:
    """ComfyUI's ModelSamplingDiscrete.percent_to_sigma for this schedule (t = (1 - percent) * 999)."""
    if percent <= 0.0:
        return 999999999.9
    if percent >= 1.0:
        return 0.0
    t = torch.tensor((1.0 - percent) * 999.0)  # float32, as ComfyUI interpolates
    lo, hi, w = t.floor().long(), t.ceil().long(), t.frac()
    return float(((1 - w) * LOG_SIGMAS[lo] + w * LOG_SIGMAS[hi]).exp())


def ddim_schedule(steps: int = 50):
    """(sigmas [steps + 1] ending at 0, timesteps [steps]) as ComfyUI's ddim_uniform scheduler spaces them."""
    stride = max(len(SIGMAS) // steps, 1)
    ts = list(range(1, len(SIGMAS), stride))[::-1]
    return torch.tensor([float(SIGMAS[t]) for t in ts] + [0.0]), torch.tensor(ts, dtype=torch.float32)


def noise_for(seeds, shape=(1, 16, 16)) -> torch.Tensor:
    """One noise image per seed, drawn as ComfyUI's prepare_noise draws a batch-1 latent."""
    return torch.cat([torch.randn((1, *shape), generator=torch.Generator().manual_seed(int(s))) for s in seeds])


@torch.no_grad()
def sample(unet: TestbedUNet, prompts: torch.Tensor, noise: torch.Tensor, settings, cfg: float, steps: int = 50,
           first_step_only: bool = False, bf16: bool = False):
    """Sample a batch (prompts [B, D], noise [B, 1, 16, 16]); returns (x0 [B, 1, 16, 16], Trace).

    ``bf16`` runs the network under CPU bfloat16 autocast (about 2x faster; the guidance math stays float32).
    """
    sig, ts = ddim_schedule(steps)
    run = guidance.GuidanceRun(settings, sig.tolist(), ts.tolist(), percent_to_sigma)
    B = noise.shape[0]
    ctx = torch.cat([prompts, torch.zeros_like(prompts)])[:, None]
    x = noise * sig[0]
    for i in range(1 if first_step_only else steps):
        s = sig[i]
        xin = torch.cat([x, x]) / (s * s + 1).sqrt()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            eps = unet(xin, ts[i].repeat(2 * B), ctx).float()
        den = torch.cat([x, x]) - s * eps
        cond, uncond = run.combine(den[:B], den[B:], s.repeat(B), cfg)
        guided = uncond + (cond - uncond) * cfg  # ComfyUI's cfg_function
        x = x + (x - guided) / s * (sig[i + 1] - s)  # Euler in sigma space = DDIM (eta 0), as k-diffusion writes it
        run.end_step(i)
    return x, run.finish()
