"""The per-evaluation cost, counted instead of timed: ATen ops that do work per model evaluation, the issue's way
(issue 22): ``combine`` plus the pack's per-step callback path as ComfyUI triggers it with a browser connected
(``adapter._wrap_callback`` -> ``GuidanceRun.end_step`` -> ``Latch.step_done`` + ``LiveStream.step``, the live
curve's copy of the step's rows), every evaluation counted, the run's first included. What counts: see
``runs.OpCounter``. A multi-evaluation sampler (dpm_2, heun) calls the callback once per step: its ops are spread
over the step's evaluations.

Budget: at most 15 before the switch, at most 8 after it (the norm for the curve is still measured).
"""
from __future__ import annotations

import importlib

import pytest
import torch

from memsafe_cfg.guidance import GuidanceSettings
from runs import CFG, OpCounter, new_run, predictions

torch.set_num_threads(1)
BEFORE_SWITCH, AFTER_SWITCH = 15, 8
STEPS, SHAPE = 30, (4, 64, 64)
adapter, live = (importlib.import_module(f"memsafe_cfg.nodes.{m}") for m in ("adapter", "live"))


def counted_run(settings: GuidanceSettings, batch: int, extra: str = ""):
    """A 30-step run on [batch, 4, 64, 64] predictions whose norm falls steadily (no local minimum, so dynamic
    switches at latest_percent), evaluated as ComfyUI's samplers do: the first evaluation of step i, the callback,
    then ``extra``: "" (euler, dpmpp_2m), "midpoint" (dpm_2: sigma between steps i and i+1, step i's) or "next"
    (heun: the corrector at sigma_{i+1}, which the clock gives to step i+1). Returns per step
    (all on before it, ops per evaluation with the callback spread, [ops of each evaluation], callback ops)."""
    stream = live.LiveStream(lambda event, data: None, "1")
    run = new_run(settings, STEPS, on_step=stream.step)
    callback = adapter._wrap_callback(None, run)
    cond = torch.randn(batch, *SHAPE, generator=torch.Generator().manual_seed(0))
    rows = []
    for i in range(STEPS):
        d = torch.full((batch,), 10.0 - i * 0.1)
        sigmas = [run.sigmas[i]] + {"": [], "midpoint": [0.5 * (run.sigmas[i] + run.sigmas[i + 1])],
                                    "next": [run.sigmas[i + 1]]}[extra]
        all_on = run.latch is not None and run.latch.all_on
        evals, cb = [], 0
        for e, sigma in enumerate(sigmas):
            c, u, sig = predictions(d, sigma, cond)
            with OpCounter() as ops:
                run.combine(c, u, sig, CFG)
            evals.append(ops.total)
            if e == 0:
                with OpCounter() as ops:
                    callback(i, None, None, STEPS)
                cb = ops.total
        rows.append((all_on, (sum(evals) + cb) / len(evals), evals, cb))
    stream.end(run.finish())
    return rows


SETTINGS = {
    f"{t}-{name}{'-detect' if det else ''}": GuidanceSettings(guidance_before=before, transition=t, switch_percent=0.5,
                                                              latest_percent=0.5, detect_threshold=det)
    for t in ("dynamic", "static") for name, before in (("zero", 0.0), ("opposite", -2.0)) for det in (0.0, 0.5)
}


def phases(rows):
    before = [n for on, n, _, _ in rows if not on]
    after = [n for on, n, _, _ in rows if on]
    assert before and after  # both phases happen in this run
    return before, after


@pytest.mark.parametrize("batch", [1, 4])
@pytest.mark.parametrize("name", sorted(SETTINGS))
def test_ops_per_evaluation_within_budget(name, batch):
    before, after = phases(counted_run(SETTINGS[name], batch))
    assert max(before) <= BEFORE_SWITCH, (name, batch, before)
    assert max(after) <= AFTER_SWITCH, (name, batch, after)


@pytest.mark.parametrize("extra", ["midpoint", "next"])
@pytest.mark.parametrize("name", ["dynamic-opposite", "static-opposite-detect"])
def test_multi_evaluation_steps_within_budget(name, extra):
    """dpm_2 / heun: two evaluations per step, the callback's ops spread over both."""
    before, after = phases(counted_run(SETTINGS[name], 2, extra))
    assert max(before) <= BEFORE_SWITCH, (name, extra, before)
    assert max(after) <= AFTER_SWITCH, (name, extra, after)


def test_the_callback_is_counted():
    """The live curve's per-step copies are in the count: 2 before the switch (norm row, on-CFG row), 1 after."""
    rows = counted_run(SETTINGS["dynamic-opposite"], 2)
    assert [cb for _, _, _, cb in rows[1:14]] == [2] * 13 and [cb for on, _, _, cb in rows if on] == [1] * 14


def test_counter_counts_work_and_skips_views():
    x = torch.ones(2, 3)
    with OpCounter() as ops:
        y = x.reshape(3, 2)[0].unsqueeze(0).expand(4, 2).detach()  # views only
    assert ops.total == 0
    with OpCounter() as ops:
        (y + 1).sum()
    assert ops.total == 2
