"""The live-curve listener (nodes/live.py) in process: a no-op without a ComfyUI server, and the messages it builds.

A real GuidanceRun is driven with synthetic cond/uncond tensors whose guidance norm is chosen; the messages go to a
list through LiveStream's ``send`` argument (the server path is covered by tests/test_browser.py). nodes/live.py
imports without ComfyUI, so this file runs in the core tier.
"""
from __future__ import annotations

import importlib
import json
import math
import sys

import pytest
import torch

from memsafe_cfg.guidance import NEVER, GuidanceRun, GuidanceSettings
from runs import evaluate, new_run

torch.set_num_threads(1)


def live():
    """nodes/live.py (importing it, and nodes/, needs no ComfyUI)."""
    return importlib.import_module("memsafe_cfg.nodes.live")


def make_run(settings: GuidanceSettings, steps: int, batch: int, on_step=None) -> GuidanceRun:
    return new_run(settings, steps, on_step=on_step)


def drive(run: GuidanceRun, curves: torch.Tensor, report_last: bool = True) -> None:
    """curves [steps, B]: the guidance norm of each step's one evaluation (runs.evaluate)."""
    steps = curves.shape[0]
    for i in range(steps):
        evaluate(run, curves[i], run.sigmas[i], shape=(4, 2, 2))
        if report_last or i < steps - 1:
            run.end_step(i)


def test_no_server_means_no_live_curve():
    mod = live()
    assert mod.prompt_server() is None  # pytest never runs ComfyUI's server module
    assert mod.live_curve("12") is None


def test_no_live_curve_when_server_module_lacks_an_instance(monkeypatch):
    mod = live()
    monkeypatch.setitem(sys.modules, "server", type(sys)("server"))  # a module named server without PromptServer
    assert mod.prompt_server() is None and mod.live_curve("12") is None


def test_a_stream_opens_only_for_the_client_that_queued_the_prompt(monkeypatch):
    mod = live()
    sent = []
    server = type(sys)("server")
    server.PromptServer = type("PromptServer", (), {})
    server.PromptServer.instance = type("Instance", (), {"client_id": None, "send_sync": lambda self, e, d, sid: sent.append((e, sid))})()
    monkeypatch.setitem(sys.modules, "server", server)
    curve = mod.live_curve("12")
    assert curve is not None and curve.open() is None  # an API call without client_id: nothing to send to
    server.PromptServer.instance.client_id = "abc"
    stream = curve.open()
    stream.fail("boom")
    assert sent == [(mod.EVENT_DONE, "abc")]


def test_step_payload_is_strict_json():
    mod = live()
    p = mod.step_payload("3:7", 5, 2, 10, [0.5, float("nan"), 1.25], [0])
    assert p == {"node": "3:7", "run": 5, "step": 2, "steps": 10, "norms": [0.5, None, 1.25], "switched": [0]}
    json.dumps(p, allow_nan=False)


@pytest.mark.parametrize("transition", ["dynamic", "static", "off"])
def test_stream_sends_every_step_in_order_then_the_trace(transition):
    mod = live()
    sent = []
    settings = GuidanceSettings(guidance_before=-2.0, transition=transition, switch_percent=0.5, latest_percent=0.9,
                                detect_threshold=0.15)
    curves = torch.tensor([[1.0, 0.1, 2.0], [0.8, 0.2, 1.5], [0.6, 0.3, 1.0], [0.7, 0.4, 1.2], [0.9, 0.5, 1.1],
                           [0.5, 0.6, 1.0], [0.4, 0.7, 0.9], [0.3, 0.8, 0.8]])
    stream = mod.LiveStream(lambda event, data: sent.append((event, json.loads(json.dumps(data, allow_nan=False)))), "12")
    run = make_run(settings, *curves.shape, on_step=stream.step)
    drive(run, curves)
    trace = run.finish()
    stream.end(trace)
    steps = [d for e, d in sent if e == mod.EVENT_STEP]
    assert [e for e, _ in sent] == [mod.EVENT_STEP] * curves.shape[0] + [mod.EVENT_DONE]
    assert [d["step"] for d in steps] == list(range(curves.shape[0]))
    assert all(d["node"] == "12" and d["run"] == stream.run_id and d["steps"] == 8 for d in steps)
    torch.testing.assert_close(torch.tensor([d["norms"] for d in steps]), trace.norms)  # live points = the trace
    for b in range(3):  # each switch is announced at its own step, and only there
        announced = [d["step"] for d in steps if b in d["switched"]]
        assert announced == ([] if int(trace.switch_step[b]) == NEVER else [int(trace.switch_step[b])])
    done = sent[-1][1]
    assert done["summary"] == trace.summary() and done["switch_step"] == trace.switch_step.tolist()
    assert done["norms"] == trace.norms.tolist() and done["steps"] == 8
    if transition != "off":
        assert done["summary"][1] == "plain CFG (not flagged)"  # sample 1 starts at 0.1 < threshold 0.15


