"""Robustness matrix (issue 4, host tier): samplers x schedulers x model kinds x batch x denoise x entry point.

Every row runs real ComfyUI three times on a tiny generated model: stock CFG on the unpatched model; the pack with
transition "off" (must equal stock bit for bit); the pack in dynamic mode with opposite guidance (guidance_before
-2, cfg 5), watched from outside by ``host.Probe``. The dynamic run must finish with finite latents; its
trace must hold one point per schedule step the sampler visits, each the guidance norm of the raw predictions of
an evaluation inside that step's sigma band; every evaluation must have been combined with the scale the trace
records (measured from ComfyUI's own CFG result); every sample must switch inside [earliest, latest] and be
switched once the run reaches the latest guard's sigma.

Design (``design``; ``test_design_covers_every_pair`` checks it): the eps UNet runs the full sampler x scheduler
product (42 x 7 = 294 rows); the v-prediction UNet, the SD3-shaped flow MMDiT and the Wan 2.1 video DiT run every
sampler once (3 x 42 rows); batch {1, 3}, denoise {1.0, 0.6}, entry point {guider, patch} and steps {2, 3, 4} are
chosen greedily so that every pair of values of any two of the seven factors occurs in some row (420 rows).

dpm_fast / dpm_adaptive: their callbacks do not follow the schedule (dpm_fast: one per solver segment, about
steps/3 + 1, lagging; dpm_adaptive: one per attempted adaptive step, running far ahead) and they never evaluate
at the schedule's sigmas; the pack places their evaluations by sigma band instead (``test_step_attribution_*``).
One line sums up: ``MATRIX: N combinations run / P passed / F failed``.
"""
from __future__ import annotations

import collections
import itertools
from pathlib import Path

import pytest
import torch

from conftest import host_available

pytestmark = pytest.mark.host

SCHEDULERS = ("normal", "karras", "exponential", "sgm_uniform", "simple", "ddim_uniform", "beta")
MODELS = ("eps", "v", "flow", "video")
BATCHES, DENOISES, PATHS, STEPS = (1, 3), (1.0, 0.6), ("guider", "patch"), (2, 3, 4)
CFG, BEFORE, SEED = 5.0, -2.0, 7
DYNAMIC = dict(guidance_before=BEFORE, transition="dynamic", switch_percent=0.5, earliest_percent=0.2,
               latest_percent=0.8, detect_threshold=0.0)
OFF = dict(DYNAMIC, transition="off")
NORM_RTOL = 1e-5  # the pack's float32 norm vs the probe's: same inputs, a different reduction order
# Their callbacks do not follow the schedule: dpm_fast reports one step per solver segment (about steps/3),
# dpm_adaptive one per attempted adaptive step (often far more than the schedule has). Neither evaluates the
# model at the schedule's sigmas, so a step's point can only come from somewhere inside that step's band.
OFF_SCHEDULE = ("dpm_fast", "dpm_adaptive")


class StepAttributionError(AssertionError):
    """A trace point or a switch sits at a sigma outside the schedule step it is recorded for."""


def _samplers() -> list[str]:
    if not host_available():
        return []
    from host import import_comfy

    import_comfy()
    import comfy.samplers

    return list(comfy.samplers.KSampler.SAMPLERS)


