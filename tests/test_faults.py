"""Faults and bad input (issue 4, host tier): interrupts, reuse, odd schedules, extreme settings, odd
conditioning, inpainting, NaN models, invalid settings (node and /prompt), trace paths, other CFG patches, cfg 1.

Real ComfyUI on tiny generated models; every run is watched from outside by ``host.Probe``.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.host

CFG, BEFORE, SEED = 5.0, -2.0, 3
DYNAMIC = dict(guidance_before=BEFORE, transition="dynamic", switch_percent=0.5, earliest_percent=0.2,
               latest_percent=0.8, detect_threshold=0.0)
STATIC = dict(DYNAMIC, transition="static")
OFF = dict(DYNAMIC, transition="off")


@pytest.fixture(scope="module")
def eps(tmp_path_factory):
    from host import build_kind, import_comfy

    import_comfy()
    return build_kind("eps", Path(tmp_path_factory.mktemp("faults")))


def pack():
    from memsafe_cfg.guidance import NEVER, NonFiniteGuidance
    from memsafe_cfg.nodes import adapter
    from memsafe_cfg.nodes.curve import MemSafeGuidanceCurve, write_trace
    from memsafe_cfg.nodes.guider import MemSafeCFGGuider
    from memsafe_cfg.nodes.ksampler import MemSafeKSampler
    from memsafe_cfg.nodes.patch import MemSafeCFGPatch

    return dict(NEVER=NEVER, NonFiniteGuidance=NonFiniteGuidance, find_handle=adapter.find_handle, Guider=MemSafeCFGGuider,
                KSampler=MemSafeKSampler, Patch=MemSafeCFGPatch, Curve=MemSafeGuidanceCurve, write_trace=write_trace)


def sigmas_for(model, steps=4, scheduler="normal", sampler="euler", denoise=1.0):
    import comfy.samplers

    return comfy.samplers.KSampler(model, steps=steps, device="cpu", sampler=sampler, scheduler=scheduler, denoise=denoise).sigmas.clone()


def guide(model, kind, settings, cfg=CFG, positive=None, negative=None):
    """The guider node's GUIDER (settings None: stock CFGGuider)."""
    import comfy.samplers

    pos, neg = positive or kind.positive, negative or kind.negative
    if settings is None:
        g = comfy.samplers.CFGGuider(model)
        g.set_conds(pos, neg)
        g.set_cfg(cfg)
        return g
    return pack()["Guider"].execute(model, pos, neg, cfg, **settings).result[0]


def run(guider, latent, sigmas, sampler="euler", seed=SEED, callback=None, denoise_mask=None):
    import comfy.sample
    import comfy.samplers

    noise = comfy.sample.prepare_noise(latent, seed)
    return guider.sample(noise, latent.clone(), comfy.samplers.sampler_object(sampler), sigmas.clone(), denoise_mask=denoise_mask,
                         callback=callback, disable_pbar=True, seed=seed)


def traces_equal(a, b) -> bool:
    return (torch.equal(a.sigmas, b.sigmas) and torch.equal(a.visited, b.visited) and torch.equal(a.switch_step, b.switch_step)
            and torch.allclose(a.norms, b.norms, rtol=0, atol=0, equal_nan=True)
            and torch.allclose(a.scales, b.scales, rtol=0, atol=0, equal_nan=True))


def check_watched(trace, probe, before=BEFORE, cfg=CFG):
    """Single-evaluation samplers: step k's point is evaluation k's raw norm, and each evaluation got its step's scale."""
    assert len(probe.evals) == trace.steps and bool(trace.visited.all())
    for k, e in enumerate(probe.evals):
        assert torch.allclose(e.norm(), trace.norms[k], rtol=1e-5, atol=0), f"step {k}: norm not from the raw predictions"
        assert torch.allclose(e.scale(), trace.scales[k], rtol=1e-2, atol=1e-2), f"step {k}: applied {e.scale()} vs {trace.scales[k]}"
        assert bool(((trace.scales[k] == cfg) | (trace.scales[k] == before)).all())


# -- interrupts, reuse ------------------------------------------------------------------------------------------
def _interrupt():
    """What ComfyUI's progress hook does when the user presses Cancel."""
    import comfy.model_management as mm

    mm.interrupt_current_processing(True)
    mm.throw_exception_if_processing_interrupted()


