"""MemSafeGuidanceCurve: the guidance-norm curve (and optionally the saved trace) of a finished run."""
from __future__ import annotations

import os

import folder_paths
from comfy_api.latest import io, ui

from ..guidance import render_curves
from .adapter import find_handle
from .common import CATEGORY, DENOISED_NOTE, GUIDE, PAPER, SEARCH_ALIASES, TRACE, schema_extras


def write_trace(trace, filename_prefix: str) -> str:
    """Write the trace under ComfyUI's output folder; a prefix that escapes it is refused."""
    out_dir = folder_paths.get_output_directory()
    try:
        folder, name, counter, _, _ = folder_paths.get_save_image_path(filename_prefix, out_dir)
    except Exception as e:  # ComfyUI raises a bare Exception for paths outside the output folder
        raise ValueError(f"filename_prefix: '{filename_prefix}' points outside ComfyUI's output folder; "
                         "use a relative name such as 'memsafe/trace'.") from e
    path = os.path.join(folder, f"{name}_{counter:05}_.safetensors")
    if os.path.commonpath((os.path.abspath(out_dir), os.path.abspath(path))) != os.path.abspath(out_dir):
        raise ValueError(f"filename_prefix: '{filename_prefix}' points outside ComfyUI's output folder.")
    os.makedirs(folder, exist_ok=True)
    trace.save(path)
    return path


class MemSafeGuidanceCurve(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="MemSafeGuidanceCurve",
            display_name="Guidance Norm Curve",
            category=CATEGORY,
            description=f"Draws the guidance-norm curve of a memorization-safe run: where each sample left the "
                        f"attraction basin and switched to CFG. {PAPER} {GUIDE}",
            inputs=[
                io.Latent.Input("latent", tooltip="The sampler's output LATENT: orders this node after sampling and picks "
                                                  "that run's trace when the guidance served several samplers."),
                io.Guider.Input("guider", optional=True, tooltip="The GUIDER from 'CFG Guider (Memorization-Safe)'."),
                io.Model.Input("model", optional=True, tooltip="The MODEL from 'CFG Model Patch (Memorization-Safe)'."),
                io.Combo.Input("layout", options=["panels", "overlay"], default="panels",
                               tooltip="panels: one image per sample (image i pairs with latent i); overlay: all in one."),
                io.Boolean.Input("save_trace", default=False,
                                 tooltip="Also save the trace (.safetensors, settings in its metadata) under the output folder."),
                io.String.Input("filename_prefix", default="memsafe/trace",
                                tooltip="Where the trace goes, relative to ComfyUI's output folder."),
                io.Boolean.Input("show_denoised", default=False, optional=True,
                                 tooltip=DENOISED_NOTE + " The image is then twice as wide: norm left, d x sigma right."),
            ],
            outputs=[io.Image.Output(display_name="curve",
                                     tooltip="The guidance-norm curve of the run that produced this latent: the shaded "
                                             "part is before the switch, the diamond marks each sample's switch step; with "
                                             "show_denoised, d x sigma is drawn to the right of it."),
                     TRACE.Output(display_name="trace",
                                  tooltip="Per step and sample: sigmas, timesteps, guidance norms, applied scales, switch "
                                          "steps, detection flags and the settings.")],
            is_output_node=True,
            **schema_extras(search_aliases=[*SEARCH_ALIASES, "guidance norm", "curve", "plot", "trace"]),
        )

    @classmethod
    def execute(cls, latent, layout, save_trace, filename_prefix, guider=None, model=None, show_denoised=False) -> io.NodeOutput:
        trace = find_handle(model=model, guider=guider).trace_for(latent["samples"])
        if save_trace:
            write_trace(trace, filename_prefix)
        curve = render_curves(trace, layout, denoised=show_denoised)
        return io.NodeOutput(curve, trace, ui=ui.PreviewImage(curve, cls=cls))
