"""Issue 13, host tier: MemSafeMemorizationScan on the real ComfyUI stack (in process): the testbed through the stock
CLIPTextEncode path (the loader's CLIP output), the tiny eps model through the node's evaluation (it has no CLIP)."""
from __future__ import annotations

import pytest
import torch

import host

pytestmark = pytest.mark.host
MEM = "3 thin left wide\n5 bold left wide\n4 thin upright narrow"  # memorized prompts of the shipped data
TESTBED_WORKFLOW = "Memorization Scan - rank the testbed prompts, then sample with the threshold (CPU)"
CLEAN = "3 thin upright narrow\n5 bold upright narrow\n4 thin upright wide\n0 thin upright wide"  # their clean siblings


@pytest.fixture(scope="module")
def testbed(comfy):
    from memsafe_cfg.nodes.testbed import MemSafeTestbedLoader

    out = MemSafeTestbedLoader.execute()
    return tuple(out.args if hasattr(out, "args") else out.result)


def node():
    from memsafe_cfg.nodes.scan import MemSafeMemorizationScan

    return MemSafeMemorizationScan


def run(model, clip, prompts=MEM, **kw):
    args = dict(negative="", seeds_per_prompt=3, first_seed=0, width=128, height=128, scheduler="ddim_uniform", steps=50, score="norm")
    args.update(kw)
    out = node().execute(model, clip, prompts, **args)
    return tuple(out.args if hasattr(out, "args") else out.result)


def counting(model):
    """A clone whose every diffusion-model call is counted (ComfyUI's unet function wrapper)."""
    calls = {"n": 0, "hook": None}
    m = model.clone()

    def wrapper(apply_model, args):
        calls["n"] += 1
        if calls["hook"]:
            calls["hook"]()
        return apply_model(args["input"], args["timestep"], **args["c"])

    m.set_model_unet_function_wrapper(wrapper)
    return m, calls


def test_clip_output_encodes_like_the_testbed_prompt_node(testbed):
    import nodes as comfy_nodes
    from memsafe_cfg.nodes.testbed import MemSafeTestbedPrompt

    _, clip = testbed
    for text in ("3 bold", "seven thin", "", "bold"):
        (cond,) = comfy_nodes.CLIPTextEncode().encode(clip, text)
        ref = MemSafeTestbedPrompt.execute(text)
        ref = (ref.args if hasattr(ref, "args") else ref.result)[0]
        assert torch.equal(cond[0][0], ref[0][0]), text
    with pytest.raises(ValueError, match="not understood"):
        comfy_nodes.CLIPTextEncode().encode(clip, "a cat")


def test_outputs_and_no_threshold_without_clean_list(testbed):
    model, clip = testbed
    chart, report, thr = run(model, clip)
    assert isinstance(chart, torch.Tensor) and chart.dtype == torch.float32 and chart.ndim == 4
    assert chart.shape[0] == 1 and chart.shape[-1] == 3 and 0.0 <= float(chart.min()) <= float(chart.max()) <= 1.0
    assert isinstance(report, str) and isinstance(thr, float)
    assert thr == 0.0
    assert "threshold: none" in report and "detect_threshold = 0" in report
    for p in MEM.splitlines():
        assert p in report


def test_threshold_from_clean_list_and_scan_norm_equals_the_samplers_first_step(testbed):
    from memsafe_cfg.testbed import sampler as tb_sampler
    from memsafe_cfg.testbed.model import parse_prompt

    model, clip = testbed
    chart, report, thr = run(model, clip, clean_prompts=CLEAN, false_positive_rate=0.25, seeds_per_prompt=4)
    assert thr > 0 and "detect_threshold (guidance norm" in report and "clean reference prompts" in report
    # the per-sample norm of '3 bold' equals the first-step norm the plain-torch sampler (euler + ddim_uniform) measures
    from memsafe_cfg.nodes.scan import evaluate, probe_sigmas

    import nodes as comfy_nodes

    (pos,) = comfy_nodes.CLIPTextEncode().encode(clip, "3 bold")
    (neg,) = comfy_nodes.CLIPTextEncode().encode(clip, "")
    first, low, sched = probe_sigmas(model.get_model_object("model_sampling"), "ddim_uniform", 50, True)
    zero = torch.zeros(1, 1, 16, 16)
    out, calls = evaluate(model, pos, neg, zero, [0, 1, 2, 3], first, low, sched)
    G = tb_sampler.guidance.GuidanceSettings
    _, trace = tb_sampler.sample(tb_sampler.load_unet(), parse_prompt("3 bold").expand(4, -1), tb_sampler.noise_for([0, 1, 2, 3]),
                                 G(transition="off"), 5.0, 50, first_step_only=True)
    assert torch.allclose(out["norm"], trace.norms[0], rtol=1e-4, atol=0)
    assert out["alignment"].shape == (4,) and float(out["alignment"].abs().max()) <= 1.0
    assert calls == 2  # both probes, all four seeds in one batch each


