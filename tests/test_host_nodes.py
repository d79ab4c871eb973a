"""Issue 2, host tier: the four nodes on the real ComfyUI stack (in process) with tiny real models."""
from __future__ import annotations

import pytest
import torch

import host
from memsafe_cfg.guidance import render_curves

pytestmark = pytest.mark.host

GUIDANCE = dict(guidance_before=-2.0, transition="dynamic", switch_percent=0.5, earliest_percent=0.0, latest_percent=1.0,
                detect_threshold=0.0)


@pytest.fixture(scope="module")
def eps_model(comfy):
    return host.tiny_eps_model()


def pack():
    from memsafe_cfg.nodes import adapter, curve, guider, ksampler, patch

    return adapter, guider.MemSafeCFGGuider, ksampler.MemSafeKSampler, patch.MemSafeCFGPatch, curve.MemSafeGuidanceCurve


def settings(**over):
    return {**GUIDANCE, **over}


def sample_guider(comfy, guider, model, B=3, steps=6, sampler="euler", scheduler="karras", seed=0):
    latent = torch.zeros(B, 4, 8, 8)
    noise = comfy.sample.prepare_noise(latent, seed)
    sigmas = comfy.samplers.calculate_sigmas(model.get_model_object("model_sampling"), scheduler, steps)
    return guider.sample(noise, latent, comfy.samplers.sampler_object(sampler), sigmas, seed=seed), sigmas


def stock_guider(comfy, model, pos, neg, cfg):
    g = comfy.samplers.CFGGuider(model)
    g.set_conds(pos, neg)
    g.set_cfg(cfg)
    return g


def shaped(model, sigmas, minima):
    """Add a per-sample bump to eps_cond so that sample b's guidance norm has its first local minimum at minima[b]."""
    sig = [float(s) for s in sigmas[:-1]]
    m = model.clone()

    def wrapper(apply_model, args):
        out = apply_model(args["input"], args["timestep"], **args["c"])
        sigma = float(args["timestep"][0])
        step = min(range(len(sig)), key=lambda i: abs(sig[i] - sigma))
        bump = torch.tensor([5.0 * (1 + (step - mb) ** 2) for mb in minima], dtype=out.dtype)
        chunks = list(out.chunk(len(args["cond_or_uncond"])))
        for o, which in enumerate(args["cond_or_uncond"]):
            if which == 0:
                chunks[o] = chunks[o] - sigma * bump.view(-1, 1, 1, 1)
        return torch.cat(chunks)

    m.set_model_unet_function_wrapper(wrapper)
    return m


def test_off_equals_stock_cfg_guider(comfy, eps_model):
    _, Guider, _, _, _ = pack()
    pos, neg = host.eps_conditioning(2), host.eps_conditioning(2, seed=2)
    for sampler in ("euler", "heun", "dpmpp_2m"):
        ref, _ = sample_guider(comfy, stock_guider(comfy, eps_model, pos, neg, 7.5), eps_model, B=2, sampler=sampler)
        g = Guider.execute(eps_model, pos, neg, 7.5, **settings(transition="off")).result[0]
        out, _ = sample_guider(comfy, g, eps_model, B=2, sampler=sampler)
        assert torch.equal(ref, out), sampler


def test_off_equals_stock_ksampler_and_unpatched_model(comfy, eps_model):
    import nodes as comfy_nodes

    _, _, KSampler, Patch, _ = pack()
    pos, neg = host.eps_conditioning(2), host.eps_conditioning(2, seed=2)
    latent = {"samples": torch.zeros(2, 4, 8, 8)}
    for cfg in (7.5, 1.0):
        (ref,) = comfy_nodes.common_ksampler(eps_model, 3, 5, cfg, "dpmpp_2m", "karras", pos, neg, latent, denoise=0.8)
        out = KSampler.execute(eps_model, 3, 5, cfg, "dpmpp_2m", "karras", pos, neg, latent, 0.8, **settings(transition="off"))
        assert torch.equal(ref["samples"], out.result[0]["samples"]), cfg
        patched = Patch.execute(eps_model, **settings(transition="off")).result[0]
        (via_patch,) = comfy_nodes.common_ksampler(patched, 3, 5, cfg, "dpmpp_2m", "karras", pos, neg, latent, denoise=0.8)
        assert torch.equal(ref["samples"], via_patch["samples"]), cfg


