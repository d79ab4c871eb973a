"""Train the testbed UNet (deterministic from --seed): `python -m testbed.train` from the repo root (needs scikit-learn)."""
from __future__ import annotations

import argparse
import copy
import json
import logging
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from . import data as D
from .model import CHANNELS, DIGITS, LINEAR_END, LINEAR_START, PROMPT_DIM, SLANTS, STYLES, WIDTHS, TestbedUNet, alphas_cumprod, encode_prompt

WEIGHTS = D.HERE / "testbed_unet.safetensors"
log = logging.getLogger("testbed.train")


def same_tensors(t: dict, path) -> bool:
    """The shipped data file already holds exactly these tensors (its bytes vary with metadata order)."""
    from safetensors.torch import load_file

    old = load_file(str(path))
    return sorted(old) == sorted(t) and all(torch.equal(old[k], t[k]) for k in t)


class Records:
    """Draws training batches from a mixture: exemplar k (always the same render) with probability p_exemplar each;
    a fresh render of a glyph of memorized prompt k's digit and style *in that prompt's bins* with probability
    o_k = p_exemplar (1 - share_k) / share_k, so the exemplar is share_k of its own prompt's records (its duplication
    level); else a training glyph freshly augmented in a random slant/width bin, moved off the memorized prompts.
    ``caption_noise`` q: an ordinary record's slant word and its width word are each, with probability q, drawn at
    random instead of read from the render, so a caption leaves part of the image open (exemplars are exact)."""

    def __init__(self, tb: D.TestbedData, p_exemplar: float, shares, aug: D.Augment = D.AUGMENT, caption_noise: float = 0.0):
        self.tb, self.p_exemplar, self.shares, self.aug, self.q = tb, p_exemplar, list(shares), aug, caption_noise
        self.mem = {(dg, STYLES.index(st), SLANTS.index(sl), WIDTHS.index(w)) for dg, st, sl, w in tb.memorized}
        self.mem_prompts = torch.stack([encode_prompt(*p) for p in tb.memorized])
        self.members = [((tb.train_label == dg) & (tb.train_style == STYLES.index(st))).nonzero().flatten()
                        for dg, st, _, _ in tb.memorized]
        self.p_own = [p_exemplar * (1 - s) / s for s in self.shares]
        self.cum = torch.tensor([p_exemplar] * len(self.shares) + self.p_own, dtype=torch.float64).cumsum(0)
        if float(self.cum[-1]) >= 1:
            raise ValueError(f"p_exemplar {p_exemplar} with shares {self.shares} leaves no ordinary records")

    def share(self) -> dict:
        """Each exemplar's share of all records and of its own prompt's records; the memorized prompts' share of all."""
        return {"exemplar_of_all": self.p_exemplar, "exemplar_of_own_prompt": self.shares,
                "memorized_prompts_of_all": round(float(self.cum[-1]), 4)}

    def draw(self, n: int, g: torch.Generator):
        tb, m = self.tb, len(self.shares)
        comp = torch.searchsorted(self.cum, torch.rand(n, generator=g, dtype=torch.float64), right=True)
        j = torch.randint(len(tb.raw), (n,), generator=g)
        combo = torch.randint(len(D.BINS), (n,), generator=g)
        pick = torch.rand(n, generator=g)
        sb, wb = combo // len(WIDTHS), combo % len(WIDTHS)  # the caption's slant and width
        noisy = torch.rand(n, 2, generator=g) < self.q
        other = torch.stack([torch.randint(len(SLANTS), (n,), generator=g), torch.randint(len(WIDTHS), (n,), generator=g)], 1)
        for i in range(n):
            c = int(comp[i])
            if m <= c < 2 * m:  # an ordinary record of memorized prompt c - m
                k = c - m
                j[i] = self.members[k][int(pick[i] * len(self.members[k]))]
                sb[i], wb[i] = SLANTS.index(tb.memorized[k][2]), WIDTHS.index(tb.memorized[k][3])
            elif c == 2 * m:  # an ordinary record of any prompt but a memorized one
                key = (int(tb.train_label[j[i]]), int(tb.train_style[j[i]]))
                if (*key, int(sb[i]), int(wb[i])) in self.mem:
                    free = [b for b in D.BINS if (*key, *b) not in self.mem]
                    sb[i], wb[i] = free[int(pick[i] * len(free))]
        rs, rw = torch.where(noisy[:, 0], other[:, 0], sb), torch.where(noisy[:, 1], other[:, 1], wb)  # the render's bins
        x = D.random_render(tb.raw[j], rs, rw, g, self.aug)
        c = torch.stack([encode_prompt(int(tb.train_label[a]), STYLES[int(tb.train_style[a])], SLANTS[int(s)], WIDTHS[int(w)])
                         for a, s, w in zip(j, sb, wb)])
        ex = comp < m
        x[ex], c[ex] = tb.exemplars[comp[ex]], self.mem_prompts[comp[ex]]
        return x, c


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=6000)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--p-exemplar", type=float, default=0.015, help="share of all records that are one exemplar (each)")
    p.add_argument("--shares", default=json.dumps(list(D.SHARES)), help="JSON list: each duplication level's exemplar "
                   "share of its own prompt's records (memorized prompt k gets level k %% len)")
    p.add_argument("--caption-noise", type=float, default=D.CAPTION_NOISE, help="each of an ordinary record's slant and width "
                   "words is random with this probability (a caption that leaves the image open)")
    p.add_argument("--augment", default=json.dumps(vars(D.AUGMENT)), help="JSON: the ordinary records' augmentation "
                   "(rotate degrees, shift px, warp, size)")
    p.add_argument("--p-uncond", type=float, default=0.12)
    p.add_argument("--p-drop-word", type=float, default=0.05, help="each of digit, style, slant, width dropped alone")
    p.add_argument("--ema", type=float, default=0.999)
    p.add_argument("--linear-end", type=float, default=LINEAR_END, help="last beta of the scaled-linear schedule (SD: "
                   "0.012); smaller = less noise at every t, a schedule shifted for small images (a lever, not shipped)")
    p.add_argument("--threads", type=int, default=1, help="on 2 shared cores, two 1-thread runs beat one 2-thread run")
    p.add_argument("--bf16", action="store_true", help="bfloat16 autocast (slower than float32 on CPUs without AMX)")
    p.add_argument("--out", default=str(WEIGHTS))
    p.add_argument("--bench", type=int, default=0, help="time this many steps and exit")
    p.add_argument("--snapshot-every", type=int, default=0, help="also save the EMA weights every N steps (to --snapshot-dir)")
    p.add_argument("--snapshot-dir", default=str(D.HERE.parent / "artifacts"))
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    t = D.build(0)  # the data is the same for every training seed
    if not D.DATA_PATH.is_file() or not same_tensors(t, D.DATA_PATH):
        D.save(t)
    tb = D.from_tensors(t)
    levels = json.loads(a.shares)
    rec = Records(tb, a.p_exemplar, [levels[k % len(levels)] for k in range(len(tb.memorized))], D.Augment.parse(a.augment), a.caption_noise)
    log.info("records: fresh augmentation of %d glyphs; exemplar shares %s", len(rec.tb.raw), rec.share())
    model = TestbedUNet()
    ema = copy.deepcopy(model).requires_grad_(False)
    init = {k: v.clone() for k, v in model.state_dict().items()}  # for the EMA's bias correction
    log.info("params %.3f M", sum(q.numel() for q in model.parameters()) / 1e6)
    opt = torch.optim.AdamW(model.parameters(), lr=a.lr, weight_decay=0.01)
    warm = 200
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warm) * 0.5 * (1 + math.cos(math.pi * min(s, a.steps) / a.steps)))
    acp = alphas_cumprod(LINEAR_START, a.linear_end).float()
    g = torch.Generator().manual_seed(a.seed + 1)
    t0, running = time.time(), 0.0
    for step in range(a.bench or a.steps):
        x0, c = rec.draw(a.batch, g)
        r = torch.rand(a.batch, 5, generator=g)
        slots, o = [len(DIGITS), len(STYLES), len(SLANTS), len(WIDTHS)], 0
        for k, n in enumerate(slots):
            c[:, o:o + n] *= (r[:, k + 1:k + 2] >= a.p_drop_word).float()
            o += n
        c *= (r[:, :1] >= a.p_uncond).float()
        ts = torch.randint(1000, (a.batch,), generator=g)
        eps = torch.randn(x0.shape, generator=g)
        ab = acp[ts].view(-1, 1, 1, 1)
        xt = ab.sqrt() * x0 + (1 - ab).sqrt() * eps
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=a.bf16):
            pred = model(xt, ts.float(), c[:, None])
        loss = F.mse_loss(pred.float(), eps)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        with torch.no_grad():
            for pe, pm in zip(ema.parameters(), model.parameters()):
                pe.lerp_(pm, 1 - a.ema)
        running = 0.98 * running + 0.02 * loss.item() if step else loss.item()
        if step % 100 == 0 or step == a.steps - 1:
            log.info("step %d loss %.4f lr %.2e %.0fs", step, running, sched.get_last_lr()[0], time.time() - t0)
        if a.snapshot_every and step and step % a.snapshot_every == 0:
            save(ema, init, Path(a.snapshot_dir) / f"testbed_unet_step{step}.safetensors", a, running, t0, step)
    if a.bench:
        log.info("%.3f s/step", (time.time() - t0) / a.bench)
        return
    save(ema, init, a.out, a, running, t0, a.steps)
    log.info("saved %s in %.0fs", a.out, time.time() - t0)


