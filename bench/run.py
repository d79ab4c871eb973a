"""No-extra-cost benchmark (issue 6): stock CFG against memorization-safe CFG, in one process, interleaved.

    COMFYUI_PATH=/path/to/ComfyUI python bench/run.py [--device cpu|cuda] [--config cpu|gpu|gpu-all] [--tiny]
        [--reps N] [--steps N] [--models a,b] [--batches 1,4] [--samplers euler,heun] [--budget-s S] [--out FILE.md]

Four arms sample the same model, noise, seed, sampler, schedule and step count:
  stock CFGGuider | MemSafeCFGGuider (dynamic, guidance_before=-2) | stock KSampler path (comfy.sample.sample) |
  the same KSampler path over MemSafeCFGPatch.
Each guider is compared with the stock guider, the patch with the stock KSampler path (which does more per run
than a bare guider: building a KSampler, its sigmas, moving the result to the intermediate device).
Round 0 is the warm-up and counts model evaluations, host synchronisations (CUDA) and per-step syncs; rounds
1..N are timed, in rotating order. Prints a markdown table and writes it to --out.
"""
from __future__ import annotations

import argparse
import datetime
import importlib.util
import math
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

REPO = Path(__file__).resolve().parents[1]
PACKAGE = "memsafe_cfg"
MISSING = "bench: COMFYUI_PATH is unset or not a ComfyUI checkout; set COMFYUI_PATH=/path/to/ComfyUI and rerun."
CFG, SEED, SCHEDULER = 7.5, 0, "normal"
GUIDANCE = dict(guidance_before=-2.0, transition="dynamic", switch_percent=0.5, earliest_percent=0.0,
                latest_percent=0.5, detect_threshold=0.0)
STOCK_G, OURS_G, STOCK_K, OURS_K = "stock CFGGuider", "MemSafeCFGGuider", "stock KSampler", "KSampler + MemSafeCFGPatch"
PAIRS = [(OURS_G, STOCK_G), (OURS_K, STOCK_K)]
TARGET = {"cpu": 1.05, "cuda": 1.01}
SAMPLERS = ["euler", "dpmpp_2m", "heun"]
CONFIGS = {  # name -> (models as (model, latent side), batches); GPU sets run batch 1 of every model before batch 4
    "cpu": ([("eps-tiny", 8), ("flow-tiny", 8)], [1, 4]),
    "gpu": ([("sd15", 64), ("sdxl", 128)], [1, 4]),
    "gpu-all": ([("sd15", 64), ("sdxl", 128), ("sd15", 128), ("sdxl", 64)], [1, 4]),
}

# ComfyUI's own SD1.5 / SDXL UNet shapes (detected as such by comfy.model_detection); --tiny shrinks the widths.
SD15_UNET = dict(use_checkpoint=False, image_size=32, out_channels=4, use_spatial_transformer=True, legacy=False,
                 adm_in_channels=None, in_channels=4, model_channels=320, num_res_blocks=[2, 2, 2, 2],
                 transformer_depth=[1, 1, 1, 1, 1, 1, 0, 0], channel_mult=[1, 2, 4, 4], transformer_depth_middle=1,
                 use_linear_in_transformer=False, context_dim=768, num_heads=8,
                 transformer_depth_output=[1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0],
                 use_temporal_attention=False, use_temporal_resblock=False)
SDXL_UNET = dict(use_checkpoint=False, image_size=32, out_channels=4, use_spatial_transformer=True, legacy=False,
                 num_classes="sequential", adm_in_channels=2816, in_channels=4, model_channels=320,
                 num_res_blocks=[2, 2, 2], transformer_depth=[0, 0, 2, 2, 10, 10], channel_mult=[1, 2, 4],
                 transformer_depth_middle=10, use_linear_in_transformer=True, context_dim=2048, num_head_channels=64,
                 transformer_depth_output=[0, 0, 0, 2, 2, 2, 10, 10, 10],
                 use_temporal_attention=False, use_temporal_resblock=False)
TINY = {"sd15": dict(model_channels=32, num_res_blocks=[1, 1], transformer_depth=[1, 1], channel_mult=[1, 2],
                     transformer_depth_output=[1, 1, 1, 1]),
        "sdxl": dict(model_channels=64, num_res_blocks=[1, 1], transformer_depth=[0, 1], channel_mult=[1, 2],
                     transformer_depth_middle=1, transformer_depth_output=[0, 0, 1, 1])}


