"""Core tier: guidance/scan.py (no ComfyUI). Threshold at a false-positive rate, weight fit, ranking, report, chart,
and that the scan's norm is the samplers' guidance_norm."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from memsafe_cfg.guidance import scan as S
from memsafe_cfg.guidance import GuidanceSettings
from memsafe_cfg.guidance.combine import guidance_norm
from memsafe_cfg.guidance.transition import not_flagged


def test_norm_score_is_the_samplers_guidance_norm():
    g = torch.Generator().manual_seed(0)
    c, u = torch.randn(5, 4, 8, 8, generator=g), torch.randn(5, 4, 8, 8, generator=g)
    sigma = 7.3
    got = S.norm_score(c, u, sigma)
    want = guidance_norm(c, u, torch.full((5,), sigma))
    assert torch.equal(got, want)
    assert S.guidance_norm is guidance_norm  # imported, not a copy


def test_alignment_is_cosine_of_eps_u_and_guidance_vector():
    g = torch.Generator().manual_seed(1)
    x, c, u = (torch.randn(3, 1, 4, 4, generator=g, dtype=torch.float64) for _ in range(3))
    sigma = 0.4
    eps_u, eps_c = (x - u) / sigma, (x - c) / sigma
    want = torch.nn.functional.cosine_similarity(eps_u.flatten(1), (eps_c - eps_u).flatten(1), dim=1)
    got = S.alignment_score(x, c, u, sigma)
    assert got.dtype == torch.float32
    assert torch.allclose(got.double(), want, atol=1e-6)
    # a guidance vector along eps_u gives +1, against it -1
    aligned_c = u - sigma * eps_u * 0.5  # eps_c - eps_u = (u - c)/sigma = 0.5 eps_u
    assert torch.allclose(S.alignment_score(x, aligned_c, u, sigma), torch.ones(3), atol=1e-5)
    opposed_c = u + sigma * eps_u * 0.5
    assert torch.allclose(S.alignment_score(x, opposed_c, u, sigma), -torch.ones(3), atol=1e-5)


@pytest.mark.parametrize("n,fpr", [(20, 0.05), (100, 0.05), (100, 0.1), (7, 0.5), (40, 0.01), (1000, 0.2)])
def test_threshold_at_fpr_bounds_the_false_positive_rate(n, fpr):
    clean = torch.rand(n, generator=torch.Generator().manual_seed(n)) + 0.5
    t, achieved = S.threshold_at_fpr(clean, fpr)
    flagged = ~not_flagged(clean, t)  # exactly the samplers' rule
    assert float(flagged.float().mean()) == pytest.approx(achieved)
    assert achieved <= fpr + 1e-12
    # the smallest such threshold: one float32 step lower flags more than the rate allows (or as many as fpr*n)
    lower = float(np.nextafter(np.float32(t), np.float32(-np.inf)))
    assert float((~not_flagged(clean, lower)).float().mean()) > achieved
    assert int(flagged.sum()) <= math.floor(fpr * n + 1e-9)


def test_threshold_with_ties_never_exceeds_the_rate():
    clean = torch.tensor([1.0] * 10 + [0.5] * 10)
    t, achieved = S.threshold_at_fpr(clean, 0.25)
    assert achieved == 0.0 and t > 1.0  # flagging any 1.0 flags all ten (50 %)


@pytest.mark.parametrize("bad", [0.0, 1.0, -0.1, 1.5])
def test_threshold_rejects_rates_outside_open_unit_interval(bad):
    with pytest.raises(ValueError, match="false_positive_rate"):
        S.threshold_at_fpr(torch.rand(10), bad)


def test_auc():
    assert S.auc([2, 3], [0, 1]) == 1.0
    assert S.auc([0, 1], [2, 3]) == 0.0
    assert S.auc([1, 1], [1, 1]) == 0.5
    assert math.isnan(S.auc([], [1.0]))


def test_fit_weight_recovers_a_separating_direction():
    g = torch.Generator().manual_seed(3)
    # the norm does not separate; the alignment does, negatively: the fit must find a negative weight
    nm, nc = torch.rand(50, generator=g), torch.rand(50, generator=g)
    am, ac = -torch.rand(50, generator=g) - 1.0, torch.rand(50, generator=g)
    w, a = S.fit_weight(nm, am, nc, ac)
    assert w < 0 and a == 1.0
    assert S.auc(S.combined(nm, am, w), S.combined(nc, ac, w)) == a
    # when the norm alone separates, the smallest |w| (0) wins the tie
    w0, a0 = S.fit_weight(nm + 5, am, nc, ac * 0)
    assert w0 == 0.0 and a0 == 1.0


def test_default_weight_ranks_as_the_papers_sd1_score():
    g = torch.Generator().manual_seed(4)
    numel = 4 * 64 * 64
    rms, cos = torch.rand(30, generator=g), torch.rand(30, generator=g) * 2 - 1
    ours = S.combined(rms, cos, S.default_weight(numel))
    theirs = rms * math.sqrt(numel) + 2 * cos  # L2 norm + 2 * cosine
    assert torch.equal(ours.argsort(), theirs.argsort())


def _items(seed=5, S_=6):
    g = torch.Generator().manual_seed(seed)
    items = [S.PromptScore(f"scan {i}", torch.rand(S_, generator=g) + i * 0.3, torch.rand(S_, generator=g) - 0.5) for i in range(5)]
    items += [S.PromptScore(f"clean {i}", torch.rand(S_, generator=g), torch.rand(S_, generator=g) - 0.5, kind="clean") for i in range(4)]
    items += [S.PromptScore(f"mem {i}", torch.rand(S_, generator=g) + 2, torch.rand(S_, generator=g), kind="memorized") for i in range(2)]
    return items


def test_ranking_is_by_mean_score_and_excludes_references():
    res = S.calibrate(_items(), "norm", 0.1)
    ranked = res.ranked()
    assert [it.kind for it in ranked] == ["scan"] * 5
    means = [float(it.norm.mean()) for it in ranked]
    assert means == sorted(means, reverse=True)
    assert res.norm_threshold == res.threshold > 0
    clean = torch.cat([it.norm for it in res.items if it.kind == "clean"])
    assert float((clean >= res.threshold).float().mean()) == pytest.approx(res.calibration_fpr) and res.calibration_fpr <= 0.1


def test_no_clean_list_no_threshold():
    items = [it for it in _items() if it.kind == "scan"]
    res = S.calibrate(items, "norm", None)
    assert res.threshold == 0.0 and res.norm_threshold == 0.0
    text = S.report(res)
    assert "threshold: none" in text and "detect_threshold = 0" in text


def test_combined_score_fits_weight_on_known_memorized_and_keeps_norm_threshold():
    res = S.calibrate(_items(), "norm + alignment", 0.25, numel=256)
    assert "fitted on 2 known-memorized vs 4 clean" in res.weight_note
    clean = [it for it in res.items if it.kind == "clean"]
    t_norm, _ = S.threshold_at_fpr(torch.cat([it.norm for it in clean]), 0.25)
    assert res.norm_threshold == t_norm  # detect_threshold always comes from the norm
    t_comb, _ = S.threshold_at_fpr(torch.cat([S.combined(it.norm, it.alignment, res.weight) for it in clean]), 0.25)
    assert res.threshold == t_comb
    without = S.calibrate([it for it in _items() if it.kind != "memorized"], "norm + alignment", 0.25, numel=256)
    assert without.weight == S.default_weight(256) and "give memorized_prompts" in without.weight_note


def test_report_lists_every_prompt_in_rank_order():
    res = S.calibrate(_items(), "norm + alignment", 0.1, numel=256)
    text = S.report(res, "cost: test")
    lines = text.splitlines()
    rows = [ln for ln in lines if ln.strip()[:1].isdigit() and "scan" in ln]
    assert [ln.split()[-1] for ln in rows] == [it.prompt.split()[-1] for it in res.ranked()]
    assert "clean reference prompts" in text and "known-memorized reference prompts" in text and "cost: test" in text


@pytest.mark.parametrize("n", [1, 5, 60])
def test_chart_shape_and_range(n):
    g = torch.Generator().manual_seed(n)
    items = [S.PromptScore(f"p{i}", torch.rand(4, generator=g)) for i in range(n)]
    items += [S.PromptScore("c", torch.rand(4, generator=g), kind="clean")]
    img = S.render_scan(S.calibrate(items, "norm", 0.5))
    assert img.dtype == torch.float32 and img.ndim == 4 and img.shape[0] == 1 and img.shape[-1] == 3
    assert img.shape[2] == S.W and 0.0 <= float(img.min()) and float(img.max()) <= 1.0
    rows = min(n, S.MAX_ROWS) + 2
    assert img.shape[1] >= S.TOP + S.BOTTOM + S.ROW * rows


def test_chart_draws_the_threshold_line():
    items = [S.PromptScore("a", torch.tensor([1.0, 2.0])), S.PromptScore("c", torch.tensor([0.2, 0.4, 0.6]), kind="clean")]
    with_t = S.render_scan(S.calibrate(items, "norm", 0.4))
    without = S.render_scan(S.calibrate(items[:1], "norm", None))
    gray = lambda img: ((img[0] - torch.tensor([90 / 255] * 3)).abs().amax(-1) < 1e-3).sum()  # noqa: E731
    assert int(gray(with_t)) > int(gray(without)) + 50


def test_testbed_scan_eval_scores_are_the_samplers_first_step_norms():
    """testbed/scan_eval.py scores with guidance/scan.py; its norm is the first-step norm the testbed sampler measures
    (the value detect_threshold is compared with), and its alignment is a cosine."""
    from memsafe_cfg.testbed.data import load
    from memsafe_cfg.testbed.model import encode_prompt
    from memsafe_cfg.testbed.sampler import load_unet, noise_for, sample
    from memsafe_cfg.testbed.scan_eval import score_prompts

    unet = load_unet()
    tb = load()
    prompts, seeds = [tb.memorized[1], tb.clean[1]], [0, 1, 2]
    scores, evals = score_prompts(unet, prompts, seeds)
    assert evals == 2 * 2 * 2 * len(seeds)  # prompts x probes x (cond + uncond) x seeds
    for prompt, sc in zip(prompts, scores):
        _, trace = sample(unet, encode_prompt(*prompt).expand(len(seeds), -1), noise_for(seeds), GuidanceSettings(transition="off"),
                          5.0, 50, first_step_only=True)
        assert torch.allclose(sc["norm"], trace.norms[0], rtol=1e-5)
        assert float(sc["alignment"].abs().max()) <= 1.0


def test_testbed_scan_eval_lists_follow_the_rule():
    """The calibration clean list and the broad evaluation list: disjoint, no memorized prompt or sibling among the
    clean ones, >= 16 other clean prompts covering every digit, both styles, all three slants and both widths."""
    from memsafe_cfg.testbed.data import all_prompts, load
    from memsafe_cfg.testbed.model import SLANTS, STYLES, WIDTHS
    from memsafe_cfg.testbed.scan_eval import scan_lists

    tb = load()
    cal, other = scan_lists(tb.memorized, tb.clean)
    assert (cal, other) == scan_lists(tb.memorized, tb.clean)  # deterministic
    assert len(other) >= 16 and len(cal) >= 16
    assert len(set(cal)) == len(cal) and len(set(other)) == len(other) and not set(cal) & set(other)
    for lst in (cal, other):
        assert not set(lst) & set(tb.memorized) and not set(lst) & set(tb.clean)
        assert set(lst) <= set(all_prompts())
        for pos, words in enumerate((range(10), STYLES, SLANTS, WIDTHS)):
            assert {p[pos] for p in lst} == set(words)
    assert not set(tb.clean) & set(tb.memorized)


def test_testbed_scan_eval_reports_per_level(tmp_path):
    """A tiny run (shipped weights, 2 seeds, 4 steps): per-level keys, both lists in the JSON, the sampler's
    unflagged samples bit-identical to plain CFG; values are ranges, never stored floats."""
    import json

    from memsafe_cfg.testbed.data import load
    from memsafe_cfg.testbed.scan_eval import main

    tb = load()
    out = tmp_path / "scan.json"
    r = main(["--calib-seeds", "3", "--eval-seeds", "2", "--sample-seeds", "1", "--steps", "4",
              "--copy-threshold", "0.965", "--json", str(out)])
    assert json.loads(out.read_text())["config"]["calibration_clean_list"] == r["config"]["calibration_clean_list"]
    c = r["config"]
    ev = c["evaluation_list"]
    assert len(ev["memorized"]) == len(tb.memorized) and len(ev["other_clean"]) >= 16
    assert not set(c["calibration_clean_list"]) & (set(ev["other_clean"]) | set(ev["clean_siblings"]))
    assert c["calibration_seeds"] == [10_000, 10_002] and c["evaluation_seeds"] == [0, 1]
    levels = {f"{s:g}" for s in tb.shares}
    norm = r["scores"]["norm"]
    assert r["headline"] == "norm" and set(norm["levels"]) == levels
    for e in norm["levels"].values():
        assert 0.0 <= e["prompt_auc"] <= 1.0 and 0.0 <= e["tpr"] <= 1.0 and len(e["ranks"]) == len(e["prompts"]) == 2
    assert len(norm["ranking"]) == len(tb.memorized) + len(ev["clean_siblings"]) + len(ev["other_clean"])
    assert sum(" * " in p for p in norm["ranking"]) == len(tb.memorized)
    for key in ("prompt_auc", "eval_fpr", "eval_fpr_siblings", "eval_fpr_other_clean", "eval_tpr", "threshold"):
        assert math.isfinite(norm[key])
    s = r["sampler"]
    assert s["samples"] == len(norm["ranking"]) and set(s["levels"]) == levels and r["copy_floor"]["threshold"] == 0.965
    assert s["unflagged_bit_identical"] and s["first_step_norm_max_abs_diff_sampler_vs_scan"] < 1e-5
    assert set(r["targets"]) >= {"copying_levels", "per_level", "all_met"}
