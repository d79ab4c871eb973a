"""MemSafeCFGGuider: a stock CFGGuider over a memorization-safe patched model, for SamplerCustomAdvanced."""
from __future__ import annotations

import comfy.samplers
from comfy_api.latest import io

from .adapter import patch_model
from .common import CATEGORY, SEARCH_ALIASES, node_id, GUIDE, PAPER, guidance_inputs, schema_extras, settings_from, validate


class MemSafeCFGGuider(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="MemSafeCFGGuider",
            display_name="CFG Guider (Memorization-Safe)",
            category=CATEGORY,
            description=f"CFG guider that avoids reproducing training images. {PAPER} Use with SamplerCustomAdvanced; "
                        f"connect its GUIDER and output LATENT to 'Guidance Norm Curve' to see the switch. {GUIDE}",
            inputs=[
                io.Model.Input("model", tooltip="The diffusion model (eps, v or flow prediction)."),
                io.Conditioning.Input("positive", tooltip="The prompt conditioning."),
                io.Conditioning.Input("negative", tooltip="The unconditional / negative conditioning."),
                io.Float.Input("cfg", default=7.5, min=0.0, max=100.0, step=0.1, round=0.01,
                               tooltip="CFG scale after the transition (the paper uses 7.5)."),
                *guidance_inputs(),
            ],
            outputs=[io.Guider.Output(tooltip="A CFG guider over the memorization-safe patched model: connect it to "
                                              "SamplerCustomAdvanced, and to 'Guidance Norm Curve' to see each switch.")],
            hidden=[io.Hidden.unique_id],
            **schema_extras(search_aliases=[*SEARCH_ALIASES, "guider", "cfg guider"]),
        )

    @classmethod
    def validate_inputs(cls, **kwargs):
        return validate(kwargs)

    @classmethod
    def execute(cls, model, positive, negative, cfg, **guidance) -> io.NodeOutput:
        patched, _ = patch_model(model, settings_from(guidance), node_id=node_id(cls))
        guider = comfy.samplers.CFGGuider(patched)
        guider.set_conds(positive, negative)
        guider.set_cfg(cfg)
        return io.NodeOutput(guider)
