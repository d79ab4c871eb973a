"""Extra tiny real models for host tests: a Wan 2.1-shaped video DiT (5-D latents) that the stock loader detects.

Like ``host.tiny_flow_checkpoint``: weights come from a seed at test time, nothing is committed, and ComfyUI's own
``comfy.sd.load_diffusion_model`` turns the file into a MODEL (model detection -> WAN21_T2V -> model_base.WAN21).
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from host import _reset, import_comfy

pytestmark = pytest.mark.host

WAN_DIM, WAN_TEXT_DIM = 128, 4096  # detection fixes num_heads = dim // 128 and the text embedding's 4096 inputs


def tiny_wan_checkpoint(path: Path, seed: int = 0) -> Path:
    """Write a Wan 2.1 T2V DiT (16 latent channels, dim 128, one block, ffn 256) as .safetensors (~4 MB)."""
    import_comfy()
    from safetensors.torch import save_file

    import comfy.ldm.wan.model as wan
    import comfy.ops

    net = wan.WanModel(model_type="t2v", patch_size=(1, 2, 2), in_dim=16, dim=WAN_DIM, ffn_dim=256, freq_dim=256,
                       text_dim=WAN_TEXT_DIM, out_dim=16, num_heads=WAN_DIM // 128, num_layers=1,
                       operations=comfy.ops.manual_cast, dtype=torch.float32)
    _reset(net, seed)
    sd = {f"model.diffusion_model.{k}": v.contiguous() for k, v in net.state_dict().items()}
    save_file(sd, str(path))
    return path


def load_tiny_wan(tmp_dir: Path, seed: int = 0):
    """The tiny Wan checkpoint loaded through the stock diffusion-model loader."""
    import comfy.sd

    return comfy.sd.load_diffusion_model(str(tiny_wan_checkpoint(Path(tmp_dir) / "tiny_wan21.safetensors", seed)))


def wan_conditioning(batch: int = 1, seed: int = 1, tokens: int = 4):
    """A CONDITIONING for the tiny Wan (no T5 needed): [[context [B, T, 4096], {}]]."""
    g = torch.Generator().manual_seed(seed)
    return [[torch.randn(batch, tokens, WAN_TEXT_DIM, generator=g), {}]]


def load_tiny_flow(tmp_dir: Path, seed: int = 0):
    """``host.tiny_flow_checkpoint`` loaded through the stock diffusion-model loader (SD3, flow)."""
    import comfy.sd
    from host import tiny_flow_checkpoint

    return comfy.sd.load_diffusion_model(str(tiny_flow_checkpoint(Path(tmp_dir) / "tiny_sd3.safetensors", seed)))


# -- model kinds for the matrix and the fault tests ------------------------------------------------------------
class Kind:
    """One model kind: the MODEL, its (positive, negative) CONDITIONING and its latent shape without the batch."""

    def __init__(self, name: str, model, positive, negative, shape: tuple):
        self.name, self.model, self.positive, self.negative, self.shape = name, model, positive, negative, shape

    def latent(self, batch: int, seed: int = 0, empty: bool = True) -> torch.Tensor:
        """An empty latent (txt2img) or a seeded stand-in for an encoded image (img2img, denoise < 1)."""
        if empty:
            return torch.zeros(batch, *self.shape)
        return torch.randn(batch, *self.shape, generator=torch.Generator().manual_seed(1000 + seed))


KIND_NAMES = ("eps", "v", "flow", "video")


def build_kind(name: str, tmp_dir: Path) -> Kind:
    """eps / v: the in-process 32-channel UNet; flow: the SD3-shaped MMDiT; video: the Wan 2.1 DiT (5-D latents)."""
    import host

    torch.set_num_threads(1)
    if name in ("eps", "v"):
        return Kind(name, host.tiny_eps_model(prediction=name), host.eps_conditioning(1, 1), host.eps_conditioning(1, 2), (4, 8, 8))
    if name == "flow":
        return Kind(name, load_tiny_flow(tmp_dir), host.flow_conditioning(1, 1), host.flow_conditioning(1, 2), (16, 8, 8))
    if name == "video":
        return Kind(name, load_tiny_wan(tmp_dir), wan_conditioning(1, 1), wan_conditioning(1, 2), (16, 2, 8, 8))
    raise ValueError(f"unknown model kind {name!r}")


# -- watching a run from outside the pack ------------------------------------------------------------------------
class Eval:
    """One model evaluation: its sigma, the raw (cond, uncond) denoised, the CFG result, the sampler steps before it."""

    def __init__(self, sigma: float, cond: torch.Tensor, uncond, callbacks: int):
        self.sigma, self.cond, self.uncond, self.callbacks = sigma, cond, uncond, callbacks
        self.denoised = None

    def norm(self) -> torch.Tensor:
        """RMS over non-batch dims of (uncond - cond) / sigma: the guidance norm, computed here independently."""
        return ((self.uncond - self.cond) / self.sigma).square().flatten(1).mean(1).sqrt()

    def scale(self) -> torch.Tensor:
        """The CFG scale actually applied to each sample: least squares of denoised - u = s (c - u)."""
        g, r = (self.cond - self.uncond).flatten(1), (self.denoised - self.uncond).flatten(1)
        return (g * r).sum(1) / (g * g).sum(1)


class Probe:
    """Observes a sampling run through ComfyUI's own extension points, without touching the pack.

    ``sampler_calc_cond_batch_function`` sees the raw predictions before any pre-CFG hook (the pack's included),
    a post-CFG function sees the combined result, and the sampler callback counts the steps the sampler reports.
    """

    def __init__(self):
        self.evals: list[Eval] = []
        self.callbacks = 0
        self.callback_denoised: list[torch.Tensor] = []

    def attach(self, model, in_place: bool = False):
        """``model`` reporting to this probe (it computes exactly what it did before).

        A clone by default; ``in_place`` instruments that patcher itself (for a MODEL / GUIDER the pack just made:
        ComfyUI flags a clone of a clone as a leaked model when both die, and then runs a full gc on every load).
        """
        import comfy.samplers

        def calc(args):
            out = comfy.samplers.calc_cond_batch(args["model"], args["conds"], args["input"], args["sigma"], args["model_options"])
            uncond = out[1].detach().float().clone() if args["conds"][1] is not None else None
            self.evals.append(Eval(float(args["sigma"].flatten()[0]), out[0].detach().float().clone(), uncond, self.callbacks))
            return out

        def post(args):
            self.evals[-1].denoised = args["denoised"].detach().float().clone()
            return args["denoised"]

        m = model if in_place else model.clone()
        m.set_model_sampler_calc_cond_batch_function(calc)
        m.set_model_sampler_post_cfg_function(post)
        return m

    def callback(self, step, x0, x, total_steps):
        self.callbacks += 1
        self.callback_denoised.append(x0.detach().float().clone())
