"""Memorization scan: rank prompts by memorization risk and calibrate ``detect_threshold`` (host-free).

Two per-sample scores, both from one pure-noise latent per seed:

- ``norm`` (Wen et al., ICLR 2024; the detector Jain et al. rely on): the pack's guidance norm
  (:func:`guidance.combine.guidance_norm`, the same function the samplers' detection uses) at the first step of the
  schedule. Its threshold is what ``detect_threshold`` compares against.
- ``alignment`` (Asthana and Belagiannis, ICLR 2026, anisotropy of the log-probability): the cosine similarity
  between the unconditional noise prediction ``eps_u`` and the guidance vector ``eps_c - eps_u``, with the same noise
  presented at a low-noise timestep; ``eps = (x - denoised) / sigma``. Combined as ``norm + weight * alignment``.

Calibration: a threshold at a requested false-positive rate from a list of clean prompts' per-sample scores; the
weight of the combined score fitted on a list of known-memorized prompts (grid search, AUC memorized vs clean).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from .combine import guidance_norm
from .render import nice_ticks

SCORES = ("norm", "norm + alignment")
PAPER_WEIGHT_SD1 = 2.0  # Asthana and Belagiannis' SD1 weights (g1, g2) = (1, 2), on the plain L2 norm
MAX_PROMPTS = 1000


# ---------------------------------------------------------------- per-sample scores
def norm_score(cond_denoised: torch.Tensor, uncond_denoised: torch.Tensor, sigma) -> torch.Tensor:
    """The guidance norm per sample, float32 [B]: exactly what the samplers' first-step detection measures."""
    sig = torch.as_tensor(sigma, dtype=torch.float32, device=cond_denoised.device).reshape(-1)
    return guidance_norm(cond_denoised, uncond_denoised, sig.expand(cond_denoised.shape[0]))


def alignment_score(x: torch.Tensor, cond_denoised: torch.Tensor, uncond_denoised: torch.Tensor, sigma) -> torch.Tensor:
    """cosine(eps_u, eps_c - eps_u) per sample, float32 [B], with eps = (x - denoised) / sigma.

    0 where either vector is zero (a model that ignores its prompt has no guidance direction).
    """
    B = x.shape[0]
    sig = torch.as_tensor(sigma, dtype=torch.float32, device=x.device).reshape(-1, 1).expand(B, 1).clamp_min(1e-8)
    eps_u = (x.float() - uncond_denoised.float()).reshape(B, -1) / sig
    guide = (uncond_denoised.float() - cond_denoised.float()).reshape(B, -1) / sig  # eps_c - eps_u
    return torch.nn.functional.cosine_similarity(eps_u, guide, dim=1, eps=1e-12)


def default_weight(numel: int) -> float:
    """The paper's SD1 weights (1 on the L2 norm, 2 on the cosine) in the pack's units: the pack's norm is the RMS
    (L2 / sqrt(numel)), so ``norm + w * alignment`` with w = 2 / sqrt(numel) ranks exactly as their score."""
    return PAPER_WEIGHT_SD1 / math.sqrt(max(int(numel), 1))


def combined(norm: torch.Tensor, align: torch.Tensor, weight: float) -> torch.Tensor:
    return norm.float() + float(weight) * align.float()


# ---------------------------------------------------------------- statistics
def auc(pos, neg) -> float:
    """ROC AUC of "pos scores higher than neg" (Mann-Whitney, ties count one half); nan if a side is empty."""
    p = torch.as_tensor(pos, dtype=torch.float64).reshape(-1)
    n = torch.as_tensor(neg, dtype=torch.float64).reshape(-1)
    if p.numel() == 0 or n.numel() == 0:
        return float("nan")
    gt = (p[:, None] > n[None, :]).double().sum()
    eq = (p[:, None] == n[None, :]).double().sum()
    return float((gt + 0.5 * eq) / (p.numel() * n.numel()))


