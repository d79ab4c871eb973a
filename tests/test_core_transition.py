"""Algorithm 1 (dynamic transition point) and the step plan, checked against a literal transcription of the paper.

Host-free: only the ``guidance`` core, driven with synthetic cond/uncond tensors whose guidance norm is chosen.
"""
from __future__ import annotations


import numpy as np
import pytest
import torch

from memsafe_cfg.guidance import NEVER, GuidanceSettings, Latch, Tick, due, first_local_minimum, plan_steps
from runs import BEFORE, CFG, HUGE, algorithm1, drive, dynamic, linear_pts

torch.set_num_threads(1)


def noisy(seed: int, n: int = 30) -> list[float]:
    rng = np.random.default_rng(seed)
    trend = np.linspace(3.0, 1.0, n) + 0.5 * np.sin(np.linspace(0, 6, n))
    return np.float32(trend + rng.normal(0, 0.3, n)).clip(0.01).tolist()


CURVES = {
    "flat": [2.0] * 10,
    "monotone_decreasing": [10.0 - i for i in range(10)],
    "monotone_increasing": [1.0 + i for i in range(10)],
    "multi_minimum": [5, 4, 3, 4, 5, 2, 1, 2, 3, 4],
    "first_possible_minimum": [3, 1, 2, 3, 4, 5, 6, 7],
    "low_first_step_is_not_a_minimum": [1, 2, 3, 2, 1, 0.5, 1, 2],
    "tie_plateau_bottom": [5, 3, 3, 5, 6, 7],
    "tie_then_lower": [5, 3, 3, 2, 4, 6],
    "tie_equal_left_neighbours": [5, 5, 3, 5, 6],
    "tie_equal_right_neighbours": [5, 3, 5, 5, 2, 7],
    "late_minimum": [9, 8, 7, 6, 5, 4, 3, 2, 1, 2],
    **{f"noisy_seed{s}": noisy(s) for s in range(4)},
}
EXPECTED = {  # by hand from line 6: step after the first strict 3-point minimum
    "flat": None, "monotone_decreasing": None, "monotone_increasing": None, "multi_minimum": 3,
    "first_possible_minimum": 2, "low_first_step_is_not_a_minimum": 6, "tie_plateau_bottom": None,
    "tie_then_lower": 4, "tie_equal_left_neighbours": 3, "tie_equal_right_neighbours": 2, "late_minimum": 9,
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_transcription_matches_hand_reading(name):
    assert algorithm1(CURVES[name]) == EXPECTED[name]


@pytest.mark.parametrize("name", sorted(CURVES))
def test_core_matches_algorithm1(name):
    curve = CURVES[name]
    n = len(curve)
    trace = drive([curve], dynamic())
    assert trace.norms[:, 0].tolist() == pytest.approx(curve, rel=1e-6)
    ref = algorithm1(curve)
    assert algorithm1(trace.norms[:, 0].tolist()) == ref  # no near-tie flipped by float32
    # latest_percent = 1 puts the latest guard on the last step: only a curve without minimum reaches it.
    assert int(trace.switch_step[0]) == (n - 1 if ref is None else ref)
    s = trace.scales[:, 0]
    switch = int(trace.switch_step[0])
    assert torch.all(s[:switch] == BEFORE) and torch.all(s[switch:] == CFG)
    assert bool(trace.flagged[0])


def test_noisy_curves_exercise_real_minima():
    """The seeded noisy curves are not trivial: each has a minimum well before the end."""
    for s in range(4):
        assert algorithm1(noisy(s)) is not None and algorithm1(noisy(s)) < 20


def test_each_sample_has_its_own_switch_step():
    names = ["multi_minimum", "first_possible_minimum", "tie_then_lower", "low_first_step_is_not_a_minimum"]
    curves = [CURVES[k][:6] for k in names]
    trace = drive(curves, dynamic())
    want = [algorithm1(c) if algorithm1(c) is not None else 5 for c in curves]
    assert trace.switch_step.tolist() == want and len(set(want)) == 4


def test_latest_forces_switch_so_no_sample_is_left_unguided():
    n = 10  # latest_percent 0.45 -> sigma 5.5 -> first step with sigma <= 5.5 is step 5
    for curve in (CURVES["monotone_decreasing"], CURVES["late_minimum"], CURVES["flat"]):
        trace = drive([curve], dynamic(latest_percent=0.45))
        assert int(trace.switch_step[0]) == 5 == algorithm1(curve, latest=5)
        assert torch.all(trace.scales[5:, 0] == CFG)
    assert int(drive([CURVES["multi_minimum"]], dynamic(latest_percent=0.45)).switch_step[0]) == 3  # minimum first
    assert plan_steps([float(n - i) for i in range(n + 1)], linear_pts(n), dynamic(latest_percent=0.45)).latest == 5


def test_earliest_ignores_minima_before_it():
    curve = CURVES["multi_minimum"]  # minima at steps 2 and 6: switch 3 without guard, 7 with earliest 4
    assert algorithm1(curve) == 3
    trace = drive([curve], dynamic(earliest_percent=0.35))  # sigma 6.5 -> step 4
    assert int(trace.switch_step[0]) == 7 == algorithm1(curve, earliest=4, latest=9)
    assert torch.all(trace.scales[:7, 0] == BEFORE)


def test_earliest_bounds_the_switch_step_not_the_minimum():
    """A minimum at step earliest-1 is seen at step earliest (line 6 looks one step back), so it still counts."""
    curve = [5, 4, 3, 2, 3, 4, 5, 6, 7, 8]  # minimum at step 3 -> switch at 4
    trace = drive([curve], dynamic(earliest_percent=0.35))
    assert int(trace.switch_step[0]) == 4 == algorithm1(curve, earliest=4)


def test_switch_latches_after_the_curve_rises_and_falls_again():
    trace = drive([CURVES["multi_minimum"]], dynamic())
    assert torch.all(trace.scales[3:, 0] == CFG)  # the second minimum changes nothing


def test_first_local_minimum_direct():
    d = torch.tensor([[3.0, 1.0], [1.0, 1.0], [2.0, 1.0], [float("nan"), 0.5]])
    assert first_local_minimum(d, 0).tolist() == [False, False]
    assert first_local_minimum(d, 1).tolist() == [False, False]  # d_{T+1} = d_{T+2} = -inf
    assert first_local_minimum(d, 2).tolist() == [True, False]
    assert first_local_minimum(d, 3).tolist() == [False, False]  # NaN (unmeasured) never makes a minimum


def test_latch_direct_guards():
    """The latch on its own: Algorithm 1 only inside [earliest, latest), latest switches whoever starts the step,
    and a switch never comes undone."""
    n = 10
    sigmas = [float(n - i) for i in range(n + 1)]
    s = dynamic(earliest_percent=0.35, latest_percent=0.65)  # earliest 4, latest 7
    plan = plan_steps(sigmas, linear_pts(n), s)
    assert (plan.earliest, plan.latest) == (4, 7)
    latch = Latch(plan, s, 2, torch.device("cpu"))
    everyone, nobody = torch.ones(2, dtype=torch.bool), torch.zeros(2, dtype=torch.bool)
    rows = [torch.tensor(r) for r in ([5.0, 1.0], [1.0, 2.0], [5.0, 3.0], [5.0, 4.0], [4.0, 4.0], [3.0, 4.0], [4.5, 4.0])]
    rows += [torch.tensor([5.0, 4.0])] * 3
    for j in range(n):
        keep = latch.decide(Tick(j, everyone, everyone, nobody, False, None), rows)
        want = {2: [False, False], 6: [True, False], 7: [True, True], 9: [True, True]}  # minimum at 1: before earliest
        if j in want:
            assert keep.tolist() == want[j], j
    off = Latch(plan, GuidanceSettings(transition="off"), 2, torch.device("cpu"))
    assert off.decide(Tick(0, everyone, everyone, nobody, True, None), rows).tolist() == [True, True] and off.all_on


def test_due_reads_sigma_only_when_the_host_has_it():
    assert due(5, 5, None, 3.0) and not due(4, 5, None, 3.0)
    assert due(4, 5, 2.5, 3.0) and due(4, 5, 3.0, 3.0) and not due(4, 5, 3.5, 3.0)


# ---- step plan: static switch and guards compared in sigma ----

def test_static_switch_in_sigma_on_rising_schedule():
    sigmas = [10.0, 8.0, 6.0, 9.0, 7.0, 5.0, 3.0, 0.0]  # restart-like: rises after step 2
    pts = lambda p: HUGE if p <= 0 else 0.0 if p >= 1 else 10.0 * (1 - p)  # noqa: E731
    at = lambda p: plan_steps(sigmas, pts, GuidanceSettings(transition="static", switch_percent=p)).static  # noqa: E731
    assert at(0.15) == 1  # sigma 8.5: step 1 (8.0)
    assert at(0.25) == 2  # sigma 7.5: first crossing is step 2 (6.0), not step 4 (7.0) after the restart
    assert at(0.45) == 5  # sigma 5.5: step 2 (6.0) is above; the first crossing is step 5 (5.0)
    assert at(0.0) == 0 and at(1.0) == 7  # percent 1 -> sigma 0: never reached (== steps)
    trace = drive([[1.0] * 7, [3.0] * 7], GuidanceSettings(guidance_before=BEFORE, transition="static", switch_percent=0.25),
                  sigmas=sigmas, pts=pts)
    assert trace.switch_step.tolist() == [2, 2]  # static switch latches through the restart
    assert torch.all(trace.scales[:2] == BEFORE) and torch.all(trace.scales[2:] == CFG)


def test_static_switch_with_repeated_sigmas():
    sigmas = [10.0, 10.0, 5.0, 5.0, 5.0, 1.0, 0.0]
    pts = lambda p: HUGE if p <= 0 else 0.0 if p >= 1 else 10.0 * (1 - p)  # noqa: E731
    at = lambda p: plan_steps(sigmas, pts, GuidanceSettings(transition="static", switch_percent=p)).static  # noqa: E731
    assert at(0.0) == 0 and at(0.5) == 2 and at(0.3) == 2 and at(0.05) == 2 and at(0.8) == 5 and at(1.0) == 6


def test_static_percent_0_and_1_through_the_run():
    n = 6
    on = drive([[1.0] * n], GuidanceSettings(guidance_before=BEFORE, transition="static", switch_percent=0.0))
    assert int(on.switch_step[0]) == 0 and torch.all(on.scales == CFG)
    never = drive([[1.0] * n], GuidanceSettings(guidance_before=BEFORE, transition="static", switch_percent=1.0))
    assert int(never.switch_step[0]) == NEVER and torch.all(never.scales == BEFORE)  # static has no latest guard


def test_flow_style_percent_zero_is_first_step():
    sigmas = [1.0, 0.75, 0.5, 0.25, 0.0]
    pts = lambda p: 1.0 if p <= 0 else 0.0 if p >= 1 else 1.0 - p  # noqa: E731
    plan = plan_steps(sigmas, pts, GuidanceSettings(transition="static", switch_percent=0.0))
    assert plan.static == 0 and plan.earliest == 0


def test_plan_latest_is_a_real_step_and_not_before_earliest():
    n = 8
    sigmas = [float(n - i) for i in range(n + 1)]
    for e in np.linspace(0, 1, 9):
        for lat in np.linspace(e, 1, 5):
            plan = plan_steps(sigmas, linear_pts(n), dynamic(earliest_percent=float(e), latest_percent=float(lat)))
            assert 0 <= plan.latest <= n - 1
            assert plan.latest >= plan.earliest or plan.earliest == n  # earliest never reached: latest still guides
    p = plan_steps(sigmas, linear_pts(n), dynamic(earliest_percent=1.0, latest_percent=1.0))
    assert (p.earliest, p.latest) == (n, n - 1)
    odd = lambda q: 5.5 if q >= 0.65 else 2.0  # non-monotone percent_to_sigma: latest would fall before earliest  # noqa: E731
    p = plan_steps(sigmas, odd, dynamic(earliest_percent=0.6, latest_percent=0.7))
    assert (p.earliest, p.latest) == (6, 6)  # latest (step 3 by itself) clamped up to earliest


def test_plan_needs_a_step():
    with pytest.raises(ValueError, match="sigmas"):
        plan_steps([1.0], linear_pts(1), dynamic())