def test_dynamic_opposite_guidance_switches_per_sample(comfy, eps_model):
    adapter, Guider, _, _, _ = pack()
    steps, minima = 10, [2, 4, 6]
    sigmas = comfy.samplers.calculate_sigmas(eps_model.get_model_object("model_sampling"), "karras", steps)
    model = shaped(eps_model, sigmas, minima)
    pos, neg = host.eps_conditioning(3), host.eps_conditioning(3, seed=2)
    g = Guider.execute(model, pos, neg, 6.0, **settings()).result[0]
    out, _ = sample_guider(comfy, g, model, B=3, steps=steps)
    trace = adapter.find_handle(guider=g).trace_for(out)
    assert trace.switch_step.tolist() == [m + 1 for m in minima]  # the step after each sample's first local minimum
    for b, m in enumerate(minima):
        assert torch.all(trace.scales[: m + 1, b] == -2.0) and torch.all(trace.scales[m + 1:, b] == 6.0)
    assert trace.visited.all() and trace.steps == steps
    # the switch changes the result: the same run in static mode at 0.0 (plain CFG) differs
    plain = Guider.execute(model, pos, neg, 6.0, **settings(transition="off")).result[0]
    ref, _ = sample_guider(comfy, plain, model, B=3, steps=steps)
    assert not torch.allclose(ref, out)


def test_ksampler_returns_latent_curve_and_trace(comfy, eps_model):
    _, _, KSampler, _, _ = pack()
    pos, neg = host.eps_conditioning(3), host.eps_conditioning(3, seed=2)
    res = KSampler.execute(eps_model, 0, 4, 7.5, "euler", "normal", pos, neg, {"samples": torch.zeros(3, 4, 8, 8)}, 1.0,
                           **settings(latest_percent=0.5))
    latent, curve, trace = res.result
    assert latent["samples"].shape == (3, 4, 8, 8) and torch.isfinite(latent["samples"]).all()
    assert curve.shape[0] == 3 and curve.shape[-1] == 3 and curve.dtype == torch.float32
    assert trace.batch == 3 and trace.steps == 4 and trace.visited.all()
    assert ((trace.switch_step >= 0) & (trace.switch_step <= 3)).all()
    wide = KSampler.execute(eps_model, 0, 4, 7.5, "euler", "normal", pos, neg, {"samples": torch.zeros(3, 4, 8, 8)}, 1.0,
                            "overlay", True, **settings(latest_percent=0.5)).result[1]
    assert wide.shape == (1, curve.shape[1], 2 * curve.shape[2], 3)  # curve_denoised: d x sigma beside the norm
    assert torch.equal(wide[0, :, :curve.shape[2]], render_curves(trace, "overlay")[0])


@pytest.mark.parametrize("mode", ["guider", "patch"])
def test_every_sampler_one_trace_point_per_step(comfy, eps_model, mode):
    adapter, Guider, _, Patch, _ = pack()
    pos, neg = host.eps_conditioning(1), host.eps_conditioning(1, seed=2)
    failures = []
    for name in comfy.samplers.KSampler.SAMPLERS:
        try:
            if mode == "guider":
                g = Guider.execute(eps_model, pos, neg, 5.0, **settings(latest_percent=0.6)).result[0]
                out, sigmas = sample_guider(comfy, g, eps_model, B=1, steps=4, sampler=name, scheduler="normal")
                trace, expected = adapter.find_handle(guider=g).trace_for(out), len(sigmas) - 1
            else:
                m = Patch.execute(eps_model, **settings(latest_percent=0.6)).result[0]
                latent = torch.zeros(1, 4, 8, 8)
                out = comfy.sample.sample(m, comfy.sample.prepare_noise(latent, 0), 4, 5.0, name, "normal", pos, neg, latent, seed=0)
                trace, expected = adapter.find_handle(model=m).trace_for(out), 4
            assert torch.isfinite(out).all()
            assert trace.steps == expected, f"{trace.steps} steps traced, schedule has {expected}"
            if name not in ("dpm_fast", "dpm_adaptive"):  # these two do not follow the schedule (see README)
                assert trace.visited.all(), trace.visited
            assert int(trace.switch_step[0]) >= 0
        except Exception as e:  # collect all, report together
            failures.append(f"{name}: {e!r}")
    assert not failures, "\n".join(failures)


