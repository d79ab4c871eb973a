"""Live guidance-norm updates for the front end: a few numbers per step over ComfyUI's websocket.

``live_curve(node_id)`` gives a node's ``LiveCurve`` (None without a ComfyUI server in this process). Per run the
adapter opens a ``LiveStream`` (None without a client to send to), hands ``stream.step`` to the run as its per-step
hook, and ends the stream once with the run's trace (``end``) or its error (``fail``).

Never adds a host synchronisation per step, and the same code runs on every device: per step the norm row (and,
until the host knows every sample is on full CFG, the on-CFG row) is copied into one host buffer per run (pinned and
non-blocking on CUDA; 1-2 copy ops per step, counted by tests/test_core_ops.py) and sent once the copy has completed
(at once on the CPU, once its CUDA event has, or at the run's end). Other devices send the whole curve at the end.
A display error never breaks sampling: it is logged and the stream goes quiet. Importing this module needs no ComfyUI.
"""
from __future__ import annotations

import itertools
import logging
import math
import sys
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


def step_payload(node_id: str, run_id: int, step: int, steps: int, norms, switched: list[int]) -> dict:
    """Step ``step``: each sample's guidance norm (None if unmeasured) and the samples that switched at it."""
    return {"node": node_id, "run": run_id, "step": step, "steps": steps, "norms": _finite(norms), "switched": list(switched)}


def done_payload(node_id: str, run_id: int, trace) -> dict:
    """The finished run: the whole curve, each sample's switch step and ``Trace.summary()``."""
    return {"node": node_id, "run": run_id, "steps": trace.steps, "norms": [_finite(r) for r in trace.norms.tolist()],
            "switch_step": [int(s) for s in trace.switch_step.tolist()], "summary": trace.summary(),
            "timesteps": [float(t) for t in trace.timesteps.tolist()]}


class LiveStream:
    """One run's messages, in step order, through ``send(event, data)``: ``step`` per schedule step, then ``end``
    (or ``fail``) exactly once."""

    def __init__(self, send: Callable[[str, dict], None], node_id: str):
        self.send, self.node_id, self.run_id = send, node_id, next(_run_ids)
        self.pending: deque = deque()  # (step, host values [2, B], everyone on, cuda event or None)
        self.host: Optional[torch.Tensor] = None  # [steps, 2, B] float32 on the host: the copies of each step's rows
        self.was_on: list[bool] = []  # per sample, on full CFG in an earlier sent step
        self.steps = 0
        self.ended = self.broken = False

    def step(self, run, i: int) -> None:
        """GuidanceRun's per-step hook: step i was recorded."""
        self._guarded(lambda: self._push(run, i))

    def end(self, trace) -> None:
        """The run's end, with its trace: the remaining steps, then the summary."""
        self._close(lambda: self.send(EVENT_DONE, done_payload(self.node_id, self.run_id, trace)))

    def fail(self, error: str) -> None:
        """The run ended in an error (a non-finite norm): the remaining steps, then the error."""
        self._close(lambda: self.send(EVENT_DONE, {"node": self.node_id, "run": self.run_id, "error": error}))

    def _push(self, run, i: int) -> None:
        self.steps = run.plan.steps
        norms = run.norm_row(i)
        cuda = norms.device.type == "cuda"
        if not cuda and norms.device.type != "cpu":
            return  # other devices: the whole curve arrives with the run's end
        if self.host is None:  # once per run
            self.host = torch.empty((self.steps, 2, norms.shape[0]), dtype=torch.float32, pin_memory=cuda)
        host, everyone = self.host[i], run.everyone_on(i)
        host[0].copy_(norms, non_blocking=cuda)  # a copy: later evaluations replace the row, never change it
        if not everyone:
            host[1].copy_(run.on_row(i), non_blocking=cuda)
        event = None
        if cuda:
            event = torch.cuda.Event()
            event.record()
        self.pending.append((i, host, everyone, event))
        self._flush(wait=False)

    def _emit(self, step: int, values: torch.Tensor, everyone: bool) -> None:
        norms = values[0].tolist()
        on = [True] * len(norms) if everyone else values[1].tolist()
        if not self.was_on:
            self.was_on = [False] * len(on)
        switched = [b for b, v in enumerate(on) if v and not self.was_on[b]]
        self.was_on = [w or bool(v) for w, v in zip(self.was_on, on)]
        self.send(EVENT_STEP, step_payload(self.node_id, self.run_id, step, self.steps, norms, switched))

    def _flush(self, wait: bool) -> None:
        while self.pending and (wait or self.pending[0][3] is None or self.pending[0][3].query()):
            i, host, everyone, event = self.pending.popleft()
            if wait and event is not None:
                event.synchronize()
            self._emit(i, host, everyone)

    def _close(self, last: Callable[[], None]) -> None:
        if self.ended:
            return
        self.ended = True
        self._guarded(lambda: (self._flush(wait=True), last()))

    def _guarded(self, call: Callable[[], object]) -> None:
        if self.broken:
            return
        try:
            call()
        except Exception:  # the display must never break sampling
            log.exception("Memorization-safe CFG: live curve update failed; sampling continues.")
            self.broken = True


class LiveCurve:
    """The live curve of one node: ``open()`` starts a run's stream, bound to the client that queued the prompt."""

    def __init__(self, node_id: str):
        self.node_id = node_id

    def open(self) -> Optional[LiveStream]:
        """A stream for the run starting now, or None when no client is there to receive it."""
        server = prompt_server()
        sid = getattr(server, "client_id", None)
        if server is None or not sid:
            return None
        return LiveStream(lambda event, data: server.send_sync(event, data, sid), self.node_id)


def live_curve(node_id: Optional[str]) -> Optional[LiveCurve]:
    """The node's live curve, or None outside a ComfyUI server (in-process use) or without a node id."""
    if prompt_server() is None or node_id is None:
        return None
    return LiveCurve(str(node_id))
