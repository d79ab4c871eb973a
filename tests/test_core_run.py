"""GuidanceRun as a sampler drives it: per-sample independence, detection, the CFG rewrite, multi-evaluation
steps, non-finite norms, and settings validation. Host-free."""
from __future__ import annotations

import math

import pytest
import torch

from memsafe_cfg.guidance import NEVER, GuidanceRun, GuidanceSettings, NonFiniteGuidance, rewrite_conds
from runs import BEFORE, CFG, SHAPE, algorithm1, cfg_out, drive, dyadic, dynamic, linear_pts, new_run, run_steps, schedule

torch.set_num_threads(1)
CURVES = [[5, 4, 3, 4, 5, 6], [1, 2, 3, 2, 1, 2], [4, 3, 3, 2, 4, 6], [6, 5, 4, 3, 2, 1]]


# ---- per-sample independence ----

@pytest.mark.parametrize("threshold", [0.0, 2.5])
@pytest.mark.parametrize("j", range(4))
def test_changing_one_sample_never_changes_another(j, threshold):
    s = dynamic(detect_threshold=threshold)
    base, base_calls = run_steps(CURVES, s)
    for new in ([1.0] * 6, [9, 1, 9, 1, 9, 1], [3, 2, 1, 0.5, 0.25, 0.1]):
        curves = [list(c) for c in CURVES]
        curves[j] = new
        trace, calls = run_steps(curves, s)
        k = [b for b in range(4) if b != j]
        assert torch.equal(trace.switch_step[k], base.switch_step[k])
        assert torch.equal(trace.flagged[k], base.flagged[k])
        assert torch.equal(trace.scales[:, k], base.scales[:, k]) and torch.equal(trace.norms[:, k], base.norms[:, k])
        for (_, _, _, c2, u2), (_, _, _, c1, u1) in zip(calls, base_calls):
            assert torch.equal(c2[k], c1[k]) and torch.equal(u2[k], u1[k])


def test_each_sample_switches_at_its_own_step():
    trace, calls = run_steps(CURVES, dynamic())
    want = [algorithm1(c) if algorithm1(c) is not None else 5 for c in CURVES]
    assert trace.switch_step.tolist() == want == [3, 5, 4, 5]
    for i, cond, uncond, c2, u2 in calls:
        s = trace.scales[i].reshape(-1, 1, 1, 1)
        torch.testing.assert_close(cfg_out(c2, u2, CFG), uncond + s * (cond - uncond), rtol=1e-5, atol=1e-5)


# ---- detection ----

def test_detection_flags_by_first_step_norm():
    curves = [[1.0, 5, 4, 5, 6, 7], [3.0, 2, 1, 2, 3, 4], [2.4, 1, 2, 3, 4, 5], [2.5, 2, 1, 2, 3, 4]]
    trace, calls = run_steps(curves, dynamic(detect_threshold=2.5))
    assert trace.flagged.tolist() == [False, True, False, True]  # 2.5 is not below 2.5
    assert trace.switch_step.tolist() == [0, 3, 0, 3]
    assert torch.all(trace.scales[:, [0, 2]] == CFG)
    assert torch.all(trace.scales[:3, [1, 3]] == BEFORE) and torch.all(trace.scales[3:, [1, 3]] == CFG)
    for _, cond, uncond, c2, u2 in calls:  # unflagged samples are stock CFG bit for bit, from step 0
        assert torch.equal(cfg_out(c2, u2, CFG)[[0, 2]], cfg_out(cond, uncond, CFG)[[0, 2]])
    assert [line.startswith("plain CFG") for line in trace.summary()] == [True, False, True, False]


def test_detection_off_flags_everyone():
    trace, _ = run_steps([[0.01] * 6, [9.0] * 6], dynamic(detect_threshold=0.0))
    assert trace.flagged.tolist() == [True, True] and trace.switch_step.tolist() == [5, 5]


def test_detection_with_static_transition():
    s = GuidanceSettings(guidance_before=0.0, transition="static", switch_percent=0.5, detect_threshold=2.0)
    trace, _ = run_steps([[1.0] * 6, [3.0] * 6], s)
    assert trace.flagged.tolist() == [False, True] and trace.switch_step.tolist() == [0, 3]


# ---- the CFG rewrite ----