def threshold_at_fpr(clean_scores, fpr: float) -> tuple[float, float]:
    """The smallest float32 threshold t such that at most ``fpr`` of the clean samples have score >= t.

    Detection flags a sample when its score is >= t (``not_flagged`` is ``d0 < t``), so the returned rate, the share
    of clean samples at or above t, is <= fpr. Returns (t, achieved false-positive rate on these clean samples).
    """
    if not 0.0 < fpr < 1.0:
        raise ValueError(f"false_positive_rate: {fpr} is outside (0, 1); use e.g. 0.05 for 5 %.")
    c = np.sort(torch.as_tensor(clean_scores, dtype=torch.float32).detach().reshape(-1).cpu().numpy())[::-1]
    if c.size == 0:
        raise ValueError("clean_prompts: no clean scores to calibrate on; give at least one clean prompt.")
    k = int(math.floor(fpr * c.size + 1e-9))  # this many clean samples may be flagged
    k = min(k, c.size - 1)
    t = np.nextafter(np.float32(c[k]), np.float32(np.inf), dtype=np.float32)
    t = max(float(t), float(np.nextafter(np.float32(0), np.float32(1))))  # > 0: 0 would disable detection
    achieved = float(np.mean(c >= np.float32(t)))
    return t, achieved


def weight_grid(scale: float) -> list[float]:
    """0 and +-scale * {1, 2, 5} * 10^k for k in -3..2 (the norm's typical size sets ``scale``)."""
    scale = scale if math.isfinite(scale) and scale > 0 else 1.0
    mags = [scale * m * 10.0 ** k for k in range(-3, 3) for m in (1, 2, 5)]
    return [0.0] + mags + [-w for w in mags]


def fit_weight(norm_mem, align_mem, norm_clean, align_clean, grid: Optional[Sequence[float]] = None) -> tuple[float, float]:
    """The weight w of ``norm + w * alignment`` that maximises the per-sample AUC memorized vs clean on these
    calibration scores, over ``grid`` (default :func:`weight_grid` scaled by the median norm). Ties go to the
    smallest |w| (then the positive one). Returns (w, AUC at w)."""
    nm, am = torch.as_tensor(norm_mem).float().reshape(-1), torch.as_tensor(align_mem).float().reshape(-1)
    nc, ac = torch.as_tensor(norm_clean).float().reshape(-1), torch.as_tensor(align_clean).float().reshape(-1)
    if nm.numel() == 0 or nc.numel() == 0:
        raise ValueError("memorized_prompts: fitting the weight needs memorized and clean calibration scores.")
    if grid is None:
        grid = weight_grid(float(torch.cat([nm, nc]).median()))
    best = None
    for w in sorted(grid, key=lambda v: (abs(v), v < 0)):
        a = auc(combined(nm, am, w), combined(nc, ac, w))
        if best is None or a > best[1] + 1e-12:
            best = (float(w), a)
    return best


# ---------------------------------------------------------------- results
KINDS = ("scan", "clean", "memorized")


@dataclass
class PromptScore:
    """One prompt's per-seed scores. ``kind``: ``scan`` (ranked), ``clean`` (a clean reference: sets the threshold)
    or ``memorized`` (a known-memorized reference: fits the alignment weight); references are drawn apart."""

    prompt: str
    norm: torch.Tensor                      # [S] float32
    alignment: Optional[torch.Tensor] = None  # [S] float32 or None
    kind: str = "scan"

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"kind: '{self.kind}' is not one of {', '.join(KINDS)}.")

    def score(self, weight: Optional[float]) -> torch.Tensor:
        if weight is None or self.alignment is None:
            return self.norm.float()
        return combined(self.norm, self.alignment, weight)