def test_interrupt_from_callback_then_rerun_is_clean(eps):
    import comfy.model_management as mm

    p = pack()
    latent, sig = eps.latent(2), sigmas_for(eps.model, 6)
    g = guide(eps.model, eps, DYNAMIC)
    handle = p["find_handle"](guider=g)

    def cancel_at_3(step, x0, x, total):
        if step == 3:
            _interrupt()
    try:
        with pytest.raises(mm.InterruptProcessingException):
            run(g, latent, sig, callback=cancel_at_3)
    finally:
        mm.interrupt_current_processing(False)
    assert not handle.recent, "an interrupted run left a trace behind"
    out = run(g, latent, sig)
    fresh = guide(eps.model, eps, DYNAMIC)
    ref = run(fresh, latent, sig)
    trace = handle.trace_for(out)
    assert len(handle.recent) == 1 and bool(trace.visited.all()) and torch.equal(out, ref)
    assert traces_equal(trace, p["find_handle"](guider=fresh).trace_for(ref)), "the rerun's trace carries state from the cancelled run"


def test_interrupt_mid_step_from_model_wrapper_then_rerun_is_clean(eps):
    """Cancelled inside a heun step (between its two evaluations), through the model patch and comfy.sample."""
    import comfy.model_management as mm
    import comfy.sample

    p = pack()
    latent = eps.latent(1)
    noise = comfy.sample.prepare_noise(latent, SEED)
    calls = []

    def cancel_on_4th(apply_model, args):
        calls.append(1)
        if len(calls) == 4:
            _interrupt()
        return apply_model(args["input"], args["timestep"], **args["c"])

    m = eps.model.clone()
    m.set_model_unet_function_wrapper(cancel_on_4th)
    patched = p["Patch"].execute(m, **DYNAMIC).result[0]

    def sample(model):
        return comfy.sample.sample(model, noise, 5, CFG, "heun", "karras", eps.positive, eps.negative, latent, seed=SEED, disable_pbar=True)
    try:
        with pytest.raises(mm.InterruptProcessingException):
            sample(patched)
    finally:
        mm.interrupt_current_processing(False)
    handle = p["find_handle"](model=patched)
    assert not handle.recent
    out = sample(patched)
    fresh = p["Patch"].execute(eps.model, **DYNAMIC).result[0]
    ref = sample(fresh)
    assert torch.equal(out, ref) and traces_equal(handle.trace_for(out), p["find_handle"](model=fresh).trace_for(ref))


def test_cached_guider_new_seed_gets_its_own_trace(eps):
    p = pack()
    latent, sig = eps.latent(2), sigmas_for(eps.model, 5)
    g = guide(eps.model, eps, DYNAMIC)
    handle = p["find_handle"](guider=g)
    outs = {seed: run(g, latent, sig, seed=seed) for seed in (1, 2)}
    assert not torch.equal(outs[1], outs[2])
    for seed, out in outs.items():
        fresh = guide(eps.model, eps, DYNAMIC)
        ref = run(fresh, latent, sig, seed=seed)
        assert torch.equal(out, ref)
        assert traces_equal(handle.trace_for(out), p["find_handle"](guider=fresh).trace_for(ref)), f"seed {seed}"
    assert not torch.equal(handle.trace_for(outs[1]).norms, handle.trace_for(outs[2]).norms)