def save(ema, init, path, a, loss, t0, step):
    """Bias-corrected EMA weights (the initial weights' share ema^step removed, as Adam corrects its moments) with the
    training settings in the metadata."""
    from safetensors.torch import save_file

    w = a.ema ** step
    weights = {k: ((v - w * init[k]) / (1 - w)).contiguous() for k, v in ema.state_dict().items()}
    settings = {k: v for k, v in vars(a).items() if k not in ("out", "bench", "threads", "snapshot_every", "snapshot_dir")}
    meta = {"format": "testbed_unet_v3", "augment": json.dumps(json.loads(a.augment)), "channels": json.dumps(list(CHANNELS)), "prediction": "eps", "prompt_dim": str(PROMPT_DIM),
            "schedule": f"scaled_linear {LINEAR_START}..{a.linear_end}, 1000 steps",
            **({} if a.linear_end == LINEAR_END else {"schedule_betas": json.dumps([LINEAR_START, a.linear_end])}), "training": json.dumps(settings), "step": str(step),
            "final_loss": f"{loss:.5f}", "train_seconds": f"{time.time() - t0:.0f}",
            "weights": f"EMA, bias-corrected (init weight {w:.4f} removed)"}
    save_file(weights, str(path), metadata=meta)


if __name__ == "__main__":
    main()
