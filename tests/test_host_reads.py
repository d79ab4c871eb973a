"""Host reads counted without a GPU (issue 22 item 2): over whole runs through the real ComfyUI stack (the
KSampler node, the guider node + ``guider.sample``, the patch node + ``comfy.sample.sample``; dynamic, static,
detection on; batch 1 and 4), every operation that would make the host wait for a GPU.

How, on a CPU-only machine: what would live on the GPU is marked as a ``Dev`` tensor (a ``torch.Tensor`` subclass;
every result computed from one is one too): the noise, latent and sigmas the sampler gets (a SAMPLER_SAMPLE
wrapper, i.e. after ComfyUI moved them to its device) and the model's noise-schedule buffers (``model_sampling``,
on the GPU once the model is loaded). Counted as a read of a ``Dev`` tensor:

- ``aten._local_scalar_dense`` (``.item()``, ``bool()``, ``float()``, ``int()``), ``nonzero``, ``equal``,
  ``is_nonzero``, ``masked_select``, ``unique``, and indexing with a boolean mask (output size depends on values);
- copies to the host: ``.cpu()``, ``.numpy()``, ``.tolist()``, printing (no ATen op on the CPU, seen through
  ``__torch_function__``), ``copy_`` into a host tensor (noted non-blocking where it is: the live curve's pinned
  copies on CUDA, not a synchronisation);
- ``.to(device)``: on a CPU-only machine a move to ComfyUI's device and one to the host look the same, so it is
  taken as staying on the device, except ComfyUI's own move of the result to its intermediate device (the host)
  in comfy/sample.py. The pack calls ``.to()`` only with the device of its inputs (``guidance/run.py``).

Each read is attributed by the innermost Python frame that is the pack's (guidance/, nodes/) or ComfyUI's, and
placed in the run: setup (before the first model evaluation), sampling (up to the end of the last evaluation:
"per step") or the end. The pack must make exactly one read per run (the trace's transfer in ``GuidanceRun.finish``,
which also carries the output's fingerprint) and none while sampling; ComfyUI must read exactly what it reads in
the same run without the pack. Excepted, and counted apart: dpm_fast / dpm_adaptive, whose steps are not the
schedule's, so the clock reads each evaluation's sigma (``StepClock._band``: one read per evaluation).
"""
from __future__ import annotations

import os
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import host

pytestmark = pytest.mark.host
STEPS, CFG = 6, 7.5
PACK_DIRS = tuple(str(host.REPO / d) + os.sep for d in ("guidance", "nodes"))
SETTINGS = {
    "dynamic": dict(guidance_before=-2.0, transition="dynamic", switch_percent=0.5, earliest_percent=0.0,
                    latest_percent=0.5, detect_threshold=0.0),
    "static": dict(guidance_before=0.0, transition="static", switch_percent=0.5, earliest_percent=0.0,
                   latest_percent=0.5, detect_threshold=0.0),
    "detection": dict(guidance_before=-2.0, transition="dynamic", switch_percent=0.5, earliest_percent=0.0,
                      latest_percent=0.5, detect_threshold=0.05),
}
HOST_METHODS = {"cpu": ".cpu()", "numpy": ".numpy()", "tolist": ".tolist()", "__repr__": "print", "__format__": "print"}
SYNC_OPS = {"_local_scalar_dense": ".item()/bool()/float()", "nonzero": "nonzero", "equal": "equal",
            "is_nonzero": "is_nonzero", "masked_select": "masked_select", "_unique2": "unique", "unique_dim": "unique"}
_recorder: "Recorder | None" = None


class Dev(torch.Tensor):
    """A tensor that would be on the GPU (see the module docstring)."""

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        leaves = name in HOST_METHODS or (name == "to" and _comfy_moves_to_host(args, kwargs))
        if leaves and _recorder is not None:
            _recorder.read(HOST_METHODS.get(name, ".to(intermediate device)"))
        result = super().__torch_function__(func, types, args, kwargs)
        if leaves and isinstance(result, Dev):
            with torch._C.DisableTorchFunctionSubclass():
                return result.as_subclass(torch.Tensor)  # on the host now
        return result


