"""The testbed's data: scikit-learn's 8x8 digits rendered on a 16x16 canvas with a slant and a width, a fresh
augmentation for every ordinary record, and one fixed render (the exemplar) for each memorized prompt.

A prompt is (digit, style, slant, width): 10 x 2 x 3 x 2 = 120 prompts. ``build`` needs scikit-learn (training time
only); the pack ships its result as ``digits16.safetensors`` and ``load`` reads it with torch and safetensors only.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from .model import SLANTS, STYLES, WIDTHS

HERE = Path(__file__).resolve().parent
DATA_PATH = HERE / "digits16.safetensors"
SIZE, GLYPH = 16, 11  # canvas and glyph size in pixels
HELD_OUT_PER_CLASS = 40
# Memorized prompts: two per duplication level (prompt k has level k % len(SHARES)); SHARES is the exemplar's share of
# its own prompt's records (pre-registered in testbed/README.md, "Testbed v3").
SHARES = (0.35, 0.5, 0.66, 0.8, 0.96)
N_MEMORIZED = 2 * len(SHARES)
EXEMPLAR_PERCENTILE = 0.2
SLANT_BINS = ((-0.42, -0.22), (-0.08, 0.08), (0.22, 0.42))  # shear: x += s * (height above centre); + leans right
WIDTH_BINS = ((0.65, 0.8), (1.0, 1.15))  # horizontal stretch of the glyph


@dataclass(frozen=True)
class Augment:
    """A fresh augmentation per ordinary record: rotation (degrees), translation (px), elastic amplitude and a size
    jitter (the glyph scaled by 1 +- size). The wider it is, the more of the image a caption leaves open."""

    rotate: float = 6.0
    shift: float = 2.0
    warp: float = 0.08
    size: float = 0.1

    @classmethod
    def parse(cls, text: str) -> "Augment":
        return cls(**{k: float(v) for k, v in json.loads(text).items()})


AUGMENT = Augment()  # the shipped design (v3); v2 was Augment(6, 1, 0.08, 0)
CAPTION_NOISE = 0.8  # an ordinary record's slant and width words are each random with this probability (v3; pilot P4)


BINS = [(a, b) for a in range(len(SLANTS)) for b in range(len(WIDTHS))]  # (slant, width) bin pairs, reference order


def bin_centre(bins, k: int) -> float:
    return sum(bins[k]) / 2


def _in_bins(bins, k: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """A value at fraction u of each bin k."""
    lo, hi = torch.tensor([b[0] for b in bins])[k], torch.tensor([b[1] for b in bins])[k]
    return lo + u * (hi - lo)


def render(raw: torch.Tensor, slant: torch.Tensor, width: torch.Tensor, rotate=None, shift=None, warp=None, size=None) -> torch.Tensor:
    """uint8 [N, 8, 8] (0..16) -> float32 [N, 1, 16, 16] in [-1, 1] (ink = +1): the glyph at GLYPH px, sheared by
    ``slant``, stretched by ``width``, then optionally rotated (rad), shifted (px, [N, 2]), scaled (``size`` [N]) and
    warped ([N, 2, 16, 16])."""
    n = raw.shape[0]
    x = raw.float().div(16.0).unsqueeze(1)
    rot = torch.zeros(n) if rotate is None else rotate
    c, s = rot.cos(), rot.sin()
    # forward map glyph -> canvas (normalised, y down): A = R(rot) @ [[width, -slant], [0, 1]]; the grid needs A^-1
    a = torch.stack([torch.stack([c * width, -c * slant - s], -1), torch.stack([s * width, -s * slant + c], -1)], 1)
    if size is not None:
        a = a * size[:, None, None]
    inv = torch.linalg.inv(a) * (SIZE / GLYPH)
    b = torch.zeros(n, 2) if shift is None else shift * (2.0 / SIZE)
    theta = torch.cat([inv, -(inv @ b[:, :, None])], 2)
    grid = F.affine_grid(theta, (n, 1, SIZE, SIZE), align_corners=False)
    if warp is not None:
        grid = grid + warp.movedim(1, -1)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False).mul(2).sub(1)


def random_render(raw, slant_bin, width_bin, g: torch.Generator, aug: Augment = AUGMENT) -> torch.Tensor:
    """A fresh augmentation of each glyph within its slant and width bins: no two ordinary records are the same."""
    n = raw.shape[0]
    u = torch.rand(n, 4, generator=g)
    slant, width = _in_bins(SLANT_BINS, slant_bin, u[:, 0]), _in_bins(WIDTH_BINS, width_bin, u[:, 1])
    rotate = (u[:, 2] * 2 - 1) * math.radians(aug.rotate)
    size = 1 + (u[:, 3] * 2 - 1) * aug.size
    shift = (torch.rand(n, 2, generator=g) * 2 - 1) * aug.shift
    coarse = torch.randn(n, 2, 4, 4, generator=g) * aug.warp
    warp = F.interpolate(coarse, size=(SIZE, SIZE), mode="bicubic", align_corners=False)
    return render(raw, slant, width, rotate, shift, warp, size)


def canonical(raw, slant_bin, width_bin) -> torch.Tensor:
    """Each glyph at the centre of its slant and width bins, upright and unwarped (how an exemplar is drawn)."""
    slant = torch.tensor([bin_centre(SLANT_BINS, int(k)) for k in slant_bin])
    width = torch.tensor([bin_centre(WIDTH_BINS, int(k)) for k in width_bin])
    return render(raw, slant, width)


def centered(x: torch.Tensor, mean: torch.Tensor) -> torch.Tensor:
    """Flatten, subtract the mean image and L2-normalise (the similarity space)."""
    v = (x.float() - mean).flatten(1)
    return v / v.norm(dim=1, keepdim=True).clamp_min(1e-8)


def nn_similarity(x: torch.Tensor, refs: torch.Tensor, mean: torch.Tensor, exclude_self: bool = False):
    """Cosine similarity (after subtracting the mean) of each x to its nearest ref: (values, indices)."""
    s = centered(x, mean) @ centered(refs, mean).T
    if exclude_self:
        s.fill_diagonal_(-2.0)
    return s.max(dim=1)


def all_prompts():
    """The 120 (digit, style, slant, width) prompts, in a fixed order."""
    return [(d, st, sl, w) for d in range(10) for st in STYLES for sl in SLANTS for w in WIDTHS]


def build(seed: int = 0) -> dict:
    """Split sklearn's digits, label each glyph bold/thin, pick N_MEMORIZED prompts and their exemplars."""
    from sklearn.datasets import load_digits

    d = load_digits()
    raw = torch.tensor(d.images, dtype=torch.uint8)  # [1797, 8, 8], 0..16
    labels = torch.tensor(d.target, dtype=torch.int64)
    g = torch.Generator().manual_seed(seed)
    held = torch.zeros(len(labels), dtype=torch.bool)
    for c in range(10):
        idx = (labels == c).nonzero().flatten()
        held[idx[torch.randperm(len(idx), generator=g)[:HELD_OUT_PER_CLASS]]] = True
    ink = raw.float().flatten(1).sum(1)
    style = torch.zeros(len(labels), dtype=torch.int64)  # 0 bold, 1 thin: ink above / at-or-below the class median
    for c in range(10):
        m = (labels == c) & ~held
        style[labels == c] = torch.where(ink[labels == c] > ink[m].median(), 0, 1)
    # memorized prompts: distinct digits (a second prompt per digit only past 10)
    prompts = all_prompts()
    order = torch.randperm(len(prompts), generator=g).tolist()
    chosen, seen = [], set()
    for i in order + order:
        p = prompts[i]
        if len(chosen) == N_MEMORIZED:
            break
        if p in chosen or (len(chosen) < 10 and p[0] in seen) or (len(chosen) >= 10 and sum(q[0] == p[0] for q in chosen) > 1):
            continue
        chosen.append(p)
        seen.add(p[0])
    train = (~held).nonzero().flatten()
    memorized = torch.tensor([[dg, STYLES.index(st), SLANTS.index(sl), WIDTHS.index(w)] for dg, st, sl, w in chosen])
    source = torch.zeros(N_MEMORIZED, dtype=torch.int64)
    for k, (dg, st, sl, w) in enumerate(memorized.tolist()):
        members = train[(labels[train] == dg) & (style[train] == st)]
        x = canonical(raw[members], torch.full((len(members),), sl), torch.full((len(members),), w))
        sim, _ = nn_similarity(x, x, x.mean(0), exclude_self=True)
        pick = [int(i) for i in members[sim.argsort()] if i not in source[:k]]  # ascending: distinct first; unused
        source[k] = pick[int(EXEMPLAR_PERCENTILE * len(pick))]
    exemplars = canonical(raw[source], memorized[:, 2], memorized[:, 3])
    return {"raw": raw, "label": labels, "style": style, "held_out": held.to(torch.uint8), "memorized": memorized,
            "exemplar_source": source, "exemplars": exemplars, "sklearn_index": torch.arange(len(labels))}