def test_patch_stacks_with_other_post_cfg_patch(comfy, eps_model):
    from comfy_extras.nodes_cfg import CFGNorm

    adapter, _, _, Patch, _ = pack()
    pos, neg = host.eps_conditioning(2), host.eps_conditioning(2, seed=2)
    latent = torch.zeros(2, 4, 8, 8)
    noise = comfy.sample.prepare_noise(latent, 0)

    def run(m):
        out = comfy.sample.sample(m, noise, 5, 7.5, "euler", "karras", pos, neg, latent, seed=0)
        return out, adapter.find_handle(model=m).trace_for(out)

    alone, t_alone = run(Patch.execute(eps_model, **settings()).result[0])
    normed = CFGNorm.execute(eps_model, 0.5).result[0]
    for stacked in (Patch.execute(normed, **settings()).result[0], CFGNorm.execute(Patch.execute(eps_model, **settings()).result[0], 0.5).result[0]):
        out, t = run(stacked)
        assert torch.isfinite(out).all() and not torch.equal(out, alone)  # CFGNorm really applied
        assert torch.equal(t.norms[0], t_alone.norms[0])  # step 0: same x, norm measured on the raw predictions


def test_cfg1_forces_uncond_pass(comfy, eps_model):
    adapter, _, _, Patch, _ = pack()
    pos, neg = host.eps_conditioning(1), host.eps_conditioning(1, seed=2)
    latent = torch.zeros(1, 4, 8, 8)
    noise = comfy.sample.prepare_noise(latent, 0)
    norms = {}
    for cfg in (1.0, 1.0001):
        m = Patch.execute(eps_model, **settings(guidance_before=0.0)).result[0]
        out = comfy.sample.sample(m, noise, 4, cfg, "euler", "normal", pos, neg, latent, seed=0)
        norms[cfg] = adapter.find_handle(model=m).trace_for(out).norms[0, 0]
    assert torch.isfinite(norms[1.0]) and torch.allclose(norms[1.0], norms[1.0001])  # a real uncond pass at cfg 1


def test_curve_node_renders_trace_of_its_latent(comfy, eps_model, tmp_path, monkeypatch):
    import folder_paths

    _, Guider, _, _, Curve = pack()
    monkeypatch.setattr(folder_paths, "output_directory", str(tmp_path))
    pos, neg = host.eps_conditioning(2), host.eps_conditioning(2, seed=2)
    g = Guider.execute(eps_model, pos, neg, 7.5, **settings(latest_percent=0.5)).result[0]
    first, _ = sample_guider(comfy, g, eps_model, B=2, steps=4)
    second, _ = sample_guider(comfy, g, eps_model, B=2, steps=6, seed=1)  # the same (cached) guider, a new run
    res = Curve.execute({"samples": first}, "panels", True, "memsafe/trace", guider=g)
    curve, trace = res.result
    assert trace.steps == 4 and curve.shape[0] == 2
    assert Curve.execute({"samples": second}, "overlay", False, "x", guider=g).result[1].steps == 6
    wide, again = Curve.execute({"samples": first}, "panels", False, "x", guider=g, show_denoised=True).result
    assert wide.shape == (2, curve.shape[1], 2 * curve.shape[2], 3) and torch.equal(wide[:, :, :curve.shape[2]], curve)
    assert torch.equal(wide, render_curves(again, "panels", denoised=True))
    saved = list((tmp_path / "memsafe").glob("trace_*.safetensors"))
    assert len(saved) == 1
    from memsafe_cfg.guidance import Trace

    assert torch.allclose(Trace.load(str(saved[0])).norms, trace.norms, equal_nan=True)