def _comfy_moves_to_host(args, kwargs) -> bool:
    """``.to(...)`` from comfy/sample.py toward a CPU device: ComfyUI's move to its intermediate device."""
    caller = sys._getframe(2).f_code.co_filename
    target = [a for a in (*args[1:], kwargs.get("device")) if isinstance(a, (torch.device, str))]
    return caller.endswith(os.path.join("comfy", "sample.py")) and any(torch.device(t).type == "cpu" for t in target)


def _is_dev(x) -> bool:
    return isinstance(x, Dev) or (isinstance(x, (list, tuple)) and any(_is_dev(v) for v in x))


@dataclass
class Read:
    kind: str
    owner: str  # pack, comfy or other
    where: str  # file:line function of the innermost frame of that owner
    started: int  # model evaluations started / finished when it happened
    done: int


class Recorder(TorchDispatchMode):
    """Records the reads of ``Dev`` tensors while active; ``evaluation()`` wraps each model evaluation."""

    def __init__(self):
        super().__init__()
        self.reads: list[Read] = []
        self.started = self.done = 0

    def __enter__(self):
        global _recorder
        _recorder = self
        return super().__enter__()

    def __exit__(self, *exc):
        global _recorder
        _recorder = None
        return super().__exit__(*exc)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = func.overloadpacket.__name__
        if name in SYNC_OPS and any(_is_dev(a) for a in args):
            self.read(SYNC_OPS[name])
        elif name in ("index", "index_put_", "index_put") and any(
                isinstance(i, torch.Tensor) and i.dtype == torch.bool and _is_dev(i) for i in (args[1] or [])):
            self.read("boolean-mask index")
        elif name == "copy_" and not _is_dev(args[0]) and _is_dev(args[1]):
            self.read("copy_ to host (non-blocking)" if kwargs.get("non_blocking", args[2] if len(args) > 2 else False)
                      else "copy_ to host")
        return func(*args, **kwargs)

    def read(self, kind: str) -> None:
        f = sys._getframe(1)
        while f is not None:
            path = f.f_code.co_filename
            owner = "pack" if path.startswith(PACK_DIRS) else "comfy" if path.startswith(host.COMFYUI_PATH) else None
            if owner:
                where = f"{Path(path).relative_to(host.REPO if owner == 'pack' else host.COMFYUI_PATH)}:{f.f_lineno} {f.f_code.co_name}"
                self.reads.append(Read(kind, owner, where, self.started, self.done))
                return
            f = f.f_back
        self.reads.append(Read(kind, "other", "", self.started, self.done))

    def phase(self, r: Read) -> str:
        return "setup" if r.started == 0 else "end" if r.done == self.done else "sampling"

    def table(self, owner: str, phase: str | None = None) -> Counter:
        return Counter((r.kind, r.where) for r in self.reads if r.owner == owner and (phase is None or self.phase(r) == phase))


@pytest.fixture(scope="module")
def model(comfy):
    return build_model()


def build_model():
    """A tiny SD1.5-shaped UNet whose noise schedule is 'on the device' (Dev), with each evaluation counted."""
    import comfy.patcher_extension

    m = host.tiny_eps_model(seed=3)
    sampling = m.get_model_object("model_sampling")
    for name, buf in list(sampling.named_buffers(recurse=False)):
        sampling._buffers[name] = buf.as_subclass(Dev)

    def to_device(executor, *args, **kwargs):  # after ComfyUI moved noise, latent and sigmas to its device
        mark = lambda v: v.as_subclass(Dev) if isinstance(v, torch.Tensor) and not isinstance(v, Dev) else v  # noqa: E731
        return executor(*(mark(a) for a in args), **{k: mark(v) for k, v in kwargs.items()})

    def evaluation(apply_model, args):
        rec = _recorder
        if rec is not None:
            rec.started += 1
        out = apply_model(args["input"], args["timestep"], **args["c"])
        if rec is not None:
            rec.done += 1
        return out

    m.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.SAMPLER_SAMPLE, "memsafe_test_device", to_device)
    m.set_model_unet_function_wrapper(evaluation)
    return m


def pack():
    from memsafe_cfg.nodes import adapter, guider, ksampler, patch

    return adapter, guider.MemSafeCFGGuider, ksampler.MemSafeKSampler, patch.MemSafeCFGPatch