def design(samplers) -> list[dict]:
    """eps: full sampler x scheduler; v/flow/video: each sampler once; free factors picked greedily to cover pairs."""
    factors = dict(sampler=list(samplers), scheduler=SCHEDULERS, model=MODELS, batch=BATCHES, denoise=DENOISES,
                   path=PATHS, steps=STEPS)
    names = list(factors)
    covered: set = set()
    used: collections.Counter = collections.Counter()

    def pairs(row):
        return {(a, row[a], b, row[b]) for a, b in itertools.combinations(names, 2)}

    def add(fixed: dict):
        free = [n for n in names if n not in fixed]
        options = (dict(fixed, **dict(zip(free, vals))) for vals in itertools.product(*(factors[n] for n in free)))
        # most new pairs first; among equals, the least used pairs (mixes batch, denoise, entry point and steps)
        best = max(options, key=lambda r: (len(pairs(r) - covered), -sum(used[p] for p in pairs(r))))
        covered.update(pairs(best))
        used.update(pairs(best))
        rows.append(best)

    rows: list[dict] = []
    for s in samplers:
        for sch in SCHEDULERS:
            add(dict(sampler=s, scheduler=sch, model="eps"))
    for m in MODELS[1:]:
        for s in samplers:
            add(dict(sampler=s, model=m))
    wanted = {(a, va, b, vb) for a, b in itertools.combinations(names, 2) for va in factors[a] for vb in factors[b]}
    for a, va, b, vb in sorted(wanted - covered, key=str):  # top up anything greedy missed (normally nothing)
        if (a, va, b, vb) not in covered:
            add({a: va, b: vb})
    return rows


def _row_id(r: dict) -> str:
    return f"{r['model']}-{r['sampler']}-{r['scheduler']}-b{r['batch']}-d{r['denoise']}-{r['path']}-s{r['steps']}"


def _params():
    samplers = _samplers()  # none without a host: the rows are skipped, the run says so (conftest)
    return [pytest.param(r, id=_row_id(r)) for r in design(samplers)] if samplers else []


ROWS = _params()


# -- the one summary line ------------------------------------------------------------------------------------------
class _MatrixSummary:
    """Counts the matrix rows and prints ``MATRIX: N combinations run / P passed / F failed`` after the run."""

    name = "memsafe-matrix-summary"

    def __init__(self):
        self.outcome: dict[str, str] = {}

    def pytest_runtest_logreport(self, report):
        if "::test_combination[" not in report.nodeid:
            return
        if report.failed:
            self.outcome[report.nodeid] = "failed"
        elif report.when == "call":
            self.outcome[report.nodeid] = "xfailed" if hasattr(report, "wasxfail") else "passed"
        elif report.skipped and report.when == "setup":
            self.outcome.setdefault(report.nodeid, "skipped")

    def pytest_terminal_summary(self, terminalreporter):
        counts = {k: sum(v == k for v in self.outcome.values()) for k in ("passed", "failed", "xfailed", "skipped")}
        run = counts["passed"] + counts["failed"] + counts["xfailed"]
        terminalreporter.write_line(
            f"MATRIX: {run} combinations run / {counts['passed']} passed / {counts['failed'] + counts['xfailed']} failed"
            + (f" ({counts['xfailed']} marked xfail)" if counts["xfailed"] else ""), bold=True)


@pytest.fixture(scope="module", autouse=True)
def _summary(request):
    pm = request.config.pluginmanager
    if not pm.has_plugin(_MatrixSummary.name):
        pm.register(_MatrixSummary(), _MatrixSummary.name)


@pytest.fixture(scope="module")
def kinds(tmp_path_factory):
    from host import build_kind

    tmp, cache = tmp_path_factory.mktemp("matrix-models"), {}

    def get(name):
        if name not in cache:
            cache[name] = build_kind(name, Path(tmp))
        return cache[name]
    return get