def test_one_patched_model_base_then_refine_in_one_graph(eps):
    """MemSafeCFGPatch -> KSampler (base) -> KSampler (refine, denoise 0.5) -> a curve node per pass."""
    import nodes as comfy_nodes

    p = pack()
    patched = p["Patch"].execute(eps.model, **DYNAMIC).result[0]
    empty = {"samples": eps.latent(2)}

    def two_passes(model):
        (base,) = comfy_nodes.common_ksampler(model, SEED, 4, CFG, "euler", "normal", eps.positive, eps.negative, empty)
        (refine,) = comfy_nodes.common_ksampler(model, SEED + 1, 4, CFG, "dpmpp_2m", "karras", eps.positive, eps.negative, base, denoise=0.5)
        return base, refine
    base, refine = two_passes(patched)
    curve = {name: p["Curve"].execute(lat, "panels", False, "x", model=patched).result[1] for name, lat in (("base", base), ("refine", refine))}
    assert torch.equal(curve["base"].sigmas, sigmas_for(eps.model, 4).float())
    assert torch.equal(curve["refine"].sigmas, sigmas_for(eps.model, 4, "karras", "dpmpp_2m", 0.5).float())
    fresh_base, fresh_refine = (p["Patch"].execute(eps.model, **DYNAMIC).result[0] for _ in range(2))
    (ref_base,) = comfy_nodes.common_ksampler(fresh_base, SEED, 4, CFG, "euler", "normal", eps.positive, eps.negative, empty)
    (ref_refine,) = comfy_nodes.common_ksampler(fresh_refine, SEED + 1, 4, CFG, "dpmpp_2m", "karras", eps.positive, eps.negative, ref_base, denoise=0.5)
    assert traces_equal(curve["base"], p["find_handle"](model=fresh_base).trace_for(ref_base["samples"]))
    assert traces_equal(curve["refine"], p["find_handle"](model=fresh_refine).trace_for(ref_refine["samples"]))


def test_one_guider_base_then_refine(eps):
    p = pack()
    latent = eps.latent(1)
    g = guide(eps.model, eps, DYNAMIC)
    base = run(g, latent, sigmas_for(eps.model, 4))
    refine_sigmas = sigmas_for(eps.model, 3, denoise=0.5)
    refine = run(g, base, refine_sigmas, sampler="dpmpp_2m", seed=SEED + 1)
    handle = p["find_handle"](guider=g)
    assert handle.trace_for(base).steps == 4 and handle.trace_for(refine).steps == 3
    assert torch.equal(handle.trace_for(refine).sigmas, refine_sigmas.float())
    fresh = guide(eps.model, eps, DYNAMIC)
    assert traces_equal(handle.trace_for(refine), p["find_handle"](guider=fresh).trace_for(run(fresh, base, refine_sigmas, "dpmpp_2m", SEED + 1)))


# -- odd schedules ----------------------------------------------------------------------------------------------
def _watched(kind, settings, sigmas, sampler="euler", batch=2, cfg=CFG, denoise_mask=None, latent=None, **conds):
    from host import Probe

    probe = Probe()
    g = guide(kind.model, kind, settings, cfg, **conds)
    probe.attach(g.model_patcher, in_place=True)  # the pack's own clone: no clone-of-a-clone (see Probe.attach)
    latent = kind.latent(batch) if latent is None else latent
    out = run(g, latent, sigmas, sampler, callback=probe.callback, denoise_mask=denoise_mask)
    return out, pack()["find_handle"](guider=g).trace_for(out), probe


def _stock_equals_off(kind, sigmas, sampler="euler", batch=2, cfg=CFG, denoise_mask=None, latent=None, **conds):
    latent = kind.latent(batch) if latent is None else latent
    stock = run(guide(kind.model, kind, None, cfg, **conds), latent, sigmas, sampler, denoise_mask=denoise_mask)
    off = run(guide(kind.model, kind, OFF, cfg, **conds), latent, sigmas, sampler, denoise_mask=denoise_mask)
    assert torch.equal(stock, off)
    return stock


@pytest.mark.parametrize("sampler", ["euler", "euler_ancestral", "dpmpp_2m"])
def test_restart_style_schedule_switch_latches(eps, sampler):
    """Sigma rises mid-run (restart-style): the static switch falls at the first crossing and stays (switches latch)."""
    sig = torch.tensor([14.6, 4.0, 1.0, 6.0, 1.5, 0.3, 0.0])
    _stock_equals_off(eps, sig, sampler)
    out, trace, probe = _watched(eps, STATIC, sig, sampler)
    assert bool(torch.isfinite(out).all())
    check_watched(trace, probe)
    assert [e.sigma for e in probe.evals] == pytest.approx(sig[:-1].tolist(), rel=1e-6)
    assert trace.switch_step.tolist() == [2, 2]  # first step at or below percent_to_sigma(0.5) = 1.6156
    assert bool((trace.scales[2:] == CFG).all()) and bool((trace.scales[:2] == BEFORE).all())


