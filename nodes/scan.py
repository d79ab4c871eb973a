"""MemSafeMemorizationScan: rank a prompt list by memorization risk and calibrate detect_threshold.

The model plumbing only: prompts go through the CLIP as CLIPTextEncode does, each seed's noise is drawn as
comfy.sample.prepare_noise draws it, and cond / uncond are evaluated by comfy.samplers.calc_cond_batch inside a stock
CFGGuider's sample() (model loading, patches, hooks and wrappers of other packs apply as in any sampler). The scores,
the calibration, the report and the chart are guidance/scan.py.
"""
from __future__ import annotations

import logging
import time

import torch

import comfy.model_management
import comfy.sample
import comfy.samplers
import comfy.utils
from comfy_api.latest import io, ui

from ..guidance import scan as S
from .common import CATEGORY, GUIDE, NORM_NOTE, PAPER, schema_extras

log = logging.getLogger(__name__)
ALIGN_STEPS = 50  # Asthana and Belagiannis: the third-to-last timestep of a 50-step schedule
SCAN_PAPERS = ("Detection after Wen et al., ICLR 2024 (\"Detecting, Explaining, and Mitigating Memorization in Diffusion "
               "Models\": the guidance magnitude at the first step, averaged over seeds) and, for 'norm + alignment', Asthana "
               "and Belagiannis, ICLR 2026 (\"Detecting and Mitigating Memorization in Diffusion Models through Anisotropy of "
               "the Log-Probability\"). " + PAPER)


def prompt_lines(text) -> list[str]:
    """One prompt per line; blank lines and surrounding spaces ignored."""
    return [ln.strip() for ln in str(text or "").splitlines() if ln.strip()]


def check(prompts, seeds_per_prompt, clean_prompts="", false_positive_rate=None, memorized_prompts="",
          score="norm") -> list[str]:
    """Every input error, each naming its input and the fix (empty: fine). Runs before any model work."""
    errs = []
    scan, clean, mem = prompt_lines(prompts), prompt_lines(clean_prompts), prompt_lines(memorized_prompts)
    if prompts is not None and not scan:
        errs.append("prompts: the list is empty; enter one prompt per line.")
    total = len(scan) + len(clean) + len(mem)
    if total > S.MAX_PROMPTS:
        errs.append(f"prompts: {total} prompts in all (prompts {len(scan)}, clean_prompts {len(clean)}, memorized_prompts "
                    f"{len(mem)}) is more than {S.MAX_PROMPTS}; split the list into several scans.")
    if seeds_per_prompt is not None and (not isinstance(seeds_per_prompt, int) or seeds_per_prompt < 1):
        errs.append(f"seeds_per_prompt: {seeds_per_prompt} is not a positive whole number; use 1 or more (Wen et al. average 4-10).")
    if false_positive_rate is not None and not 0.0 <= float(false_positive_rate) <= 1.0:
        errs.append(f"false_positive_rate: {false_positive_rate} is outside 0..1; use e.g. 0.05 for 5 %.")
    elif clean and (false_positive_rate is None or not 0.0 < float(false_positive_rate) < 1.0):
        errs.append(f"false_positive_rate: {false_positive_rate} is outside (0, 1) but clean_prompts is given; set a rate such "
                    "as 0.05 (5 % of clean samples flagged), or empty clean_prompts.")
    if mem and not clean:
        errs.append("memorized_prompts: fitting the alignment weight needs clean_prompts as well; add known-clean prompts.")
    if score is not None and score not in S.SCORES:
        errs.append(f"score: '{score}' is not one of {', '.join(S.SCORES)}.")
    return errs


def probe_sigmas(model_sampling, scheduler: str, steps: int, alignment: bool):
    """(first sigma of `scheduler` at `steps`, the third-to-last non-zero sigma of its 50-step schedule or None,
    the schedule itself for the hooks that read sample_sigmas)."""
    sched = comfy.samplers.calculate_sigmas(model_sampling, scheduler, steps).float().cpu()
    low = None
    if alignment:
        s50 = comfy.samplers.calculate_sigmas(model_sampling, scheduler, ALIGN_STEPS).float().cpu()
        nz = s50[s50 > 0]
        low = float(nz[-3]) if len(nz) >= 3 else float(nz[-1])
    return float(sched[0]), low, sched


