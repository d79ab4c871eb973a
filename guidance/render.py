"""Trace -> IMAGE: the guidance-norm curve (optionally beside d x sigma), drawn with Pillow (deterministic, float32
[N, H, W, 3] in 0..1)."""
from __future__ import annotations

import math
from typing import Optional

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from .trace import NEVER, Trace

WIDTH, HEIGHT = 640, 360
MARGIN_L, MARGIN_R, MARGIN_T, MARGIN_B = 64, 20, 46, 52
COLORS = [(31, 119, 180), (214, 39, 40), (44, 160, 44), (148, 103, 189), (255, 127, 14), (23, 190, 207), (227, 119, 194), (127, 127, 127)]
SHADE = (255, 236, 200)
NORM_LABEL, DENOISED_LABEL = "guidance norm", "d x sigma (denoised-space difference, RMS)"
DENOISED_TITLE = "d x sigma = RMS(x0_cond - x0_uncond); the switch uses the norm"


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: bitmap font only
        return ImageFont.load_default()


def nice_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    """Round tick values covering [lo, hi]."""
    if not math.isfinite(hi - lo) or hi <= lo:
        hi = lo + 1.0
    raw = (hi - lo) / max(count - 1, 1)
    mag = 10 ** math.floor(math.log10(raw))
    step = min((m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw), default=raw)
    start = math.floor(lo / step) * step
    return [start + k * step for k in range(int(math.ceil((hi - start) / step)) + 1)]


class _Axes:
    def __init__(self, steps: int, ymax: float):
        self.steps, self.ticks = steps, nice_ticks(0.0, ymax)
        self.ymax = self.ticks[-1]
        self.x0, self.x1 = MARGIN_L, WIDTH - MARGIN_R
        self.y0, self.y1 = HEIGHT - MARGIN_B, MARGIN_T

    def x(self, step: float) -> float:
        return self.x0 + (self.x1 - self.x0) * (step / max(self.steps - 1, 1))

    def y(self, value: float) -> float:
        return self.y0 - (self.y0 - self.y1) * (value / self.ymax)


def _frame(draw: ImageDraw.ImageDraw, ax: _Axes, trace: Trace, small, label: str, thr: float) -> None:
    draw.rectangle([ax.x0, ax.y1, ax.x1, ax.y0], outline=(0, 0, 0))
    for v in ax.ticks:
        y = ax.y(v)
        draw.line([ax.x0 - 4, y, ax.x0, y], fill=(0, 0, 0))
        draw.line([ax.x0 + 1, y, ax.x1 - 1, y], fill=(232, 232, 232))
        draw.text((ax.x0 - 6, y), f"{v:.3g}", fill=(0, 0, 0), font=small, anchor="rm")
    n = ax.steps
    ticks = nice_ticks(0, max(n - 1, 1), 6)
    every = max(1, int(ticks[1] - ticks[0]))
    for i in range(0, n, every):
        x = ax.x(i)
        draw.line([x, ax.y0, x, ax.y0 + 4], fill=(0, 0, 0))
        draw.text((x, ax.y0 + 6), f"{i}", fill=(0, 0, 0), font=small, anchor="mt")
        draw.text((x, ax.y0 + 20), f"t={float(trace.timesteps[i]):.0f}", fill=(90, 90, 90), font=small, anchor="mt")
    draw.text(((ax.x0 + ax.x1) / 2, HEIGHT - 4), "sampling step (model timestep)", fill=(0, 0, 0), font=small, anchor="mb")
    draw.text((4, ax.y1 - 6), label, fill=(0, 0, 0), font=small, anchor="lb")
    if thr > 0 and thr <= ax.ymax:
        y = ax.y(thr)
        for xs in range(int(ax.x0), int(ax.x1), 10):
            draw.line([xs, y, min(xs + 5, ax.x1), y], fill=(120, 120, 120), width=1)
        draw.text((ax.x1 - 4, y - 2), f"detect threshold {thr:g}", fill=(90, 90, 90), font=small, anchor="rb")


def _shade(draw, ax: _Axes, trace: Trace, b: int, small) -> None:
    """The pre-transition phase of sample b, shaded and labelled."""
    step = int(trace.switch_step[b])
    if not trace.settings.off and bool(trace.flagged[b]):
        end = ax.x(step) if step != NEVER else ax.x1
        if end > ax.x0:
            draw.rectangle([ax.x0 + 1, ax.y1 + 1, end, ax.y0 - 1], fill=SHADE)
            draw.text((ax.x0 + 6, ax.y1 + 4), trace.settings.phase_label, fill=(150, 90, 0), font=small, anchor="lt")


