"""The per-evaluation cost, counted instead of timed: ATen ops that do work per model evaluation (``combine`` +
``end_step``), before the switch and once every sample is on full CFG. What counts: see ``runs.OpCounter``.

Budget (issue 12): at most 15 before the switch, at most 8 after it (the norm for the curve is still measured).
The run's first evaluation allocates its state (constants, the sigma bounds) and is reported apart, as is an
extra evaluation inside a step (multi-evaluation samplers).
"""
from __future__ import annotations

import pytest
import torch

from memsafe_cfg.guidance import GuidanceSettings
from runs import CFG, OpCounter, new_run, predictions

torch.set_num_threads(1)
BEFORE_SWITCH, AFTER_SWITCH = 15, 8
STEPS, SHAPE = 30, (4, 64, 64)


def counted_run(settings: GuidanceSettings, batch: int, evals: int = 1):
    """A 30-step run on [batch, 4, 64, 64] predictions whose norm falls steadily (no local minimum, so dynamic
    switches at latest_percent). Returns [(step, evaluation index in the step, all on before it, ops)]."""
    run = new_run(settings, STEPS)
    cond = torch.randn(batch, *SHAPE, generator=torch.Generator().manual_seed(0))
    counts = []
    for i in range(STEPS):
        d = torch.full((batch,), 10.0 - i * 0.1)
        for e in range(evals):
            sigma = run.sigmas[i] if e == 0 else 0.5 * (run.sigmas[i] + run.sigmas[i + 1])  # an extra: a midpoint
            all_on = run.latch is not None and run.latch.all_on
            c, u, sig = predictions(d, sigma, cond)
            with OpCounter() as ops:
                run.combine(c, u, sig, CFG)
                if e == evals - 1:
                    run.end_step(i)
            counts.append((i, e, all_on, ops.total))
    run.finish()
    return counts


SETTINGS = {
    f"{t}-{name}": GuidanceSettings(guidance_before=before, transition=t, switch_percent=0.5, latest_percent=0.5)
    for t in ("dynamic", "static") for name, before in (("zero", 0.0), ("opposite", -2.0))
}


@pytest.mark.parametrize("batch", [1, 4])
@pytest.mark.parametrize("name", sorted(SETTINGS))
def test_ops_per_evaluation_within_budget(name, batch):
    counts = counted_run(SETTINGS[name], batch)
    before = [n for i, _, on, n in counts if i > 0 and not on]
    after = [n for i, _, on, n in counts if on]
    assert before and after  # both phases happen in this run
    assert max(before) <= BEFORE_SWITCH, (name, batch, before)
    assert max(after) <= AFTER_SWITCH, (name, batch, after)


def test_extra_evaluations_stay_near_the_budget():
    """dpm_2-style steps (a midpoint after each callback): the extra pays for the clock's in-step mask."""
    counts = counted_run(SETTINGS["dynamic-opposite"], 2, evals=2)
    assert max(n for i, _, on, n in counts if i > 0 and not on) <= BEFORE_SWITCH + 3
    assert max(n for i, _, on, n in counts if on) <= AFTER_SWITCH + 2


def test_counter_counts_work_and_skips_views():
    x = torch.ones(2, 3)
    with OpCounter() as ops:
        y = x.reshape(3, 2)[0].unsqueeze(0).expand(4, 2).detach()  # views only
    assert ops.total == 0
    with OpCounter() as ops:
        (y + 1).sum()
    assert ops.total == 2