@pytest.mark.parametrize("sig", [[14.6, 3.0, 3.0, 1.0, 0.0], [3.0, 14.6, 1.0, 5.0, 0.2, 0.0]], ids=["repeated", "unsorted"])
@pytest.mark.parametrize("settings", [DYNAMIC, STATIC], ids=["dynamic", "static"])
def test_custom_sigmas_repeated_or_unsorted(eps, sig, settings):
    """Repeated and unsorted SIGMAS run like stock: a point per step at that step's sigma, switches latched."""
    sig = torch.tensor(sig)
    _stock_equals_off(eps, sig)
    out, trace, probe = _watched(eps, settings, sig)
    assert bool(torch.isfinite(out).all())
    check_watched(trace, probe)
    assert [e.sigma for e in probe.evals] == pytest.approx(sig[:-1].tolist(), rel=1e-6)
    assert bool((trace.switch_step >= 0).all()), "a sample was never switched although latest is a real step"


@pytest.mark.parametrize("steps", [1, 2, 3])
@pytest.mark.parametrize("sampler", ["euler", "heun", "dpmpp_2m"])
def test_few_steps_dynamic(eps, steps, sampler):
    """1-3 steps through the stock KSampler path: one step means latest clamps to step 0, so plain cfg from the start."""
    import comfy.sample

    from host import Probe

    p, probe = pack(), Probe()
    latent = eps.latent(2)
    patched = probe.attach(p["Patch"].execute(eps.model, **DYNAMIC).result[0], in_place=True)
    out = comfy.sample.sample(patched, comfy.sample.prepare_noise(latent, SEED), steps, CFG, sampler, "normal", eps.positive,
                              eps.negative, latent, seed=SEED, callback=probe.callback, disable_pbar=True)
    trace = p["find_handle"](model=patched).trace_for(out)
    assert bool(torch.isfinite(out).all()) and trace.steps == steps and bool(trace.visited.all())
    assert bool((trace.switch_step >= 0).all()) and bool((trace.switch_step <= steps - 1).all())
    if steps == 1:
        assert trace.switch_step.tolist() == [0, 0]
        assert all(torch.allclose(e.scale(), torch.full((2,), CFG), atol=1e-2) for e in probe.evals)
    if sampler == "euler":
        check_watched(trace, probe)


# -- extreme settings, odd conditioning, inpainting ---------------------------------------------------------------
@pytest.mark.parametrize("cfg", [0.0, 1.0, 100.0])
def test_cfg_extremes(eps, cfg):
    sig = sigmas_for(eps.model, 5)
    _stock_equals_off(eps, sig, cfg=cfg)
    out, trace, probe = _watched(eps, DYNAMIC, sig, cfg=cfg)
    assert bool(torch.isfinite(out).all()) and bool(torch.isfinite(trace.norms).all())
    assert all(e.uncond is not None for e in probe.evals), "uncond pass skipped"
    check_watched(trace, probe, cfg=cfg)
    assert bool((trace.switch_step >= 0).all())


@pytest.mark.parametrize("before", [-10.0, 10.0])
def test_guidance_before_at_widget_limits(eps, before):
    out, trace, probe = _watched(eps, dict(DYNAMIC, guidance_before=before), sigmas_for(eps.model, 5))
    assert bool(torch.isfinite(out).all())
    check_watched(trace, probe, before=before)
    assert bool((trace.scales[0] == before).all())


def _conditionings(kind):
    import nodes as comfy_nodes
    from host import eps_conditioning

    mask = torch.zeros(1, 8, 8)
    mask[:, :, 4:] = 1.0
    area = comfy_nodes.ConditioningSetArea().append(kind.positive, 32, 64, 32, 0, 1.0)[0]
    return {
        "area": dict(positive=comfy_nodes.ConditioningCombine().combine(kind.positive, area)[0]),
        "mask": dict(positive=comfy_nodes.ConditioningCombine().combine(
            kind.positive, comfy_nodes.ConditioningSetMask().append(kind.negative, mask, "default", 1.0)[0])[0]),
        "mask_bounds": dict(positive=comfy_nodes.ConditioningSetMask().append(kind.positive, mask, "mask bounds", 0.8)[0]),
        "several": dict(positive=comfy_nodes.ConditioningCombine().combine(kind.positive, eps_conditioning(1, 3))[0],
                        negative=comfy_nodes.ConditioningCombine().combine(kind.negative, eps_conditioning(1, 4))[0]),
        "zero_negative": dict(negative=comfy_nodes.ConditioningZeroOut().zero_out(kind.positive)[0]),
    }


