"""MemSafeKSampler: the stock KSampler with memorization-safe guidance; returns the latent, the curve and the trace."""
from __future__ import annotations

import comfy.samplers
import nodes as comfy_nodes  # ComfyUI's nodes.py (this pack is imported as a package: no shadowing)
from comfy_api.latest import io, ui

from ..guidance import render_curves
from .adapter import patch_model
from .common import (CATEGORY, DENOISED_NOTE, SEARCH_ALIASES, node_id, GUIDE, PAPER, TRACE, guidance_inputs, schema_extras,
                     settings_from, validate)


class MemSafeKSampler(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="MemSafeKSampler",
            display_name="CFG KSampler (Memorization-Safe)",
            category=CATEGORY,
            description=f"KSampler with memorization-safe guidance and the guidance-norm curve as an IMAGE. {PAPER} {GUIDE}",
            inputs=[
                io.Model.Input("model", tooltip="The model used for denoising the input latent."),
                io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF, control_after_generate=True,
                             tooltip="The random seed used for creating the noise."),
                io.Int.Input("steps", default=20, min=1, max=10000, tooltip="The number of sampling steps."),
                io.Float.Input("cfg", default=7.5, min=0.0, max=100.0, step=0.1, round=0.01,
                               tooltip="CFG scale after the transition (the paper uses 7.5)."),
                io.Combo.Input("sampler_name", options=comfy.samplers.KSampler.SAMPLERS, tooltip="The sampling algorithm."),
                io.Combo.Input("scheduler", options=comfy.samplers.KSampler.SCHEDULERS, tooltip="The noise schedule."),
                io.Conditioning.Input("positive", tooltip="The prompt conditioning."),
                io.Conditioning.Input("negative", tooltip="The unconditional / negative conditioning."),
                io.Latent.Input("latent_image", tooltip="The latent image to denoise."),
                io.Float.Input("denoise", default=1.0, min=0.0, max=1.0, step=0.01,
                               tooltip="How much of the schedule to run (1.0 = from pure noise)."),
                *guidance_inputs(),
                io.Combo.Input("curve_layout", options=["panels", "overlay"], default="panels", optional=True,
                               tooltip="panels: one curve image per sample (image i pairs with latent i); overlay: one image."),
                io.Boolean.Input("curve_denoised", default=False, optional=True,
                                 tooltip=DENOISED_NOTE + " The curve image is then twice as wide: norm left, d x sigma right."),
            ],
            outputs=[io.Latent.Output(display_name="LATENT", tooltip="The denoised latent (decode it with VAE Decode)."),
                     io.Image.Output(display_name="curve",
                                     tooltip="The guidance-norm curve, one panel per sample (image i pairs with latent i): "
                                             "the shaded part is before the switch, the diamond marks the switch step; with "
                                             "curve_denoised, d x sigma is drawn to the right of it."),
                     TRACE.Output(display_name="trace",
                                  tooltip="Per step and sample: sigmas, timesteps, guidance norms, applied scales, switch "
                                          "steps, detection flags and the settings (the curve node can save it).")],
            hidden=[io.Hidden.unique_id],
            **schema_extras(search_aliases=[*SEARCH_ALIASES, "ksampler", "sampler"]),
        )

    @classmethod
    def validate_inputs(cls, **kwargs):
        return validate(kwargs)

    @classmethod
    def execute(cls, model, seed, steps, cfg, sampler_name, scheduler, positive, negative, latent_image, denoise=1.0,
                curve_layout="panels", curve_denoised=False, **guidance) -> io.NodeOutput:
        patched, handle = patch_model(model, settings_from(guidance), node_id=node_id(cls))
        (latent,) = comfy_nodes.common_ksampler(patched, seed, steps, cfg, sampler_name, scheduler, positive, negative,
                                                latent_image, denoise=denoise)
        trace = handle.trace_for(latent["samples"])
        curve = render_curves(trace, curve_layout, denoised=curve_denoised)
        return io.NodeOutput(latent, curve, trace, ui=ui.PreviewImage(curve, cls=cls))
