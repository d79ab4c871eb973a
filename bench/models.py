"""The benchmark's models: the tiny CPU models of tests/host.py (eps-tiny, flow-tiny) and SD1.5- / SDXL-shaped
UNets with random weights built through ComfyUI's own model classes (sd15, sdxl; ``tiny`` shrinks their widths)."""
from __future__ import annotations

import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import host

SEED = 0
# ComfyUI's own SD1.5 / SDXL UNet shapes (detected as such by comfy.model_detection); --tiny shrinks the widths.
SD15_UNET = dict(use_checkpoint=False, image_size=32, out_channels=4, use_spatial_transformer=True, legacy=False,
                 adm_in_channels=None, in_channels=4, model_channels=320, num_res_blocks=[2, 2, 2, 2],
                 transformer_depth=[1, 1, 1, 1, 1, 1, 0, 0], channel_mult=[1, 2, 4, 4], transformer_depth_middle=1,
                 use_linear_in_transformer=False, context_dim=768, num_heads=8,
                 transformer_depth_output=[1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0],
                 use_temporal_attention=False, use_temporal_resblock=False)
SDXL_UNET = dict(use_checkpoint=False, image_size=32, out_channels=4, use_spatial_transformer=True, legacy=False,
                 num_classes="sequential", adm_in_channels=2816, in_channels=4, model_channels=320,
                 num_res_blocks=[2, 2, 2], transformer_depth=[0, 0, 2, 2, 10, 10], channel_mult=[1, 2, 4],
                 transformer_depth_middle=10, use_linear_in_transformer=True, context_dim=2048, num_head_channels=64,
                 transformer_depth_output=[0, 0, 0, 2, 2, 2, 10, 10, 10],
                 use_temporal_attention=False, use_temporal_resblock=False)
TINY = {"sd15": dict(model_channels=32, num_res_blocks=[1, 1], transformer_depth=[1, 1], channel_mult=[1, 2],
                     transformer_depth_output=[1, 1, 1, 1]),
        "sdxl": dict(model_channels=64, num_res_blocks=[1, 1], transformer_depth=[0, 1], channel_mult=[1, 2],
                     transformer_depth_middle=1, transformer_depth_output=[0, 0, 1, 1])}



@dataclass
class Model:
    name: str
    patcher: object
    channels: int
    cond: Callable[[int, int], list]  # (batch, seed) -> CONDITIONING
    keep: object = None  # keeps a temporary directory alive


def unet_model(name: str, device, tiny: bool) -> Model:
    import torch

    import comfy.model_detection
    import comfy.model_patcher
    import comfy.supported_models
    mm = sys.modules["comfy.model_management"]
    unet = dict(SD15_UNET if name == "sd15" else SDXL_UNET)
    if tiny:
        unet.update(TINY[name])
        config = (comfy.supported_models.SD15 if name == "sd15" else comfy.supported_models.SDXL)(unet)
    else:
        config = comfy.model_detection.model_config_from_unet_config(unet)
        want = "SD15" if name == "sd15" else "SDXL"
        if type(config).__name__ != want:
            raise RuntimeError(f"ComfyUI detected {type(config).__name__} for the {want} UNet config.")
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    config.set_inference_dtype(dtype, None)
    model = config.get_model({}, device=device)
    host.init_weights(model.diffusion_model, SEED)
    model.eval()
    patcher = comfy.model_patcher.ModelPatcher(model, load_device=device, offload_device=mm.unet_offload_device())
    ctx = unet["context_dim"]

    def cond(batch: int, seed: int) -> list:
        g = torch.Generator().manual_seed(seed)
        extra = {} if name == "sd15" else {"pooled_output": torch.randn(batch, 1280, generator=g), "width": 1024, "height": 1024}
        return [[torch.randn(batch, 77, ctx, generator=g), extra]]
    return Model(name + ("-tiny" if tiny else ""), patcher, 4, cond)


def build_model(name: str, device, tiny: bool = False) -> Model:
    """eps-tiny / flow-tiny (tests/host.py, CPU) or sd15 / sdxl (random weights through ComfyUI's model classes)."""
    if name in ("sd15", "sdxl"):
        return unet_model(name, device, tiny)
    if name == "eps-tiny":
        return Model(name, host.tiny_eps_model(), 4, lambda b, s: host.eps_conditioning(b, s))
    if name == "flow-tiny":
        import comfy.sd
        keep = tempfile.TemporaryDirectory(prefix="memsafe-bench-")
        path = host.tiny_flow_checkpoint(Path(keep.name) / "tiny_sd3.safetensors")
        return Model(name, comfy.sd.load_diffusion_model(str(path)), 16, lambda b, s: host.flow_conditioning(b, s), keep)
    raise ValueError(f"--models: unknown model '{name}'; use eps-tiny, flow-tiny, sd15 or sdxl.")
