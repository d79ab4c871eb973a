"""Measures of the testbed: nearest-training-image similarity, copy rate, condition alignment, detection ROC."""
from __future__ import annotations

import math

import torch

from .data import TestbedData, centered, nn_similarity

COPY_THRESHOLD = 0.95  # nearest-training-image similarity above this counts as a copy
KNN = 5


def nearest(tb: TestbedData, x: torch.Tensor):
    """(similarity, index) of each sample's nearest training image."""
    return nn_similarity(x, tb.train, tb.mean)


def classify(tb: TestbedData, x: torch.Tensor) -> torch.Tensor:
    """The digit of each image: a 5-nearest-neighbour vote over the held-out images (never used in training)."""
    s = centered(x, tb.mean) @ centered(tb.held, tb.mean).T
    top = s.topk(KNN, dim=1).indices
    votes = torch.nn.functional.one_hot(tb.held_label[top], 10).sum(1).float()
    votes += 1e-3 * torch.nn.functional.one_hot(tb.held_label[top[:, 0]], 10)  # ties go to the nearest
    return votes.argmax(1)


def ink(x: torch.Tensor) -> torch.Tensor:
    return (x.float().flatten(1) + 1).mean(1) / 2


def style_of(tb: TestbedData, x: torch.Tensor, digit: torch.Tensor) -> torch.Tensor:
    """0 bold / 1 thin: ink above / at-or-below the training median of the requested digit."""
    med = torch.stack([ink(tb.train[tb.train_label == c]).median() for c in range(10)])
    return torch.where(ink(x) > med[digit], 0, 1)


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


def summarize(tb: TestbedData, x: torch.Tensor, digit: torch.Tensor, style: torch.Tensor) -> dict:
    """Similarity (mean, 95th percentile), copy rate (+ 95 % CI), digit and style alignment of a group of samples."""
    sim, idx = nearest(tb, x)
    copies = int((sim > COPY_THRESHOLD).sum())
    n = len(sim)
    lo, hi = wilson(copies, n)
    return {"n": n, "sim_mean": float(sim.mean()), "sim_p95": float(sim.quantile(0.95)), "copy_rate": copies / n,
            "copy_ci": [lo, hi], "align": float((classify(tb, x) == digit).float().mean()),
            "style_align": float((style_of(tb, x, digit) == style).float().mean())}
