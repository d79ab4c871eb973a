"""The benchmark's report: a markdown header (machine, versions, settings), one table row per (ours, baseline)
pair and case, and a footer judging the targets."""
from __future__ import annotations

import datetime
import math
import os
import re
import subprocess
from pathlib import Path

from measure import CFG, GUIDANCE, SCHEDULER, SEED, CaseResult

REPO = Path(__file__).resolve().parents[1]
TARGET = {"cpu": 1.05, "cuda": 1.01}


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