def test_norm_plus_alignment_with_memorized_list_fits_the_weight(testbed):
    model, clip = testbed
    _, report, thr = run(model, clip, prompts="2 bold\n2 thin", clean_prompts=CLEAN, false_positive_rate=0.2,
                         memorized_prompts=MEM, score="norm + alignment", seeds_per_prompt=2)
    assert "fitted on 3 known-memorized vs 4 clean prompts" in report and "alignment" in report and thr > 0


BAD = [
    (dict(prompts=""), "prompts"),
    (dict(prompts=" \n\n  "), "prompts"),
    (dict(prompts="\n".join(["3 bold"] * 1001)), "prompts"),
    (dict(seeds_per_prompt=0), "seeds_per_prompt"),
    (dict(seeds_per_prompt=-2), "seeds_per_prompt"),
    (dict(clean_prompts=CLEAN, false_positive_rate=0.0), "false_positive_rate"),
    (dict(clean_prompts=CLEAN, false_positive_rate=1.5), "false_positive_rate"),
    (dict(clean_prompts=CLEAN, false_positive_rate=None), "false_positive_rate"),
    (dict(memorized_prompts=MEM), "memorized_prompts"),
    (dict(score="alignment"), "score"),
    (dict(false_positive_rate=1.5), "false_positive_rate"),
]


@pytest.mark.parametrize("over,name", BAD)
def test_bad_input_is_rejected_before_any_model_call(testbed, over, name):
    model, clip = testbed
    m, calls = counting(model)
    kw = dict(over)
    prompts = kw.pop("prompts", MEM)
    with pytest.raises(ValueError, match=name):
        run(m, clip, prompts, **kw)
    assert calls["n"] == 0
    # and at queue time, through validate_inputs
    v = dict(prompts=prompts, seeds_per_prompt=kw.get("seeds_per_prompt", 3), score=kw.get("score", "norm"),
             clean_prompts=kw.get("clean_prompts", ""), false_positive_rate=kw.get("false_positive_rate", 0.05),
             memorized_prompts=kw.get("memorized_prompts", ""))
    msg = node().validate_inputs(**v)
    assert isinstance(msg, str) and name in msg


def test_unknown_prompt_word_fails_before_the_model_runs(testbed):
    model, clip = testbed
    m, calls = counting(model)
    with pytest.raises(ValueError, match="not understood"):
        run(m, clip, "3 bold\na cat")
    assert calls["n"] == 0


def test_counted_calls_and_cancellation_between_prompts(testbed, comfy):
    import comfy.model_management as mm

    model, clip = testbed
    m, calls = counting(model)
    run(m, clip, MEM, seeds_per_prompt=2)
    assert calls["n"] == 3  # one batched cond + uncond forward per prompt (norm only), the seeds batched
    calls["n"] = 0
    calls["hook"] = lambda: mm.interrupt_current_processing(True)
    try:
        with pytest.raises(mm.InterruptProcessingException):
            run(m, clip, MEM, seeds_per_prompt=2)
    finally:
        mm.interrupt_current_processing(False)
    assert calls["n"] == 1  # stopped before the second prompt


