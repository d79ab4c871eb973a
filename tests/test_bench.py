"""The no-extra-cost benchmark (bench/run.py) on tiny configurations: structure of its results, never timings."""
from __future__ import annotations

import importlib
import math
import types
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.host
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bench():
    """bench/'s modules (run, models, measure, report), imported as bench/run.py imports them; one namespace."""
    import host

    if str(REPO / "bench") not in sys.path:
        sys.path.insert(0, str(REPO / "bench"))
    host.import_comfy("cpu")
    host.load_pack()
    names = {}
    for module in ("models", "measure", "report", "run"):
        names.update({k: v for k, v in vars(importlib.import_module(module)).items() if not k.startswith("_")})
    return types.SimpleNamespace(**names)


@pytest.fixture(scope="module")
def cpu():
    import torch
    return torch.device("cpu")


def check_case(bench, res, evals: int):
    rows = res.rows()
    assert [(r["ours"], r["base"]) for r in rows] == bench.PAIRS
    for r in rows:
        assert r["evals"] == r["base_evals"] == evals
        assert r["reps"] >= 1 and r["finite"]
        for key in ("ratio", "ratio_min", "ratio_max", "cpu_ratio", "cpu_min_ratio", "ms_per_step", "mem_mb"):
            assert math.isfinite(r[key]), key
        assert r["ratio_min"] <= r["ratio"] <= r["ratio_max"] and r["ratio"] > 0
        assert r["syncs"] is None and r["step_syncs"] is None  # counted on CUDA only
    assert res.stock_paths_diff == 0.0  # stock guider and stock KSampler path sampled the same latent
    for arm in res.arms.values():
        assert len(arm.times) == len(arm.cpu) == len(arm.peaks) == rows[0]["reps"]


@pytest.mark.parametrize("sampler, evals", [("euler", 3), ("heun", 5)])
def test_tiny_eps_case_counts_every_forward(bench, cpu, sampler, evals):
    model = bench.build_model("eps-tiny", cpu)
    res = bench.run_case(model, bench.Case("eps-tiny", 8, 2, sampler, 3), reps=2, device=cpu)
    check_case(bench, res, evals)  # heun: 2 forwards per step but one on the last


def test_gpu_code_path_with_tiny_unets(bench, cpu):
    """--tiny: the sd15 / sdxl builders (ComfyUI's SD15 / SDXL model classes, random weights) sample on CPU."""
    for name in ("sd15", "sdxl"):
        model = bench.build_model(name, cpu, tiny=True)
        assert type(model.patcher.model).__name__ == ("BaseModel" if name == "sd15" else "SDXL")
        check_case(bench, bench.run_case(model, bench.Case(name, 8, 1, "euler", 2), reps=1, device=cpu), 2)


def test_full_size_unet_configs_are_sd15_and_sdxl(bench):
    """The GPU configurations are the real architectures: detected by ComfyUI, with the real parameter counts."""
    import torch

    import comfy.model_detection
    for unet, cls, params in ((bench.SD15_UNET, "SD15", 859_520_964), (bench.SDXL_UNET, "SDXL", 2_567_463_684)):
        config = comfy.model_detection.model_config_from_unet_config(dict(unet))
        assert type(config).__name__ == cls
        config.set_inference_dtype(torch.float16, None)
        model = config.get_model({}, device=torch.device("meta"))
        assert sum(p.numel() for p in model.diffusion_model.parameters()) == params


def test_main_writes_header_and_table(bench, tmp_path):
    out = tmp_path / "r" / "cpu.md"
    rc = bench.main(["--device", "cpu", "--models", "flow-tiny", "--batches", "1", "--samplers", "euler,dpmpp_2m",
                     "--steps", "2", "--reps", "1", "--out", str(out)])
    assert rc == 0
    text = out.read_text()
    for needle in ("- machine: ", "- torch ", "ComfyUI ", "- date: ", "| model | latent |"):
        assert needle in text, needle
    rows = [line for line in text.splitlines() if line.startswith("| flow-tiny ")]
    assert len(rows) == 4
    assert sum(f"{ours} vs {base}" in row for row in rows for ours, base in bench.PAIRS) == 4
    assert all("| 2/2 |" in row and "| n/a |" in row for row in rows)
    assert "evals equal in every row: True" in text


