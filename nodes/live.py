"""Live guidance-norm updates for the front end: a few numbers per step over ComfyUI's websocket.

Never adds a host synchronisation per step: CPU values are read directly; CUDA values are copied
(non-blocking) into pinned memory and sent once their event has completed, or at the run's last step.
Without a ComfyUI server or a connected client (in-process use, API calls without a client_id) it does nothing.
"""
from __future__ import annotations

import itertools
import logging
import math
import sys
import weakref
from collections import deque
from typing import Callable, Optional

import torch

log = logging.getLogger("memsafe_cfg")
EVENT_STEP = "memsafe_cfg.step"
EVENT_DONE = "memsafe_cfg.done"
_run_ids = itertools.count(1)


def prompt_server():
    """ComfyUI's PromptServer instance when this process is a ComfyUI server, else None (never imports it)."""
    return getattr(getattr(sys.modules.get("server"), "PromptServer", None), "instance", None)


def _finite(values) -> list:
    return [float(v) if math.isfinite(v) else None for v in values]


def step_payload(node_id: str, run_id: int, step: int, steps: int, norms, switch_step) -> dict:
    """Step ``step``: each sample's guidance norm (None if unmeasured) and the samples that switched at it."""
    return {"node": node_id, "run": run_id, "step": step, "steps": steps, "norms": _finite(norms),
            "switched": [b for b, s in enumerate(switch_step) if int(s) == step]}


def done_payload(node_id: str, run_id: int, trace) -> dict:
    """The finished run: the whole curve, each sample's switch step and ``Trace.summary()``."""
    return {"node": node_id, "run": run_id, "steps": trace.steps, "norms": [_finite(r) for r in trace.norms.tolist()],
            "switch_step": [int(s) for s in trace.switch_step.tolist()], "summary": trace.summary(),
            "timesteps": [float(t) for t in trace.timesteps.tolist()]}


class LiveStream:
    """One run's messages, in step order, through ``send(event, data)``."""

    def __init__(self, send: Callable[[str, dict], None], node_id: str):
        self.send, self.node_id, self.run_id = send, node_id, next(_run_ids)
        self.pending: deque = deque()  # (step, host values [2, B], cuda event)
        self.done = False

    def __call__(self, run, i: int) -> None:
        """GuidanceRun's ``on_step``: step i was recorded; the last step also sends the finished run."""
        self.push(run, i)
        if i == run.plan.steps - 1:
            self.finish(run)

    def emit(self, step: int, steps: int, values: torch.Tensor) -> None:
        norms, switch = values.tolist()
        self.send(EVENT_STEP, step_payload(self.node_id, self.run_id, step, steps, norms, switch))

    def push(self, run, i: int) -> None:
        row = torch.stack((run.norms[i], run.switch_step.to(run.norms.dtype)))  # a copy: later steps cannot change it
        if row.device.type == "cpu":
            self.emit(i, run.plan.steps, row)
        elif row.device.type == "cuda":
            host = torch.empty(row.shape, dtype=row.dtype, pin_memory=True)
            host.copy_(row, non_blocking=True)
            event = torch.cuda.Event()
            event.record()
            self.pending.append((i, host, event))
        # other devices: the whole curve arrives with the last step
        self.flush(run.plan.steps, wait=False)

    def flush(self, steps: int, wait: bool) -> None:
        while self.pending and (wait or self.pending[0][2].query()):
            i, host, event = self.pending.popleft()
            if wait:
                event.synchronize()
            self.emit(i, steps, host)

    def finish(self, run, trace=None) -> None:
        """Run end (the last step, or the adapter with its trace): one synchronisation, then the summary; once."""
        if self.done:
            return
        self.done = True
        self.flush(run.plan.steps, wait=True)
        try:
            trace = trace if trace is not None else run.finish()
        except ValueError as e:  # NonFiniteGuidance: the adapter raises it to the user right after
            self.send(EVENT_DONE, {"node": self.node_id, "run": self.run_id, "error": str(e)})
            return
        self.send(EVENT_DONE, done_payload(self.node_id, self.run_id, trace))


def step_listener(handle):
    """A per-step callback ``f(run, step)`` that streams the new numbers to the browser, or None without a server."""
    if prompt_server() is None or handle.node_id is None:
        return None
    node_id = str(handle.node_id)
    state = {"run": lambda: None, "stream": None}

    def stream_for(run) -> Optional[LiveStream]:
        if state["run"]() is not run:  # a new run: bind it to the client that queued this prompt
            server = prompt_server()
            sid = getattr(server, "client_id", None)
            send = (lambda event, data: server.send_sync(event, data, sid)) if sid else None
            state["run"], state["stream"] = weakref.ref(run), (LiveStream(send, node_id) if send else None)
        return state["stream"]

    def guarded(call) -> None:
        try:
            call()
        except Exception:  # the display must never break sampling
            log.exception("Memorization-safe CFG: live curve update failed; sampling continues.")
            state["stream"] = None

    def on_step(run, i: int) -> None:
        stream = stream_for(run)
        if stream is not None:
            guarded(lambda: stream(run, i))

    def finished(run, trace) -> None:
        """Run end, from the adapter: the summary, for samplers whose callback never reports the last step."""
        stream = stream_for(run)
        if stream is not None:
            guarded(lambda: stream.finish(run, trace))

    on_step.finished = finished
    return on_step