# -- one row -------------------------------------------------------------------------------------------------------
def _sample(path, model, kind, row, noise, latent, sigmas, settings, probe=None):
    """One run through the guider node (+ guider.sample) or the model-patch node (+ comfy.sample.sample).

    A probe instruments the pack's own clone in place (see Probe.attach).
    """
    import comfy.sample
    import comfy.samplers

    from memsafe_cfg.nodes.adapter import find_handle
    from memsafe_cfg.nodes.guider import MemSafeCFGGuider
    from memsafe_cfg.nodes.patch import MemSafeCFGPatch

    if path == "guider":
        if settings is None:
            guider = comfy.samplers.CFGGuider(model)
            guider.set_conds(kind.positive, kind.negative)
            guider.set_cfg(CFG)
        else:
            guider = MemSafeCFGGuider.execute(model, kind.positive, kind.negative, CFG, **settings).result[0]
        if probe is not None:
            probe.attach(guider.model_patcher, in_place=True)
        callback = probe.callback if probe is not None else None
        out = guider.sample(noise.clone(), latent.clone(), comfy.samplers.sampler_object(row["sampler"]), sigmas.clone(),
                            callback=callback, disable_pbar=True, seed=SEED)
        return out, (find_handle(guider=guider) if settings is not None else None)
    patched = model if settings is None else MemSafeCFGPatch.execute(model, **settings).result[0]
    if probe is not None:
        probe.attach(patched, in_place=True)
    callback = probe.callback if probe is not None else None
    out = comfy.sample.sample(patched, noise.clone(), row["steps"], CFG, row["sampler"], row["scheduler"], kind.positive,
                              kind.negative, latent.clone(), denoise=row["denoise"], seed=SEED, callback=callback, disable_pbar=True)
    return out, (find_handle(model=patched) if settings is not None else None)


def schedule(row, model) -> torch.Tensor:
    """The sigmas this row runs: BasicScheduler's for the guider, KSampler's (penultimate dropped for some) for the patch."""
    import comfy.samplers
    from comfy_extras.nodes_custom_sampler import BasicScheduler

    if row["path"] == "guider":
        return BasicScheduler().get_sigmas(model, row["scheduler"], row["steps"], row["denoise"])[0].float()
    ks = comfy.samplers.KSampler(model, steps=row["steps"], device=model.load_device, sampler=row["sampler"],
                                 scheduler=row["scheduler"], denoise=row["denoise"])
    return ks.sigmas.detach().float().cpu().clone()


def guard_steps(sigmas: torch.Tensor, percent_to_sigma, settings: dict) -> tuple[int, int]:
    """The documented guards, read off the schedule: (earliest, latest) step, compared in sigma as ComfyUI does."""
    n = len(sigmas) - 1

    def at(p):
        s = float(percent_to_sigma(p))
        return next((i for i in range(n) if float(sigmas[i]) <= s), n)
    earliest = at(settings["earliest_percent"])
    return earliest, min(max(at(settings["latest_percent"]), earliest), n - 1)


def in_band(sigma: float, sigmas: torch.Tensor, k: int) -> bool:
    """Is sigma inside step k's band (sigma_k+1, sigma_k]? An evaluation exactly at sigma_k+1 is step k+1's."""
    hi, lo = float(sigmas[k]), float(sigmas[k + 1])
    return lo * (1 + 1e-5) + 1e-9 < sigma <= hi * (1 + 1e-5)