@dataclass
class ScanResult:
    items: list[PromptScore]
    score: str = "norm"                    # one of SCORES
    weight: Optional[float] = None         # alignment weight (``norm + alignment`` only)
    weight_note: str = ""
    threshold: float = 0.0                 # on the chosen score; 0 = none
    norm_threshold: float = 0.0            # on the norm: the value for detect_threshold; 0 = none
    target_fpr: Optional[float] = None
    calibration_fpr: Optional[float] = None
    notes: list[str] = field(default_factory=list)

    def scores(self, item: PromptScore) -> torch.Tensor:
        return item.score(self.weight if self.score != "norm" else None)

    def ranked(self) -> list[PromptScore]:
        """The scanned (non-reference) prompts, highest mean score first (ties: list order)."""
        return self.by_score("scan")

    def by_score(self, kind: str) -> list[PromptScore]:
        """The prompts of one kind, highest mean score first (ties keep list order)."""
        return sorted([it for it in self.items if it.kind == kind], key=lambda it: -float(self.scores(it).mean()))

    def calibration_auc(self) -> float:
        """Per-sample AUC of the known-memorized vs the clean references on the chosen score (nan without both)."""
        mem, cln = self.by_score("memorized"), self.by_score("clean")
        if not mem or not cln:
            return float("nan")
        return auc(torch.cat([self.scores(it) for it in mem]), torch.cat([self.scores(it) for it in cln]))


def calibrate(items: list[PromptScore], score: str, target_fpr: Optional[float], weight: Optional[float] = None,
              numel: Optional[int] = None) -> ScanResult:
    """Fit the alignment weight (if known-memorized prompts are present), set the thresholds from the clean
    references at ``target_fpr`` (no references: no threshold, 0), and return the result to rank and draw."""
    if score not in SCORES:
        raise ValueError(f"score: '{score}' is not one of {', '.join(SCORES)}.")
    refs = [it for it in items if it.kind == "clean"]
    mems = [it for it in items if it.kind == "memorized"]
    res = ScanResult(items=items, score=score, target_fpr=target_fpr)
    if score != "norm":
        if any(it.alignment is None for it in items):
            raise ValueError("score: 'norm + alignment' needs the alignment of every prompt.")
        if weight is not None:
            res.weight, res.weight_note = float(weight), f"alignment weight {weight:.4g} (given)"
        elif mems and refs:
            cat = lambda group, attr: torch.cat([getattr(it, attr).float() for it in group])  # noqa: E731
            w, a = fit_weight(cat(mems, "norm"), cat(mems, "alignment"), cat(refs, "norm"), cat(refs, "alignment"))
            res.weight = w
            res.weight_note = (f"alignment weight {w:.4g} fitted on {len(mems)} known-memorized vs {len(refs)} clean prompts "
                               f"(grid search, per-sample AUC {a:.3f} on them)")
        else:
            res.weight = default_weight(numel or 1)
            res.weight_note = (f"alignment weight {res.weight:.4g} = Asthana & Belagiannis' SD1 weights (1, 2) in the pack's "
                               f"RMS units (2 / sqrt({numel})); give memorized_prompts and clean_prompts to fit it")
    if refs and target_fpr is not None:
        clean_norm = torch.cat([it.norm.float() for it in refs])
        res.norm_threshold, norm_fpr = threshold_at_fpr(clean_norm, target_fpr)
        if score == "norm":
            res.threshold, res.calibration_fpr = res.norm_threshold, norm_fpr
        else:
            res.threshold, res.calibration_fpr = threshold_at_fpr(torch.cat([res.scores(it) for it in refs]), target_fpr)
    else:
        res.notes.append("no threshold: give clean_prompts and a false_positive_rate to calibrate one "
                         "(detect_threshold = 0 disables detection)")
    return res


# ---------------------------------------------------------------- report
def _fmt(v: float) -> str:
    return f"{v:.5g}"


def flagged_count(res: ScanResult, it: PromptScore) -> int:
    """Seeds of this prompt at or above the threshold (what the samplers' detection would flag); 0 without one."""
    return int((res.scores(it) >= res.threshold).sum()) if res.threshold > 0 else 0


