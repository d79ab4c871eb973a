"""Measuring one benchmark case: four arms (stock CFGGuider, MemSafeCFGGuider, stock KSampler path, the same
over MemSafeCFGPatch) on one model, noise, seed, sampler and schedule; a warm-up/count round (model evaluations,
CUDA host syncs per run and per step), then timed rounds in rotating order (wall time, process CPU time, peak
memory above each run's start)."""
from __future__ import annotations

import math
import re
import statistics
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from models import SEED, Model

CFG, SCHEDULER = 7.5, "normal"
GUIDANCE = dict(guidance_before=-2.0, transition="dynamic", switch_percent=0.5, earliest_percent=0.0,
                latest_percent=0.5, detect_threshold=0.0)
STOCK_G, OURS_G, STOCK_K, OURS_K = "stock CFGGuider", "MemSafeCFGGuider", "stock KSampler", "KSampler + MemSafeCFGPatch"
PAIRS = [(OURS_G, STOCK_G), (OURS_K, STOCK_K)]


class EvalCounter:
    """model_function_wrapper counting UNet forwards; every arm runs through it."""

    def __init__(self):
        self.n = 0

    def __deepcopy__(self, memo):
        return self  # ModelPatcher.clone deep-copies model_options: every clone must count into this one

    def __call__(self, apply_model, args):
        self.n += 1
        return apply_model(args["input"], args["timestep"], **args["c"])


def _status_kb(key: str) -> int:
    return int(re.search(rf"{key}:\s+(\d+)", Path("/proc/self/status").read_text()).group(1))


class Memory:
    """Peak memory of one run above its start: CUDA max allocated, or peak RSS (VmHWM reset via clear_refs)."""

    def __init__(self, device):
        self.device = device
        self.kind = "CUDA alloc" if device.type == "cuda" else "RSS"
        if device.type != "cuda":
            try:
                Path("/proc/self/clear_refs").write_text("5")
            except OSError:
                self.kind = None

    def start(self) -> float:
        import torch
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            return torch.cuda.memory_allocated()
        if self.kind:
            Path("/proc/self/clear_refs").write_text("5")
            return _status_kb("VmRSS") * 1024.0
        return math.nan

    def peak(self, base: float) -> float:
        import torch
        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated() - base
        return _status_kb("VmHWM") * 1024.0 - base if self.kind else math.nan


@contextmanager
def sync_capture(device):
    """CUDA: record the warnings of torch.cuda.set_sync_debug_mode('warn'); elsewhere yields None."""
    if device.type != "cuda":
        yield None
        return
    import torch
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            yield rec
        finally:
            torch.cuda.set_sync_debug_mode(0)


def _syncs(rec) -> int:
    return sum("synchroniz" in str(w.message) for w in rec)


@dataclass
class Case:
    model: str
    side: int
    batch: int
    sampler: str
    steps: int


@dataclass
class Arm:
    times: list = field(default_factory=list)
    cpu: list = field(default_factory=list)  # process CPU time: immune to neighbours on a shared CPU machine
    peaks: list = field(default_factory=list)
    evals: int = 0
    syncs: Optional[int] = None
    step_syncs: Optional[float] = None
    finite: bool = True


@dataclass
class CaseResult:
    case: Case
    arms: dict
    device: str
    stock_paths_diff: float = 0.0  # max |stock CFGGuider - stock KSampler| output: the two baselines sample alike
    note: str = ""

    def rows(self) -> list[dict]:
        """One comparison per (ours, baseline) pair."""
        out = []
        for ours, base in PAIRS:
            o, b = self.arms[ours], self.arms[base]
            ratios = [x / y for x, y in zip(o.times, b.times)]
            cpu_ratios = [x / y for x, y in zip(o.cpu, b.cpu) if y > 0]
            diffs = [x - y for x, y in zip(o.times, b.times)]
            med = lambda v: statistics.median(v) if v else math.nan  # noqa: E731
            out.append(dict(
                ours=ours, base=base, ratio=med(ratios), ratio_min=min(ratios, default=math.nan),
                ratio_max=max(ratios, default=math.nan), cpu_ratio=med(cpu_ratios),
                cpu_min_ratio=min(o.cpu) / min(b.cpu) if o.cpu and min(b.cpu) > 0 else math.nan,
                cpu_ms_per_step=med([x - y for x, y in zip(o.cpu, b.cpu)]) * 1000 / self.case.steps, ms_per_step=med(diffs) * 1000 / self.case.steps,
                evals=o.evals, base_evals=b.evals,
                syncs=None if o.syncs is None else o.syncs - b.syncs,
                step_syncs=None if o.step_syncs is None else o.step_syncs - b.step_syncs,
                mem_mb=(med(o.peaks) - med(b.peaks)) / 2**20, reps=len(ratios), finite=o.finite and b.finite))
        return out


