"""The real ComfyUI stack for host tests and the benchmark: load modules by path, import ComfyUI from COMFYUI_PATH
on CPU, build tiny real models, and watch a run from outside the pack. Tests and bench/ import it as ``host``.

- ``load_module`` / ``load_pack``: the one loader by file path (the pack as package ``memsafe_cfg``, as ComfyUI does).
- ``tiny_eps_model``: an SD1.5-shaped UNet with 32 channels (eps; ``prediction="v"`` for the v variant), built in
  process through ComfyUI's own BaseModel and ModelPatcher.
- ``tiny_flow_checkpoint``: an SD3-shaped MMDiT (depth 1); ``tiny_wan_checkpoint``: a Wan 2.1 video DiT (5-D
  latents); both saved as .safetensors and loaded by the stock loaders. ``build_kind``: eps / v / flow / video.
- ``Probe``: a run observed through ComfyUI's own extension points.

Weights come from a seed at build time (``init_weights``); nothing is committed.
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


def load_module(name: str, path: Path, package: bool = False):
    """The module at ``path`` under ``name`` in sys.modules (once). ``package``: ``path`` is a package's
    ``__init__.py`` and its folder is searched for submodules."""
    if name not in sys.modules:
        where = [str(Path(path).parent)] if package else None
        spec = importlib.util.spec_from_file_location(name, path, submodule_search_locations=where)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        try:
            spec.loader.exec_module(module)
        except BaseException:
            del sys.modules[name]
            raise
    return sys.modules[name]


def load_pack():
    """Import the repo as package ``memsafe_cfg``, as ComfyUI does, without putting the repo root on sys.path
    (the pack's ``nodes/`` folder must never shadow ComfyUI's ``nodes``)."""
    return load_module(PACKAGE, REPO / "__init__.py", package=True)


def import_comfy(device: str = "cpu"):
    """Put ComfyUI on sys.path and select the device (``cpu``, or ``cuda`` for the benchmark) before
    comfy.model_management is imported (after that, the first choice stands)."""
    if COMFYUI_PATH in sys.path:
        sys.path.remove(COMFYUI_PATH)
    sys.path.insert(0, COMFYUI_PATH)  # ahead of the checkout, which pytest may have put first (see below)
    from comfy.cli_args import args

    if "comfy.model_management" not in sys.modules:
        args.cpu = device == "cpu"
    import comfy.model_management  # noqa: F401
    import comfy.sample  # noqa: F401
    import comfy.samplers  # noqa: F401
    # ComfyUI's nodes.py, now: pytest puts the checkout's own folder on sys.path when that folder's name is not an
    # identifier (a clone named ComfyUI-MemSafe-CFG), and a later `import nodes` would find the pack's nodes/.
    import nodes

    if Path(nodes.__file__).resolve() != (Path(COMFYUI_PATH) / "nodes.py").resolve():
        raise ImportError(f"'nodes' resolved to {nodes.__file__}, not ComfyUI's nodes.py; import ComfyUI first")
    return sys.modules["comfy"]


def init_weights(module: torch.nn.Module, seed: int) -> None:
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
    init_weights(model.diffusion_model, seed)
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
    init_weights(net, seed)
    sd = {f"model.diffusion_model.{k}": v.contiguous() for k, v in net.state_dict().items()}
    save_file(sd, str(path))
    return path


def flow_conditioning(batch: int = 1, seed: int = 1, tokens: int = 4):
    g = torch.Generator().manual_seed(seed)
    return [[torch.randn(batch, tokens, FLOW_CONTEXT, generator=g), {"pooled_output": torch.randn(batch, FLOW_POOLED, generator=g)}]]


# -- a video model, and the model kinds of the matrix and the fault tests ------------------------------------------
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
    init_weights(net, seed)
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
    torch.set_num_threads(1)
    if name in ("eps", "v"):
        return Kind(name, tiny_eps_model(prediction=name), eps_conditioning(1, 1), eps_conditioning(1, 2), (4, 8, 8))
    if name == "flow":
        return Kind(name, load_tiny_flow(tmp_dir), flow_conditioning(1, 1), flow_conditioning(1, 2), (16, 8, 8))
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
