"""Memorization-safe classifier-free guidance (Jain et al., "Classifier-Free Guidance inside the Attraction
Basin May Cause Memorization"), host-free: torch, numpy, Pillow and the standard library only."""
from .clock import StepClock, Tick
from .combine import guidance_norm, rewrite_conds
from .render import denoised_series, render_curves
from .run import GuidanceRun, NonFiniteGuidance
from . import copy_index, scan
from .schedule import StepPlan, plan_steps
from .settings import TRANSITIONS, GuidanceSettings
from .trace import NEVER, Trace
from .transition import Latch, due, first_local_minimum, not_flagged

__all__ = [
    "GuidanceRun", "GuidanceSettings", "Latch", "NEVER", "NonFiniteGuidance", "StepClock", "StepPlan", "TRANSITIONS",
    "Tick", "Trace", "denoised_series", "due", "first_local_minimum", "guidance_norm", "not_flagged", "plan_steps",
    "render_curves", "rewrite_conds", "scan", "copy_index",
]
