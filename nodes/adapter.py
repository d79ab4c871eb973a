"""Glue between ComfyUI's sampling and ``guidance.GuidanceRun``: a pre-CFG hook plus an OUTER_SAMPLE wrapper.

The hook goes through ComfyUI's own ``sampling_function``, so every other pack's pre/post-CFG hooks and
``sampler_cfg_function`` keep working. It is *prepended* to the pre-CFG list: the norm is always measured on
the model's raw predictions, whatever other patches do afterwards. The wrapper opens a fresh run per
``guider.sample`` call (cached guiders and models never mix runs; a cancelled run is dropped), wraps the
sampler callback (once per schedule step, with its index) and keeps each finished run's trace with a small
fingerprint of its output, so the curve node can tell which run a latent came from.

Importing this module needs no ComfyUI; ``patch_model`` and the sampler check import it when called.
"""
from __future__ import annotations

import copy
import functools
import inspect
import logging
import math
import uuid
import weakref
from collections import deque
from dataclasses import dataclass
from typing import Optional

import torch

from ..guidance import GuidanceRun, GuidanceSettings, NonFiniteGuidance, Trace
from .live import LiveCurve, live_curve

log = logging.getLogger("memsafe_cfg")
WRAPPER_KEY = "memsafe_cfg"
HANDLE_KEY = "memsafe_cfg_handle"
RECENT = 8  # finished runs kept per patched model (a fingerprint and a trace each: a few KB)
PROBES = 256  # values a fingerprint samples from a latent


def _flat(latent) -> tuple[tuple[tuple[int, ...], ...], torch.Tensor]:
    """(each latent's shape, the values as [B, N]) for a tensor or a nested tensor of several latents (ComfyUI's
    ``NestedTensor``: ``is_nested`` and ``unbind()``), in the order ``comfy.utils.pack_latents`` packs them."""
    if getattr(latent, "is_nested", False):
        parts = list(latent.unbind())
        return tuple(tuple(p.shape) for p in parts), torch.cat([p.reshape(p.shape[0], -1) for p in parts], dim=1)
    return (tuple(latent.shape),), latent.reshape(latent.shape[0], -1)


@dataclass(frozen=True)
class Fingerprint:
    """Enough of a latent to tell runs apart, whatever its size: its shape(s), dtype, ``PROBES`` values at fixed
    evenly spaced positions, and its sum and L1 norm. Computed on the device once per run; its host copy comes
    with the run's one transfer (``GuidanceRun.finish(carry=...)``)."""

    shapes: tuple[tuple[int, ...], ...]
    dtype: torch.dtype
    probes: torch.Tensor  # float32 [<= PROBES], on the CPU
    total: float
    magnitude: float

    @classmethod
    def of(cls, latent, shapes: Optional[list] = None) -> "Fingerprint":
        """``shapes``: the packed latents' shapes when ``latent`` is ComfyUI's flat pack ([B, 1, N])."""
        own, dtype, values = cls.measure(latent, shapes)
        return cls.from_host(own, dtype, values.cpu())

    @staticmethod
    def measure(latent, shapes: Optional[list] = None) -> tuple[tuple, torch.dtype, torch.Tensor]:
        """(shapes, dtype, float32 [probes + 2] on the latent's device): the part computed where the latent is."""
        own, flat = _flat(latent.detach() if torch.is_tensor(latent) else latent)
        if shapes is not None and len(shapes) > 1:
            own = tuple(tuple(s) for s in shapes)
        values = flat.reshape(-1)
        at = torch.linspace(0, max(values.numel() - 1, 0), min(PROBES, values.numel()), device=values.device).long()
        sums = torch.stack((values.sum(dtype=torch.float32), torch.linalg.vector_norm(values, 1, dtype=torch.float32)))
        return own, values.dtype, torch.cat((values[at].float(), sums))

    @classmethod
    def from_host(cls, shapes: tuple, dtype: torch.dtype, host: torch.Tensor) -> "Fingerprint":
        return cls(shapes, dtype, host[:-2].float(), float(host[-2]), float(host[-1]))

    @property
    def nbytes(self) -> int:
        """Bytes kept for this run (the probes; the rest is a few Python numbers)."""
        return self.probes.numel() * self.probes.element_size() + 8 * (2 + sum(len(s) for s in self.shapes))

    def distance(self, other: "Fingerprint") -> float:
        """0 for the same latent; inf when shapes or probed values differ (values compared in ``other``'s dtype,
        so a latent cast after sampling, e.g. to ComfyUI's intermediate dtype, still matches its run)."""
        if self.shapes != other.shapes or not torch.equal(self.probes.to(other.dtype).float(), other.probes):
            return math.inf
        return abs(self.total - other.total) / max(self.magnitude, other.magnitude, 1e-30)