def sample(comfy, path: str, model, batch: int, guidance, sampler: str = "euler"):
    """One run through ``path``; guidance None: the same run with stock ComfyUI."""
    import nodes as comfy_nodes

    _, Guider, KSampler, Patch = pack()
    pos, neg = host.eps_conditioning(batch), host.eps_conditioning(batch, seed=2)
    latent = torch.zeros(batch, 4, 8, 8)
    if path == "ksampler":
        if guidance is None:
            return comfy_nodes.common_ksampler(model, 0, STEPS, CFG, sampler, "normal", pos, neg, {"samples": latent})[0]["samples"]
        return KSampler.execute(model, 0, STEPS, CFG, sampler, "normal", pos, neg, {"samples": latent}, 1.0, **guidance).result[0]["samples"]
    if path == "patch":
        m = model if guidance is None else Patch.execute(model, **guidance).result[0]
        noise = comfy.sample.prepare_noise(latent, 0)
        return comfy.sample.sample(m, noise, STEPS, CFG, sampler, "normal", pos, neg, latent, seed=0)
    if guidance is None:
        guider = comfy.samplers.CFGGuider(model)
        guider.set_conds(pos, neg)
        guider.set_cfg(CFG)
    else:
        guider = Guider.execute(model, pos, neg, CFG, **guidance).result[0]
    sigmas = comfy.samplers.calculate_sigmas(model.get_model_object("model_sampling"), "normal", STEPS).float()
    with torch._C.DisableTorchFunctionSubclass():
        sigmas = sigmas.as_subclass(torch.Tensor)  # the scheduler node's output: on the host
    noise = comfy.sample.prepare_noise(latent, 0)
    return guider.sample(noise, latent, comfy.samplers.sampler_object(sampler), sigmas, seed=0)


def counted(comfy, path, model, batch, guidance, sampler="euler") -> Recorder:
    with Recorder() as rec:
        sample(comfy, path, model, batch, guidance, sampler)
    return rec


@pytest.fixture(scope="module")
def schedule_copied(comfy, model):
    """The pack's host copy of the model's noise schedule: one read the first time, none after (see
    ``adapter.host_sampling``); the runs below start with it made."""
    adapter = pack()[0]
    sampling = model.get_model_object("model_sampling")
    first, again = Recorder(), Recorder()
    with first:
        adapter.host_sampling(sampling)
    with again:
        adapter.host_sampling(sampling)
    return first, again


def test_the_schedule_is_copied_to_the_host_once_per_model(schedule_copied):
    first, again = schedule_copied
    assert [(r.kind, r.owner) for r in first.reads] == [(".cpu()", "pack")]
    assert again.reads == []


def test_a_schedule_made_under_inference_mode_is_copied_once_and_again_when_replaced(comfy):
    """ComfyUI executes prompts under ``torch.inference_mode``: a model a node loads there has inference-tensor
    buffers, which track no version (reading ``_version`` raised, so every run inside a server failed)."""
    adapter = pack()[0]
    with torch.inference_mode():
        sampling = host.tiny_eps_model(seed=4).get_model_object("model_sampling")
        assert all(b.is_inference() for b in sampling.buffers())
        first = adapter.host_sampling(sampling)
        assert adapter.host_sampling(sampling) is first
        sampling.set_sigmas(sampling.sigmas * 2)  # a schedule set anew: new buffers
        again = adapter.host_sampling(sampling)
    assert again is not first and torch.equal(again.sigmas, sampling.sigmas)
    assert again.percent_to_sigma(0.5) == pytest.approx(2 * first.percent_to_sigma(0.5), rel=1e-6)


@pytest.mark.parametrize("batch", [1, 4])
@pytest.mark.parametrize("setting", sorted(SETTINGS))
@pytest.mark.parametrize("path", ["ksampler", "guider", "patch"])
def test_one_host_read_per_run_none_per_step(comfy, model, schedule_copied, path, setting, batch):
    check_run(comfy, model, path, setting, batch, "euler")


@pytest.mark.parametrize("sampler", ["heun", "dpmpp_2m", "euler_ancestral"])
def test_other_samplers_read_once_per_run(comfy, model, schedule_copied, sampler):
    check_run(comfy, model, "patch", "dynamic", 2, sampler)


