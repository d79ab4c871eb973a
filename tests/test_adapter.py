"""The adapter's run bookkeeping (nodes/adapter.py): runs found by a fingerprint of their output, not a copy; the
sampler's arguments bound by name; packed latents (ComfyUI 0.33's ``latent_shapes``) and a guider that swapped its
patcher for a clone (0.33's non-dynamic delegate). The adapter imports without ComfyUI, so most of this file is
core tier: a stand-in guider drives ``MemSafeHandle.outer_sample`` exactly as ``CFGGuider.sample`` does."""
from __future__ import annotations

import pytest
import torch

from memsafe_cfg.guidance import GuidanceSettings
from memsafe_cfg.nodes.adapter import PROBES, Fingerprint, MemSafeHandle, find_handle

torch.set_num_threads(1)
VIDEO = (1, 16, 21, 90, 160)  # Wan 2.1, 81 frames at 1280x720: 19 MB of float32


class Nested:
    """The two things the adapter reads from ComfyUI's NestedTensor: ``is_nested`` and ``unbind()``."""

    is_nested = True

    def __init__(self, tensors):
        self.tensors = list(tensors)

    def unbind(self):
        return self.tensors


def pack(latents):
    """comfy.utils.pack_latents: each latent as [B, 1, -1], concatenated; returns (pack, shapes)."""
    return torch.cat([t.reshape(t.shape[0], 1, -1) for t in latents], dim=-1), [t.shape for t in latents]


class ModelSampling:
    def timestep(self, sigmas):
        return sigmas * 100

    def percent_to_sigma(self, p):
        return 1e9 if p <= 0 else 0.0 if p >= 1 else 10.0 * (1 - p)


class Patcher:
    def __init__(self, handle):
        self.model_options = {"transformer_options": {"memsafe_cfg_handle": handle}}

    def get_model_object(self, name):
        return ModelSampling()


class Guider:
    """CFGGuider's outer_sample as the OUTER_SAMPLE wrapper sees it (0.33 signature, with latent_shapes): one
    evaluation per step through the pre-CFG hook, then the callback; returns ``output``."""

    def __init__(self, handle, output):
        self.model_patcher = Patcher(handle)
        self.model_options = {}
        self.handle, self.output = handle, output

    def outer_sample(self, noise, latent_image, sampler, sigmas, denoise_mask=None, callback=None, disable_pbar=False,
                     seed=None, latent_shapes=None):
        B = self.output.shape[0]
        for i in range(len(sigmas) - 1):
            cond = torch.zeros(B, 4)
            uncond = torch.full((B, 4), float(seed or 1) * float(sigmas[i]))
            model_options = {"transformer_options": dict(self.model_options["transformer_options"])}
            self.handle.pre_cfg({"conds_out": [cond, uncond], "conds": [1, 1], "sigma": sigmas[i:i + 1],
                                 "cond_scale": 7.5, "model_options": model_options})
            if callback is not None:
                callback(i, None, None, len(sigmas) - 1)
        return self.output


class Executor:
    def __init__(self, guider):
        self.class_obj = guider

    def __call__(self, *args, **kwargs):
        return self.class_obj.outer_sample(*args, **kwargs)


def sample(handle, output, steps=4, seed=1, by_keyword=False, latent_shapes=None, callback=None):
    guider = Guider(handle, output)
    sigmas = torch.linspace(10, 0, steps + 1)
    args = (torch.zeros(1), torch.zeros(1), object(), sigmas)
    if by_keyword:
        return handle.outer_sample(Executor(guider), *args, callback=callback, seed=seed, latent_shapes=latent_shapes)
    return handle.outer_sample(Executor(guider), *args, None, callback, False, seed, latent_shapes)


def test_a_video_latent_costs_a_few_kb_per_run():
    handle = MemSafeHandle(GuidanceSettings())
    latent = torch.randn(VIDEO)
    for seed in range(3):
        sample(handle, latent + seed, seed=seed + 1)
    assert len(handle.recent) == 3
    for fp, trace in handle.recent:
        kept = fp.nbytes + sum(t.numel() * t.element_size() for t in (trace.norms, trace.scales, trace.sigmas,
                                                                       trace.timesteps, trace.switch_step, trace.flagged))
        assert fp.probes.numel() == PROBES and kept < 4096, kept  # the latent itself is 19 MB
    assert handle.trace_for(latent + 1) is handle.recent[1][1]