def test_budget_skips_cases_and_says_so(bench, tmp_path):
    out = tmp_path / "b.md"
    assert bench.main(["--device", "cpu", "--models", "eps-tiny", "--batches", "1", "--samplers", "euler",
                       "--budget-s", "1e-9", "--out", str(out)]) == 0
    assert "not run (time budget): eps-tiny@8 b1 euler" in out.read_text()


def test_table_judges_targets(bench):
    """A row passes only with equal evals, finite outputs and a median ratio within the target."""
    def result(ours_times, evals=(4, 4)):
        arms = {name: bench.Arm(times=[1.0] * 3, cpu=[1.0] * 3, peaks=[0.0] * 3, evals=evals[1]) for name in
                (bench.STOCK_G, bench.STOCK_K)}
        for name in (bench.OURS_G, bench.OURS_K):
            arms[name] = bench.Arm(times=list(ours_times), cpu=list(ours_times), peaks=[0.0] * 3, evals=evals[0])
        return bench.CaseResult(bench.Case("eps-tiny", 8, 1, "euler", 4), arms, "cpu")

    def verdicts(res):
        return [line.rsplit("|", 2)[1].strip() for line in bench.table([res], "cpu").splitlines()[2:]]
    assert verdicts(result([1.0, 1.01, 1.02])) == ["ok", "ok"]
    assert verdicts(result([1.2, 1.3, 0.9])) == ["MISSED", "MISSED"]
    assert verdicts(result([1.0, 1.0, 1.0], evals=(5, 4))) == ["MISSED", "MISSED"]
    row = result([1.2, 1.3, 0.9]).rows()[0]
    assert row["ratio"] == pytest.approx(1.2) and row["ratio_min"] == pytest.approx(0.9)
    assert row["ms_per_step"] == pytest.approx(200 / 4)


def test_count_round_counts_syncs_per_run_and_per_step(bench, cpu):
    """The CUDA sync arithmetic, fed by a stand-in for set_sync_debug_mode's warnings."""
    import contextlib
    import types

    import torch
    rec = []
    sync = types.SimpleNamespace(message="called a synchronizing CUDA operation")

    @contextlib.contextmanager
    def capture(device):
        rec.clear()
        yield rec

    def arm(extra_per_run, extra_per_step):
        def fn(cb):
            rec.extend([sync, types.SimpleNamespace(message="unrelated")])  # set-up: 1 sync
            for i in range(5):
                rec.extend([sync] * (2 + extra_per_step))
                cb(i, None, None, 5)
            rec.extend([sync] * (1 + extra_per_run))
            return torch.zeros(1)
        return fn
    stats, _ = bench.count_round({"stock": arm(0, 0), "ours": arm(3, 0), "chatty": arm(0, 1)}, bench.EvalCounter(), cpu,
                                 capture=capture)
    assert (stats["stock"].syncs, stats["stock"].step_syncs) == (1 + 10 + 1, 2.0)
    assert (stats["ours"].syncs, stats["ours"].step_syncs) == (1 + 10 + 4, 2.0)
    assert (stats["chatty"].syncs, stats["chatty"].step_syncs) == (1 + 15 + 1, 3.0)


def test_cuda_rows_judge_syncs_per_step_and_memory(bench):
    """GPU target: equal evals, ratio <= 1.01, no added sync per step (per run is fine), peak memory within 1 MB."""
    def verdict(step_syncs=2.0, peak=0.0, ratio=1.005):
        arms = {}
        for ours, base in bench.PAIRS:
            arms[base] = bench.Arm(times=[1.0], cpu=[1.0], peaks=[100.0], evals=4, syncs=12, step_syncs=2.0)
            arms[ours] = bench.Arm(times=[ratio], cpu=[ratio], peaks=[100.0 + peak], evals=4, syncs=14, step_syncs=step_syncs)
        lines = bench.table([bench.CaseResult(bench.Case("sd15", 64, 1, "euler", 4), arms, "cuda")], "cuda").splitlines()
        assert "| +2 (+" in lines[2]
        return lines[2].rsplit("|", 2)[1].strip()
    assert verdict() == "ok"
    assert verdict(step_syncs=3.0) == "MISSED"
    assert verdict(peak=2 * 2**20) == "MISSED"
    assert verdict(ratio=1.02) == "MISSED"


def test_missing_comfyui_path_is_one_clear_line():
    env = {k: v for k, v in os.environ.items() if k != "COMFYUI_PATH"}
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "run.py")], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0
    assert proc.stderr.strip().count("\n") == 0 and "COMFYUI_PATH" in proc.stderr
    assert proc.stdout == ""