def check_run(comfy, model, path, setting, batch, sampler):
    rec = counted(comfy, path, model, batch, SETTINGS[setting], sampler)
    stock = counted(comfy, path, model, batch, None, sampler)
    assert rec.done == stock.done >= STEPS  # the same model evaluations with and without the pack
    pack_reads = rec.table("pack")
    assert sum(pack_reads.values()) == 1 and rec.table("pack", "sampling") == Counter(), pack_reads
    (kind, where), = pack_reads
    assert kind == ".cpu()" and where.startswith("guidance/run.py") and where.endswith(" finish"), where
    assert rec.table("comfy") == stock.table("comfy")  # ComfyUI reads nothing because of the pack
    assert rec.table("other") == stock.table("other") == Counter()


@pytest.mark.parametrize("sampler", ["dpm_fast", "dpm_adaptive"])
def test_off_schedule_samplers_read_each_evaluations_sigma(comfy, model, schedule_copied, sampler):
    """The documented exception: one read of the sigma per evaluation (``StepClock._band``), plus the run's one."""
    rec = counted(comfy, "patch", model, 2, SETTINGS["dynamic"], sampler)
    band = [r for r in rec.reads if r.owner == "pack" and "clock.py" in r.where]
    assert len(band) == rec.done and all(r.kind == ".item()/bool()/float()" for r in band)
    rest = [r for r in rec.reads if r.owner == "pack" and "clock.py" not in r.where]
    assert [(r.kind, r.where.split(":")[0]) for r in rest] == [(".cpu()", "guidance/run.py")]


def test_the_counter_sees_each_kind_of_read():
    """What the recorder counts, on Dev tensors only."""
    x = torch.arange(4.0).as_subclass(Dev)
    h = torch.arange(4.0)
    with Recorder() as rec:
        x.sum().item(), bool(x[0] > 1), float(x[1]), x.tolist(), x.cpu(), x.nonzero(), torch.equal(x, x)
        x[x > 1], torch.empty(4).copy_(x), (x * 2 + 1).exp()  # the last: device work, no read
        h.sum().item(), h.tolist(), bool(h[0] > 1)  # host tensors: no read
    kinds = Counter(r.kind for r in rec.reads)
    assert kinds == Counter({".item()/bool()/float()": 3, ".tolist()": 1, ".cpu()": 1, "nonzero": 1, "equal": 1,
                             "boolean-mask index": 1, "copy_ to host": 1}), kinds
    assert {r.owner for r in rec.reads} == {"other"}  # this file is neither the pack nor ComfyUI


def _phases(rec: Recorder) -> str:
    """'pack setup / sampling / end | ComfyUI setup / sampling / end' read counts."""
    return " | ".join(" / ".join(str(sum(rec.table(o, p).values())) for p in ("setup", "sampling", "end")) for o in ("pack", "comfy"))


def _report(comfy, model) -> str:
    """The table for bench/README.md: ``python tests/test_host_reads.py`` (COMFYUI_PATH set)."""
    lines = ["| path | setting | batch | pack: setup / sampling / end | ComfyUI (same as stock): setup / sampling / end |",
             "|---|---|---|---|---|"]
    for path in ("ksampler", "guider", "patch"):
        for setting in sorted(SETTINGS):
            for batch in (1, 4):
                rec = counted(comfy, path, model, batch, SETTINGS[setting])
                lines.append(f"| {path} | {setting} | {batch} | {_phases(rec)} |")
    for sampler in ("heun", "dpmpp_2m", "euler_ancestral", "dpm_fast", "dpm_adaptive"):
        rec = counted(comfy, "patch", model, 2, SETTINGS["dynamic"], sampler)
        lines.append(f"| patch, {sampler} ({rec.done} evaluations) | dynamic | 2 | {_phases(rec)} |")
    rec = counted(comfy, "patch", model, 4, SETTINGS["dynamic"])
    lines += ["", "ComfyUI's reads in one run (patch, dynamic, batch 4; stock makes the same):"]
    lines += [f"- {n} x {kind} at {where} ({rec.phase(next(r for r in rec.reads if (r.kind, r.where) == (kind, where)))})"
              for (kind, where), n in sorted(rec.table("comfy").items(), key=lambda kv: kv[0][1])]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).parent))
    host.load_pack()
    comfy_ = host.import_comfy()
    m_ = build_model()
    pack()[0].host_sampling(m_.get_model_object("model_sampling"))
    print(_report(comfy_, m_))
