"""Train the testbed UNet (deterministic from --seed): `python -m testbed.train` from the repo root (needs scikit-learn)."""
from __future__ import annotations

import argparse
import copy
import json
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from . import data as D
from .model import CHANNELS, STYLES, TestbedUNet, alphas_cumprod, encode_prompt

WEIGHTS = D.HERE / "testbed_unet.safetensors"


def same_tensors(t: dict, path) -> bool:
    """The shipped data file already holds exactly these tensors (its bytes vary with metadata order)."""
    from safetensors.torch import load_file

    old = load_file(str(path))
    return sorted(old) == sorted(t) and all(torch.equal(old[k], t[k]) for k in t)


def records(t: dict, duplicates: int):
    """Training images and prompt vectors; each exemplar appears 1 + duplicates times."""
    tb = D.from_tensors(t)
    prompts = torch.stack([encode_prompt(int(c), STYLES[int(s)]) for c, s in zip(tb.train_label, tb.train_style)])
    idx = torch.arange(len(tb.train))
    ex = torch.tensor(sorted(tb.exemplar.values()))
    idx = torch.cat([idx, ex.repeat_interleave(duplicates)])
    return tb.train[idx], prompts[idx]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--duplicates", type=int, default=80)
    p.add_argument("--p-uncond", type=float, default=0.15)
    p.add_argument("--p-drop-style", type=float, default=0.2)
    p.add_argument("--p-drop-digit", type=float, default=0.05)
    p.add_argument("--ema", type=float, default=0.998)
    p.add_argument("--threads", type=int, default=1, help="1: on 2 shared cores, 2 threads ran 4x slower")
    p.add_argument("--out", default=str(WEIGHTS))
    p.add_argument("--bench", type=int, default=0, help="time this many steps and exit")
    p.add_argument("--snapshot-every", type=int, default=0, help="also save the EMA weights every N steps (to --snapshot-dir)")
    p.add_argument("--snapshot-dir", default=str(D.HERE.parent / "artifacts"))
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    t = D.build(a.seed)
    if not D.DATA_PATH.is_file() or not same_tensors(t, D.DATA_PATH):
        D.save(t)
    x0_all, c_all = records(t, a.duplicates)
    print(f"records {len(x0_all)} ({int(t['exemplar'].sum())} exemplars x {a.duplicates} duplicates)", flush=True)
    model = TestbedUNet()
    ema = copy.deepcopy(model).requires_grad_(False)
    print(f"params {sum(q.numel() for q in model.parameters()) / 1e6:.3f} M", flush=True)
    opt = torch.optim.AdamW(model.parameters(), lr=a.lr, weight_decay=0.01)
    warm = 200
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warm) * 0.5 * (1 + math.cos(math.pi * min(s, a.steps) / a.steps)))
    acp = alphas_cumprod().float()
    g = torch.Generator().manual_seed(a.seed + 1)
    t0, running = time.time(), 0.0
    for step in range(a.bench or a.steps):
        i = torch.randint(len(x0_all), (a.batch,), generator=g)
        x0, c = x0_all[i], c_all[i].clone()
        r = torch.rand(a.batch, 3, generator=g)
        c[:, 10:] *= (r[:, 1:2] >= a.p_drop_style).float()
        c[:, :10] *= (r[:, 2:3] >= a.p_drop_digit).float()
        c *= (r[:, :1] >= a.p_uncond).float()
        ts = torch.randint(1000, (a.batch,), generator=g)
        eps = torch.randn(x0.shape, generator=g)
        ab = acp[ts].view(-1, 1, 1, 1)
        xt = ab.sqrt() * x0 + (1 - ab).sqrt() * eps
        with torch.autocast("cpu", dtype=torch.bfloat16):
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
            print(f"step {step} loss {running:.4f} lr {sched.get_last_lr()[0]:.2e} {time.time() - t0:.0f}s", flush=True)
        if a.snapshot_every and step and step % a.snapshot_every == 0:
            save(ema, Path(a.snapshot_dir) / f"testbed_unet_step{step}.safetensors", a, running, t0, step)
    if a.bench:
        print(f"{(time.time() - t0) / a.bench:.3f} s/step", flush=True)
        return
    save(ema, a.out, a, running, t0, a.steps)
    print(f"saved {a.out} in {time.time() - t0:.0f}s", flush=True)


def save(ema, path, a, loss, t0, step):
    """EMA weights with the training settings in the metadata."""
    from safetensors.torch import save_file

    settings = {k: v for k, v in vars(a).items() if k not in ("out", "bench", "threads", "snapshot_every", "snapshot_dir")}
    meta = {"format": "testbed_unet", "channels": json.dumps(list(CHANNELS)), "prediction": "eps",
            "schedule": "scaled_linear 0.00085..0.012, 1000 steps", "training": json.dumps(settings), "step": str(step),
            "final_loss": f"{loss:.5f}", "train_seconds": f"{time.time() - t0:.0f}", "weights": "EMA"}
    save_file({k: v.contiguous() for k, v in ema.state_dict().items()}, str(path), metadata=meta)


if __name__ == "__main__":
    main()
