"""testbed/comfy_eval.py on the real ComfyUI stack, tiny config: the testbed's mitigation table through ComfyUI's own
samplers, with the pack applied through its CFG Model Patch node."""
from __future__ import annotations

import importlib
import json

import pytest
import torch

pytestmark = pytest.mark.host
SAMPLER, SCHEDULER, STEPS, CFG = "euler_ancestral", "normal", 6, 7.5  # ancestral: its noise stream is per seed too


@pytest.fixture(scope="module")
def ce(comfy):
    return importlib.import_module("memsafe_cfg.testbed.comfy_eval")


@pytest.fixture(scope="module")
def tb(ce):
    return importlib.import_module("memsafe_cfg.testbed.data").load()


@pytest.fixture(scope="module")
def model(ce):
    return ce.load_model()


@pytest.fixture(scope="module")
def report(ce, tmp_path_factory):
    """The script's main, one seed, one sampler, few steps, small calibrations."""
    import host

    out = tmp_path_factory.mktemp("comfy_eval") / "out.json"
    r = ce.main(["--comfyui", host.COMFYUI_PATH, "--seeds", "2", "--samplers", f"{SAMPLER}:{SCHEDULER}", "--steps", str(STEPS),
                 "--floor-seeds", "1", "--detect-seeds", "2", "--uncond-seeds", "4", "--json", str(out)])
    assert json.loads(out.read_text())["samplers"][0]["sampler"] == SAMPLER
    return r


def test_noise_is_the_testbed_noise_per_seed(ce):
    sampler = importlib.import_module("memsafe_cfg.testbed.sampler")
    seeds = [0, 3, 10000]
    assert torch.equal(ce.noise_of(seeds), sampler.noise_for(seeds))


def test_stock_equals_pack_off_bit_for_bit(ce, tb, model):
    """Stock CFG (the pack not in the MODEL) and the pack patched in with transition off: the same samples, bit for bit,
    through ComfyUI's ancestral sampler."""
    b = ce.Batch.of(tb, tb.memorized[:2] + tb.clean[:2], [0, 1])
    stock, none, _ = ce.run(model, b, None, SAMPLER, SCHEDULER, CFG, 4)
    off, trace, _ = ce.run(model, b, ce.G(transition="off"), SAMPLER, SCHEDULER, CFG, 4)
    assert none is None and trace.settings.off and trace.norms.shape == (4, len(b.seeds))
    assert torch.equal(stock, off)


def test_a_batch_is_one_ksampler_run_per_seed(ce, tb, model):
    """Sample i of a batched call = the stock KSampler node on a batch-1 latent with seed i (ComfyUI's own noise and
    ancestral noise stream for that seed); a batch-wide noise stream would differ by O(1)."""
    import nodes as comfy_nodes

    seeds = [5, 6]
    b = ce.Batch.of(tb, [tb.memorized[0]], seeds)
    x, _, _ = ce.run(model, b, None, SAMPLER, SCHEDULER, CFG, 4)
    neg = [[torch.zeros(1, 1, b.prompts.shape[1]), {}]]
    for i, s in enumerate(seeds):
        (one,) = comfy_nodes.common_ksampler(model, s, 4, CFG, SAMPLER, SCHEDULER, [[b.prompts[i:i + 1, None], {}]], neg,
                                             {"samples": torch.zeros(1, 1, 16, 16)})
        assert torch.allclose(x[i:i + 1], one["samples"].float(), atol=1e-4), (s, float((x[i] - one["samples"]).abs().max()))


def test_rows_per_level(report, tb, ce):
    (r,) = report["samplers"]
    assert [e["key"] for e in r["rows"]] == [k for k, _, _ in ce.ROWS]
    levels = {str(v) for v in tb.shares}
    for e in r["rows"]:
        assert set(e["levels"]) == levels | {"all"}
        for lv in levels:
            per = 2 * tb.shares.count(float(lv))  # prompts at this level x 2 seeds
            mem, clean = e["levels"][lv]["memorized"], e["levels"][lv]["clean"]
            assert mem["n"] == clean["n"] == per
            assert 0 <= mem["own_copies"] <= per and mem["own_copy_ci"][0] <= mem["own_copy_rate"] <= mem["own_copy_ci"][1]
            assert {"copy_rate", "align"} <= set(mem) and {"copy_rate", "align"} <= set(clean)
        assert e["levels"]["all"]["memorized"]["n"] == 2 * len(tb.memorized)


def test_calibration_seeds_are_disjoint_from_evaluation(report, ce, tb, model):
    (r,) = report["samplers"]
    evaluation = set(range(report["config"]["seeds_per_prompt"]))
    floor, detect = set(r["copy_floor"]["seeds"]), set(r["detection"]["seeds"])
    assert floor == {10000} and detect == {20000, 20001}
    assert not evaluation & floor and not evaluation & detect and not floor & detect
    unmemorized = 120 - len(tb.memorized)
    assert r["copy_floor"]["samples"] == unmemorized and r["copy_floor"]["exceed"] < 0.01
    with pytest.raises(ValueError, match="disjoint"):
        ce.evaluate_sampler(model, None, tb, SAMPLER, SCHEDULER, CFG, 2, [0, 1], [1], [20000], [40000])


def test_pack_rows_change_memorized_samples_and_detection_uses_its_threshold(report):
    (r,) = report["samplers"]
    assert r["defaults_changed_memorized"] > 0.5
    rows = {e["key"]: e for e in r["rows"]}
    assert rows["detect_og"]["settings"]["detect_threshold"] == r["detection"]["threshold"] > 0
    assert "flagged" in rows["detect_og"]["levels"]["all"]["memorized"] and "flagged" not in rows["og_dyn"]["levels"]["all"]["memorized"]
    assert rows["og_dyn"]["settings"] | {"detect_threshold": 0.0} == rows["og_dyn"]["settings"]
    assert rows["stock"]["settings"] is None
    for key in ("defaults", "zero_t500", "og_dyn"):
        mem = rows[key]["levels"]["all"]["memorized"]
        assert len(mem["switch_counts"]) == STEPS and sum(mem["switch_counts"]) == mem["n"]  # every sample switches


def test_ancestral_effect_is_measured(report):
    (r,) = report["samplers"]
    a = report["ancestral_effect"][f"{SAMPLER}+{SCHEDULER}"]
    for key in ("zero_t500", "og_t500"):
        basin = next(e for e in r["rows"] if e["key"] == key)["basin"]
        assert 0 < basin["switch_step"] < STEPS and len(basin["x0_similarity_median_per_step"]) == STEPS
        assert a[key]["n"] == r["rows"][0]["levels"]["all"]["memorized"]["n"] and 0 <= a[key]["rose"] <= 1
        assert a[key]["own_copy"] == next(e for e in r["rows"] if e["key"] == key)["levels"]["all"]["memorized"]["own_copy_rate"]