def report(res: ScanResult, cost: str = "") -> str:
    """Plain text: the header (score, weight, threshold, detect_threshold), then one row per scanned prompt, highest
    risk first (rank, mean score, standard deviation and range over seeds, flagged seeds, prompt), then the clean and
    known-memorized references, not ranked."""
    lines = [f"Memorization scan, score: {res.score}" + (f"; {res.weight_note}" if res.weight_note else "")]
    if res.threshold > 0:
        lines.append(f"threshold {_fmt(res.threshold)} on the {res.score} score at target false-positive rate "
                     f"{res.target_fpr:g} ({res.calibration_fpr:.1%} of the clean reference samples at or above it)")
        lines.append(f"detect_threshold (guidance norm, for the Memorization-Safe samplers): {_fmt(res.norm_threshold)}")
    else:
        lines.append("threshold: none (no clean reference list); detect_threshold = 0 (detection off)")
    a = res.calibration_auc()
    if math.isfinite(a):
        lines.append(f"calibration: known-memorized vs clean references, per-sample AUC {a:.3f} on the {res.score} score")
    lines += [f"note: {n}" for n in res.notes]
    if cost:
        lines.append(cost)
    both = res.score != "norm"
    head = (f"{'rank':>4}  {'score':>10}  {'sd':>9}  {'min..max':>21}  {'flagged':>7}  "
            + (f"{'norm':>10}  {'alignment':>9}  " if both else "") + "prompt")

    def row(rank: str, it: PromptScore) -> str:
        s = res.scores(it)
        sd = float(s.std()) if s.numel() > 1 else 0.0
        flagged = f"{flagged_count(res, it)}/{s.numel()}" if res.threshold > 0 else "-"
        extra = f"{_fmt(float(it.norm.mean())):>10}  {float(it.alignment.mean()):>+9.4f}  " if both else ""
        rng = f"{_fmt(float(s.min()))}..{_fmt(float(s.max()))}"
        return f"{rank:>4}  {_fmt(float(s.mean())):>10}  {_fmt(sd):>9}  {rng:>21}  {flagged:>7}  {extra}{it.prompt}"

    lines += ["", head] + [row(str(r), it) for r, it in enumerate(res.ranked(), 1)]
    for kind, title in (("clean", "clean reference prompts (set the threshold; not ranked):"),
                        ("memorized", "known-memorized reference prompts (fit the weight; not ranked):")):
        group = res.by_score(kind)
        if group:
            lines += ["", title] + [row("ref" if kind == "clean" else "mem", it) for it in group]
    return "\n".join(lines)


# ---------------------------------------------------------------- chart
W = 800
ROW, TOP, BOTTOM, LABEL_W, RIGHT = 18, 56, 44, 300, 24
MAX_ROWS = 40
SCANNED, FLAGGED, REFERENCE, KNOWN, THRESH = (31, 119, 180), (214, 39, 40), (44, 160, 44), (148, 103, 189), (90, 90, 90)


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


def _short(text: str, n: int = 44) -> str:
    text = " ".join(text.split())
    return text if len(text) <= n else text[: n - 3] + "..."