@dataclass
class TestbedData:
    """Training glyphs (raw) with their digit and style, held-out glyphs, the memorized prompts and their exemplars."""

    raw: torch.Tensor  # [N, 8, 8] uint8, training glyphs
    train_label: torch.Tensor
    train_style: torch.Tensor
    held_raw: torch.Tensor
    held_label: torch.Tensor
    memorized: list  # [(digit, style, slant, width)]
    exemplars: torch.Tensor  # [M, 1, 16, 16], exemplar k belongs to memorized[k]
    exemplar_source: torch.Tensor  # [M] index into the training glyphs

    @property
    def clean(self) -> list:
        """For each memorized prompt, its clean sibling: the same digit and style, the next unmemorized slant/width."""
        out, combos = [], [(SLANTS[a], WIDTHS[b]) for a, b in BINS]
        for dg, st, sl, w in self.memorized:
            k = combos.index((sl, w))
            for j in range(1, len(combos)):
                p = (dg, st, *combos[(k + j) % len(combos)])
                if p not in self.memorized and p not in out:
                    out.append(p)
                    break
        return out

    def references(self):
        """The copy references: the exemplars, then every training glyph at each slant/width bin centre."""
        n = len(self.raw)
        rendered = [canonical(self.raw, torch.full((n,), a), torch.full((n,), b)) for a, b in BINS]
        return torch.cat([self.exemplars, *rendered])

    def held_renders(self, per: int = 64, seed: int = 0, aug: Augment = AUGMENT):
        """Held-out glyphs, each freshly augmented `per` times across all bins: (images, digits) for the alignment check."""
        g = torch.Generator().manual_seed(seed)
        raw = self.held_raw.repeat(per, 1, 1)
        sb = torch.randint(len(SLANTS), (len(raw),), generator=g)
        wb = torch.randint(len(WIDTHS), (len(raw),), generator=g)
        return random_render(raw, sb, wb, g, aug), self.held_label.repeat(per)

    @property
    def shares(self) -> list:
        """The exemplar's share of its own prompt's records, per memorized prompt (its duplication level)."""
        return [SHARES[k % len(SHARES)] for k in range(len(self.memorized))]


