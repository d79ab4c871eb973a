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
import os
import sys
import time
from pathlib import Path
from typing import Optional

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "bench"), str(REPO / "tests")]  # bench's modules and tests/host.py (tiny models, loader)

import host  # noqa: E402
from measure import Case, run_case  # noqa: E402
from models import build_model  # noqa: E402
from report import footer, header, table  # noqa: E402

MISSING = "bench: COMFYUI_PATH is unset or not a ComfyUI checkout; set COMFYUI_PATH=/path/to/ComfyUI and rerun."
SAMPLERS = ["euler", "dpmpp_2m", "heun"]
CONFIGS = {  # name -> (models as (model, latent side), batches); GPU sets run batch 1 of every model before batch 4
    "cpu": ([("eps-tiny", 8), ("flow-tiny", 8)], [1, 4]),
    "gpu": ([("sd15", 64), ("sdxl", 128)], [1, 4]),
    "gpu-all": ([("sd15", 64), ("sdxl", 128), ("sd15", 128), ("sdxl", 64)], [1, 4]),
}


def comfy_available() -> bool:
    path = os.environ.get("COMFYUI_PATH", "")
    return bool(path) and (Path(path) / "comfy" / "samplers.py").is_file()


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
    comfy = host.import_comfy(args.device)
    host.load_pack()
    device = comfy.model_management.get_torch_device()
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