def render_scan(res: ScanResult, max_rows: int = MAX_ROWS) -> torch.Tensor:
    """IMAGE float32 [1, H, W, 3] in 0..1. One row per prompt, highest risk at the top (at most ``max_rows`` scanned
    rows; the report lists all): a box from the lowest to the highest seed's score, a tick at the mean, a dot per
    seed; red when the mean is at or above the threshold (dashed vertical line). Clean references (green) and
    known-memorized references (purple) below a separator each."""
    ranked = res.ranked()
    shown = ranked[:max_rows]
    blocks = [(kind, res.by_score(kind)[: max(4, max_rows // 4)]) for kind in ("clean", "memorized")]
    blocks = [(k, g) for k, g in blocks if g]
    rows = len(shown) + sum(len(g) + 1 for _, g in blocks)
    more = len(ranked) > len(shown)
    H = TOP + BOTTOM + ROW * max(rows, 1) + (16 if more else 0)
    img = Image.new("RGB", (W, H), (255, 255, 255))
    d = ImageDraw.Draw(img)
    font, small = _font(13), _font(11)
    vals = [float(v) for it in shown + [it for _, g in blocks for it in g] for v in res.scores(it)]
    marks = vals + ([res.threshold] if res.threshold > 0 else [])
    lo, hi = (min(marks), max(marks)) if marks else (0.0, 1.0)
    ticks = nice_ticks(lo, hi + (hi - lo) * 0.02)
    ticks = [t for t in ticks if t >= lo - (ticks[1] - ticks[0])] if len(ticks) > 1 else ticks
    lo, hi = ticks[0], ticks[-1]
    x0, x1 = LABEL_W, W - RIGHT
    X = lambda v: x0 + (x1 - x0) * (v - lo) / (hi - lo)  # noqa: E731
    d.text((8, 6), f"Memorization scan ({res.score}): {len(ranked)} prompts, highest risk first", fill=(0, 0, 0), font=font)
    sub = res.weight_note or "guidance norm at the first step of the schedule, spread over seeds (Wen et al.)"
    d.text((8, 24), _short(sub, 125), fill=(90, 90, 90), font=small)
    y_end = H - BOTTOM
    d.rectangle([x0, TOP - 4, x1, y_end], outline=(0, 0, 0))
    for v in ticks:
        x = X(v)
        d.line([x, TOP - 3, x, y_end - 1], fill=(235, 235, 235))
        d.text((x, y_end + 4), f"{v:.3g}", fill=(0, 0, 0), font=small, anchor="mt")
    d.text(((x0 + x1) / 2, H - 6), f"{res.score} score (box: lowest..highest seed, tick: mean, dots: seeds)",
           fill=(0, 0, 0), font=small, anchor="mb")

    def draw_row(y: float, it: PromptScore, color, label: str) -> None:
        s = res.scores(it)
        a, b, m = X(float(s.min())), X(float(s.max())), X(float(s.mean()))
        d.rectangle([a, y + 3, max(b, a + 1), y + ROW - 4], fill=tuple(int(c + (255 - c) * 0.6) for c in color), outline=color)
        d.line([m, y + 1, m, y + ROW - 2], fill=color, width=2)
        for v in s:
            xv = X(float(v))
            d.ellipse([xv - 1.5, y + ROW / 2 - 1.5, xv + 1.5, y + ROW / 2 + 1.5], fill=(0, 0, 0))
        d.text((x0 - 6, y + ROW / 2), label, fill=color, font=small, anchor="rm")

    y = TOP
    for r, it in enumerate(shown, 1):
        hot = res.threshold > 0 and float(res.scores(it).mean()) >= res.threshold
        draw_row(y, it, FLAGGED if hot else SCANNED, _short(f"{r}. {it.prompt}"))
        y += ROW
    if more:
        d.text((x0 - 6, y + 6), f"... {len(ranked) - len(shown)} more in the report", fill=(90, 90, 90), font=small, anchor="rm")
        y += 16
    for kind, group in blocks:
        color = REFERENCE if kind == "clean" else KNOWN
        d.line([8, y + ROW - 2, x1, y + ROW - 2], fill=color)
        d.text((8, y + 2), "clean references (set the threshold)" if kind == "clean" else
               "known-memorized references (fit the weight)", fill=color, font=small)
        y += ROW
        for it in group:
            draw_row(y, it, color, _short(f"{'ref' if kind == 'clean' else 'mem'}: {it.prompt}"))
            y += ROW
    if res.threshold > 0:
        xt = X(res.threshold)
        for ys in range(TOP - 4, int(y_end), 8):
            d.line([xt, ys, xt, min(ys + 4, y_end)], fill=THRESH, width=2)
        d.text((xt + 4 if xt < x1 - 170 else xt - 4, TOP - 6), f"threshold {res.threshold:.4g} (FPR {res.target_fpr:g})",
               fill=THRESH, font=small, anchor="lb" if xt < x1 - 170 else "rb")
    else:
        d.text((x1, TOP - 6), "no threshold (no clean list)", fill=THRESH, font=small, anchor="rb")
    return torch.from_numpy(np.asarray(img, dtype=np.float32)[None] / 255.0)
