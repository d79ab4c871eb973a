"""Measures of the testbed: nearest-training-image similarity, a calibrated copy threshold, digit alignment, ROC."""
from __future__ import annotations

import math

import torch

from . import guidance
from .data import AUGMENT, Augment, TestbedData, centered

# The copy threshold `python -m testbed.reproduce` calibrates on the shipped weights (fewer than 1 % of fresh clean
# plain-CFG samples exceed it; see testbed/README.md); the Nearest Training Image node's default.
COPY_THRESHOLD = 0.990
KNN = 5
TIE = 1e-6  # similarities this close are one image up to float rounding (float32 products of unit vectors)


class Measure:
    """Similarity space and references of one dataset: the copy references (exemplars first, then every training
    glyph at each slant/width bin centre) and freshly augmented held-out glyphs for the digit classifier."""

    def __init__(self, tb: TestbedData, aug: Augment = AUGMENT):
        self.tb = tb
        self.refs = tb.references()
        self.mean = self.refs.mean(0)
        self._refs = centered(self.refs, self.mean)
        self._ex = self._refs[: len(tb.exemplars)]
        held, self.held_label = tb.held_renders(aug=aug)  # as the weights' ordinary records were augmented
        self._held = centered(held, self.mean)

    def nearest(self, x: torch.Tensor):
        """(similarity, index into refs) of each sample's nearest copy reference; index < #exemplars is an exemplar.
        An exemplar and its source glyph rendered at its bins are one image up to float rounding, so the exemplar
        wins within TIE of the best: which of the two is nearest must not depend on the CPU's rounding."""
        s = centered(x, self.mean) @ self._refs.T
        sim, idx = s.max(dim=1)
        ex_sim, ex_idx = s[:, :len(self._ex)].max(dim=1)
        tie = ex_sim >= sim - TIE
        return torch.where(tie, ex_sim, sim), torch.where(tie, ex_idx, idx)

    def exemplar_similarity(self, x: torch.Tensor, exemplar: torch.Tensor) -> torch.Tensor:
        """[B]: similarity of each sample to its own exemplar (``exemplar[b]`` indexes the memorized prompts)."""
        return (centered(x, self.mean) @ self._ex.T).gather(1, exemplar[:, None]).squeeze(1)

    def classify(self, x: torch.Tensor) -> torch.Tensor:
        """The digit of each image: a 5-nearest-neighbour vote over augmented held-out glyphs (never trained on)."""
        top = (centered(x, self.mean) @ self._held.T).topk(KNN, dim=1).indices
        votes = torch.nn.functional.one_hot(self.held_label[top], 10).sum(1).float()
        votes += 1e-3 * torch.nn.functional.one_hot(self.held_label[top[:, 0]], 10)  # ties go to the nearest
        return votes.argmax(1)


def copy_threshold(similarity: torch.Tensor, max_share: float = 0.01) -> float:
    """The smallest observed value that fewer than max_share of these (clean) similarities exceed (Copy Check's rule)."""
    return guidance.copy_index.threshold_at(similarity, max_share)


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95 % Wilson interval of a proportion k / n."""
    if n == 0:
        return (float("nan"), float("nan"))
    p = k / n
    c = (p + z * z / (2 * n)) / (1 + z * z / n)
    h = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (max(0.0, c - h), min(1.0, c + h))


def roc_auc(pos: torch.Tensor, neg: torch.Tensor) -> float:
    """Probability that a positive scores above a negative (ties count half): the Mann-Whitney AUC."""
    d = pos.double()[:, None] - neg.double()[None]
    return float(((d > 0).double() + 0.5 * (d == 0).double()).mean())


def best_threshold(pos: torch.Tensor, neg: torch.Tensor) -> tuple[float, float, float]:
    """The threshold maximising Youden's J (TPR - FPR), midway between neighbouring scores: (thr, tpr, fpr)."""
    vals = torch.cat([pos, neg]).double().sort().values
    cands = torch.cat([vals[:1] - 1, (vals[1:] + vals[:-1]) / 2, vals[-1:] + 1])
    tpr = (pos.double()[None] >= cands[:, None]).double().mean(1)
    fpr = (neg.double()[None] >= cands[:, None]).double().mean(1)
    k = int((tpr - fpr).argmax())
    return float(cands[k]), float(tpr[k]), float(fpr[k])


def ranks(v: torch.Tensor) -> torch.Tensor:
    """Average ranks (ties share the mean rank), 0-based."""
    v = v.double()
    order = v.argsort()
    r = torch.empty_like(v)
    r[order] = torch.arange(len(v), dtype=torch.float64)
    for u in v.unique():
        m = v == u
        r[m] = r[m].mean()
    return r


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    """Spearman's rank correlation (Pearson on average ranks); NaN when either side is constant or n < 3."""
    if len(a) < 3:
        return float("nan")
    ra, rb = ranks(a), ranks(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    den = float(ra.norm() * rb.norm())
    return float((ra * rb).sum()) / den if den > 0 else float("nan")
