"""Live guidance-norm updates for the front end (filled in by the live-curve work)."""
from __future__ import annotations


def step_listener(handle):
    """A per-step callback ``f(run, step)`` that streams the new numbers to the browser, or None."""
    return None
