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
from .data import HERE, Augment
from .model import CHANNELS, LINEAR_END, LINEAR_START, TestbedUNet, sigmas as model_sigmas

WEIGHTS = HERE / "testbed_unet.safetensors"
SIGMAS = model_sigmas()


def read_weights(path=WEIGHTS) -> tuple[dict, dict]:
    """(state dict, metadata) of a testbed weights file."""
    from safetensors import safe_open

    if not Path(path).is_file():
        raise FileNotFoundError(f"testbed weights: {path} is missing; run `python -m testbed.train` to rebuild them.")
    with safe_open(str(path), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata() or {})


def schedule_betas(meta: dict) -> tuple[float, float]:
    """(linear_start, linear_end) of the scaled-linear betas the weights were trained on: SD's unless
    `train --linear-end` stored others."""
    return tuple(json.loads(meta["schedule_betas"])) if "schedule_betas" in meta else (LINEAR_START, LINEAR_END)


V2_AUGMENT = Augment(rotate=6.0, shift=1.0, warp=0.08, size=0.0)  # weights files from before `augment` was stored


def augment_of(meta: dict) -> Augment:
    """The augmentation of the ordinary records the weights were trained on (the alignment references use it too)."""
    return Augment.parse(meta["augment"]) if "augment" in meta else V2_AUGMENT


def load_unet(path=WEIGHTS) -> TestbedUNet:
    """The EMA weights, in eval mode (float32, CPU), with the schedule they were trained on."""
    sd, meta = read_weights(path)
    unet = TestbedUNet(channels=tuple(json.loads(meta.get("channels", json.dumps(list(CHANNELS))))))
    unet.load_state_dict(sd)
    betas = schedule_betas(meta)
    unet.schedule = SD if betas == (LINEAR_START, LINEAR_END) else Schedule(model_sigmas(*betas))
    unet.augment = augment_of(meta)
    return unet.eval().requires_grad_(False)


def weights_metadata(path=WEIGHTS) -> dict:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return dict(f.metadata() or {})


class Schedule:
    """A model's 1000-step discrete schedule: ComfyUI's percent_to_sigma and the ddim_uniform grid on it."""

    def __init__(self, sigmas: torch.Tensor):
        self.sigmas, self.log_sigmas = sigmas, sigmas.log()

    def percent_to_sigma(self, percent: float) -> float:
        """ComfyUI's ModelSamplingDiscrete.percent_to_sigma (t = (1 - percent) * 999, log-sigma interpolated)."""
        if percent <= 0.0:
            return 999999999.9
        if percent >= 1.0:
            return 0.0
        t = torch.tensor((1.0 - percent) * 999.0)  # float32, as ComfyUI interpolates
        lo, hi, w = t.floor().long(), t.ceil().long(), t.frac()
        return float(((1 - w) * self.log_sigmas[lo] + w * self.log_sigmas[hi]).exp())

    def ddim(self, steps: int = 50):
        """(sigmas [steps + 1] ending at 0, timesteps [steps]) as ComfyUI's ddim_uniform scheduler spaces them."""
        stride = max(len(self.sigmas) // steps, 1)
        ts = list(range(1, len(self.sigmas), stride))[::-1]
        return torch.tensor([float(self.sigmas[t]) for t in ts] + [0.0]), torch.tensor(ts, dtype=torch.float32)


SD = Schedule(SIGMAS)  # the shipped model's (SD's scaled-linear betas)
percent_to_sigma, ddim_schedule = SD.percent_to_sigma, SD.ddim


def noise_for(seeds, shape=(1, 16, 16)) -> torch.Tensor:
    """One noise image per seed, drawn as ComfyUI's prepare_noise draws a batch-1 latent."""
    return torch.cat([torch.randn((1, *shape), generator=torch.Generator().manual_seed(int(s))) for s in seeds])


@torch.no_grad()
def sample(unet: TestbedUNet, prompts: torch.Tensor, noise: torch.Tensor, settings, cfg: float, steps: int = 50,
           first_step_only: bool = False, bf16: bool = False):
    """Sample a batch (prompts [B, D], noise [B, 1, 16, 16]); returns (x0 [B, 1, 16, 16], Trace).

    ``bf16`` runs the network under CPU bfloat16 autocast (the guidance math stays float32); on the 2-core test machine
    (no AMX) it was 1.6-5x slower than float32, so reproduce runs float32.
    """
    sched = getattr(unet, "schedule", SD)
    sig, ts = sched.ddim(steps)
    run = guidance.GuidanceRun(settings, sig.tolist(), ts.tolist(), sched.percent_to_sigma)
    B = noise.shape[0]
    uncond_only = cfg == 0 and settings.off  # the unconditional branch alone: skip the conditional evaluation
    ctx = (torch.zeros_like(prompts) if uncond_only else torch.cat([prompts, torch.zeros_like(prompts)]))[:, None]
    x = noise * sig[0]
    for i in range(1 if first_step_only else steps):
        s = sig[i]
        xx = x if uncond_only else torch.cat([x, x])
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            eps = unet(xx / (s * s + 1).sqrt(), ts[i].repeat(len(xx)), ctx).float()
        den = xx - s * eps
        cond, uncond = run.combine(den[:B], den[-B:], s.repeat(B), cfg)
        guided = uncond + (cond - uncond) * cfg  # ComfyUI's cfg_function
        x = x + (x - guided) / s * (sig[i + 1] - s)  # Euler in sigma space = DDIM (eta 0), as k-diffusion writes it
        run.end_step(i)
    return x, run.finish()