def _curve(draw, ax: _Axes, trace: Trace, values: torch.Tensor, b: int, color) -> None:
    """Sample b's ``values`` [steps] at its visited, finite steps, and its switch marker."""
    visited, step = trace.visited, int(trace.switch_step[b])
    pts = [(ax.x(i), ax.y(float(values[i]))) for i in range(trace.steps) if bool(visited[i]) and math.isfinite(float(values[i]))]
    if len(pts) > 1:
        draw.line(pts, fill=color, width=2)
    for x, y in pts:
        draw.ellipse([x - 2, y - 2, x + 2, y + 2], fill=color)
    if step != NEVER and 0 <= step < trace.steps:
        x = ax.x(step)
        draw.line([x, ax.y1, x, ax.y0], fill=color, width=1)
        v = float(values[step])
        if math.isfinite(v):
            y = ax.y(v)
            draw.polygon([(x, y - 7), (x + 6, y), (x, y + 7), (x - 6, y)], outline=(0, 0, 0), fill=color)


def _title(trace: Trace, b: Optional[int]) -> str:
    s = trace.settings
    head = f"{s.transition}, before={s.guidance_before:g}, cfg={trace.cfg:g}"
    if b is None:
        return f"{head}, batch of {trace.batch}"
    return f"sample {b}: {head}; {trace.summary()[b]}"


def _ymax(trace: Trace, group: list[int], values: torch.Tensor, thr: float) -> float:
    """Top of the y axis for these samples: 10 % above their largest finite value (and the threshold ``thr``)."""
    vals = values[:, group][trace.visited]
    vals = vals[torch.isfinite(vals)]
    top = float(vals.max()) * 1.1 if vals.numel() else 1.0
    return max(top, thr * 1.1, 1e-6)


def denoised_series(trace: Trace) -> torch.Tensor:
    """d x sigma = RMS(x0_cond - x0_uncond) per step and sample, [steps, B] float32; NaN where the step was not
    visited, its norm is not finite or its sigma (``trace.sigmas[step]``) is not above 0. Display only."""
    sig = trace.sigmas[:trace.steps].float().reshape(-1, 1)
    vals = trace.norms.float() * sig
    ok = trace.visited.reshape(-1, 1) & (sig > 0) & torch.isfinite(vals)
    return torch.where(ok, vals, torch.full_like(vals, float("nan")))


def _plot(trace: Trace, group: list[int], values: torch.Tensor, label: str, thr: float, title: str, font, small) -> Image.Image:
    """One plot of ``values`` [steps, B] for these samples: shade, axes, curves, switch markers, title, legend."""
    ax = _Axes(max(trace.steps, 1), _ymax(trace, group, values, thr))
    img = Image.new("RGB", (WIDTH, HEIGHT), (255, 255, 255))
    draw = ImageDraw.Draw(img)
    if trace.steps > 0:
        if len(group) == 1:
            _shade(draw, ax, trace, group[0], small)
        _frame(draw, ax, trace, small, label, thr)
        for b in group:
            _curve(draw, ax, trace, values[:, b], b, COLORS[b % len(COLORS)])
    draw.text((MARGIN_L, 8), title, fill=(0, 0, 0), font=font, anchor="lt")
    if len(group) > 1:
        for k, b in enumerate(group[:8]):
            draw.text((ax.x1 - 6, ax.y1 + 6 + 14 * k), f"sample {b}: {trace.summary()[b]}", fill=COLORS[b % len(COLORS)], font=small, anchor="rt")
    return img


def _to_array(img: Image.Image) -> np.ndarray:
    return np.asarray(img, dtype=np.float32) / 255.0


def render_curves(trace: Trace, layout: str = "panels", denoised: bool = False) -> torch.Tensor:
    """Draw the trace. ``panels``: one image per sample (image i pairs with latent i); ``overlay``: one image.
    ``denoised``: each image twice as wide, the norm plot left and ``denoised_series`` (d x sigma) right."""
    if layout not in ("panels", "overlay"):
        raise ValueError(f"layout: '{layout}' is not 'panels' or 'overlay'.")
    font, small = _font(14), _font(11)
    images = []
    groups = [[b] for b in range(trace.batch)] if layout == "panels" else [list(range(trace.batch))]
    dx = denoised_series(trace) if denoised else None
    for group in groups:
        img = _plot(trace, group, trace.norms, NORM_LABEL, trace.settings.detect_threshold,
                    _title(trace, group[0] if len(group) == 1 else None), font, small)
        if dx is not None:
            both = Image.new("RGB", (2 * WIDTH, HEIGHT), (255, 255, 255))
            both.paste(img, (0, 0))
            both.paste(_plot(trace, group, dx, DENOISED_LABEL, 0.0, DENOISED_TITLE, font, small), (WIDTH, 0))
            img = both
        images.append(_to_array(img))
    if not images:
        images.append(_to_array(Image.new("RGB", ((2 if denoised else 1) * WIDTH, HEIGHT), (255, 255, 255))))
    return torch.from_numpy(np.stack(images))
