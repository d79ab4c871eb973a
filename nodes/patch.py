"""MemSafeCFGPatch: MODEL -> MODEL, so the stock KSampler and other packs' samplers get the same guidance."""
from __future__ import annotations

from comfy_api.latest import io

from .adapter import patch_model
from .common import CATEGORY, SEARCH_ALIASES, node_id, GUIDE, PAPER, guidance_inputs, schema_extras, settings_from, validate


class MemSafeCFGPatch(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="MemSafeCFGPatch",
            display_name="CFG Model Patch (Memorization-Safe)",
            category=CATEGORY,
            description=f"Patches a model with memorization-safe guidance; cfg comes from the sampler. {PAPER} "
                        "Chains with other CFG patches (the norm is measured on the raw predictions) and always runs "
                        f"the unconditional pass, even at cfg 1. {GUIDE}",
            inputs=[io.Model.Input("model", tooltip="The diffusion model to patch (eps, v or flow prediction)."), *guidance_inputs()],
            outputs=[io.Model.Output(tooltip="The model with memorization-safe guidance: use it in any sampler (cfg "
                                             "comes from the sampler), and in 'Guidance Norm Curve' to see each switch.")],
            hidden=[io.Hidden.unique_id],
            **schema_extras(search_aliases=[*SEARCH_ALIASES, "model patch", "cfg patch"]),
        )

    @classmethod
    def validate_inputs(cls, **kwargs):
        return validate(kwargs)

    @classmethod
    def execute(cls, model, **guidance) -> io.NodeOutput:
        patched, _ = patch_model(model, settings_from(guidance), node_id=node_id(cls))
        return io.NodeOutput(patched)