# -- loading ---------------------------------------------------------------------------------------------------
def comfy_available() -> bool:
    path = os.environ.get("COMFYUI_PATH", "")
    return bool(path) and (Path(path) / "comfy" / "samplers.py").is_file()


def load_pack():
    """Import the repo as package ``memsafe_cfg``, the way the tests do (tests/host.py)."""
    return load_host().load_pack()


def load_host():
    """tests/host.py (tiny models, conditioning), loaded by path under a private name."""
    name = "memsafe_bench_host"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, REPO / "tests" / "host.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def import_comfy(device: str):
    """Put ComfyUI on sys.path and pick CPU or CUDA before comfy.model_management is imported."""
    path = os.environ["COMFYUI_PATH"]
    if path not in sys.path:
        sys.path.insert(0, path)
    from comfy.cli_args import args

    if "comfy.model_management" not in sys.modules:
        args.cpu = device == "cpu"
    import comfy.model_management as mm
    import comfy.sample  # noqa: F401
    import comfy.samplers  # noqa: F401
    return mm


# -- models -----------------------------------------------------------------------------------------------------
@dataclass
class Model:
    name: str
    patcher: object
    channels: int
    cond: Callable[[int, int], list]  # (batch, seed) -> CONDITIONING
    keep: object = None  # keeps a temporary directory alive


def _unet_model(name: str, device, tiny: bool) -> Model:
    import torch

    import comfy.model_detection
    import comfy.model_patcher
    import comfy.supported_models
    mm = sys.modules["comfy.model_management"]
    unet = dict(SD15_UNET if name == "sd15" else SDXL_UNET)
    if tiny:
        unet.update(TINY[name])
        config = (comfy.supported_models.SD15 if name == "sd15" else comfy.supported_models.SDXL)(unet)
    else:
        config = comfy.model_detection.model_config_from_unet_config(unet)
        want = "SD15" if name == "sd15" else "SDXL"
        if type(config).__name__ != want:
            raise RuntimeError(f"ComfyUI detected {type(config).__name__} for the {want} UNet config.")
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    config.set_inference_dtype(dtype, None)
    model = config.get_model({}, device=device)
    load_host()._reset(model.diffusion_model, SEED)
    model.eval()
    patcher = comfy.model_patcher.ModelPatcher(model, load_device=device, offload_device=mm.unet_offload_device())
    ctx = unet["context_dim"]

    def cond(batch: int, seed: int) -> list:
        g = torch.Generator().manual_seed(seed)
        extra = {} if name == "sd15" else {"pooled_output": torch.randn(batch, 1280, generator=g), "width": 1024, "height": 1024}
        return [[torch.randn(batch, 77, ctx, generator=g), extra]]
    return Model(name + ("-tiny" if tiny else ""), patcher, 4, cond)


def build_model(name: str, device, tiny: bool = False) -> Model:
    """eps-tiny / flow-tiny (tests/host.py, CPU) or sd15 / sdxl (random weights through ComfyUI's model classes)."""
    if name in ("sd15", "sdxl"):
        return _unet_model(name, device, tiny)
    host = load_host()
    if name == "eps-tiny":
        return Model(name, host.tiny_eps_model(), 4, lambda b, s: host.eps_conditioning(b, s))
    if name == "flow-tiny":
        import comfy.sd
        keep = tempfile.TemporaryDirectory(prefix="memsafe-bench-")
        path = host.tiny_flow_checkpoint(Path(keep.name) / "tiny_sd3.safetensors")
        return Model(name, comfy.sd.load_diffusion_model(str(path)), 16, lambda b, s: host.flow_conditioning(b, s), keep)
    raise ValueError(f"--models: unknown model '{name}'; use eps-tiny, flow-tiny, sd15 or sdxl.")


# -- measuring --------------------------------------------------------------------------------------------------
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


# -- report -----------------------------------------------------------------------------------------------------
def _git(*args: str, cwd: Path) -> str:
    try:
        return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def comfy_version() -> str:
    path = Path(os.environ["COMFYUI_PATH"])
    commit = _git("rev-parse", "--short", "HEAD", cwd=path)
    if commit:
        return f"commit {commit}"
    m = re.search(r'__version__\s*=\s*"([^"]+)"', (path / "comfyui_version.py").read_text()) if (path / "comfyui_version.py").is_file() else None
    return f"version {m.group(1)} (no git checkout)" if m else "unknown version"