def make_arms(model: Model, case: Case, counter: EvalCounter) -> dict:
    """The four arms as callables ``f(callback) -> samples``, all on one counting clone of the model."""
    import torch

    import comfy.sample
    import comfy.samplers
    from memsafe_cfg.nodes.guider import MemSafeCFGGuider
    from memsafe_cfg.nodes.patch import MemSafeCFGPatch

    base = model.patcher.clone()
    base.set_model_unet_function_wrapper(counter)
    pos, neg = model.cond(case.batch, 1), model.cond(case.batch, 2)
    latent = torch.zeros(case.batch, model.channels, case.side, case.side)
    noise = comfy.sample.prepare_noise(latent, SEED)
    sigmas = comfy.samplers.calculate_sigmas(base.get_model_object("model_sampling"), SCHEDULER, case.steps)
    sampler = comfy.samplers.sampler_object(case.sampler)
    stock = comfy.samplers.CFGGuider(base)
    stock.set_conds(pos, neg)
    stock.set_cfg(CFG)
    ours = MemSafeCFGGuider.execute(base, pos, neg, CFG, **GUIDANCE).args[0]
    patched = MemSafeCFGPatch.execute(base, **GUIDANCE).args[0]

    def guided(g):
        return lambda cb=None: g.sample(noise, latent, sampler, sigmas, callback=cb, disable_pbar=True, seed=SEED)

    def ksampler(m):
        return lambda cb=None: comfy.sample.sample(m, noise, case.steps, CFG, case.sampler, SCHEDULER, pos, neg, latent,
                                                   callback=cb, disable_pbar=True, seed=SEED)
    return {STOCK_G: guided(stock), OURS_G: guided(ours), STOCK_K: ksampler(base), OURS_K: ksampler(patched)}


def count_round(arms: dict, counter: EvalCounter, device, capture=sync_capture) -> tuple[dict, dict]:
    """Warm-up round: model evaluations, host syncs per run and per step (CUDA), finiteness; returns (arms, outputs)."""
    import torch
    result, outputs = {}, {}
    for name, fn in arms.items():
        counter.n, marks = 0, []
        with capture(device) as rec:
            cb = (lambda i, x0, x, total: marks.append(_syncs(rec))) if rec is not None else None
            out = fn(cb)
            syncs = None if rec is None else _syncs(rec)
        if device.type == "cuda":
            torch.cuda.synchronize()
        step = (marks[-1] - marks[0]) / (len(marks) - 1) if len(marks) > 1 else None
        result[name] = Arm(evals=counter.n, syncs=syncs, step_syncs=step, finite=bool(torch.isfinite(out).all()))
        outputs[name] = out.detach().float().cpu()
    return result, outputs


def run_case(model: Model, case: Case, reps: int, device, deadline: Optional[float] = None) -> CaseResult:
    """Warm-up/count round, then ``reps`` timed rounds in rotating order (fewer if the deadline is near)."""
    import torch
    counter, mem = EvalCounter(), Memory(device)
    arms = make_arms(model, case, counter)
    t0 = time.perf_counter()
    stats, outputs = count_round(arms, counter, device)
    round_s = time.perf_counter() - t0
    note = ""
    if deadline is not None:
        fit = int((deadline - time.perf_counter()) // max(round_s, 1e-9))
        if fit < reps:
            reps, note = max(fit, 1 if fit >= 1 else 0), f"reps cut to {max(fit, 0)} by --budget-s"
    names = list(arms)
    for r in range(reps):
        k = r % len(names)
        for name in names[k:] + names[:k]:
            base = mem.start()
            c, t = time.process_time(), time.perf_counter()
            arms[name]()
            if device.type == "cuda":
                torch.cuda.synchronize()
            stats[name].times.append(time.perf_counter() - t)
            stats[name].cpu.append(time.process_time() - c)
            stats[name].peaks.append(mem.peak(base))
    diff = float((outputs[STOCK_G] - outputs[STOCK_K]).abs().max())
    return CaseResult(case, stats, device.type, diff, note)