def bind_sample_args(guider, args: tuple, kwargs: dict) -> inspect.BoundArguments:
    """The arguments of ``guider.outer_sample`` by name (noise, latent_image, sampler, sigmas, ..., callback,
    latent_shapes on newer ComfyUI), whatever was passed by position."""
    return inspect.signature(guider.outer_sample).bind(*args, **kwargs)


def follows_sigma(sampler) -> bool:
    """dpm_fast and dpm_adaptive: their callbacks ignore the schedule, so the run places evaluations by sigma.
    Recognised by identity: ComfyUI's own k-diffusion functions, or the code of ``comfy.samplers.ksampler``'s
    wrappers for those names (a new closure per call, always the same code object)."""
    fn = getattr(sampler, "sampler_function", None)
    if fn is None:
        return False
    functions, codes = _off_schedule()
    return fn in functions or getattr(fn, "__code__", None) in codes


_SCHEDULES: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()  # model_sampling -> (buffer versions, host copy)


def _version(b: torch.Tensor):
    """A buffer's in-place version; an inference tensor (a model loaded while ComfyUI executes a prompt, under
    ``torch.inference_mode``) tracks none, so its identity stands in: a schedule set anew replaces its buffers."""
    return ("inference", id(b), b.data_ptr()) if b.is_inference() else b._version


def host_sampling(model_sampling):
    """A copy of ComfyUI's ``model_sampling`` with its buffers (the noise schedule) on the host, so that the
    run's ``percent_to_sigma`` and ``timestep`` calls read no device: on a loaded model each of those calls is a
    device -> host read inside ComfyUI (``.item()``, ``.to(sigma.device)``). Copied once per schedule object and
    kept while it lives (one transfer for all its floating buffers; none when they are already on the host), so
    a run reads nothing here. A schedule changed in place (its buffers' versions) is copied again."""
    if not isinstance(model_sampling, torch.nn.Module):
        return model_sampling  # no buffers to copy
    buffers = dict(model_sampling.named_buffers())
    versions = tuple(_version(b) for b in buffers.values())
    cached = _SCHEDULES.get(model_sampling)
    if cached is not None and cached[0] == versions:
        return cached[1]
    floats = [b for b in buffers.values() if b.is_floating_point()]
    memo = {}
    if floats:
        host = torch.cat([b.detach().reshape(-1).double() for b in floats]).cpu()  # the one transfer
        for b, part in zip(floats, host.split([b.numel() for b in floats])):
            memo[id(b)] = part.to(b.dtype).reshape(b.shape)
    for b in buffers.values():
        if id(b) not in memo:
            memo[id(b)] = b.detach().cpu()
    copy_ = copy.deepcopy(model_sampling, memo)
    _SCHEDULES[model_sampling] = (versions, copy_)
    return copy_


@functools.cache
def _off_schedule() -> tuple[tuple, frozenset]:
    """(ComfyUI's dpm_fast / dpm_adaptive functions, the code objects of ``ksampler``'s wrappers for them)."""
    import comfy.k_diffusion.sampling as kd
    import comfy.samplers

    names = ("dpm_fast", "dpm_adaptive")
    return (kd.sample_dpm_fast, kd.sample_dpm_adaptive), frozenset(comfy.samplers.ksampler(n).sampler_function.__code__ for n in names)


