"""The real ComfyUI stack for host tests: import it from COMFYUI_PATH on CPU, and build tiny real models.

- ``tiny_eps_model``: an SD1.5-shaped UNet with 32 channels (eps; ``prediction="v"`` for the v variant; ``video``
  for a 5-D latent through a 3-D conv), built in process through ComfyUI's own BaseModel and ModelPatcher.
- ``tiny_flow_checkpoint``: an SD3-shaped MMDiT (depth 1) saved as .safetensors, loaded by the stock loaders.
"""
from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import torch

COMFYUI_PATH = os.environ.get("COMFYUI_PATH", "")
REPO = Path(__file__).resolve().parents[1]
PACKAGE = "memsafe_cfg"


def load_pack():
    """Import the repo as package ``memsafe_cfg``, as ComfyUI does, without putting the repo root on sys.path
    (the pack's ``nodes/`` folder must never shadow ComfyUI's ``nodes``)."""
    if PACKAGE not in sys.modules:
        spec = importlib.util.spec_from_file_location(PACKAGE, REPO / "__init__.py", submodule_search_locations=[str(REPO)])
        module = importlib.util.module_from_spec(spec)
        sys.modules[PACKAGE] = module
        spec.loader.exec_module(module)
    return sys.modules[PACKAGE]


def import_comfy():
    """Put ComfyUI on sys.path and select the CPU before comfy.model_management is imported."""
    if COMFYUI_PATH not in sys.path:
        sys.path.insert(0, COMFYUI_PATH)
    from comfy.cli_args import args

    args.cpu = True
    import comfy.model_management  # noqa: F401
    import comfy.samplers  # noqa: F401
    return sys.modules["comfy"]


def _reset(module: torch.nn.Module, seed: int) -> None:
    """ComfyUI skips weight init (comfy.ops.disable_weight_init): initialise every weight for real, from a seed.

    Modules with torch's reset_parameters use it; bare parameters and float buffers (e.g. MMDiT's pos_embed),
    otherwise left as torch.empty garbage, get N(0, 0.02).
    """
    torch.manual_seed(seed)
    done = set()
    for m in module.modules():
        for cls in type(m).__mro__:
            if cls.__module__.startswith("torch.nn") and "reset_parameters" in cls.__dict__:
                cls.reset_parameters(m)
                done.update(id(p) for p in m.parameters(recurse=False))
                break
    with torch.no_grad():
        for t in list(module.parameters()) + [b for b in module.buffers() if b.is_floating_point()]:
            if id(t) not in done:
                t.normal_(0.0, 0.02)


CONTEXT_DIM = 32


def tiny_eps_model(prediction: str = "eps", seed: int = 0):
    """A 32-channel UNet with cross-attention, wrapped as a real ComfyUI MODEL (ModelPatcher)."""
    import_comfy()
    import comfy.latent_formats
    import comfy.model_base
    import comfy.model_patcher
    import comfy.supported_models_base

    unet = dict(in_channels=4, out_channels=4, model_channels=32, num_res_blocks=1,
                channel_mult=[1], num_head_channels=32, transformer_depth=[1], transformer_depth_output=[1, 1],
                transformer_depth_middle=1, context_dim=CONTEXT_DIM, use_linear_in_transformer=True,
                use_spatial_transformer=True, adm_in_channels=None, image_size=8, dtype=torch.float32)

    class TinyConfig(comfy.supported_models_base.BASE):
        unet_config = unet
        unet_extra_config = {}
        latent_format = comfy.latent_formats.SD15
        sampling_settings = {}
        supported_inference_dtypes = [torch.float32]

    config = TinyConfig(unet)
    model_type = comfy.model_base.ModelType.V_PREDICTION if prediction == "v" else comfy.model_base.ModelType.EPS
    model = comfy.model_base.BaseModel(config, model_type=model_type, device=torch.device("cpu"))
    _reset(model.diffusion_model, seed)
    model.eval()
    return comfy.model_patcher.ModelPatcher(model, load_device=torch.device("cpu"), offload_device=torch.device("cpu"))


def eps_conditioning(batch: int = 1, seed: int = 1, tokens: int = 4):
    """A CONDITIONING for the tiny UNet (no CLIP needed): [[context [B, T, 32], {}]]."""
    g = torch.Generator().manual_seed(seed)
    return [[torch.randn(batch, tokens, CONTEXT_DIM, generator=g), {}]]


FLOW_CONTEXT, FLOW_POOLED = 64, 32


def tiny_flow_checkpoint(path: Path, seed: int = 0) -> Path:
    """Write an SD3-shaped MMDiT (16 latent channels, patch 2, depth 1) that the stock loaders detect as SD3."""
    import_comfy()
    from safetensors.torch import save_file

    import comfy.ldm.modules.diffusionmodules.mmdit as mmdit
    import comfy.ops

    net = mmdit.MMDiT(input_size=None, patch_size=2, in_channels=16, out_channels=16, depth=1, num_patches=32 * 32,
                      pos_embed_max_size=32, adm_in_channels=FLOW_POOLED, context_embedder_config={
                          "target": "torch.nn.Linear", "params": {"in_features": FLOW_CONTEXT, "out_features": 64}},
                      qk_norm=None, operations=comfy.ops.manual_cast, dtype=torch.float32)
    _reset(net, seed)
    sd = {f"model.diffusion_model.{k}": v.contiguous() for k, v in net.state_dict().items()}
    save_file(sd, str(path))
    return path


def flow_conditioning(batch: int = 1, seed: int = 1, tokens: int = 4):
    g = torch.Generator().manual_seed(seed)
    return [[torch.randn(batch, tokens, FLOW_CONTEXT, generator=g), {"pooled_output": torch.randn(batch, FLOW_POOLED, generator=g)}]]
