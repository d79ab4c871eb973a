"""Glue between ComfyUI's sampling and ``guidance.GuidanceRun``: a pre-CFG hook plus an OUTER_SAMPLE wrapper.

The hook goes through ComfyUI's own ``sampling_function``, so every other pack's pre/post-CFG hooks and
``sampler_cfg_function`` keep working. It is *prepended* to the pre-CFG list: the norm is always measured on
the model's raw predictions, whatever other patches do afterwards. The wrapper opens a fresh run per
``guider.sample`` call (cached guiders and models never mix runs; a cancelled run is dropped) and wraps the
sampler callback, which fires once per schedule step with its index.
"""
from __future__ import annotations

import logging
import uuid
from collections import deque
from typing import Callable, Optional

import torch

import comfy.patcher_extension

from ..guidance import GuidanceRun, GuidanceSettings, Trace
from .live import step_listener

log = logging.getLogger("memsafe_cfg")
WRAPPER_KEY = "memsafe_cfg"
HANDLE_KEY = "memsafe_cfg_handle"
RECENT = 8
# k-diffusion samplers whose callbacks do not follow the schedule: their evaluations are placed by sigma (a host
# read of sigma per call, for these two only)
OFF_SCHEDULE = ("dpm_fast_function", "dpm_adaptive_function")


class MemSafeHandle:
    """The guidance attached to one patched model: its settings and its recent finished runs."""

    def __init__(self, settings: GuidanceSettings, node_id: Optional[str] = None):
        self.settings = settings
        self.node_id = node_id
        self.run_key = f"memsafe_cfg_run_{uuid.uuid4().hex}"
        self.recent: deque[tuple[torch.Tensor, Trace]] = deque(maxlen=RECENT)
        self.on_step: Optional[Callable[[GuidanceRun, int], None]] = None
        self.warned_no_run = False

    def __deepcopy__(self, memo):
        return self  # ModelPatcher.clone deep-copies model_options: every clone shares this handle and its runs

    # -- per model evaluation ------------------------------------------------------------------
    def pre_cfg(self, args: dict) -> list:
        out = args["conds_out"]
        run = args["model_options"].get("transformer_options", {}).get(self.run_key)
        if run is None or len(out) < 2:
            if not self.warned_no_run:
                log.warning("Memorization-safe CFG: called outside a guider.sample run; passing CFG through unchanged.")
                self.warned_no_run = True
            return out
        measured = args["conds"][1] is not None  # None: stock's cfg-1 shortcut skipped the uncond pass (mode off)
        cond, uncond = run.combine(out[0], out[1], args["sigma"], float(args["cond_scale"]), measured=measured)
        return [cond, uncond] + list(out[2:])

    # -- per sampling run ----------------------------------------------------------------------
    def outer_sample(self, executor, *args, **kwargs):
        guider = executor.class_obj
        args = list(args)
        sigmas = args[3] if len(args) > 3 else kwargs["sigmas"]
        model_sampling = guider.model_patcher.get_model_object("model_sampling")
        host_sigmas = sigmas.detach().float().cpu()  # once per run, before any step
        timesteps = model_sampling.timestep(host_sigmas[:-1]).float().tolist()
        sampler_fn = getattr(getattr(args[2] if len(args) > 2 else kwargs.get("sampler"), "sampler_function", None), "__name__", "")
        run = GuidanceRun(self.settings, host_sigmas.tolist(), timesteps, model_sampling.percent_to_sigma,
                          on_step=self.on_step, follow_sigma=sampler_fn in OFF_SCHEDULE)
        guider.model_options.setdefault("transformer_options", {})[self.run_key] = run

        if len(args) > 5:
            args[5] = _wrap_callback(args[5], run)
        else:
            kwargs["callback"] = _wrap_callback(kwargs.get("callback"), run)
        try:
            output = executor(*args, **kwargs)
        finally:
            guider.model_options["transformer_options"].pop(self.run_key, None)
        trace = run.finish(meta={"node_id": self.node_id or ""})
        finished = getattr(self.on_step, "finished", None)  # the live curve's run-end message (nodes/live.py)
        if finished is not None:
            finished(run, trace)
        self.recent.append((output.detach().to("cpu", copy=True), trace))
        return output

    def trace_for(self, samples: Optional[torch.Tensor]) -> Trace:
        """The trace of the run whose output is ``samples``; the latest run if none matches."""
        if not self.recent:
            raise ValueError("No sampling run has used this memorization-safe guidance yet: connect the sampler's "
                             "output LATENT to this node so it runs after sampling.")
        if samples is not None:
            for out, trace in reversed(self.recent):
                if out.shape == samples.shape and torch.equal(out, samples.to(out.device, out.dtype)):
                    return trace
            log.warning("Memorization-safe CFG: the latent matches no recent run of this guidance; showing the latest run.")
        return self.recent[-1][1]


def _wrap_callback(callback, run: GuidanceRun):
    def step_done(step, x0, x, total_steps):
        run.end_step(step)
        if callback is not None:
            return callback(step, x0, x, total_steps)
    return step_done


def patch_model(model, settings: GuidanceSettings, node_id: Optional[str] = None):
    """Clone ``model`` with memorization-safe guidance; returns (patched model, handle)."""
    handle = MemSafeHandle(settings, node_id)
    handle.on_step = step_listener(handle)
    m = model.clone()
    m.model_options["sampler_pre_cfg_function"] = [handle.pre_cfg] + list(m.model_options.get("sampler_pre_cfg_function", []))
    if not settings.off:
        m.model_options["disable_cfg1_optimization"] = True
    m.model_options.setdefault("transformer_options", {})[HANDLE_KEY] = handle
    m.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.OUTER_SAMPLE, WRAPPER_KEY, handle.outer_sample)
    return m, handle


def find_handle(model=None, guider=None) -> MemSafeHandle:
    """The handle of a patched MODEL or of a GUIDER built on one."""
    for obj in (guider, model):
        if obj is None:
            continue
        patcher = getattr(obj, "model_patcher", obj)
        handle = getattr(patcher, "model_options", {}).get("transformer_options", {}).get(HANDLE_KEY)
        if handle is not None:
            return handle
    raise ValueError("guider / model: neither input carries memorization-safe guidance; connect the GUIDER from "
                     "'Memorization-Safe CFG Guider' or the MODEL from 'Memorization-Safe CFG (model patch)'.")