class _Probe(comfy.samplers.Sampler):
    """A 'sampler' that only evaluates cond and uncond on pure noise at the probe sigmas, through
    comfy.samplers.calc_cond_batch (or a model's sampler_calc_cond_batch_function, as sampling_function honours it)
    with the guider's processed conds and model options, and keeps the results."""

    def __init__(self, first_sigma: float, low_sigma):
        self.first_sigma, self.low_sigma, self.results, self.calls = first_sigma, low_sigma, [], 0

    def evaluate(self, model_wrap, x, sigma, extra_args):
        conds, options = model_wrap.conds, extra_args["model_options"]
        pair = [conds.get("positive"), conds.get("negative")]
        with torch.no_grad():  # as sampling_function does it, minus the CFG: the raw predictions
            if "sampler_calc_cond_batch_function" in options:
                args = {"conds": pair, "input": x, "sigma": sigma, "model": model_wrap.inner_model, "model_options": options}
                cond_den, uncond_den = options["sampler_calc_cond_batch_function"](args)[:2]
            else:
                cond_den, uncond_den = comfy.samplers.calc_cond_batch(model_wrap.inner_model, pair, x, sigma, options)
        self.calls += 1
        return cond_den.detach().float().cpu(), uncond_den.detach().float().cpu()

    def sample(self, model_wrap, sigmas, extra_args, callback, noise, latent_image=None, denoise_mask=None, disable_pbar=False):
        ms = model_wrap.inner_model.model_sampling
        B = noise.shape[0]
        ones = noise.new_ones([B])
        # First step: x exactly as KSAMPLER builds it from the noise at sigmas[0].
        s0 = torch.tensor(self.first_sigma, device=noise.device, dtype=sigmas.dtype)
        first = torch.stack([s0, s0.new_zeros(())])
        x = ms.noise_scaling(s0, noise, latent_image, self.max_denoise(model_wrap, first))
        c, u = self.evaluate(model_wrap, x, s0 * ones, extra_args)
        out = {"norm": S.norm_score(c, u, self.first_sigma)}
        if self.low_sigma is not None:
            # Alignment: the same unit noise is what the network sees (x * c_in = noise), at the low sigma.
            sl = torch.tensor(self.low_sigma, device=noise.device, dtype=sigmas.dtype) * ones
            x = noise / ms.calculate_input(sl, torch.ones_like(noise))
            c, u = self.evaluate(model_wrap, x, sl, extra_args)
            out["alignment"] = S.alignment_score(x.float().cpu(), c, u, self.low_sigma)
        self.results.append(out)
        return latent_image


def seed_noise(latent: torch.Tensor, seeds) -> torch.Tensor:
    """One noise tensor per seed, each as KSampler draws it for a batch-1 latent with that seed."""
    return torch.cat([comfy.sample.prepare_noise(latent[:1], int(s)) for s in seeds])


def evaluate(model, positive, negative, latent: torch.Tensor, seeds, first_sigma: float, low_sigma, schedule) -> tuple[dict, int]:
    """Scores of one prompt (CONDITIONING) over the seeds: {'norm': [S], 'alignment': [S]?} and the number of
    calc_cond_batch calls. Seeds go in one batch; on out-of-memory the batch is halved and retried."""
    noise_all = seed_noise(latent, seeds)
    chunk, parts, calls = len(seeds), [], 0
    start = 0
    while start < len(seeds):
        n = min(chunk, len(seeds) - start)
        probe = _Probe(first_sigma, low_sigma)
        guider = comfy.samplers.CFGGuider(model)
        guider.set_conds(positive, negative)
        guider.set_cfg(1.0)
        try:
            guider.sample(noise_all[start:start + n], torch.zeros_like(noise_all[start:start + n]), probe, schedule,
                          disable_pbar=True, seed=int(seeds[start]))
        except comfy.model_management.OOM_EXCEPTION:
            if n == 1:
                raise
            chunk = max(1, n // 2)
            log.warning("memorization scan: out of memory at %d seeds per batch, retrying with %d", n, chunk)
            comfy.model_management.soft_empty_cache()
            continue
        parts.append(probe.results[0])
        calls += probe.calls
        start += n
    return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}, calls


def encode(clip, text: str):
    """What the stock CLIPTextEncode node returns for this text."""
    return clip.encode_from_tokens_scheduled(clip.tokenize(text))


