"""Reproduce the paper's mitigation table on the testbed: `python -m testbed.reproduce` from the repo root.

Every row samples the same prompts and seeds (50 DDIM steps) through the pack's guidance core; the table gives,
for memorized and clean prompts, nearest-training-image similarity, copy rate, digit alignment and switch steps,
plus the ROC of first-step detection (Jain et al., Tables 1 and 3; detection after Wen et al., ICLR 2024).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from . import guidance
from . import measure as M
from .data import CLEAN, MEMORIZED, centered, load
from .model import STYLES, encode_prompt
from .sampler import ddim_schedule, load_unet, noise_for, percent_to_sigma, sample, weights_metadata

G = guidance.GuidanceSettings
ROWS = [  # (key, label, settings); cfg comes from --cfg except for the unconditional row
    ("uncond", "unconditional (s = 0)", G(transition="off")),
    ("cfg", "plain CFG", G(transition="off")),
    ("zero_t650", "zero until t=650 (STP)", G(0.0, "static", switch_percent=0.35)),
    ("zero_t500", "zero until t=500 (STP)", G(0.0, "static", switch_percent=0.5)),
    ("og_t650", "opposite -2 until t=650 (OG+STP)", G(-2.0, "static", switch_percent=0.35)),
    ("zero_dyn", "zero, dynamic (Alg. 1, DTP)", G(0.0, "dynamic", earliest_percent=0.0, latest_percent=0.5)),
    ("og_dyn", "opposite -2, dynamic (OG+DTP)", G(-2.0, "dynamic", earliest_percent=0.0, latest_percent=0.5)),
]
CURVE_ROWS = ("cfg", "zero_dyn", "og_dyn", "auto")
REPO = Path(__file__).resolve().parents[1]


def prompt_set(all_prompts: bool):
    """(memorized, clean) prompts: all 10 + 10, or the default 5 + 5 that still covers every digit and both styles."""
    if all_prompts:
        return list(MEMORIZED), list(CLEAN)
    return [MEMORIZED[d] for d in (0, 2, 4, 6, 8)], [CLEAN[d] for d in (1, 3, 5, 7, 9)]


def prompt_batch(seeds, memorized, clean):
    """Memorized then clean prompts, each with every seed: (prompt vectors, digit, style, memorized, seed)."""
    items = [(d, s, True) for d, s in memorized] + [(d, s, False) for d, s in clean]
    rows = [(d, s, m, seed) for d, s, m in items for seed in seeds]
    prompts = torch.stack([encode_prompt(d, s) for d, s, _, _ in rows])
    digit = torch.tensor([r[0] for r in rows])
    style = torch.tensor([STYLES.index(r[1]) for r in rows])
    mem = torch.tensor([r[2] for r in rows])
    return prompts, digit, style, mem, [r[3] for r in rows]


def pick_best(table) -> str:
    """The mitigation row with the lowest memorized copy rate among those within 10 points of plain CFG's alignment."""
    plain = next(e for e in table if e["key"] == "cfg")["memorized"]["align"]
    ok = [e for e in table[2:] if e["memorized"]["align"] >= plain - 0.10] or table[2:]
    return min(ok, key=lambda e: e["memorized"]["copy_rate"])["key"]


def switch_stats(trace, mask) -> dict:
    """Median switch step and share never switched, over the flagged samples in mask (None for plain rows)."""
    if trace.settings.off:
        return {"switch_median": None, "never": None, "forced_at_latest": None, "flagged": None}
    sel = mask & trace.flagged
    steps = trace.switch_step[sel]
    hit = steps[steps != guidance.NEVER].float()
    plan = guidance.plan_steps(trace.sigmas.tolist(), percent_to_sigma, trace.settings)
    forced = trace.settings.transition == "dynamic" and len(steps)
    return {"switch_median": float(hit.median()) if len(hit) else None,
            "never": float((steps == guidance.NEVER).float().mean()) if len(steps) else None,
            "forced_at_latest": float((steps == plan.latest).float().mean()) if forced else None,
            "flagged": float(trace.flagged[mask].float().mean())}