def check_dynamic(row, trace, probe, sigmas, percent_to_sigma, out, latent):
    """Everything a dynamic run must satisfy, checked against what the probe saw ComfyUI do."""
    from memsafe_cfg.guidance import NEVER

    B, n = row["batch"], len(sigmas) - 1
    assert out.shape == latent.shape and bool(torch.isfinite(out).all()), "non-finite or misshaped latents"
    assert trace.steps == n and trace.batch == B
    assert torch.equal(trace.sigmas, sigmas), f"trace schedule {trace.sigmas.tolist()} != run {sigmas.tolist()}"
    evals = probe.evals
    assert evals and all(e.uncond is not None and e.denoised is not None for e in evals), "uncond pass skipped"

    # Applied scales: each evaluation is a CFG combination at before (-2) or cfg (5), latched per sample.
    applied = torch.stack([e.scale() for e in evals])  # [evals, B]
    is_cfg = (applied - CFG).abs() < 0.05 * CFG
    is_before = (applied - BEFORE).abs() < 0.05 * abs(BEFORE)
    assert bool((is_cfg | is_before).all()), f"applied scales not in {{{BEFORE}, {CFG}}}: {applied.tolist()}"
    assert bool((is_cfg.int().diff(dim=0) >= 0).all()), "a sample went back from cfg to guidance_before"

    # Visited steps: finite norms exactly there; schedule-following samplers visit every step.
    finite = torch.isfinite(trace.norms)
    assert torch.equal(finite.all(1), trace.visited) and torch.equal(finite.any(1), trace.visited)
    if row["sampler"] not in OFF_SCHEDULE:
        assert bool(trace.visited.all()), f"unvisited steps {(~trace.visited).nonzero().flatten().tolist()}"
    for k in range(n):
        if not bool(trace.visited[k]):
            if any(in_band(e.sigma, sigmas, k) for e in evals):
                raise StepAttributionError(f"step {k}: the sampler evaluated inside its band but the trace has no point")
            continue
        assert bool((trace.scales[k] == CFG).logical_or(trace.scales[k] == BEFORE).all())
        # The point is one real evaluation's norm of the raw predictions ...
        match = [e for e in evals if torch.allclose(e.norm(), trace.norms[k], rtol=NORM_RTOL, atol=0.0)]
        assert match, f"step {k}: norm {trace.norms[k].tolist()} is no evaluation's raw guidance norm"
        # ... taken inside that step's band (at sigma_k itself for every sampler that evaluates there).
        match = [e for e in match if in_band(e.sigma, sigmas, k)] or match
        if not in_band(match[0].sigma, sigmas, k):
            raise StepAttributionError(f"step {k} (sigma {float(sigmas[k]):.4g}) was measured at sigma {match[0].sigma:.4g}")

    # Switches: inside [earliest, latest], recorded scales agree, and the first cfg evaluation sits at that step.
    earliest, latest = guard_steps(sigmas, percent_to_sigma, DYNAMIC)
    reached_latest = any(e.sigma <= float(sigmas[latest]) * (1 + 1e-4) for e in evals)
    for b in range(B):
        k = int(trace.switch_step[b])
        if k == NEVER:
            assert not bool(is_cfg[:, b].any()), f"sample {b}: cfg applied but the trace says never switched"
            if reached_latest:
                raise StepAttributionError(f"sample {b}: never switched although the run reached the latest guard (step {latest})")
            continue
        assert earliest <= k <= latest, f"sample {b}: switch at step {k} outside guards [{earliest}, {latest}]"
        vis = trace.visited.nonzero().flatten()
        assert bool((trace.scales[vis, b] == torch.where(vis >= k, CFG, BEFORE)).all()), f"sample {b}: scales vs switch"
        assert bool(is_cfg[:, b].any()), f"sample {b}: switched at step {k} but cfg was never applied"
        first = evals[int(is_cfg[:, b].float().argmax())]
        if not in_band(first.sigma, sigmas, k):
            raise StepAttributionError(f"sample {b}: switched at step {k} (sigma {float(sigmas[k]):.4g}) but cfg "
                                       f"first applied at sigma {first.sigma:.4g}")


@pytest.mark.parametrize("row", ROWS)
def test_combination(row, kinds):
    import comfy.sample

    from host import Probe

    kind = kinds(row["model"])
    base = kind.model
    latent = kind.latent(row["batch"], empty=row["denoise"] == 1.0)
    noise = comfy.sample.prepare_noise(latent, SEED)
    sigmas = schedule(row, base)

    # transition "off" equals stock CFG on the unpatched model, bit for bit
    stock, _ = _sample(row["path"], base, kind, row, noise, latent, sigmas, None)
    off, _ = _sample(row["path"], base, kind, row, noise, latent, sigmas, OFF)
    assert torch.equal(off, stock), f"off differs from stock CFG by {float((off - stock).abs().max())}"

    probe = Probe()
    out, handle = _sample(row["path"], base, kind, row, noise, latent, sigmas, DYNAMIC, probe)
    trace = handle.trace_for(out)
    check_dynamic(row, trace, probe, sigmas, base.get_model_object("model_sampling").percent_to_sigma, out, latent)


