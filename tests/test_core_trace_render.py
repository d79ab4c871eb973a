"""Trace save/load through .safetensors and the curve renderer (shape, determinism, marker, shade, threshold, and the
d x sigma plot beside the norm)."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from PIL import Image

from memsafe_cfg.guidance import GuidanceRun, GuidanceSettings, Trace, render_curves
from memsafe_cfg.guidance import render
from runs import drive, dynamic, linear_pts

torch.set_num_threads(1)
CURVE = [5, 4, 3, 4, 5, 2, 1, 2, 3, 4]  # first minimum at step 2 -> switch at step 3


def bits(t: torch.Tensor) -> torch.Tensor:
    """Bit pattern of a tensor, so NaN == NaN when comparing."""
    return t.view(torch.int32) if t.dtype == torch.float32 else t


def test_trace_round_trip(tmp_path):
    s = dynamic(guidance_before=-1.5, earliest_percent=0.1, latest_percent=0.8, detect_threshold=2.0, switch_percent=0.3)
    n = 8
    sig = [float(n - i) for i in range(n + 1)]
    run = GuidanceRun(s, sig, [125.0 * x for x in sig[:-1]], linear_pts(n))
    gen = torch.Generator().manual_seed(1)
    for i in range(n):
        if i != 4:  # step 4 never evaluated: NaN rows must survive the round trip
            c = torch.randn(3, 4, 2, 2, generator=gen)
            run.combine(c, c + torch.randn(3, 4, 2, 2, generator=gen) * 3, torch.full((3,), sig[i]), 6.0, measured=i != 6)
        run.end_step(i)
    trace = run.finish(meta={"node": "12", "sampler": "euler"})
    path = tmp_path / "trace.safetensors"
    trace.save(str(path))
    back = Trace.load(str(path))
    for f in ("sigmas", "timesteps", "norms", "scales", "visited", "switch_step", "flagged"):
        a, b = getattr(trace, f), getattr(back, f)
        assert a.dtype == b.dtype and a.shape == b.shape and torch.equal(bits(a), bits(b)), f
    assert back.settings == s and back.cfg == 6.0 and back.meta == {"node": "12", "sampler": "euler"}
    assert torch.isnan(back.norms[4]).all() and torch.isnan(back.norms[6]).all() and not bool(back.visited[4])
    assert back.summary() == trace.summary()


def test_trace_round_trip_static_and_off(tmp_path):
    for s in (GuidanceSettings(transition="static", switch_percent=0.5), GuidanceSettings(transition="off")):
        trace = drive([[1.0, 2.0, 3.0, 4.0]], s, cfg=3.25)
        trace.save(str(tmp_path / "t.safetensors"))
        back = Trace.load(str(tmp_path / "t.safetensors"))
        assert back.settings == s and back.cfg == 3.25 and torch.equal(back.switch_step, trace.switch_step)


def test_trace_round_trip_without_any_evaluation(tmp_path):
    trace = GuidanceRun(dynamic(), [3.0, 2.0, 1.0, 0.0], [3.0, 2.0, 1.0], linear_pts(3)).finish()
    trace.save(str(tmp_path / "empty.safetensors"))
    back = Trace.load(str(tmp_path / "empty.safetensors"))
    assert back.norms.shape == (3, 0) and back.switch_step.shape == (0,) and back.visited.tolist() == [False] * 3


# ---- renderer ----

def u8(img: torch.Tensor) -> np.ndarray:
    return (img.numpy() * 255).round().astype(np.uint8)


def axes(trace: Trace, group, values=None, thr=None) -> render._Axes:
    """The renderer's axes for these samples: the norm plot's, or those of ``values`` with threshold ``thr``."""
    if values is None:
        values, thr = trace.norms, trace.settings.detect_threshold
    return render._Axes(trace.steps, render._ymax(trace, group, values, thr))


def full_columns(img: np.ndarray, color, ax) -> list[int]:
    """Columns inside the plot where ``color`` fills most rows: vertical marker lines."""
    inside = img[int(ax.y1) + 1:int(ax.y0), int(ax.x0) + 1:int(ax.x1)]
    hits = (inside == np.array(color, dtype=np.uint8)).all(-1).sum(0)
    return [int(ax.x0) + 1 + c for c in np.nonzero(hits > 0.8 * inside.shape[0])[0]]


def diamond(img: np.ndarray, bare: np.ndarray, color, x: float, y: float) -> bool:
    """The switch diamond: around the curve point (x, y) the sample colour covers clearly more than without marker."""
    box = lambda a: colour_mask(a[int(y) - 6:int(y) + 7, max(int(x) - 5, 0):int(x) + 6], color).sum()  # noqa: E731
    return int(box(img)) >= int(box(bare)) + 12


def colour_mask(img: np.ndarray, color) -> np.ndarray:
    return (img == np.array(color, dtype=np.uint8)).all(-1)


def test_render_shapes_and_range():
    trace = drive([CURVE, CURVE[::-1], [2.0] * 10], dynamic())
    panels, overlay = render_curves(trace), render_curves(trace, "overlay")
    assert panels.shape == (3, render.HEIGHT, render.WIDTH, 3) and overlay.shape == (1, render.HEIGHT, render.WIDTH, 3)
    for img in (panels, overlay):
        assert img.dtype == torch.float32 and float(img.min()) >= 0 and float(img.max()) <= 1
        assert float(img.min()) < 0.1  # something dark was drawn
    assert not torch.equal(panels[0], panels[1])
    with pytest.raises(ValueError, match="layout"):
        render_curves(trace, "grid")


def test_render_is_deterministic(tmp_path):
    trace = drive([CURVE, [2.0] * 10], dynamic(detect_threshold=1.0))
    a, b = render_curves(trace), render_curves(trace)
    assert torch.equal(a, b) and torch.equal(render_curves(trace, "overlay"), render_curves(trace, "overlay"))
    path = tmp_path / "curve.png"
    Image.fromarray(u8(a[0])).save(path)
    assert np.array_equal(np.asarray(Image.open(path).convert("RGB")), u8(a[0]))


def test_switch_marker_at_switch_step_and_moves_with_it():
    trace = drive([CURVE], dynamic())
    assert int(trace.switch_step[0]) == 3
    color = render.COLORS[0]
    ax = axes(trace, [0])
    assert (ax.x0, ax.x1) == (render.MARGIN_L, render.WIDTH - render.MARGIN_R)
    bare = u8(render_curves(dataclasses.replace(trace, switch_step=torch.tensor([-1])))[0])
    for step in (3, 7, 1, 8, 0, 9):
        moved = dataclasses.replace(trace, switch_step=torch.tensor([step]))
        img = u8(render_curves(moved)[0])
        x = ax.x0 + (ax.x1 - ax.x0) * step / (trace.steps - 1)
        assert diamond(img, bare, color, x, ax.y(CURVE[step]))
        cols = full_columns(img, color, ax)
        if 0 < step < trace.steps - 1:
            assert cols and all(abs(c - x) <= 1 for c in cols), (step, x, cols)
        else:  # at the first / last step the marker line lies under the frame; the diamond still shows
            assert cols == []


def test_shade_left_of_marker_only():
    trace = drive([CURVE], dynamic())
    ax = axes(trace, [0])
    for step in (3, 6):
        img = u8(render_curves(dataclasses.replace(trace, switch_step=torch.tensor([step])))[0])
        shade = colour_mask(img, render.SHADE)
        x = ax.x(step)
        assert shade[:, :int(x) - 1].sum() > 1000
        assert shade[:, int(x) + 2:].sum() == 0
        assert shade[:, :int(ax.x0)].sum() == 0  # inside the plot only


def test_never_switched_sample_is_shaded_to_the_end():
    trace = dataclasses.replace(drive([CURVE], dynamic()), switch_step=torch.tensor([-1]))
    img = u8(render_curves(trace)[0])
    shade = colour_mask(img, render.SHADE)
    ax = axes(trace, [0])
    assert shade[:, int(ax.x1) - 3].any() and full_columns(img, render.COLORS[0], ax) == []


def test_unflagged_and_off_samples_have_no_shade():
    trace = drive([CURVE, [0.5] + CURVE[1:]], dynamic(detect_threshold=1.0))
    assert trace.flagged.tolist() == [True, False]
    panels = render_curves(trace)
    assert colour_mask(u8(panels[0]), render.SHADE).any()
    assert not colour_mask(u8(panels[1]), render.SHADE).any()
    off = drive([CURVE], GuidanceSettings(transition="off"))
    assert not colour_mask(u8(render_curves(off)[0]), render.SHADE).any()


def test_overlay_has_every_marker_and_no_shade():
    curves = [CURVE, [5, 1, 5, 6, 7, 8, 9, 9.5, 9.7, 9.8], [9, 8, 7, 6, 5, 4, 3, 2, 1, 2]]
    trace = drive(curves, dynamic())
    assert trace.switch_step.tolist() == [3, 2, 9]
    img = u8(render_curves(trace, "overlay")[0])
    bare = u8(render_curves(dataclasses.replace(trace, switch_step=torch.tensor([-1, -1, -1])), "overlay")[0])
    ax = axes(trace, [0, 1, 2])
    for b, step in enumerate(trace.switch_step.tolist()):
        cols = full_columns(img, render.COLORS[b], ax)
        assert diamond(img, bare, render.COLORS[b], ax.x(step), ax.y(curves[b][step]))
        if step < trace.steps - 1:  # the last step's line lies under the frame
            assert cols and all(abs(c - ax.x(step)) <= 1 for c in cols)
    assert not colour_mask(img, render.SHADE).any()


def test_threshold_line_only_when_detection_is_on():
    grey = (120, 120, 120)
    trace = drive([CURVE], dynamic(detect_threshold=2.5))  # first norm 5 >= 2.5: flagged
    ax = axes(trace, [0])
    plain = dataclasses.replace(trace, settings=dynamic())
    assert axes(plain, [0]).ymax == ax.ymax  # same axes, so the same row can be compared
    y = int(round(ax.y(2.5)))
    band = slice(y - 1, y + 2)
    on, off = u8(render_curves(trace)[0]), u8(render_curves(plain)[0])
    assert colour_mask(on[band], grey).sum() > 150
    assert colour_mask(off[band], grey).sum() < 10


def test_render_empty_and_unvisited():
    empty = GuidanceRun(dynamic(), [3.0, 2.0, 1.0, 0.0], [3.0, 2.0, 1.0], linear_pts(3)).finish()
    assert render_curves(empty).shape == (1, render.HEIGHT, render.WIDTH, 3)
    trace = drive([CURVE], dynamic())
    holes = dataclasses.replace(trace, visited=torch.tensor([True, False] * 5), norms=trace.norms.clone())
    holes.norms[1::2] = float("nan")
    out = render_curves(holes)
    assert out.shape == (1, render.HEIGHT, render.WIDTH, 3) and torch.isfinite(out).all()


# ---- d x sigma beside the norm (denoised=True) ----

def with_holes(trace: Trace, unvisited=(2,), sigma_zero=(5,)) -> Trace:
    """``trace`` with NaN norms at the unvisited steps and sigma 0 at the ``sigma_zero`` steps."""
    norms, sigmas, visited = trace.norms.clone(), trace.sigmas.clone(), trace.visited.clone()
    norms[list(unvisited)], visited[list(unvisited)], sigmas[list(sigma_zero)] = float("nan"), False, 0.0
    return dataclasses.replace(trace, norms=norms, sigmas=sigmas, visited=visited)


def test_denoised_series_is_norm_times_sigma_nan_where_unvisited_or_sigma_zero():
    trace = drive([CURVE, CURVE[::-1]], dynamic())
    series = render.denoised_series(trace)
    assert series.shape == (10, 2) and torch.equal(series, trace.norms * trace.sigmas[:10, None])
    assert series[:, 0].tolist() == [d * (10 - i) for i, d in enumerate(CURVE)]  # schedule(10): sigma_i = 10 - i
    holed = render.denoised_series(with_holes(trace))
    assert torch.isnan(holed[[2, 5]]).all()
    keep = [i for i in range(10) if i not in (2, 5)]
    assert torch.equal(holed[keep], series[keep])
    assert torch.isnan(render.denoised_series(dataclasses.replace(trace, sigmas=torch.zeros(11)))).all()


@pytest.mark.parametrize("layout", ["panels", "overlay"])
def test_denoised_false_is_the_default_and_the_left_half_of_true(layout):
    trace = drive([CURVE, CURVE[::-1], [2.0] * 10], dynamic(detect_threshold=1.0))
    plain = render_curves(trace, layout)
    assert torch.equal(render_curves(trace, layout, denoised=False), plain)
    both = render_curves(trace, layout, denoised=True)
    assert both.shape == (plain.shape[0], render.HEIGHT, 2 * render.WIDTH, 3)
    assert torch.equal(both[:, :, :render.WIDTH], plain)  # the norm plot is untouched
    assert not torch.equal(both[:, :, render.WIDTH:], plain)


def test_denoised_plot_draws_norm_times_sigma_with_shade_and_diamond():
    trace = drive([CURVE], dynamic(detect_threshold=1.0))
    series, color = render.denoised_series(trace), render.COLORS[0]
    ax = axes(trace, [0], series, 0.0)
    img = u8(render_curves(trace, denoised=True)[0])
    right = img[:, render.WIDTH:]
    for i in range(trace.steps):  # every point of d x sigma is drawn where norms * sigmas puts it
        x, y = int(round(ax.x(i))), int(round(ax.y(float(series[i, 0]))))
        assert colour_mask(right[y - 2:y + 3, max(x - 2, 0):x + 3], color).any(), i
    bare = u8(render_curves(dataclasses.replace(trace, switch_step=torch.tensor([-1])), denoised=True)[0])
    step = int(trace.switch_step[0])
    assert diamond(right, bare[:, render.WIDTH:], color, ax.x(step), ax.y(float(series[step, 0])))
    shade = colour_mask(right, render.SHADE)
    assert shade[:, :int(ax.x(step)) - 1].sum() > 1000 and shade[:, int(ax.x(step)) + 2:].sum() == 0
    assert colour_mask(right, (120, 120, 120)).sum() < 10  # no detect-threshold line: it is in norm units


def test_denoised_skips_unvisited_and_sigma_zero_steps():
    trace = with_holes(drive([CURVE], dynamic()))
    out = render_curves(trace, denoised=True)
    assert out.shape == (1, render.HEIGHT, 2 * render.WIDTH, 3) and torch.isfinite(out).all()
    right = u8(out[0])[:, render.WIDTH:]
    ax = axes(trace, [0], render.denoised_series(trace), 0.0)
    x, y = int(round(ax.x(5))), int(round(ax.y(0.0)))  # sigma 0 at step 5 would put a point at 0
    assert not colour_mask(right[y - 3:y + 1, x - 1:x + 2], render.COLORS[0]).any()
    flat = dataclasses.replace(trace, sigmas=torch.zeros(11), switch_step=torch.tensor([-1]))  # no crash, no curve
    assert not colour_mask(u8(render_curves(flat, denoised=True)[0])[:, render.WIDTH:], render.COLORS[0]).any()
    empty = GuidanceRun(dynamic(), [3.0, 2.0, 1.0, 0.0], [3.0, 2.0, 1.0], linear_pts(3)).finish()
    assert render_curves(empty, "overlay", denoised=True).shape == (1, render.HEIGHT, 2 * render.WIDTH, 3)