@pytest.mark.parametrize("cfg", [0.0, 1.0, 1.0 + 1e-12, 7.5, 100.0, -3.0])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_rewrite_conds_reproduces_per_sample_scale(cfg, dtype):
    gen = torch.Generator().manual_seed(int(cfg * 10) % 97)
    B = 6
    c = torch.randn(B, 4, 8, 8, generator=gen).to(dtype)
    u = torch.randn(B, 4, 8, 8, generator=gen).to(dtype)
    keep = torch.tensor([False, False, False, True, False, True])
    scale = torch.tensor([-2.0, 0.0, 1.0, cfg, 3.3, cfg])
    c2, u2 = rewrite_conds(c, u, scale, keep, cfg)
    assert c2.dtype == dtype and u2.dtype == dtype and c2.shape == c.shape
    got = cfg_out(c2, u2, cfg).double()
    want = u.double() + scale.to(dtype).double().reshape(-1, 1, 1, 1) * (c.double() - u.double())
    tol = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 2e-2}[dtype] * max(1.0, abs(cfg))
    torch.testing.assert_close(got[~keep], want[~keep], rtol=tol, atol=tol)
    stock = cfg_out(c, u, cfg)
    if math.isclose(cfg, 1.0):
        # stock at cfg 1 skips uncond: 0 + (c - 0) * 1 == c; kept samples must give exactly that
        assert torch.equal(cfg_out(c2, u2, cfg)[keep], (0 + (c - 0) * cfg)[keep])
        assert torch.equal(cfg_out(c2, u2, cfg)[keep], c[keep])
    else:
        assert torch.equal(cfg_out(c2, u2, cfg)[keep], stock[keep])
        assert torch.equal(c2[keep], c[keep]) and torch.equal(u2[keep], u[keep])


def test_off_is_identity_in_combine():
    s = GuidanceSettings(transition="off", detect_threshold=5.0)
    run = GuidanceRun(s, schedule(3), [3.0, 2.0, 1.0], linear_pts(3))
    for i in range(3):
        c, u = torch.randn(2, *SHAPE), torch.randn(2, *SHAPE)
        c2, u2 = run.combine(c, u, torch.full((2,), 3.0 - i), CFG)
        assert c2 is c and u2 is u
        run.end_step(i)
    trace = run.finish()
    assert trace.switch_step.tolist() == [0, 0] and trace.flagged.tolist() == [True, True]
    assert torch.all(trace.scales == CFG) and torch.all(torch.isfinite(trace.norms))


# ---- several model evaluations per step (Heun, dpm_2, ...) ----

def test_only_first_evaluation_of_a_step_is_measured():
    n, evals = 6, 3
    gen = torch.Generator().manual_seed(3)
    run = GuidanceRun(dynamic(), schedule(n), list(range(n)), linear_pts(n))
    first = [[5, 5], [4, 2], [3, 3], [4, 2.5], [5, 5], [6, 6]]  # sample 0: minimum at 2, sample 1: at 1
    outs = {}
    for i in range(n):
        sigma = torch.full((2,), float(n - i))
        for e in range(evals):
            d = torch.tensor(first[i]) if e == 0 else torch.tensor([0.1, 50.0]) * (e + 1)  # later evals lie
            cond = dyadic(gen, 2, *SHAPE)
            uncond = cond + (d * sigma).reshape(2, 1, 1, 1)
            c2, u2 = run.combine(cond, uncond, sigma, CFG)
            outs.setdefault(i, []).append((cond, uncond, c2, u2))
        run.end_step(i)
    trace = run.finish()
    torch.testing.assert_close(trace.norms, torch.tensor(first, dtype=torch.float32), rtol=1e-5, atol=1e-6)
    assert trace.switch_step.tolist() == [3, 2]
    for i, calls in outs.items():
        s = trace.scales[i].reshape(-1, 1, 1, 1)
        for cond, uncond, c2, u2 in calls:  # every evaluation of step i uses step i's scale
            torch.testing.assert_close(cfg_out(c2, u2, CFG), uncond + s * (cond - uncond), rtol=1e-5, atol=1e-5)


def test_on_step_fires_once_per_step_and_visited_needs_an_evaluation():
    seen = []
    run = GuidanceRun(dynamic(), schedule(4), [4.0, 3.0, 2.0, 1.0], linear_pts(4), on_step=lambda r, i: seen.append(i))
    for i in range(4):
        if i != 2:  # step 2 has no model evaluation (e.g. a sampler that reuses one)
            run.combine(torch.zeros(1, 2), torch.ones(1, 2), torch.ones(1), CFG)
        run.end_step(i)
    # the callback says the step's first evaluation happened; the trace says which steps really had one
    assert seen == [0, 1, 2, 3] and run.finish().visited.tolist() == [True, True, False, True]


def test_sigma_below_a_guard_counts_even_before_its_planned_index():
    """A sampler with fewer, larger steps (dpm_fast) reaches latest's sigma at an earlier step index."""
    n = 10
    run = GuidanceRun(dynamic(latest_percent=0.45), schedule(n), list(range(n)), linear_pts(n))
    assert run.plan.latest == 5
    for i, sigma in enumerate([10.0, 7.0, 4.0]):  # 4.0 <= sigma(latest) = 5.5 at step index 2
        run.combine(torch.zeros(1, 2), torch.full((1, 2), 2.0 * sigma), torch.tensor([sigma]), CFG)
        run.end_step(i)
    assert int(run.finish().switch_step[0]) == 2