def test_design_covers_every_pair():
    """The design itself: eps has every sampler x scheduler, and every pair of factor values appears in some row."""
    samplers = _samplers()
    rows = design(samplers)
    factors = dict(sampler=samplers, scheduler=SCHEDULERS, model=MODELS, batch=BATCHES, denoise=DENOISES, path=PATHS, steps=STEPS)
    assert {(r["sampler"], r["scheduler"]) for r in rows if r["model"] == "eps"} == set(itertools.product(samplers, SCHEDULERS))
    for a, b in itertools.combinations(factors, 2):
        seen = {(r[a], r[b]) for r in rows}
        assert seen == set(itertools.product(factors[a], factors[b])), f"pairs of {a} x {b} missing"


# -- step attribution, one test per kind of sampler ---------------------------------------------
def _watched(kinds, sampler, steps, settings, model="eps", scheduler="normal"):
    """One watched guider run: (trace, probe, sigmas, percent_to_sigma)."""
    import comfy.sample

    from host import Probe

    kind = kinds(model)
    row = dict(sampler=sampler, scheduler=scheduler, model=model, batch=1, denoise=1.0, path="guider", steps=steps)
    latent = kind.latent(1)
    sigmas = schedule(row, kind.model)
    probe = Probe()
    out, handle = _sample("guider", kind.model, kind, row, comfy.sample.prepare_noise(latent, SEED), latent, sigmas, settings, probe)
    return handle.trace_for(out), probe, sigmas, kind.model.get_model_object("model_sampling").percent_to_sigma


STATIC = dict(DYNAMIC, transition="static", switch_percent=0.5)


@pytest.mark.parametrize("sampler", ["dpm_2", "dpmpp_sde", "seeds_3", "sa_solver_pece"])
def test_step_attribution_after_callback(kinds, sampler):
    """Step k is what the sampler reports as step k: its point is the evaluation whose result the callback got,
    and an evaluation after callback(k) at a sigma above sigma_k+1 is still guided with step k's scale."""
    trace, probe, sigmas, _ = _watched(kinds, sampler, 4, STATIC)
    ev = probe.evals
    for k, reported in enumerate(probe.callback_denoised):
        own = next(e for e in ev if e.denoised is not None and torch.equal(e.denoised, reported))
        assert torch.allclose(own.norm(), trace.norms[k], rtol=NORM_RTOL, atol=0), f"step {k}: the point is not the sampler's step-{k} evaluation"
    for e in ev:
        k = max(j for j in range(trace.steps) if float(sigmas[j]) >= e.sigma * (1 - 1e-5))
        assert abs(float(e.scale()[0]) - float(trace.scales[k, 0])) < 0.05 * CFG, f"sigma {e.sigma:.4g} guided as another step"


@pytest.mark.parametrize("sampler", OFF_SCHEDULE)
def test_step_attribution_off_schedule(kinds, sampler):
    """dpm_fast reports one callback per solver segment (lags the schedule), dpm_adaptive one per attempted step
    (runs ahead of it). A static switch must still fall between switch_percent's sigma and its step's sigma
    (never above the first, always from the second on), and each trace point must come from its own band."""
    trace, probe, sigmas, p2s = _watched(kinds, sampler, 10, STATIC)
    static = guard_steps(sigmas, p2s, dict(STATIC, earliest_percent=STATIC["switch_percent"]))[0]
    sigma_pct, sigma_step = float(p2s(STATIC["switch_percent"])), float(sigmas[static])
    got = [(round(e.sigma, 3), round(float(e.scale()[0]), 1)) for e in probe.evals]
    assert all(s == BEFORE for sig, s in got if sig > sigma_pct * (1 + 1e-5)), f"cfg above {sigma_pct:.4g}: {got}"
    assert all(s == CFG for sig, s in got[next(j for j, (sg, _) in enumerate(got) if sg < sigma_step):]), \
        f"guidance_before below step {static}'s sigma {sigma_step:.4g}: {got}"
    for k in trace.visited.nonzero().flatten().tolist():
        own = [e for e in probe.evals if torch.allclose(e.norm(), trace.norms[k], rtol=NORM_RTOL, atol=0)]
        assert own and in_band(own[0].sigma, sigmas, k), f"step {k}'s point: sigma {[e.sigma for e in own]}"