def empty_latent(model, width: int, height: int, latent=None) -> torch.Tensor:
    """A zero latent of the scan's shape: the LATENT's (only its shape is used: the scan starts from pure noise),
    else an Empty Latent Image of width x height fitted to the model's latent format as the samplers fit it."""
    if latent is not None:
        samples = latent["samples"]
        return torch.zeros_like(samples[:1], device="cpu", dtype=torch.float32)
    return comfy.sample.fix_empty_latent_channels(model, torch.zeros([1, 4, height // 8, width // 8]))


SCAN_ALIASES = ["memorization", "memorized", "copy", "training data", "regurgitation", "audit", "detect memorization",
                "fine-tune audit", "detect_threshold", "wen", "memsafe"]


class MemSafeMemorizationScan(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="MemSafeMemorizationScan",
            display_name="Memorization Scan",
            category=CATEGORY,
            description=("Ranks a list of prompts by memorization risk (which prompts of a fine-tune regurgitate training "
                         "images) and calibrates detect_threshold from prompts known to be clean. Per prompt and seed, one "
                         "cond + uncond evaluation on pure noise at the first step of the schedule gives the guidance norm; "
                         "'norm + alignment' adds one more at a low-noise step for the cosine between the unconditional "
                         "prediction and the guidance vector. " + SCAN_PAPERS + " " + GUIDE),
            inputs=[
                io.Model.Input("model", tooltip="The model to audit (a checkpoint, a fine-tune, a LoRA-patched model)."),
                io.Clip.Input("clip", tooltip="The text encoder that belongs to the model; prompts are encoded as CLIPTextEncode does."),
                io.String.Input("prompts", multiline=True, default="",
                                tooltip="The prompts to scan, one per line (blank lines ignored), e.g. your fine-tune's training captions."),
                io.String.Input("negative", multiline=True, default="",
                                tooltip="The negative / unconditional prompt (empty = the unconditional prompt, as Wen et al. use)."),
                io.Int.Input("seeds_per_prompt", default=8, min=1, max=256,
                             tooltip="Noise seeds per prompt; the score is their mean and the chart shows their spread. "
                                     "One cond + uncond evaluation per seed (two with 'norm + alignment')."),
                io.Int.Input("first_seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF,
                             tooltip="The scan uses first_seed, first_seed + 1, ... for every prompt (same noise for all "
                                     "prompts). Not called 'seed': the front end would add a randomize-after-generate "
                                     "control to it, and a scan must be repeatable."),
                io.Int.Input("width", default=512, min=16, max=16384, step=8,
                             tooltip="Image width in pixels (as Empty Latent Image); ignored when a latent is connected."),
                io.Int.Input("height", default=512, min=16, max=16384, step=8,
                             tooltip="Image height in pixels (as Empty Latent Image); ignored when a latent is connected."),
                io.Combo.Input("scheduler", options=comfy.samplers.KSampler.SCHEDULERS, default="normal",
                               tooltip="The scheduler of the sampler you will feed detect_threshold to: the norm is measured at "
                                       "its first sigma (sigma_max for normal, simple, karras; ddim_uniform starts lower)."),
                io.Int.Input("steps", default=20, min=1, max=10000,
                             tooltip="The steps of that sampler (only ddim_uniform-like schedulers' first sigma depends on it)."),
                io.Combo.Input("score", options=list(S.SCORES), default="norm",
                               tooltip="norm: the guidance norm at the first step (Wen et al.; the value detect_threshold uses). "
                                       "norm + alignment: adds cosine(eps_u, eps_c - eps_u) at a low-noise step (Asthana & "
                                       "Belagiannis), one more evaluation per seed. " + NORM_NOTE),
                io.String.Input("clean_prompts", multiline=True, default="", optional=True,
                                tooltip="Prompts known NOT to be memorized, one per line: they set the threshold at "
                                        "false_positive_rate. Empty: no threshold (detect_threshold 0)."),
                io.Float.Input("false_positive_rate", default=0.05, min=0.0, max=1.0, step=0.01, optional=True,
                               tooltip="Share of the clean prompts' samples allowed at or above the threshold, in (0, 1); "
                                       "needed with clean_prompts."),
                io.String.Input("memorized_prompts", multiline=True, default="", optional=True,
                                tooltip="Prompts known to be memorized, one per line (needs clean_prompts): with 'norm + "
                                        "alignment' the weight of the alignment is fitted on them (grid search maximising "
                                        "the AUC memorized vs clean); always shown apart in the chart and report."),
                io.Latent.Input("latent", optional=True,
                                tooltip="Optional: take the latent size from this LATENT instead of width and height "
                                        "(only its shape is used; the scan starts from pure noise)."),
            ],
            outputs=[
                io.Image.Output(display_name="chart", tooltip="One box per prompt, highest risk first: the seeds' spread, the "
                                "mean, the threshold line; clean and known-memorized references drawn apart."),
                io.String.Output(display_name="report", tooltip="Plain text: rank, mean score, spread, flagged seeds and prompt, "
                                 "then the references, the threshold and the cost."),
                io.Float.Output(display_name="detect_threshold", tooltip="The guidance-norm threshold at false_positive_rate "
                                "from the clean prompts (0 without them): connect it to a Memorization-Safe node's "
                                "detect_threshold (same scheduler and steps)."),
            ],
            is_output_node=True,
            **schema_extras(search_aliases=SCAN_ALIASES),
        )

    @classmethod
    def validate_inputs(cls, prompts=None, seeds_per_prompt=None, score=None, clean_prompts="", false_positive_rate=None,
                        memorized_prompts=""):
        # Named inputs only (no **kwargs), so ComfyUI still range-checks the others (width, height, steps, scheduler).
        errs = check(prompts, seeds_per_prompt, clean_prompts, false_positive_rate, memorized_prompts, score)
        return " ".join(errs) if errs else True

    @classmethod
    def execute(cls, model, clip, prompts, negative, seeds_per_prompt, first_seed, width, height, scheduler, steps, score,
                clean_prompts="", false_positive_rate=0.05, memorized_prompts="", latent=None) -> io.NodeOutput:
        errs = check(prompts, seeds_per_prompt, clean_prompts, false_positive_rate, memorized_prompts, score)
        if errs:
            raise ValueError(" ".join(errs))
        if clip is None:
            raise ValueError("clip: no text encoder connected; connect the CLIP of the model's checkpoint loader.")
        jobs = ([(p, "scan") for p in prompt_lines(prompts)] + [(p, "clean") for p in prompt_lines(clean_prompts)]
                + [(p, "memorized") for p in prompt_lines(memorized_prompts)])
        t0 = time.perf_counter()
        pbar = comfy.utils.ProgressBar(2 * len(jobs))  # encoding, then scoring
        neg = encode(clip, negative)
        conds = []
        for i, (text, _) in enumerate(jobs):  # all text is encoded (a prompt the encoder rejects fails) before the model runs
            comfy.model_management.throw_exception_if_processing_interrupted()
            conds.append(encode(clip, text))
            pbar.update_absolute(i + 1, 2 * len(jobs))
        zero = empty_latent(model, width, height, latent)
        ms = model.get_model_object("model_sampling")
        first, low, sched = probe_sigmas(ms, scheduler, steps, score != "norm")
        seeds = [(first_seed + k) % 2 ** 64 for k in range(seeds_per_prompt)]  # the seed widget's range wraps
        items, calls = [], 0
        for i, ((text, kind), cond) in enumerate(zip(jobs, conds)):
            comfy.model_management.throw_exception_if_processing_interrupted()
            out, n = evaluate(model, cond, neg, zero, seeds, first, low, sched)
            calls += n
            items.append(S.PromptScore(text, out["norm"], out.get("alignment"), kind=kind))
            pbar.update_absolute(len(jobs) + i + 1, 2 * len(jobs))
        seconds = time.perf_counter() - t0
        rate = float(false_positive_rate) if prompt_lines(clean_prompts) else None
        res = S.calibrate(items, score, rate, numel=zero[0].numel())
        probes = 1 if low is None else 2
        cost = (f"cost: {len(jobs)} prompts x {len(seeds)} seeds x {probes} probe(s) = {len(jobs) * len(seeds) * probes} "
                f"cond + uncond evaluations in {calls} batched calls, {seconds:.1f} s; first sigma {first:.4g} "
                f"({scheduler}, {steps} steps)" + (f", alignment sigma {low:.4g}" if low is not None else ""))
        text = S.report(res, cost)
        chart = S.render_scan(res)
        return io.NodeOutput(chart, text, float(res.norm_threshold),
                             ui={**ui.PreviewImage(chart, cls=cls).as_dict(), "text": (text,)})


NODES = [MemSafeMemorizationScan]