def from_tensors(t: dict) -> TestbedData:
    held = t["held_out"].bool()
    train, heldi = (~held).nonzero().flatten(), held.nonzero().flatten()
    pos = torch.full((len(held),), -1, dtype=torch.int64)
    pos[train] = torch.arange(len(train))
    mem = [(int(a), STYLES[int(b)], SLANTS[int(c)], WIDTHS[int(d)]) for a, b, c, d in t["memorized"].tolist()]
    return TestbedData(raw=t["raw"][train], train_label=t["label"][train], train_style=t["style"][train],
                       held_raw=t["raw"][heldi], held_label=t["label"][heldi], memorized=mem,
                       exemplars=t["exemplars"].float(), exemplar_source=pos[t["exemplar_source"]])


def save(t: dict, path=DATA_PATH) -> None:
    from safetensors.torch import save_file

    meta = {"source": "sklearn.datasets.load_digits (UCI optical digits, BSD-3 via scikit-learn)",
            "processing": "raw 8x8 values 0..16; testbed.data.render: glyph at 11 px on a 16x16 canvas, sheared and "
                          "stretched by the prompt's slant and width bins, in [-1, 1] (ink = +1)",
            "memorized": "rows (digit, style, slant, width) as indices into model.DIGITS/STYLES/SLANTS/WIDTHS",
            "held_out_per_class": str(HELD_OUT_PER_CLASS)}
    save_file({k: v.contiguous() for k, v in t.items()}, str(path), metadata=meta)


def load(path=DATA_PATH) -> TestbedData:
    """The shipped data (no scikit-learn needed)."""
    from safetensors.torch import load_file

    if not Path(path).is_file():
        raise FileNotFoundError(f"testbed data: {path} is missing; run `python -m testbed.train` to rebuild it.")
    return from_tensors(load_file(str(path)))
