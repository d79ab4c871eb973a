"""Property-based checks of the core (hypothesis, derandomized): guards, per-sample independence, invariance of
the switch under monotone transforms of the norm, and ``off`` as the identity on ComfyUI's CFG formula."""
from __future__ import annotations

import math

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from memsafe_cfg.guidance import NEVER, TRANSITIONS, GuidanceRun, GuidanceSettings, plan_steps, rewrite_conds
from runs import algorithm1, drive, linear_pts

torch.set_num_threads(1)
FAST = settings(max_examples=60, deadline=None, derandomize=True, database=None)
PERCENT = st.sampled_from([0.0, 0.25, 0.5, 1.0]) | st.floats(0.0, 1.0)


@st.composite
def cases(draw):
    """Norm curves on a dyadic grid (k / 4, so the measured norm is exact; ties stay ties) and valid settings."""
    n, B = draw(st.integers(3, 40)), draw(st.integers(1, 4))
    top = draw(st.sampled_from([3, 12, 60]))  # small ranges: many ties and one-step drops
    grid = draw(st.lists(st.lists(st.integers(0, top), min_size=n, max_size=n), min_size=B, max_size=B))
    earliest = draw(PERCENT)
    s = GuidanceSettings(
        guidance_before=draw(st.sampled_from([0.0, -2.0, 1.0]) | st.floats(-5.0, 5.0)),
        transition=draw(st.sampled_from(TRANSITIONS)),
        switch_percent=draw(PERCENT),
        earliest_percent=earliest,
        latest_percent=draw(st.floats(earliest, 1.0)),
        detect_threshold=draw(st.just(0.0) | st.integers(0, 60).map(lambda k: (k + 0.5) / 4)),  # never equals a norm
    )
    return grid, s, draw(st.sampled_from([0.0, 1.0, 4.0, 7.5]))


def run(grid, s, cfg, f=lambda k: k / 4):
    return drive([[f(k) for k in row] for row in grid], s, cfg=cfg, shape=(1,))


@FAST
@given(cases())
def test_switch_step_within_guards(case):
    grid, s, cfg = case
    trace = run(grid, s, cfg)
    n = len(grid[0])
    plan = plan_steps([float(n - i) for i in range(n + 1)], linear_pts(n), s)
    for b, row in enumerate(grid):
        step, flagged = int(trace.switch_step[b]), bool(trace.flagged[b])
        assert flagged == (s.off or not (s.detect_threshold > 0 and row[0] / 4 < s.detect_threshold))
        if s.off or not flagged:
            assert step == 0
        elif s.transition == "static":
            assert step == (plan.static if plan.static < n else NEVER)
        else:
            assert plan.latest <= n - 1 and step != NEVER  # a dynamic sample is never left unguided
            assert plan.earliest <= step <= plan.latest or plan.earliest == n and step == plan.latest
            assert step == algorithm1([k / 4 for k in row], earliest=plan.earliest, latest=plan.latest)
        sc = trace.scales[:, b]
        cut = n if step == NEVER else step
        assert torch.all(sc[:cut] == float(s.guidance_before)) and torch.all(sc[cut:] == float(cfg))


@FAST
@given(cases())
def test_samples_never_influence_each_other(case):
    grid, s, cfg = case
    batch = run(grid, s, cfg)
    for b, row in enumerate(grid):
        alone = run([row], s, cfg)
        assert int(alone.switch_step[0]) == int(batch.switch_step[b])
        assert bool(alone.flagged[0]) == bool(batch.flagged[b])
        assert torch.equal(alone.scales[:, 0], batch.scales[:, b])
        assert torch.equal(alone.norms[:, 0], batch.norms[:, b])


TRANSFORMS = {"x^2+3x": lambda x: x * x + 3 * x, "exp": lambda x: math.exp(x / 2), "x^3": lambda x: x ** 3}


@FAST
@given(cases(), st.sampled_from(sorted(TRANSFORMS)))
def test_monotone_transform_of_the_norm_never_changes_the_switch(case, name):
    grid, s, cfg = case
    f = TRANSFORMS[name]
    thr = s.detect_threshold
    moved = GuidanceSettings(**{**s.to_dict(), "detect_threshold": f(thr) if thr > 0 else 0.0})
    a = run(grid, s, cfg)
    b = run(grid, moved, cfg, f=lambda k: f(k / 4))
    assert torch.equal(a.switch_step, b.switch_step) and torch.equal(a.flagged, b.flagged)
    assert torch.equal(a.scales, b.scales)


@FAST
@given(st.integers(1, 4), st.floats(0.0, 30.0), st.floats(-5.0, 5.0), st.integers(0, 2 ** 16))
def test_off_is_the_identity_on_cfg(B, cfg, before, seed):
    s = GuidanceSettings(transition="off", guidance_before=before, detect_threshold=1.0)
    gen = torch.Generator().manual_seed(seed)
    r = GuidanceRun(s, [2.0, 1.0, 0.0], [999.0, 500.0], linear_pts(2))
    for i in range(2):
        c, u = torch.randn(B, 3, 2, generator=gen), torch.randn(B, 3, 2, generator=gen)
        c2, u2 = r.combine(c, u, torch.full((B,), 2.0 - i), cfg)
        assert c2 is c and u2 is u
        assert torch.equal(u2 + (c2 - u2) * cfg, u + (c - u) * cfg)
        r.end_step(i)
    assert torch.all(r.finish().scales == cfg)


@FAST
@given(st.integers(1, 5), st.sampled_from([0.0, 1.0]) | st.floats(0.05, 100.0), st.integers(0, 2 ** 16),
       st.lists(st.floats(-10.0, 20.0), min_size=5, max_size=5), st.lists(st.booleans(), min_size=5, max_size=5))
def test_rewrite_conds_matches_per_sample_cfg(B, cfg, seed, scales, keep):
    gen = torch.Generator().manual_seed(seed)
    c, u = torch.randn(B, 4, 3, generator=gen), torch.randn(B, 4, 3, generator=gen)
    k = torch.tensor(keep[:B])
    s = torch.where(k, torch.tensor(cfg), torch.tensor(scales[:B]))
    c2, u2 = rewrite_conds(c, u, s, k, cfg)
    got = u2 + (c2 - u2) * cfg
    want = u.double() + s.double().reshape(-1, 1, 1) * (c.double() - u.double())
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5 * max(1.0, cfg, float(s.abs().max())))
    stock = c if math.isclose(cfg, 1.0) else u + (c - u) * cfg
    assert torch.equal(got[k], stock[k])