@pytest.mark.parametrize("variant", ["area", "mask", "mask_bounds", "several", "zero_negative"])
def test_conditioning_variants(eps, variant):
    conds = _conditionings(eps)[variant]
    sig = sigmas_for(eps.model, 4)
    _stock_equals_off(eps, sig, **conds)
    out, trace, probe = _watched(eps, DYNAMIC, sig, **conds)
    assert bool(torch.isfinite(out).all())
    check_watched(trace, probe)


@pytest.mark.parametrize("path", ["guider", "patch"])
def test_inpainting_with_noise_mask(eps, path):
    import comfy.sample

    from host import Probe

    latent = eps.latent(2, empty=False)
    mask = torch.zeros(1, 1, 8, 8)
    mask[..., 2:6, 2:6] = 1.0
    if path == "guider":
        sig = sigmas_for(eps.model, 4)
        _stock_equals_off(eps, sig, latent=latent, denoise_mask=mask)
        out, trace, probe = _watched(eps, DYNAMIC, sig, latent=latent, denoise_mask=mask)
    else:
        p, probe = pack(), Probe()
        noise = comfy.sample.prepare_noise(latent, SEED)

        def sample(model, cb=None):
            return comfy.sample.sample(model, noise, 4, CFG, "euler", "normal", eps.positive, eps.negative, latent, noise_mask=mask,
                                       seed=SEED, callback=cb, disable_pbar=True)
        assert torch.equal(sample(eps.model), sample(p["Patch"].execute(eps.model, **OFF).result[0]))
        patched = probe.attach(p["Patch"].execute(eps.model, **DYNAMIC).result[0], in_place=True)
        out = sample(patched, probe.callback)
        trace = p["find_handle"](model=patched).trace_for(out)
    assert bool(torch.isfinite(out).all())
    check_watched(trace, probe)
    keep = mask.expand_as(latent) == 0
    assert torch.allclose(out[keep], latent[keep], atol=1e-4), "the unmasked region changed"


# -- a model that returns NaN / inf ---------------------------------------------------------------------------------
@pytest.mark.parametrize("bad", [float("nan"), float("inf")], ids=["nan", "inf"])
@pytest.mark.parametrize("path", ["guider", "patch", "ksampler_node"])
def test_non_finite_model_output_names_step_and_sample(eps, bad, path):
    import comfy.sample

    p = pack()
    k, b = 2, 1

    def poison(apply_model, args):
        out = apply_model(args["input"], args["timestep"], **args["c"])
        poison.calls += 1
        if poison.calls == k + 1:  # euler: one batched call (cond + uncond) per step
            out = out.clone()
            n = out.shape[0] // len(args["cond_or_uncond"])
            at = args["cond_or_uncond"].index(0) * n + b
            out[at] = bad
        return out
    poison.calls = 0
    m = eps.model.clone()
    m.set_model_unet_function_wrapper(poison)
    latent = eps.latent(2)
    with pytest.raises(p["NonFiniteGuidance"], match=rf"at step {k} \(sigma [^)]*\) for sample {b} of the batch"):
        if path == "guider":
            run(guide(m, eps, DYNAMIC), latent, sigmas_for(eps.model, 5))
        elif path == "patch":
            comfy.sample.sample(p["Patch"].execute(m, **DYNAMIC).result[0], comfy.sample.prepare_noise(latent, SEED), 5, CFG,
                                "euler", "normal", eps.positive, eps.negative, latent, seed=SEED, disable_pbar=True)
        else:
            p["KSampler"].execute(m, SEED, 5, CFG, "euler", "normal", eps.positive, eps.negative, {"samples": latent}, **DYNAMIC)
    assert poison.calls == 5, "sampling stopped early: the error should come after the run, naming the step"