def test_tiny_eps_model_scan_norm_equals_stock_ksampler_first_step(comfy):
    """No CLIP for the tiny model: the node's evaluation is driven with conditionings directly, and its norm must equal
    guidance_norm of the raw predictions the stock sampler produces at its first step (same seed, normal scheduler)."""
    from memsafe_cfg.guidance import guidance_norm
    from memsafe_cfg.nodes.scan import empty_latent, evaluate, probe_sigmas

    model = host.tiny_eps_model()
    pos, neg = host.eps_conditioning(seed=1), host.eps_conditioning(seed=2)
    first, low, sched = probe_sigmas(model.get_model_object("model_sampling"), "normal", 6, True)
    zero = empty_latent(model, 64, 64)
    seeds = [5, 6, 7]
    out, _ = evaluate(model, pos, neg, zero, seeds, first, low, sched)
    single, _ = evaluate(model, pos, neg, zero, [6], first, low, sched)
    assert torch.allclose(single["norm"], out["norm"][1:2], rtol=1e-5)  # batching the seeds changes nothing
    assert float(out["alignment"].abs().max()) <= 1.0 and torch.isfinite(out["alignment"]).all()

    for k, seed in enumerate(seeds):
        seen = []
        m = model.clone()

        def hook(args):
            if not seen:
                c, u = args["conds_out"][:2]
                seen.append(float(guidance_norm(c, u, args["sigma"].reshape(-1))[0]))
            return args["conds_out"]

        m.set_model_sampler_pre_cfg_function(hook)
        latent = zero.clone()
        noise = comfy.sample.prepare_noise(latent, seed)
        comfy.sample.sample(m, noise, 6, 7.5, "euler", "normal", pos, neg, latent, seed=seed, disable_pbar=True)
        assert seen[0] == pytest.approx(float(out["norm"][k]), rel=1e-5)


def test_testbed_scan_workflow_runs_on_a_real_server(comfy_server):
    """The shipped testbed scan workflow through /prompt: loader -> (stock path) scan -> chart, report, threshold."""
    import json
    from pathlib import Path

    from workflows import problems, to_api

    path = Path(__file__).resolve().parents[1] / "example_workflows" / f"{TESTBED_WORKFLOW}.json"
    workflow = json.loads(path.read_text())
    info = comfy_server.get("/object_info")
    assert problems(workflow, info) == []
    assert info["MemSafeTestbedLoader"]["output"] == ["MODEL", "CLIP"]
    scan_info = info["MemSafeMemorizationScan"]
    assert all(t for t in scan_info["output_tooltips"]) and scan_info["category"] == "sampling/memorization-safe"
    for section in ("required", "optional"):
        for name, spec in scan_info["input"].get(section, {}).items():
            assert len(spec) > 1 and spec[1].get("tooltip"), f"MemSafeMemorizationScan.{name} has no tooltip"
    assert all(who in scan_info["description"] for who in ("Jain et al.", "Wen et al.", "Asthana and Belagiannis"))
    assert info["MemSafeTestbedLoader"]["output_tooltips"][1]
    entry = comfy_server.run_prompt(to_api(workflow, info))
    outs = entry["outputs"]
    texts = {nid: "".join(o["text"]) for nid, o in outs.items() if "text" in o}
    report = next(t for t in texts.values() if t.startswith("Memorization scan"))
    assert "detect_threshold (guidance norm" in report and "clean reference prompts" in report
    thr = next(t for t in texts.values() if t != report and not t.startswith("Memorization scan"))
    assert float(thr) > 0
    assert any("images" in o for o in outs.values())
    # the sampler beside the scan carries this threshold, rounded to 4 places (another CPU moves it ~1e-8)
    sampler = next(n for n in workflow["nodes"] if n["type"] == "MemSafeKSampler")
    assert abs(to_api(workflow, info)[str(sampler["id"])]["inputs"]["detect_threshold"] - float(thr)) <= 5e-5 + 1e-7


def test_testbed_scan_workflow_scans_the_broad_list_and_calibrates_on_the_disjoint_clean_list():
    """testbed.scan_eval.scan_lists: the broad list (memorized, their siblings, other clean prompts) is scanned, the
    calibration clean list (no memorized prompt, no sibling, nothing scanned) sets the threshold."""
    import json
    from pathlib import Path

    from memsafe_cfg.testbed.data import load
    from memsafe_cfg.testbed.model import prompt_text
    from memsafe_cfg.testbed.scan_eval import scan_lists

    tb = load()
    cal, other = scan_lists(tb.memorized, tb.clean)
    path = Path(__file__).resolve().parents[1] / "example_workflows" / f"{TESTBED_WORKFLOW}.json"
    scan = next(n for n in json.loads(path.read_text())["nodes"] if n["type"] == "MemSafeMemorizationScan")
    texts = [v for v in scan["widgets_values"] if isinstance(v, str) and "\n" in v]
    scanned, clean = (set(t.splitlines()) for t in texts[:2])
    assert scanned == {prompt_text(p) for p in tb.memorized + tb.clean + other}
    assert clean == {prompt_text(p) for p in cal} and not clean & scanned
    assert not clean & {prompt_text(p) for p in tb.memorized}