def machine(device) -> str:
    import torch
    cpu = "unknown CPU"
    try:
        cpu = re.search(r"model name\s*:\s*(.+)", Path("/proc/cpuinfo").read_text()).group(1).strip()
    except (OSError, AttributeError):
        pass
    cpu = f"{cpu}, {os.cpu_count()} logical cores, torch threads {torch.get_num_threads()}"
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (CUDA {torch.version.cuda}); host {cpu}"
    return cpu


def header(device, args) -> str:
    import torch
    pack = _git("rev-parse", "--short", "HEAD", cwd=REPO) or "unknown"
    dirty = " (+ uncommitted changes)" if _git("status", "--porcelain", "guidance", "nodes", cwd=REPO) else ""
    load = ""
    try:
        load = ", load average " + " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        pass
    g = ", ".join(f"{k}={v}" for k, v in GUIDANCE.items())
    return "\n".join([
        f"# No-extra-cost benchmark ({device.type})", "",
        f"- machine: {machine(device)}{load}",
        f"- torch {torch.__version__}; ComfyUI {comfy_version()}; pack commit {pack}{dirty}",
        f"- date: {datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}",
        f"- cfg {CFG}, scheduler {SCHEDULER}, seed {SEED}, {args.steps} steps, {args.reps} timed rounds after 1 "
        f"warm-up/count round, arms interleaved in rotating order; guidance: {g}",
        f"- command: `python bench/run.py {' '.join(args.argv)}`", ""])


def _f(v: float, fmt: str) -> str:
    return "n/a" if v is None or (isinstance(v, float) and not math.isfinite(v)) else format(v, fmt)


def judged(row: dict, device_type: str) -> float:
    """The ratio a target is judged on: wall time on CUDA, process CPU time on CPU (neighbours skew the wall clock)."""
    return row["ratio"] if device_type == "cuda" else row["cpu_ratio"]


def table(results: list[CaseResult], device_type: str) -> str:
    target, cpu = TARGET[device_type], device_type != "cuda"
    lines = [
        "| model | latent | batch | sampler | ours vs baseline | evals ours/stock | median wall ratio (min-max) | "
        + ("median CPU-time ratio (ratio of minima) | added ms/step wall / CPU | " if cpu else "added ms/step | ")
        + "added syncs/run (/step) | peak mem diff MB | target |",
        "|---|---|---|---|---|---|---|---|" + ("---|" if cpu else "") + "---|---|---|"]
    for res in results:
        c = res.case
        for row in res.rows():
            syncs = "n/a" if row["syncs"] is None else f"{row['syncs']:+d} ({_f(row['step_syncs'], '+.2f')})"
            ok = row["evals"] == row["base_evals"] and row["finite"] and row["reps"] > 0 and judged(row, device_type) <= target
            if not cpu:
                ok = ok and (row["step_syncs"] or 0) <= 0 and abs(row["mem_mb"]) <= 1.0
            added = (f"{_f(row['cpu_ratio'], '.3f')} ({_f(row['cpu_min_ratio'], '.3f')}) | "
                     f"{_f(row['ms_per_step'], '+.3f')} / {_f(row['cpu_ms_per_step'], '+.3f')}"
                     if cpu else _f(row["ms_per_step"], "+.3f"))
            lines.append(
                f"| {c.model} | {c.side}x{c.side} | {c.batch} | {c.sampler} | {row['ours']} vs {row['base']} | "
                f"{row['evals']}/{row['base_evals']} | {_f(row['ratio'], '.3f')} ({_f(row['ratio_min'], '.3f')}-"
                f"{_f(row['ratio_max'], '.3f')}) | {added} | {syncs} | {_f(row['mem_mb'], '+.2f')} | "
                f"{'ok' if ok else 'MISSED'}{'; ' + res.note if res.note else ''} |")
    return "\n".join(lines)