# -- invalid settings ---------------------------------------------------------------------------------------------
BAD = [
    (dict(earliest_percent=0.6, latest_percent=0.3), "latest_percent"),
    (dict(switch_percent=1.5), "switch_percent"),
    (dict(earliest_percent=-0.1), "earliest_percent"),
    (dict(latest_percent=1.01), "latest_percent"),
    (dict(detect_threshold=-1.0), "detect_threshold"),
    (dict(transition="sometimes"), "transition"),
    (dict(guidance_before=float("nan")), "guidance_before"),
]


@pytest.mark.parametrize("bad,name", BAD, ids=[n + "-" + "-".join(map(str, b.values())) for b, n in BAD])
def test_invalid_settings_rejected_before_sampling_by_every_node(eps, bad, name):
    p = pack()
    calls = []

    def count(apply_model, args):
        calls.append(1)
        return apply_model(args["input"], args["timestep"], **args["c"])
    m = eps.model.clone()
    m.set_model_unet_function_wrapper(count)
    settings = dict(DYNAMIC, **bad)
    latent = {"samples": eps.latent(1)}
    attempts = {
        "guider": lambda: p["Guider"].execute(m, eps.positive, eps.negative, CFG, **settings),
        "patch": lambda: p["Patch"].execute(m, **settings),
        "ksampler": lambda: p["KSampler"].execute(m, SEED, 3, CFG, "euler", "normal", eps.positive, eps.negative, latent, **settings),
    }
    for node, attempt in attempts.items():
        with pytest.raises(ValueError, match=name):
            attempt()
        cls = {"guider": p["Guider"], "patch": p["Patch"], "ksampler": p["KSampler"]}[node]
        verdict = cls.validate_inputs(**settings)
        assert isinstance(verdict, str) and name in verdict, f"{node}.validate_inputs: {verdict!r}"
    assert not calls, "the model ran before the settings were rejected"