def test_unmeasured_steps_arrive_as_null_and_nan_is_reported():
    mod = live()
    sent = []
    stream = mod.LiveStream(lambda e, d: sent.append((e, json.loads(json.dumps(d, allow_nan=False)))), "4")
    run = make_run(GuidanceSettings(), 4, 1, on_step=stream.step)
    curves = torch.tensor([[1.0], [0.5], [float("nan")], [0.2]])
    drive(run, curves)
    with pytest.raises(ValueError) as err:
        run.finish()
    stream.fail(str(err.value))
    assert [d["norms"] for e, d in sent if e == mod.EVENT_STEP] == [[1.0], [0.5], [None], [pytest.approx(0.2)]]
    assert sent[-1][0] == mod.EVENT_DONE and "step 2" in sent[-1][1]["error"] and "summary" not in sent[-1][1]


def test_run_end_sends_the_summary_once_even_if_the_last_step_is_never_reported():
    mod = live()
    sent = []
    stream = mod.LiveStream(lambda e, d: sent.append((e, d)), "8")
    run = make_run(GuidanceSettings(transition="static"), 5, 2, on_step=stream.step)
    drive(run, torch.rand(5, 2) + 0.5, report_last=False)  # e.g. dpm_fast: its callback steps are not the schedule's
    assert [e for e, _ in sent] == [mod.EVENT_STEP] * 4
    trace = run.finish()
    stream.end(trace)
    stream.end(trace)
    stream.fail("late")
    assert [e for e, _ in sent] == [mod.EVENT_STEP] * 4 + [mod.EVENT_DONE]
    assert sent[-1][1]["summary"] == trace.summary()


def test_a_failing_display_never_breaks_sampling():
    mod = live()
    calls = []

    def send(event, data):
        calls.append(event)
        raise RuntimeError("socket gone")

    stream = mod.LiveStream(send, "3")
    run = make_run(GuidanceSettings(), 4, 1, on_step=stream.step)
    drive(run, torch.rand(4, 1) + 0.5)
    stream.end(run.finish())
    assert calls == [mod.EVENT_STEP]  # the first failure silences the stream; the run finished normally


def test_each_run_gets_its_own_id():
    mod = live()
    a, b = mod.LiveStream(lambda e, d: None, "1"), mod.LiveStream(lambda e, d: None, "1")
    assert a.run_id != b.run_id


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA: the no-host-sync path")
def test_cuda_path_adds_no_host_synchronisation():
    mod = live()
    sent = []
    stream = mod.LiveStream(lambda e, d: sent.append((e, d)), "9")
    curves = torch.rand(30, 4, device="cuda") + 0.1
    run = make_run(GuidanceSettings(transition="static"), 30, 4, on_step=stream.step)
    torch.cuda.set_sync_debug_mode("error")  # any synchronising call in the per-step path raises
    try:
        for i in range(29):
            sigma = torch.full((4,), run.sigmas[i], device="cuda")
            run.combine(torch.zeros(4, 8, device="cuda"), (curves[i] * sigma)[:, None].expand(4, 8).contiguous(), sigma, 7.5)
            run.end_step(i)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    sigma = torch.full((4,), run.sigmas[29], device="cuda")
    run.combine(torch.zeros(4, 8, device="cuda"), (curves[29] * sigma)[:, None].expand(4, 8).contiguous(), sigma, 7.5)
    run.end_step(29)
    stream.end(run.finish())  # the run's end synchronises once
    steps = [d["step"] for e, d in sent if e == mod.EVENT_STEP]
    assert steps == list(range(30)) and sent[-1][0] == mod.EVENT_DONE
    assert all(math.isfinite(v) for e, d in sent if e == mod.EVENT_STEP for v in d["norms"])


@pytest.mark.host
def test_patched_model_has_no_listener_in_process():
    from host import import_comfy, tiny_eps_model

    import_comfy()
    from memsafe_cfg.guidance import GuidanceSettings as S
    from memsafe_cfg.nodes.adapter import patch_model

    _, handle = patch_model(tiny_eps_model(), S(), node_id="5")
    assert handle.live is None  # no PromptServer in this process: sampling is untouched