def test_batch_size_change_is_an_error():
    run = GuidanceRun(dynamic(), schedule(3), [3.0, 2.0, 1.0], linear_pts(3))
    run.combine(torch.zeros(2, 2), torch.ones(2, 2), torch.ones(2), CFG)
    run.end_step(0)
    with pytest.raises(ValueError, match="batch size"):
        run.combine(torch.zeros(3, 2), torch.ones(3, 2), torch.ones(3), CFG)


# ---- non-finite norms ----

@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_norm_names_step_and_sample(bad):
    n, B = 6, 3
    run = GuidanceRun(dynamic(), schedule(n), list(range(n)), linear_pts(n))
    for i in range(n):
        uncond = torch.ones(B, *SHAPE)
        if i == 3:
            uncond[1, 0, 0, 0] = bad
        run.combine(torch.zeros(B, *SHAPE), uncond, torch.full((B,), float(n - i)), CFG)
        run.end_step(i)
    with pytest.raises(NonFiniteGuidance, match=r"step 3\b.*sample 1\b") as err:
        run.finish()
    assert isinstance(err.value, ValueError)


def test_unmeasured_steps_are_not_checked():
    n = 4
    run = GuidanceRun(dynamic(), schedule(n), list(range(n)), linear_pts(n))
    for i in range(n):
        uncond = torch.full((2, 3), float("nan")) if i == 2 else torch.ones(2, 3)
        run.combine(torch.zeros(2, 3), uncond, torch.full((2,), float(n - i)), CFG, measured=i != 2)
        run.end_step(i)
    trace = run.finish()
    assert trace.visited.tolist() == [True] * 4
    assert torch.isnan(trace.norms[2]).all() and torch.isfinite(trace.norms[[0, 1, 3]]).all()
    assert torch.isfinite(trace.scales).all() and trace.switch_step.tolist() == [3, 3]


def test_finish_without_any_evaluation():
    trace = GuidanceRun(dynamic(), schedule(3), [3.0, 2.0, 1.0], linear_pts(3)).finish()
    assert trace.batch == 0 and trace.steps == 3 and trace.visited.tolist() == [False] * 3


# ---- settings validation ----

@pytest.mark.parametrize("kw, name", [
    (dict(earliest_percent=0.6, latest_percent=0.4), "latest_percent"),
    (dict(switch_percent=1.5), "switch_percent"),
    (dict(switch_percent=-0.1), "switch_percent"),
    (dict(earliest_percent=-0.01), "earliest_percent"),
    (dict(latest_percent=1.01), "latest_percent"),
    (dict(detect_threshold=-1.0), "detect_threshold"),
    (dict(transition="sometimes"), "transition"),
    (dict(transition="Dynamic"), "transition"),
    *[(({k: v}), k) for k in ("guidance_before", "switch_percent", "earliest_percent", "latest_percent", "detect_threshold")
      for v in (float("nan"), float("inf"), float("-inf"), "0.5", None, True)],
])
def test_settings_reject_bad_input_naming_it(kw, name):
    with pytest.raises(ValueError, match=name):
        GuidanceSettings(**kw)


def test_settings_accept_edges_and_round_trip():
    for kw in (dict(), dict(earliest_percent=0.3, latest_percent=0.3), dict(switch_percent=0, earliest_percent=0, latest_percent=1),
               dict(guidance_before=-5, detect_threshold=0), dict(transition="static"), dict(transition="off")):
        s = GuidanceSettings(**kw)
        assert GuidanceSettings.from_dict(s.to_dict()) == s
    assert GuidanceSettings(earliest_percent=0.6, latest_percent=0.6).latest_percent == 0.6
    with pytest.raises(ValueError, match="earliest_percent"):  # names both inputs of the conflict
        GuidanceSettings(earliest_percent=0.6, latest_percent=0.4)
    assert drive([[1.0, 2.0]], dynamic()).switch_step.tolist() == [1]  # 2 steps: latest is the last step
    assert NEVER == -1


def test_finish_returns_values_not_a_graph_when_the_model_tracks_gradients():
    """Predictions that require grad (sampling outside no_grad) leave neither the trace nor the carried values
    attached to a graph (reading them as floats warned)."""
    run = new_run(GuidanceSettings(), 4)
    for i in range(4):
        cond = torch.randn(2, *SHAPE, generator=torch.Generator().manual_seed(i)).requires_grad_()
        run.combine(cond, cond.detach() * 0.5, torch.full((2,), run.sigmas[i]), CFG)
        run.end_step(i)
    trace = run.finish(carry=torch.ones(3, requires_grad=True))
    assert not trace.norms.requires_grad and not run.carried.requires_grad
    assert torch.isfinite(trace.norms).all()