@pytest.mark.parametrize("bad,name", BAD[:-1], ids=[n + "-" + "-".join(map(str, b.values())) for b, n in BAD[:-1]])
def test_invalid_settings_rejected_by_prompt_validation(comfy_server, bad, name):
    prompt = {"1": {"class_type": "UNETLoader", "inputs": {"unet_name": "tiny_sd3.safetensors", "weight_dtype": "default"}},
              "2": {"class_type": "MemSafeCFGPatch", "inputs": {"model": ["1", 0], **dict(DYNAMIC, **bad)}},
              "3": {"class_type": "MemSafeGuidanceCurve", "inputs": {"latent": ["4", 0], "model": ["2", 0], "layout": "panels",
                                                                     "save_trace": False, "filename_prefix": "x"}},
              "4": {"class_type": "EmptySD3LatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}}}
    queued_before = comfy_server.get("/queue")
    status, body = comfy_server.post("/prompt", {"prompt": prompt})
    assert status == 400, body
    errors = body["node_errors"]["2"]["errors"]
    assert any(name in json.dumps(e) for e in errors), errors
    assert comfy_server.get("/queue") == queued_before


# -- trace file names ---------------------------------------------------------------------------------------------
@pytest.fixture
def output_dir(tmp_path):
    import folder_paths

    old, out = folder_paths.get_output_directory(), tmp_path / "output"
    out.mkdir()
    folder_paths.set_output_directory(str(out))
    yield out
    folder_paths.set_output_directory(old)


@pytest.mark.parametrize("prefix", ["../evil", "memsafe/../../evil", "a/b/../../../evil", "/tmp/memsafe-evil/evil", "..", "ok/../fine"])
def test_trace_filename_stays_in_output_folder(eps, output_dir, prefix):
    p = pack()
    _, trace, _ = _watched(eps, DYNAMIC, sigmas_for(eps.model, 3), batch=1)
    try:
        path = Path(p["write_trace"](trace, prefix)).resolve()
        assert output_dir.resolve() in path.parents, f"{prefix!r} wrote {path}"
        assert path.is_file()
    except ValueError as e:
        assert "filename_prefix" in str(e)
    outside = [f for f in output_dir.parent.rglob("*") if f.is_file() and output_dir not in f.parents]
    assert not outside and not Path("/tmp/memsafe-evil").exists(), outside


def test_curve_node_refuses_escaping_prefix(eps, output_dir):
    p = pack()
    g = guide(eps.model, eps, DYNAMIC)
    out = run(g, eps.latent(1), sigmas_for(eps.model, 3))
    with pytest.raises(ValueError, match="filename_prefix"):
        p["Curve"].execute({"samples": out}, "panels", True, "../../evil", guider=g)
    p["Curve"].execute({"samples": out}, "panels", True, "memsafe/trace", guider=g)
    assert [f.relative_to(output_dir).parts[0] for f in output_dir.rglob("*.safetensors")] == ["memsafe"]


# -- other CFG patches, cfg 1 ---------------------------------------------------------------------------------------
def _other_patches():
    from comfy_extras.nodes_apg import APG
    from comfy_extras.nodes_cfg import CFGNorm, CFGZeroStar
    from comfy_extras.nodes_model_advanced import RescaleCFG

    return {
        "CFGZeroStar": lambda m: CFGZeroStar.execute(m).result[0],
        "CFGNorm": lambda m: CFGNorm.execute(m, 0.5).result[0],
        "APG": lambda m: APG.execute(m, eta=0.0, norm_threshold=2.0, momentum=0.0).result[0],
        "RescaleCFG": lambda m: RescaleCFG().patch(m, 0.7)[0],
    }


@pytest.mark.parametrize("order", ["other_then_memsafe", "memsafe_then_other"])
@pytest.mark.parametrize("other", ["CFGZeroStar", "CFGNorm", "APG", "RescaleCFG"])
def test_stacks_with_core_cfg_patches_and_measures_raw_predictions(eps, other, order):
    import comfy.sample

    from host import Probe

    p = pack()
    latent = eps.latent(2)
    noise = comfy.sample.prepare_noise(latent, SEED)
    patch = _other_patches()[other]

    def sample(model, cb=None):
        return comfy.sample.sample(model, noise, 5, 7.5, "euler", "karras", eps.positive, eps.negative, latent, seed=SEED,
                                   callback=cb, disable_pbar=True)

    alone = p["Patch"].execute(eps.model, **DYNAMIC).result[0]
    out_alone = sample(alone)
    t_alone = p["find_handle"](model=alone).trace_for(out_alone)
    probe = Probe()
    stacked = p["Patch"].execute(patch(eps.model), **DYNAMIC).result[0] if order == "other_then_memsafe" \
        else patch(p["Patch"].execute(eps.model, **DYNAMIC).result[0])
    out = sample(probe.attach(stacked, in_place=True), probe.callback)
    trace = p["find_handle"](model=stacked).trace_for(out)
    assert bool(torch.isfinite(out).all()) and not torch.equal(out, out_alone), f"{other} had no effect"
    assert torch.equal(trace.norms[0], t_alone.norms[0]), "step 0 sees the same x: the norm must not depend on the other patch"
    for k, e in enumerate(probe.evals):  # every step: the norm of the raw predictions, not of another patch's output
        assert torch.allclose(e.norm(), trace.norms[k], rtol=1e-5, atol=0), f"step {k}"


def test_cfg1_patch_forces_the_uncond_pass(eps):
    import comfy.sample

    from host import Probe

    p, probe = pack(), Probe()
    latent = eps.latent(2)
    patched = probe.attach(p["Patch"].execute(eps.model, **dict(DYNAMIC, guidance_before=0.0)).result[0], in_place=True)
    out = comfy.sample.sample(patched, comfy.sample.prepare_noise(latent, SEED), 4, 1.0, "euler", "normal", eps.positive,
                              eps.negative, latent, seed=SEED, callback=probe.callback, disable_pbar=True)
    trace = p["find_handle"](model=patched).trace_for(out)
    assert all(e.uncond is not None for e in probe.evals), "stock's cfg-1 shortcut skipped the uncond pass"
    check_watched(trace, probe, before=0.0, cfg=1.0)
    garbage = (probe.evals[0].cond / probe.evals[0].sigma).square().flatten(1).mean(1).sqrt()  # norm against a zeros uncond
    assert not torch.allclose(trace.norms[0], garbage, rtol=0.1)
