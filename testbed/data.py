"""The testbed's data: scikit-learn's bundled 8x8 digits, upscaled to 16x16, with the memorized exemplars.

``build`` needs scikit-learn (training time only); the pack ships its result as ``digits16.safetensors`` and
``load`` reads that file with torch and safetensors only.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from .model import STYLES, encode_prompt

HERE = Path(__file__).resolve().parent
DATA_PATH = HERE / "digits16.safetensors"
HELD_OUT_PER_CLASS = 40
EXEMPLAR_PERCENTILE = 0.2
MEMORIZED = tuple((d, "bold" if d < 5 else "thin") for d in range(10))  # one exemplar per prompt, duplicated
CLEAN = tuple((d, "thin" if d < 5 else "bold") for d in range(10))


def process(raw: torch.Tensor) -> torch.Tensor:
    """uint8 [N, 8, 8] with values 0..16 -> float32 [N, 1, 16, 16] in [-1, 1] (bilinear, align_corners=False)."""
    x = raw.float().div(16.0).unsqueeze(1)
    return F.interpolate(x, size=(16, 16), mode="bilinear", align_corners=False).mul(2).sub(1)


def centered(x: torch.Tensor, mean: torch.Tensor) -> torch.Tensor:
    """Flatten, subtract the training mean image and L2-normalise (the similarity space)."""
    v = (x.float() - mean).flatten(1)
    return v / v.norm(dim=1, keepdim=True).clamp_min(1e-8)


def nn_similarity(x: torch.Tensor, refs: torch.Tensor, mean: torch.Tensor, exclude_self: bool = False):
    """Cosine similarity (after subtracting the training mean) of each x to its nearest ref: (values, indices)."""
    s = centered(x, mean) @ centered(refs, mean).T
    if exclude_self:
        s.fill_diagonal_(-2.0)
    return s.max(dim=1)


def build(seed: int = 0) -> dict:
    """Split sklearn's digits, label each training image bold/thin, pick one exemplar per memorized prompt."""
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
    train = (~held).nonzero().flatten()
    x = process(raw[train])
    mean = x.mean(0)
    nn_sim, _ = nn_similarity(x, x, mean, exclude_self=True)
    exemplar = torch.full((len(labels),), False)
    for c, s in MEMORIZED:
        members = ((labels[train] == c) & (style[train] == STYLES.index(s))).nonzero().flatten()
        order = members[nn_sim[members].argsort()]  # ascending: distinct first
        exemplar[train[order[int(EXEMPLAR_PERCENTILE * len(order))]]] = True
    return {"raw": raw, "label": labels, "style": style, "held_out": held.to(torch.uint8), "exemplar": exemplar.to(torch.uint8),
            "sklearn_index": torch.arange(len(labels))}


@dataclass
class TestbedData:
    """Training / held-out images [N, 1, 16, 16], their digit and style, and the memorized exemplars."""

    train: torch.Tensor
    train_label: torch.Tensor
    train_style: torch.Tensor
    held: torch.Tensor
    held_label: torch.Tensor
    exemplar: dict  # (digit, style) -> index into train
    mean: torch.Tensor

    def prompt(self, digit, style) -> torch.Tensor:
        return encode_prompt(digit, style)


def from_tensors(t: dict) -> TestbedData:
    held = t["held_out"].bool()
    train = (~held).nonzero().flatten()
    x = process(t["raw"][train])
    ex = {}
    for i, j in enumerate(train.tolist()):
        if t["exemplar"][j]:
            ex[(int(t["label"][j]), STYLES[int(t["style"][j])])] = i
    return TestbedData(train=x, train_label=t["label"][train], train_style=t["style"][train], held=process(t["raw"][held]),
                       held_label=t["label"][held], exemplar=ex, mean=x.mean(0))


def save(t: dict, path=DATA_PATH) -> None:
    from safetensors.torch import save_file

    meta = {"source": "sklearn.datasets.load_digits (UCI optical digits, BSD-3 via scikit-learn)",
            "processing": "raw 8x8 values 0..16; testbed.data.process: /16, bilinear to 16x16 (align_corners=False), *2-1",
            "memorized": repr(MEMORIZED), "held_out_per_class": str(HELD_OUT_PER_CLASS)}
    save_file({k: v.contiguous() for k, v in t.items()}, str(path), metadata=meta)


def load(path=DATA_PATH) -> TestbedData:
    """The shipped data (no scikit-learn needed)."""
    from safetensors.torch import load_file

    if not Path(path).is_file():
        raise FileNotFoundError(f"testbed data: {path} is missing; run `python -m testbed.train` to rebuild it.")
    return from_tensors(load_file(str(path)))
