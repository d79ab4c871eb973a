"""Driving a ``GuidanceRun`` in core tests: one place for the schedule, the settings shorthands, the paper's
Algorithm 1 transcribed as a reference, evaluations with a chosen guidance norm, and the ATen op counter.

Host-free: only the ``guidance`` core. Test files import this module; they never import each other.
"""
from __future__ import annotations

import math
from collections import Counter
from typing import Callable, Optional, Sequence

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from memsafe_cfg.guidance import GuidanceRun, GuidanceSettings, Trace

HUGE = 999999999.9  # ComfyUI's percent_to_sigma(0) on SD-style models
CFG, BEFORE = 7.5, -2.0
SHAPE = (4, 3, 3)


def schedule(n: int) -> list[float]:
    """sigma_i = n - i, ending at 0 (n steps)."""
    return [float(n - i) for i in range(n + 1)]


def linear_pts(n: int) -> Callable[[float], float]:
    """percent_to_sigma for ``schedule(n)`` (ComfyUI's conventions at 0 and 1)."""
    return lambda p: HUGE if p <= 0 else 0.0 if p >= 1 else n * (1.0 - p)


def dynamic(**kw) -> GuidanceSettings:
    base = dict(guidance_before=BEFORE, transition="dynamic", earliest_percent=0.0, latest_percent=1.0)
    return GuidanceSettings(**{**base, **kw})


def algorithm1(norms, earliest=None, latest=None):
    """Jain et al., Algorithm 1, transcribed line by line; ``norms`` in sampling order (t = T, T-1, ..., 1).

    Returns the first sampling step (0-based) whose eps-hat uses s = lambda (full CFG), or None.
    ``earliest`` / ``latest`` are the pack's guards (not in the paper): line 6 is only consulted from step
    ``earliest`` on, and s = lambda is forced at step ``latest``.
    """
    T = len(norms)
    d = {T + 2: -math.inf, T + 1: -math.inf}  # line 2
    s = "-lambda*v_OG"  # line 3
    first = None
    for step, t in enumerate(range(T, 0, -1)):  # line 4: for t = T to 1
        d[t] = norms[step]  # line 5
        allowed = earliest is None or step >= earliest
        if allowed and d[t + 2] > d[t + 1] and d[t + 1] < d[t]:  # line 6
            s = "lambda"  # line 7 (latched: nothing ever resets s)
        if latest is not None and step >= latest:
            s = "lambda"
        if s == "lambda" and first is None:  # line 9 uses s at this step
            first = step
    return first


def new_run(settings: GuidanceSettings, n: int, sigmas: Optional[Sequence[float]] = None, pts=None, **kw) -> GuidanceRun:
    """A run over ``schedule(n)`` (or ``sigmas``), timesteps proportional to sigma."""
    sigmas = schedule(n) if sigmas is None else list(sigmas)
    top = max(sigmas)
    return GuidanceRun(settings, sigmas, [999.0 * s / top for s in sigmas[:-1]], pts or linear_pts(n), **kw)


def dyadic(gen: torch.Generator, *shape) -> torch.Tensor:
    """Random values on a coarse dyadic grid, so cond + d * sigma - cond == d * sigma exactly (ties stay ties)."""
    return torch.randint(-8, 9, shape, generator=gen).float() / 4


def predictions(d, sigma: float, cond: Optional[torch.Tensor] = None, shape=SHAPE):
    """cond, uncond and sigma for one evaluation whose guidance norm is ``d`` ([B] values): uncond = cond + d * sigma."""
    d = torch.as_tensor(d, dtype=torch.float32)
    B = d.shape[0]
    cond = torch.zeros(B, *shape) if cond is None else cond
    sig = torch.full((B,), float(sigma))
    uncond = cond + (d * sig).reshape((B,) + (1,) * (cond.ndim - 1)) * torch.ones_like(cond)
    return cond, uncond, sig


def evaluate(run: GuidanceRun, d, sigma: float, cfg: float = CFG, cond: Optional[torch.Tensor] = None,
             shape=SHAPE, measured: bool = True):
    """One model evaluation whose guidance norm is ``d`` at ``sigma``. Returns (cond, uncond, cond', uncond')."""
    cond, uncond, sig = predictions(d, sigma, cond, shape)
    c2, u2 = run.combine(cond, uncond, sig, cfg, measured=measured)
    return cond, uncond, c2, u2


def drive(curves, settings: GuidanceSettings, sigmas=None, pts=None, cfg: float = CFG, shape=(2, 3)) -> Trace:
    """Run over ``curves`` ([B][steps] guidance norms, sampling order); one evaluation per step at its sigma."""
    d = torch.tensor(curves, dtype=torch.float32).T  # [steps, B]
    n = d.shape[0]
    run = new_run(settings, n, sigmas, pts)
    for i in range(n):
        evaluate(run, d[i], run.sigmas[i], cfg, shape=shape)
        run.end_step(i)
    return run.finish()


def run_steps(curves, settings: GuidanceSettings, cfg: float = CFG, seed: int = 0, evals: int = 1, measured: bool = True):
    """Drive a run over ``curves`` ([B][steps]) with random dyadic cond, ``evals`` evaluations per step (all at the
    step's sigma); return (trace, [(step, cond, uncond, cond', uncond')])."""
    d = torch.tensor(curves, dtype=torch.float32).T
    n, B = d.shape
    gen = torch.Generator().manual_seed(seed)
    run = new_run(settings, n)
    calls = []
    for i in range(n):
        for _ in range(evals):
            calls.append((i, *evaluate(run, d[i], run.sigmas[i], cfg, cond=dyadic(gen, B, *SHAPE), measured=measured)))
        run.end_step(i)
    return run.finish(), calls


def cfg_out(c, u, cfg):
    """ComfyUI's cfg_function without patches: uncond_pred + (cond_pred - uncond_pred) * cond_scale."""
    return u + (c - u) * cfg


class OpCounter(TorchDispatchMode):
    """Counts the ATen ops that do work. Every op reaching the dispatcher counts, except those that only alias
    their input (``OpOverload.is_view``: view, reshape's view, select, slice, expand, unsqueeze, detach, alias,
    ...), which launch no kernel. Copies, casts, factories (``full``, ``zeros``, ``lift_fresh``) and in-place ops
    all count. Host-side Python (ints, lists, floats) is free."""

    def __init__(self):
        super().__init__()
        self.ops: Counter = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if not func.is_view:
            self.ops[str(func.overloadpacket.__name__)] += 1
        return func(*args, **(kwargs or {}))

    @property
    def total(self) -> int:
        return sum(self.ops.values())