class MemSafeHandle:
    """The guidance attached to one patched model: its settings, its live curve and its recent finished runs."""

    def __init__(self, settings: GuidanceSettings, node_id: Optional[str] = None):
        self.settings = settings
        self.node_id = node_id
        self.run_key = f"memsafe_cfg_run_{uuid.uuid4().hex}"
        self.recent: deque[tuple[Fingerprint, Trace]] = deque(maxlen=RECENT)
        self.live: Optional[LiveCurve] = live_curve(node_id)
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
        call = bind_sample_args(guider, args, kwargs)
        sampler, sigmas = call.arguments["sampler"], call.arguments["sigmas"]
        model_sampling = host_sampling(guider.model_patcher.get_model_object("model_sampling"))
        host_sigmas = sigmas.detach().float().cpu()  # the caller's schedule: on the host (KSampler, the schedulers)
        timesteps = model_sampling.timestep(host_sigmas[:-1]).float().tolist()
        stream = self.live.open() if self.live is not None else None
        run = GuidanceRun(self.settings, host_sigmas.tolist(), timesteps, model_sampling.percent_to_sigma,
                          on_step=stream.step if stream is not None else None, follow_sigma=follows_sigma(sampler),
                          device=getattr(guider.model_patcher, "load_device", None))
        call.arguments["callback"] = _wrap_callback(call.arguments.get("callback"), run)
        guider.model_options.setdefault("transformer_options", {})[self.run_key] = run
        try:
            output = executor(*call.args, **call.kwargs)
        finally:
            guider.model_options["transformer_options"].pop(self.run_key, None)
        shapes, dtype, probe = Fingerprint.measure(output, call.arguments.get("latent_shapes"))
        try:
            trace = run.finish(meta={"node_id": self.node_id or ""}, carry=probe)  # the fingerprint rides along
        except NonFiniteGuidance as e:
            if stream is not None:
                stream.fail(str(e))
            raise
        if stream is not None:
            stream.end(trace)
        self.recent.append((Fingerprint.from_host(shapes, dtype, run.carried), trace))
        return output

    def trace_for(self, samples) -> Trace:
        """The trace of the run whose output is ``samples`` (a tensor or a nested tensor of packed latents); the
        latest run if none matches."""
        if not self.recent:
            raise ValueError("No sampling run has used this memorization-safe guidance yet: connect the sampler's "
                             "output LATENT to this node so it runs after sampling.")
        if samples is not None:
            wanted, best, found = Fingerprint.of(samples), math.inf, None
            for fp, trace in reversed(self.recent):  # newest first: on equal distance the latest run wins
                distance = fp.distance(wanted)
                if distance < best:
                    best, found = distance, trace
            if found is not None:
                return found
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
    import comfy.patcher_extension

    handle = MemSafeHandle(settings, node_id)
    m = model.clone()
    m.model_options["sampler_pre_cfg_function"] = [handle.pre_cfg] + list(m.model_options.get("sampler_pre_cfg_function", []))
    if not settings.off:
        m.model_options["disable_cfg1_optimization"] = True
    m.model_options.setdefault("transformer_options", {})[HANDLE_KEY] = handle
    m.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.OUTER_SAMPLE, WRAPPER_KEY, handle.outer_sample)
    return m, handle


def find_handle(model=None, guider=None) -> MemSafeHandle:
    """The handle of a patched MODEL or of a GUIDER built on one (also after the guider swapped its patcher for a
    clone, as ComfyUI 0.33's CFGGuider does with a dynamic-VRAM model's non-dynamic delegate: clones share the handle)."""
    for obj in (guider, model):
        if obj is None:
            continue
        patcher = getattr(obj, "model_patcher", obj)
        handle = getattr(patcher, "model_options", {}).get("transformer_options", {}).get(HANDLE_KEY)
        if handle is not None:
            return handle
    raise ValueError("guider / model: neither input carries memorization-safe guidance; connect the GUIDER from "
                     "'CFG Guider (Memorization-Safe)' or the MODEL from 'CFG Model Patch (Memorization-Safe)'.")