@pytest.mark.parametrize("kind", ["eps", "v", "flow", "video"])
def test_every_model_kind_scan_norm_equals_the_stock_samplers_first_step(comfy, kind, tmp_path):
    """eps, v, flow (SD3-shaped, stock loader) and video (Wan, 5-D latents): the scan's norm is the guidance norm of the
    raw predictions the stock KSampler path evaluates first (observed with ComfyUI's sampler_calc_cond_batch_function)."""
    from memsafe_cfg.nodes.scan import empty_latent, evaluate, probe_sigmas

    k = host.build_kind(kind, tmp_path)
    zero = empty_latent(k.model, 64, 64, {"samples": torch.zeros(1, *k.shape)})
    first, low, sched = probe_sigmas(k.model.get_model_object("model_sampling"), "simple", 4, True)
    out, _ = evaluate(k.model, k.positive, k.negative, zero, [3, 4], first, low, sched)
    assert torch.isfinite(out["norm"]).all() and torch.isfinite(out["alignment"]).all()
    assert float(out["alignment"].abs().max()) <= 1.0 + 1e-6
    for i, seed in enumerate([3, 4]):
        probe = host.Probe()
        m = probe.attach(k.model)
        latent = zero.clone()
        comfy.sample.sample(m, comfy.sample.prepare_noise(latent, seed), 4, 7.5, "euler", "simple", k.positive, k.negative,
                            latent, seed=seed, disable_pbar=True)
        assert float(probe.evals[0].norm()[0]) == pytest.approx(float(out["norm"][i]), rel=1e-5)


def test_out_of_memory_halves_the_seed_batch(comfy):
    from memsafe_cfg.nodes.scan import empty_latent, evaluate, probe_sigmas

    model = host.tiny_eps_model()
    pos, neg = host.eps_conditioning(seed=1), host.eps_conditioning(seed=2)
    first, low, sched = probe_sigmas(model.get_model_object("model_sampling"), "normal", 10, False)
    zero = empty_latent(model, 64, 64)
    seeds = [0, 1, 2, 3, 4]
    whole, calls = evaluate(model, pos, neg, zero, seeds, first, low, sched)
    assert calls == 1
    m = model.clone()

    def small_batches_only(apply_model, args):
        if args["input"].shape[0] > 2:
            raise comfy.model_management.OOM_EXCEPTION("test: batch too large")
        return apply_model(args["input"], args["timestep"], **args["c"])

    m.set_model_unet_function_wrapper(small_batches_only)
    chunked, calls = evaluate(m, pos, neg, zero, seeds, first, low, sched)
    assert calls >= 3
    assert torch.allclose(chunked["norm"], whole["norm"], rtol=1e-5)


def test_bad_input_is_refused_at_queue_time_by_the_server(comfy_server):
    import json
    from pathlib import Path

    from workflows import to_api

    path = Path(__file__).resolve().parents[1] / "example_workflows" / f"{TESTBED_WORKFLOW}.json"
    workflow = json.loads(path.read_text())
    api = to_api(workflow, comfy_server.get("/object_info"))
    scan_id = next(k for k, v in api.items() if v["class_type"] == "MemSafeMemorizationScan")
    # the scan branch only (the loader, the scan and its previews), so nothing else in the prompt is valid to run
    api = {k: v for k, v in api.items() if k == "1" or any(inp == [scan_id, s] for inp in v["inputs"].values() for s in (0, 1, 2))
           or k == scan_id}
    scan = api[scan_id]
    for key, value, name in (("prompts", "  \n ", "prompts"), ("false_positive_rate", 0.0, "false_positive_rate"),
                             ("seeds_per_prompt", 0, "seeds_per_prompt")):
        bad = json.loads(json.dumps(api))
        next(v for v in bad.values() if v["class_type"] == "MemSafeMemorizationScan")["inputs"][key] = value
        status, body = comfy_server.post("/prompt", {"prompt": bad})
        assert status == 400 and name in json.dumps(body["node_errors"][scan_id]), (key, status, body)
    assert scan["inputs"]["prompts"]


def test_progress_bar_reaches_the_end(testbed, comfy):
    import comfy.utils

    seen, before = [], comfy.utils.PROGRESS_BAR_HOOK
    comfy.utils.set_progress_bar_global_hook(lambda value, total, preview, node_id=None: seen.append((value, total)))
    try:
        model, clip = testbed
        run(model, clip, MEM, seeds_per_prompt=1)
    finally:
        comfy.utils.set_progress_bar_global_hook(before)
    assert seen and seen[-1] == (6, 6)  # 3 prompts encoded, then 3 scored
    assert [v for v, _ in seen] == sorted(v for v, _ in seen)