def footer(results: list[CaseResult], device_type: str, skipped: list[str]) -> str:
    rows = [r for res in results for r in res.rows()]
    ratios = [judged(r, device_type) for r in rows if math.isfinite(judged(r, device_type))]
    worst = max(ratios, default=math.nan)
    basis = "wall-time" if device_type == "cuda" else "process CPU-time"
    lines = ["", f"- target: median {basis} ratio <= {TARGET[device_type]}"
             + (", 0 added syncs per step, peak memory within 1 MB" if device_type == "cuda" else "")
             + f"; worst median {basis} ratio {_f(worst, '.3f')}; evals equal in every row: "
             f"{all(r['evals'] == r['base_evals'] for r in rows)}; all outputs finite: {all(r['finite'] for r in rows)}; "
             f"max |stock CFGGuider - stock KSampler| output: {max((r.stock_paths_diff for r in results), default=0.0):.3g}"]
    if device_type != "cuda":
        lines.append("- CPU time is the process's (torch uses 1 thread); ratio of minima: fastest ours / fastest stock run, "
                     "the least disturbed estimate on a shared machine. syncs: n/a on CPU (counted with "
                     "torch.cuda.set_sync_debug_mode on CUDA only). peak mem: RSS high-water mark above the run's start "
                     "(allocator-dependent, coarse)")
    if skipped:
        lines.append(f"- not run (time budget): {', '.join(skipped)}")
    return "\n".join(lines) + "\n"


# -- main -------------------------------------------------------------------------------------------------------
def cases_for(args) -> list[Case]:
    models, batches = CONFIGS[args.config]
    if args.models:
        names = args.models.split(",")
        models = [(m, s) for m, s in models if m in names] + [(m, 8 if "tiny" in m else 64) for m in names
                                                              if m not in {n for n, _ in models}]
    if args.tiny:
        models = list(dict.fromkeys((m, 8) for m, _ in models))
    batches = [int(b) for b in args.batches.split(",")] if args.batches else batches
    samplers = args.samplers.split(",") if args.samplers else SAMPLERS
    return [Case(m, side, b, s, args.steps) for b in batches for m, side in models for s in samplers]


def parse(argv: list[str]):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", choices=["cpu", "cuda"], default=None, help="default: cuda when available, else cpu")
    p.add_argument("--config", choices=list(CONFIGS), default=None, help="default: gpu on cuda or with --tiny, else cpu")
    p.add_argument("--tiny", action="store_true", help="tiny UNets (8x8 latents) in the sd15/sdxl code path, for CPU tests")
    p.add_argument("--reps", type=int, default=None, help="timed rounds (default 15 on cpu, 3 on cuda)")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--models", default="", help="comma list: eps-tiny, flow-tiny, sd15, sdxl")
    p.add_argument("--batches", default="")
    p.add_argument("--samplers", default="")
    p.add_argument("--budget-s", type=float, default=None, help="stop starting work after this many seconds")
    p.add_argument("--out", default="")
    args = p.parse_args(argv)
    args.argv = list(argv)
    return args


def main(argv: Optional[list[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not comfy_available():
        print(MISSING, file=sys.stderr)
        return 2
    args = parse(argv)
    import torch
    if args.device is None:
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.device == "cuda" and not torch.cuda.is_available():
        print("bench: --device cuda but torch sees no CUDA device; use --device cpu.", file=sys.stderr)
        return 2
    if args.device == "cpu":
        torch.set_num_threads(1)
    args.config = args.config or ("gpu" if args.device == "cuda" or args.tiny else "cpu")
    args.reps = args.reps if args.reps is not None else (3 if args.device == "cuda" else 15)
    start = time.perf_counter()
    deadline = start + args.budget_s if args.budget_s else None
    mm = import_comfy(args.device)
    load_pack()
    device = mm.get_torch_device()
    head = header(device, args)
    print(head, flush=True)
    results, skipped, models = [], [], {}
    for case in cases_for(args):
        label = f"{case.model}@{case.side} b{case.batch} {case.sampler}"
        if deadline is not None and time.perf_counter() > deadline:
            skipped.append(label)
            continue
        if case.model not in models:
            models[case.model] = build_model(case.model, device, args.tiny)
        results.append(run_case(models[case.model], case, args.reps, device, deadline))
        text = head + "\n" + table(results, device.type) + "\n" + footer(results, device.type, skipped)
        print(f"  done {label} ({time.perf_counter() - start:.0f} s)", file=sys.stderr, flush=True)
        if args.out:
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            Path(args.out).write_text(text)
    text = head + "\n" + table(results, device.type) + "\n" + footer(results, device.type, skipped)
    print(table(results, device.type) + "\n" + footer(results, device.type, skipped))
    if args.out:
        Path(args.out).write_text(text)
    print(f"bench: {len(results)} cases in {time.perf_counter() - start:.0f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