def test_runs_sharing_a_node_are_told_apart():
    handle = MemSafeHandle(GuidanceSettings())
    outs = [torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(k)) for k in range(3)]
    for k, out in enumerate(outs):
        sample(handle, out, steps=3 + k)
    assert [handle.trace_for(out).steps for out in outs] == [3, 4, 5]


def test_outputs_equal_at_every_probe_differ_by_their_checksum():
    """Inpainting-like: two runs change only one value, away from the probes; the checksum tells them apart."""
    handle = MemSafeHandle(GuidanceSettings())
    base = torch.randn(1, 4, 32, 32)
    probes = set(torch.linspace(0, base.numel() - 1, PROBES).long().tolist())
    spot = next(k for k in range(base.numel()) if k not in probes)
    outs = []
    for k, delta in enumerate((1.0, -1.0)):
        out = base.clone()
        out.view(-1)[spot] += delta
        outs.append(out)
        sample(handle, out, steps=3 + k)
    assert Fingerprint.of(outs[0]).probes.equal(Fingerprint.of(outs[1]).probes)
    assert [handle.trace_for(out).steps for out in outs] == [3, 4]


def test_a_latent_cast_after_sampling_still_finds_its_run():
    handle = MemSafeHandle(GuidanceSettings())
    outs = [torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(k)) for k in range(2)]
    for k, out in enumerate(outs):
        sample(handle, out, steps=3 + k)
    assert handle.trace_for(outs[0].half()).steps == 3 and handle.trace_for(outs[1].bfloat16()).steps == 4


def test_no_match_falls_back_to_the_latest_run_with_a_warning(caplog):
    handle = MemSafeHandle(GuidanceSettings())
    sample(handle, torch.ones(1, 4, 8, 8), steps=3)
    sample(handle, torch.zeros(1, 4, 8, 8), steps=5)
    assert handle.trace_for(torch.full((1, 4, 8, 8), 2.0)).steps == 5
    assert "matches no recent run" in caplog.text


def test_packed_latents_find_their_run():
    """ComfyUI 0.33 packs several latents (e.g. video + audio) into one [B, 1, N] run; the curve node then gets
    them back as a nested tensor."""
    handle = MemSafeHandle(GuidanceSettings())
    runs = []
    for k in range(2):
        g = torch.Generator().manual_seed(k)
        parts = [torch.randn(1, 16, 3, 8, 8, generator=g), torch.randn(1, 8, 25, generator=g)]
        packed, shapes = pack(parts)
        sample(handle, packed, steps=3 + k, by_keyword=True, latent_shapes=shapes)
        runs.append(parts)
    assert [handle.trace_for(Nested(parts)).steps for parts in runs] == [3, 4]
    assert handle.recent[0][0].shapes == ((1, 16, 3, 8, 8), (1, 8, 25))


@pytest.mark.parametrize("by_keyword", [False, True])
def test_arguments_are_bound_by_name(by_keyword):
    """The callback is wrapped and the run counts steps whether the sampler passed it by position or by name."""
    handle = MemSafeHandle(GuidanceSettings())
    seen = []
    sample(handle, torch.ones(2, 4), steps=4, by_keyword=by_keyword, callback=lambda i, *a: seen.append(i))
    trace = handle.recent[-1][1]
    assert seen == [0, 1, 2, 3] and bool(trace.visited.all()) and trace.steps == 4


def test_a_clone_of_the_patcher_shares_the_handle():
    """0.33's CFGGuider may swap a dynamic-VRAM patcher for a clone (its non-dynamic delegate); clones deep-copy
    model_options, and the handle deep-copies to itself."""
    import copy

    handle = MemSafeHandle(GuidanceSettings())
    guider = Guider(handle, torch.ones(1, 4))
    guider.model_patcher = copy.deepcopy(guider.model_patcher)
    assert find_handle(guider=guider) is handle


def test_importing_the_adapter_needs_no_comfyui():
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    code = (f"import sys\nsys.path.insert(0, {str(repo / 'tests')!r})\nimport host\nhost.load_pack()\n"
            "import memsafe_cfg.nodes.adapter, memsafe_cfg.nodes.live\n"
            "print(sorted(k for k in sys.modules if k.split('.')[0] in ('comfy', 'comfy_api', 'server', 'folder_paths')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env={"PYTHONPATH": "", "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
