"""Copy Check's search and calibration: embed a reference folder through the cache, find each output's nearest and
second-nearest reference chunk by chunk (memory: queries x chunk, whatever the number of references), and choose the
copy threshold from data the user has (fixed, the references' own leave-one-out nearest neighbours, or held-out
images that were never trained on).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from .copy_descriptor import normalize
from .copy_cache import EmbeddingCache, Skipped, list_images, load_image, stat_key

NEAR_DUPLICATE = 0.98  # leave-one-out: a reference this close to another is a duplicate, set aside from calibration
MAX_CALIBRATION = 2000  # leave-one-out queries at most (evenly spaced over the references)
CALIBRATIONS = ("fixed threshold", "references leave-one-out", "held-out folder")


@dataclass
class References:
    """Reference embeddings: cached folder rows first (``keys``), then an in-memory batch; names for the report."""

    names: list[str] = field(default_factory=list)
    keys: list[tuple] = field(default_factory=list)
    cache: EmbeddingCache | None = None
    batch: torch.Tensor | None = None  # [n, D] for the IMAGE input's references
    skipped: list[tuple[str, str]] = field(default_factory=list)
    embedded: int = 0  # files embedded in this run (the rest came from the cache)
    center: bool = False  # compare after subtracting the references' mean embedding (the pixel descriptor)
    mean: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.names)

    def stored(self, chunk: int):
        """The embeddings as embedded (cache rows, then the batch), ``chunk`` rows at a time."""
        if self.keys:
            yield from self.cache.chunks(self.keys, chunk)
        if self.batch is not None:
            for a in range(0, len(self.batch), chunk):
                yield self.batch[a:a + chunk]

    def compared(self, x: torch.Tensor, chunk: int) -> torch.Tensor:
        """Embeddings in the space similarities are taken in: unit rows, minus the references' mean first when
        ``center`` (one extra pass over the references, once)."""
        if not self.center:
            return x.float()
        if self.mean is None:
            total = None
            for part in self.stored(chunk):
                s = part.double().sum(0)
                total = s if total is None else total + s
            self.mean = (total / len(self)).float()
        return normalize(x.float() - self.mean)

    def chunks(self, chunk: int):
        for part in self.stored(chunk):
            yield self.compared(part, chunk)

    def rows(self, index: list[int], chunk: int) -> torch.Tensor:
        """The embeddings at ``index`` (sorted or not), read chunk by chunk."""
        want = {i: k for k, i in enumerate(index)}
        out, start = [None] * len(index), 0
        for part in self.chunks(chunk):
            for j in range(len(part)):
                if start + j in want:
                    out[want[start + j]] = part[j]
            start += len(part)
        return torch.stack(out)


def embed_folder(folder, base, embedder, cache: EmbeddingCache, batch: int = 32, progress=None, cancel=None) -> References:
    """Every image under ``folder`` embedded once: cached rows are reused, new or changed files (size or mtime) are
    read, prepared and embedded ``batch`` at a time and written as a new cache shard. ``progress(done, total)`` after
    each batch, ``cancel()`` before each (it raises to stop). Unreadable files are skipped with their reason."""
    files, skipped = list_images(folder, base)
    keys = [stat_key(rel, p) for rel, p in files]
    todo = [(k, p) for k, p in zip(keys, files) if not cache.has(k)]
    refs = References(skipped=skipped, cache=cache, center=embedder.center)
    for a in range(0, len(todo), batch):
        if cancel:
            cancel()
        done_keys, prepared = [], []
        for k, (rel, p) in todo[a:a + batch]:
            try:
                prepared.append(embedder.prepare(load_image(p)))
                done_keys.append(k)
            except Skipped as e:
                refs.skipped.append((rel, str(e)))
        if prepared:
            cache.add(done_keys, embedder.embed(torch.stack(prepared)))
            refs.embedded += len(prepared)
        if progress:
            progress(min(a + batch, len(todo)), len(todo))
    refs.keys = [k for k in keys if cache.has(k)]
    refs.names = [k[0] for k in refs.keys]
    cache.prune(refs.keys)
    return refs


def embed_images(images: torch.Tensor, embedder, batch: int = 32, cancel=None) -> torch.Tensor:
    """IMAGE [B, H, W, C] -> [B, D] unit rows."""
    out = []
    for a in range(0, len(images), batch):
        if cancel:
            cancel()
        out.append(embedder.embed(torch.stack([embedder.prepare(im) for im in images[a:a + batch]])))
    return torch.cat(out)


def nearest_two(queries: torch.Tensor, chunks, exclude: torch.Tensor | None = None):
    """(similarity [Q, 2], index [Q, 2]) of each query's nearest and second-nearest reference over an iterable of
    [n, D] chunks (indices count across chunks; -1 and -inf where fewer exist). Ties go to the lower index, so the
    answer does not depend on the chunk size. ``exclude[q]``: an index query q may not match (leave-one-out)."""
    q = queries.double()  # float64 products rounded to float32: the same values whatever BLAS kernel a chunk's shape picks
    best = torch.full((len(q), 2), -math.inf)
    idx = torch.full((len(q), 2), -1, dtype=torch.long)
    start = 0
    for part in chunks:
        s = (q @ part.double().T).float()
        ids = torch.arange(start, start + len(part)).expand(len(q), -1)
        if exclude is not None:
            s = s.masked_fill(ids == exclude[:, None], -math.inf)
        vals, cand = torch.cat([best, s], 1), torch.cat([idx, ids], 1)
        order = cand.sort(dim=1, stable=True).indices  # by index, then stably by similarity: ties keep the lower index
        vals, cand = vals.gather(1, order), cand.gather(1, order)
        top = vals.sort(dim=1, descending=True, stable=True).indices[:, :2]
        best, idx = vals.gather(1, top), cand.gather(1, top)
        start += len(part)
    return best, idx


def search(queries: torch.Tensor, refs: References, chunk: int, exclude: torch.Tensor | None = None, block: int = 256):
    """``nearest_two`` over the references, ``block`` queries at a time (the references are read once per block), so
    the working memory is about block x chunk x 70 bytes whatever the numbers of queries and references."""
    parts = [nearest_two(queries[a:a + block], refs.chunks(chunk), None if exclude is None else exclude[a:a + block])
             for a in range(0, len(queries), block)]
    return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])


def threshold_at(values: torch.Tensor, rate: float) -> float:
    """The smallest observed value that fewer than ``rate`` of ``values`` exceed (the testbed's copy floor uses it too)."""
    s = values.double().sort(descending=True).values
    k = max(math.ceil(rate * len(s)) - 1, 0)
    return float(s[k])


@dataclass
class Calibration:
    threshold: float
    source: str


def leave_one_out(refs: References, rate: float, chunk: int, cancel=None) -> Calibration:
    """Each reference's nearest other reference (at most MAX_CALIBRATION references, evenly spaced); references
    within NEAR_DUPLICATE of another are set aside (a duplicated training image is what a copy looks like); the
    threshold is the value fewer than ``rate`` of the others exceed."""
    n = len(refs)
    if n < 3:
        raise ValueError(f"calibration: 'references leave-one-out' needs at least 3 references, got {n}; add references "
                         "or choose 'fixed threshold' or 'held-out folder'.")
    pick = sorted({round(i * (n - 1) / max(min(n, MAX_CALIBRATION) - 1, 1)) for i in range(min(n, MAX_CALIBRATION))})
    if cancel:
        cancel()
    sim, _ = search(refs.rows(pick, chunk), refs, chunk, exclude=torch.tensor(pick))
    nn = sim[:, 0]
    kept = nn[nn < NEAR_DUPLICATE]
    if len(kept) < 2:
        raise ValueError(f"calibration: {len(pick) - len(kept)} of {len(pick)} references are near-duplicates of another "
                         f"(similarity >= {NEAR_DUPLICATE}); too few distinct ones to calibrate. Choose 'fixed threshold' "
                         "or 'held-out folder'.")
    thr = threshold_at(kept, rate)
    return Calibration(thr, f"references leave-one-out: fewer than {rate:.1%} of {len(kept)} references' similarities to "
                            f"their nearest other reference exceed it ({len(pick) - len(kept)} near-duplicates at >= "
                            f"{NEAR_DUPLICATE} set aside{'' if len(pick) == n else f'; {len(pick)} of {n} references sampled'})")


def held_out(held: torch.Tensor, refs: References, rate: float, chunk: int, where: str) -> Calibration:
    """Held-out images (never trained on) against the references: the threshold fewer than ``rate`` of them exceed."""
    if len(held) < 2:
        raise ValueError(f"heldout_folder: {len(held)} readable image(s) in '{where}'; calibration needs at least 2 "
                         "(100 or more for a 1 % rate).")
    sim, _ = search(refs.compared(held, chunk), refs, chunk)
    thr = threshold_at(sim[:, 0], rate)
    return Calibration(thr, f"held-out folder '{where}': fewer than {rate:.1%} of its {len(held)} images (never trained "
                            "on) are more similar than this to their nearest reference")