def test_flow_model_through_stock_loader(comfy, tmp_path):
    import comfy.sd

    adapter, Guider, _, Patch, _ = pack()
    model = comfy.sd.load_diffusion_model(str(host.tiny_flow_checkpoint(tmp_path / "tiny_sd3.safetensors")))
    assert model.model.model_type.name == "FLOW"
    pos, neg = host.flow_conditioning(3), host.flow_conditioning(3, seed=2)
    latent = torch.zeros(3, 16, 8, 8)
    noise = comfy.sample.prepare_noise(latent, 0)
    ref = comfy.sample.sample(model, noise, 5, 4.0, "euler", "simple", pos, neg, latent, seed=0)
    off = Patch.execute(model, **settings(transition="off")).result[0]
    assert torch.equal(ref, comfy.sample.sample(off, noise, 5, 4.0, "euler", "simple", pos, neg, latent, seed=0))
    m = Patch.execute(model, **settings(latest_percent=0.6)).result[0]
    out = comfy.sample.sample(m, noise, 5, 4.0, "euler", "simple", pos, neg, latent, seed=0)
    trace = adapter.find_handle(model=m).trace_for(out)
    assert torch.isfinite(out).all() and trace.visited.all() and (trace.switch_step >= 0).all()
    assert float(trace.sigmas[0]) == pytest.approx(1.0) and float(trace.timesteps[0]) == pytest.approx(1000.0)
    assert torch.isfinite(trace.norms).all() and (trace.norms[0] > 0).all()  # velocity difference at sigma 1


def test_packed_latents_and_a_swapped_patcher_find_their_run(comfy, eps_model):
    """ComfyUI 0.33: a run over several latents at once (a NestedTensor, packed by CFGGuider.sample with
    ``latent_shapes``), through a guider whose patcher was swapped for a clone after set_conds (as CFGGuider does
    with a dynamic-VRAM model's non-dynamic delegate). The curve node gets the nested output and finds its run.
    The model is the tiny UNet's patcher with a unet wrapper that works on the flat pack (no CPU model reads one)."""
    nested = pytest.importorskip("comfy.nested_tensor", reason="packed latents arrived after ComfyUI 0.3.64")
    adapter, Guider, _, _, Curve = pack()

    def flat_model(apply_model, args):
        x, context = args["input"], args["c"]["c_crossattn"]
        return x * 0.1 + context.mean(dim=(1, 2)).reshape(-1, *[1] * (x.ndim - 1))

    model = eps_model.clone()
    model.set_model_unet_function_wrapper(flat_model)
    guider = Guider.execute(model, host.eps_conditioning(1, 1), host.eps_conditioning(1, 2), 7.5, **settings()).args[0]
    guider.model_patcher = guider.model_patcher.clone()
    shapes = [(1, 4, 8, 8), (1, 4, 4, 4)]
    outs = []
    for steps in (4, 6):
        noise = nested.NestedTensor([torch.randn(s, generator=torch.Generator().manual_seed(steps + k)) for k, s in enumerate(shapes)])
        sigmas = comfy.samplers.calculate_sigmas(model.get_model_object("model_sampling"), "normal", steps)
        outs.append(guider.sample(noise, nested.NestedTensor([torch.zeros(s) for s in shapes]),
                                  comfy.samplers.sampler_object("euler"), sigmas, seed=0))
    handle = adapter.find_handle(guider=guider)
    assert [fp.shapes for fp, _ in handle.recent] == [tuple(shapes)] * 2
    for out, steps in zip(outs, (4, 6)):
        assert [tuple(t.shape) for t in out.unbind()] == shapes
        trace = Curve.execute({"samples": out}, "panels", False, "memsafe/trace", guider=guider).args[1]
        assert trace.steps == steps and bool(torch.isfinite(trace.norms).all())