def subset(trace, idx):
    return dataclasses.replace(trace, norms=trace.norms[:, idx], scales=trace.scales[:, idx],
                               switch_step=trace.switch_step[idx], flagged=trace.flagged[idx])


def to_pil(x: torch.Tensor, zoom: int) -> Image.Image:
    a = ((x.clamp(-1, 1) + 1) * 127.5).round().byte().squeeze(0).numpy()
    return Image.fromarray(255 - a, "L").resize((16 * zoom, 16 * zoom), Image.NEAREST)


def sample_grid(results, tb, picks, labels, seeds_shown, path, zoom=3):
    """Rows: methods; column blocks: prompts, each headed by its exemplar (memorized) or plain CFG's nearest image (clean).
    Copies (similarity > COPY_THRESHOLD) get a red frame."""
    cell, gap, left = 16 * zoom + 2, 10, 250
    top = 18 + cell + 6
    block = (seeds_shown + 1) * cell + gap
    img = Image.new("RGB", (left + block * len(picks), top + cell * len(results)), "white")
    draw = ImageDraw.Draw(img)
    font = ImageFont.load_default()
    for r, (key, x) in enumerate(results.items()):
        draw.text((4, top + r * cell + cell // 2), labels[key], fill="black", font=font, anchor="lm")
        for p, (name, idx, ref) in enumerate(picks):
            x0 = left + p * block
            if r == 0:
                draw.text((x0, 4), name, fill="black", font=font)
                img.paste(to_pil(tb.train[ref], zoom).convert("RGB"), (x0, 18))
            for k, i in enumerate(idx[:seeds_shown]):
                sim, _ = M.nearest(tb, x[i:i + 1])
                tile = to_pil(x[i], zoom).convert("RGB")
                if float(sim) > M.COPY_THRESHOLD:
                    ImageDraw.Draw(tile).rectangle([0, 0, 16 * zoom - 1, 16 * zoom - 1], outline=(220, 30, 30), width=2)
                img.paste(tile, (x0 + (k + 1) * cell, top + r * cell + 1))
    img.save(path)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--seeds", type=int, default=16, help="seeds per prompt (>= 16)")
    p.add_argument("--calib-seeds", type=int, default=64, help="seeds per prompt for the detection threshold (disjoint)")
    p.add_argument("--cfg", type=float, default=5.0)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--auto-base", default="best", help="the row whose schedule flagged samples get in auto mode; 'best': "
                   "the lowest memorized copy rate among rows within 10 points of plain CFG's memorized alignment")
    p.add_argument("--all-prompts", action="store_true", help="all 10 memorized + 10 clean prompts (default 5 + 5)")
    p.add_argument("--fp32", action="store_true", help="run the network in float32 as ComfyUI does on CPU (default: "
                   "bfloat16 autocast, as in training, about 2x faster)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (on 2 shared cores 1 was faster than 2)")
    p.add_argument("--out", default=str(REPO / "artifacts" / "testbed"), help="folder for the PNGs")
    p.add_argument("--json", default=None, help="write the table and settings here")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    t_start = time.time()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    tb, unet = load(), load_unet()
    seeds = list(range(a.seeds))
    memorized, clean = prompt_set(a.all_prompts)
    prompts, digit, style, mem, seed_of = prompt_batch(seeds, memorized, clean)
    noise = noise_for(seed_of)
    exemplar_idx = torch.tensor([tb.exemplar[(int(d), STYLES[int(s)])] for d, s, m in zip(digit, style, mem) if m])

    # Detection threshold from disjoint calibration seeds: first-step norm only (one model evaluation).
    cp, _, _, cmem, cseed = prompt_batch(range(10_000, 10_000 + a.calib_seeds), MEMORIZED, CLEAN)
    _, ctrace = sample(unet, cp, noise_for(cseed), G(transition="off"), a.cfg, a.steps, first_step_only=True, bf16=not a.fp32)
    d0 = ctrace.norms[0]
    threshold, tpr, fpr = M.best_threshold(d0[cmem], d0[~cmem])
    detection = {"auc_calibration": M.roc_auc(d0[cmem], d0[~cmem]), "threshold": threshold, "tpr_calibration": tpr,
                 "fpr_calibration": fpr, "calibration_samples": int(len(d0))}
    if a.auto_base not in ["best"] + [k for k, _, _ in ROWS[2:]]:
        p.error(f"--auto-base: '{a.auto_base}' is not a mitigation row; use best or one of {', '.join(k for k, _, _ in ROWS[2:])}.")

    results, traces, table, labels = {}, {}, [], {}
    for key, label, settings in ROWS + [("auto", None, None)]:
        if key == "auto":
            base = a.auto_base if a.auto_base != "best" else pick_best(table)
            settings = dataclasses.replace(next(s for k, _, s in ROWS if k == base), detect_threshold=threshold)
            label = f"auto (d0 > {threshold:.3g}: {base}, else CFG)"
        labels[key] = label
        t0 = time.time()
        cfg = 0.0 if key == "uncond" else a.cfg
        x, trace = sample(unet, prompts, noise, settings, cfg, a.steps, bf16=not a.fp32)
        results[key], traces[key] = x, trace
        entry = {"key": key, "method": label, "settings": settings.to_dict(), "cfg": cfg, "seconds": time.time() - t0}
        for name, m in (("memorized", mem), ("clean", ~mem)):
            entry[name] = M.summarize(tb, x[m], digit[m], style[m]) | switch_stats(trace, m)
        own = centered(x[mem], tb.mean) @ centered(tb.train[exemplar_idx], tb.mean).T
        entry["memorized"]["exemplar_copy_rate"] = float((own.diagonal() > M.COPY_THRESHOLD).float().mean())
        table.append(entry)
        print(f"{label}: {entry['seconds']:.0f} s", file=sys.stderr, flush=True)
    d0 = traces["cfg"].norms[0]
    detection["auc_eval"] = M.roc_auc(d0[mem], d0[~mem])
    detection["auc_by_step_plain_cfg"] = [round(M.roc_auc(n[mem], n[~mem]), 4) for n in traces["cfg"].norms]
    unflagged = ~traces["auto"].flagged
    detection["auto_unflagged"] = int(unflagged.sum())
    detection["auto_unflagged_max_abs_diff_vs_cfg"] = float((results["auto"][unflagged] - results["cfg"][unflagged]).abs().max()) if unflagged.any() else 0.0

    # Pictures: norm curves (first seed of 3 memorized and 3 clean prompts) and a sample grid.
    per, nm = a.seeds, len(memorized)
    show = [0 * per, 1 * per, 2 * per, nm * per, (nm + 1) * per, (nm + 2) * per]
    for key in CURVE_ROWS:
        img = guidance.render_curves(subset(traces[key], show), layout="overlay")[0]
        Image.fromarray((img.numpy() * 255).round().astype(np.uint8)).save(out / f"curves_{key}.png")
    picks = []
    for j in (0, 1, nm, nm + 1):
        d, s = (memorized + clean)[j]
        ref = tb.exemplar.get((d, s), int(M.nearest(tb, results["cfg"][j * per:j * per + 1])[1]))
        picks.append((f"'{d} {s}' ({'memorized' if j < nm else 'clean'})", list(range(j * per, (j + 1) * per)), ref))
    sample_grid(results, tb, picks, labels, min(6, per), out / "samples.png")

    report = {"config": {"seeds_per_prompt": a.seeds, "prompts_memorized": [f"{d} {s}" for d, s in memorized],
                         "prompts_clean": [f"{d} {s}" for d, s in clean], "cfg": a.cfg, "steps": a.steps,
                         "precision": "fp32" if a.fp32 else "bf16 autocast", "threads": a.threads,
                         "sampler": "DDIM (eta 0) = euler + ddim_uniform", "schedule_timesteps": ddim_schedule(a.steps)[1].tolist(),
                         "copy_threshold": M.COPY_THRESHOLD, "similarity": "cosine after subtracting the training mean image",
                         "alignment": f"{M.KNN}-NN digit classifier on the 400 held-out images",
                         "classifier_accuracy_on_training_images": float((M.classify(tb, tb.train) == tb.train_label).float().mean()),
                         "weights": weights_metadata()},
              "detection": detection, "rows": table, "seconds": time.time() - t_start}
    print_table(report)
    if a.json:
        Path(a.json).write_text(json.dumps(report, indent=1))
    print(f"pictures in {out}; {report['seconds']:.0f} s")
    return report


def pct(v, w=4):
    return "-".rjust(w) if v is None else f"{100 * v:{w}.0f}"


def print_table(r: dict) -> None:
    """The paper's Tables 1 and 3 for the testbed: memorized and clean prompts side by side, one row per method."""
    c = r["config"]
    print(f"{c['seeds_per_prompt']} seeds x {len(c['prompts_memorized'])} memorized + {len(c['prompts_clean'])} clean prompts, "
          f"cfg {c['cfg']:g}, {c['steps']} steps, {c['precision']}; copy = nearest-training-image similarity > {c['copy_threshold']}; "
          f"exmp = copy of the prompt's own exemplar; align = digit classifier agrees")
    head = (f"{'method':<44}| {'MEMORIZED sim':>13} {'p95':>5} {'copy% [95% CI]':>15} {'exmp%':>5} {'align':>5} | "
            f"{'CLEAN sim':>9} {'p95':>5} {'copy%':>5} {'align':>5} | {'switch mem/cln':>14} {'never':>5} {'@latest':>7}")
    print(head + "\n" + "-" * len(head))
    for e in r["rows"]:
        m, k = e["memorized"], e["clean"]
        med = lambda v: "-" if v is None else f"{v:g}"  # noqa: E731
        sw = "-" if m["switch_median"] is None and k["switch_median"] is None else f"{med(m['switch_median'])}/{med(k['switch_median'])}"
        print(f"{e['method'][:44]:<44}| {m['sim_mean']:13.3f} {m['sim_p95']:5.3f} {pct(m['copy_rate'])} "
              f"[{100 * m['copy_ci'][0]:3.0f},{100 * m['copy_ci'][1]:3.0f}] {pct(m['exemplar_copy_rate'], 5)} {pct(m['align'], 5)} | "
              f"{k['sim_mean']:9.3f} {k['sim_p95']:5.3f} {pct(k['copy_rate'], 5)} {pct(k['align'], 5)} | {sw:>14} "
              f"{pct(m['never'], 5)} {pct(m['forced_at_latest'], 7)}")
    d = r["detection"]
    print(f"detection (first-step norm, memorized vs clean): AUC {d['auc_eval']:.3f} on these seeds, "
          f"{d['auc_calibration']:.3f} on {d['calibration_samples']} calibration samples (all 20 prompts, other seeds); "
          f"threshold {d['threshold']:.4g} (TPR {100 * d['tpr_calibration']:.0f} %, FPR {100 * d['fpr_calibration']:.0f} %)")
    print(f"auto mode: {d['auto_unflagged']} samples not flagged; max |auto - plain CFG| over them = "
          f"{d['auto_unflagged_max_abs_diff_vs_cfg']:.3g}")
    by = d["auc_by_step_plain_cfg"]
    best = max(range(len(by)), key=by.__getitem__)
    at = ", ".join(f"{k} {by[k]:.3f}" for k in (1, 5, 10) if k < len(by))
    print(f"AUC of the norm at later steps (plain CFG): {at}; best: step {best} ({by[best]:.3f})")


if __name__ == "__main__":
    main()
