"""Reproduce the paper's mitigation table on the testbed: `python -m testbed.reproduce` from the repo root.

Every row samples the same prompts and seeds (50 DDIM steps, cfg 5) through the pack's guidance core. Copies are
measured against a threshold calibrated on fresh clean samples (the copy floor); the headline is the share of
memorized-prompt samples that copy their own exemplar (Jain et al., Tables 1 and 3; detection after Wen et al.).
Calibration (copy threshold, detection threshold, auto's base method) uses seeds disjoint from the evaluation seeds.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from . import guidance
from . import measure as M
from .data import BINS, SHARES, all_prompts, load
from .model import encode_prompt, prompt_text
from .sampler import WEIGHTS, load_unet, noise_for, sample, weights_metadata

log = logging.getLogger("testbed.reproduce")
G = guidance.GuidanceSettings
OFF = G(transition="off")
ROWS = [  # (key, label, settings); cfg comes from --cfg except for the unconditional row
    ("uncond", "unconditional (s = 0)", OFF),
    ("cfg", "plain CFG", OFF),
    ("zero_t650", "zero until t=650 (STP)", G(0.0, "static", switch_percent=0.35)),
    ("zero_t500", "zero until t=500 (STP)", G(0.0, "static", switch_percent=0.5)),
    ("og_t650", "opposite -2 until t=650 (OG+STP)", G(-2.0, "static", switch_percent=0.35)),
    ("og_t500", "opposite -2 until t=500 (OG+STP)", G(-2.0, "static", switch_percent=0.5)),
    ("zero_alg1", "zero, Alg. 1 alone (no guard)", G(0.0, "dynamic", earliest_percent=0.0, latest_percent=1.0)),
    ("zero_dyn", "zero, dynamic = pack defaults", G()),
    ("og_dyn", "opposite -2, dynamic (OG+DTP)", G(-2.0, "dynamic", earliest_percent=0.0, latest_percent=0.5)),
]
DETECT_OG = "og_dyn"  # the base of the "detection + opposite" row: opposite guidance only where the first step flags
MITIGATIONS = [k for k, _, _ in ROWS[2:]]
ZERO_ALL = G(0.0, "static", switch_percent=1.0)  # zero guidance at every step: the basin as the paper plots it
REPO = Path(__file__).resolve().parents[1]
CAL_FLOOR, CAL_DETECT, CAL_PICK, FRESH_UNCOND = 10_000, 20_000, 30_000, 40_000  # seed bases, disjoint from 0..seeds
DEFAULT_SEEDS, FULL_SEEDS = 8, 16


@dataclasses.dataclass
class Batch:
    """Prompts x seeds: prompt vectors [B, D], noise, digit [B], memorized mask [B], exemplar index [B] (-1 clean)."""

    prompts: torch.Tensor
    noise: torch.Tensor
    digit: torch.Tensor
    mem: torch.Tensor
    exemplar: torch.Tensor
    names: list
    level: torch.Tensor  # [B]: the memorized prompt's exemplar share of its own records (its duplication level); 0 clean

    @classmethod
    def of(cls, tb, prompts, seeds):
        rows = [(p, s) for p in prompts for s in seeds]
        ex = [tb.memorized.index(p) if p in tb.memorized else -1 for p, _ in rows]
        return cls(torch.stack([encode_prompt(*p) for p, _ in rows]), noise_for([s for _, s in rows]),
                   torch.tensor([-1 if p[0] is None else p[0] for p, _ in rows]), torch.tensor([e >= 0 for e in ex]), torch.tensor(ex),
                   [prompt_text(p) for p, _ in rows], torch.tensor([tb.shares[e] if e >= 0 else 0.0 for e in ex]))

    def select(self, m: torch.Tensor) -> "Batch":
        return Batch(self.prompts[m], self.noise[m], self.digit[m], self.mem[m], self.exemplar[m],
                     [n for n, keep in zip(self.names, m) if keep], self.level[m])

    def groups(self):
        """(name, mask) of the memorized and the clean samples."""
        return (("memorized", self.mem), ("clean", ~self.mem))

    def levels(self):
        """(share, mask) of the memorized samples at each duplication level present."""
        return [(lv, self.level == lv) for lv in SHARES if bool((self.level == lv).any())]


def level_key(share: float) -> str:
    return f"{round(100 * share)}"


def step_percent(ts: torch.Tensor, k: int) -> float:
    """A switch_percent whose static switch lands exactly on step k of this timestep grid (midway to step k - 1)."""
    t = float(ts[k]) + (float(ts[k - 1]) - float(ts[k])) / 2 if k > 0 else 999.0
    return 1.0 - t / 999.0


def group_stats(meas: M.Measure, x, b: Batch, m: torch.Tensor, thr: float) -> dict:
    """Copy rates (own exemplar, any training image) with 95 % intervals, similarity and digit alignment of b[m]."""
    sim, idx = meas.nearest(x[m])
    n = int(m.sum())
    copies = int((sim > thr).sum())
    out = {"n": n, "sim_mean": float(sim.mean()), "sim_p95": float(sim.quantile(0.95)), "copy_rate": copies / n,
           "copy_ci": list(M.wilson(copies, n)), "align": float((meas.classify(x[m]) == b.digit[m]).float().mean()),
           "exemplar_hits": int((idx[sim > thr] < len(meas.tb.exemplars)).sum())}
    if bool(b.mem[m].all()):
        k = int((meas.exemplar_similarity(x[m], b.exemplar[m]) > thr).sum())
        out |= {"exemplar_copy_rate": k / n, "exemplar_copy_ci": list(M.wilson(k, n))}
    return out


def switch_stats(trace, m, sched) -> dict:
    """Median switch step, share never switched and share forced at the latest guard, over the samples in m."""
    if trace.settings.off:
        return {"switch_median": None, "never": None, "forced_at_latest": None}
    steps = trace.switch_step[m]
    hit = steps[steps != guidance.NEVER].float()
    plan = guidance.plan_steps(trace.sigmas.tolist(), sched.percent_to_sigma, trace.settings)
    forced = float((steps == plan.latest).float().mean()) if trace.settings.transition == "dynamic" else None
    return {"switch_median": float(hit.median()) if len(hit) else None,
            "never": float((steps == guidance.NEVER).float().mean()), "forced_at_latest": forced}


def evaluate(meas, x, trace, b: Batch, thr: float, sched) -> dict:
    out = {name: group_stats(meas, x, b, m, thr) | switch_stats(trace, m, sched) for name, m in b.groups()}
    out["levels"] = {level_key(lv): group_stats(meas, x, b, m, thr) | switch_stats(trace, m, sched) for lv, m in b.levels()}
    return out


def pick_base(unet, meas, tb, cfg, steps, seeds, thr) -> tuple[str, dict]:
    """Auto's base method, chosen on calibration seeds: the lowest own-exemplar copy rate among the mitigations that
    keep memorized alignment within 3 points of plain CFG's (else the best-aligned mitigation)."""
    b = Batch.of(tb, tb.memorized, seeds)
    res = {}
    for key, _, s in ROWS[1:]:
        x, _ = sample(unet, b.prompts, b.noise, s, cfg, steps)
        res[key] = group_stats(meas, x, b, b.mem, thr)
    ok = [k for k in MITIGATIONS if res[k]["align"] >= res["cfg"]["align"] - 0.03]
    best = min(ok, key=lambda k: (res[k]["exemplar_copy_rate"], -res[k]["align"])) if ok else max(MITIGATIONS, key=lambda k: res[k]["align"])
    return best, {k: {"exemplar_copy_rate": v["exemplar_copy_rate"], "align": v["align"]} for k, v in res.items()}


def mechanism(trace, b: Batch, steps_shown=(0, 5, 10, 15, 20, 25, 30, 35, 40, 45, 49)) -> dict:
    """Zero guidance all the way: median guidance norm d (eps space) and d x sigma (denoised space) per step for
    memorized and clean samples, per-step AUC, the peak step and the share of samples with a fall (d[25] < d[0])."""
    d = trace.norms
    steps_shown = [k for k in steps_shown if k < len(d)]
    out = {"steps": list(steps_shown)}
    groups = list(b.groups()) + [(f"level {level_key(lv)}", m) for lv, m in b.levels()]
    for name, v in (("norm", d), ("denoised", guidance.denoised_series(trace))):
        out[name] = {g: [round(float(v[k, m].median()), 5) for k in steps_shown] for g, m in groups}
        out[name]["auc"] = [round(M.roc_auc(v[k, b.mem], v[k, ~b.mem]), 3) for k in steps_shown]
        out[name]["auc_by_level"] = {g: [round(M.roc_auc(v[k, m], v[k, ~b.mem]), 3) for k in steps_shown] for g, m in groups[2:]}
        out[name]["peak_step_median"] = {g: float(v[:, m].argmax(0).float().median()) for g, m in groups}
    mid = min(25, len(d) - 1)
    out["norm"]["fall_share"] = {g: float((d[mid, m] < d[0, m]).float().mean()) for g, m in groups}
    out["sqrt_snr_growth_0_to_25"] = float(trace.sigmas[0] / trace.sigmas[mid])
    return out


def oracle(unet, meas, b: Batch, cfg, steps, thr, alg1_steps, defaults_steps, every=3) -> dict:
    """Per memorized sample, the first switch step k (zero guidance before k, CFG after) at which it no longer copies
    its own exemplar; Spearman against Algorithm 1's switch step and the defaults' (samples that copy under plain CFG
    and switch)."""
    _, ts = unet.schedule.ddim(steps)
    ks = list(range(0, steps, every))
    mb = b.select(b.mem)
    copies = []
    for k in ks:
        x, _ = sample(unet, mb.prompts, mb.noise, G(0.0, "static", switch_percent=step_percent(ts, k)), cfg, steps)
        copies.append(meas.exemplar_similarity(x, mb.exemplar) > thr)
    copies = torch.stack(copies)  # [K, B]
    gone = (~copies).float().argmax(0)
    k_star = torch.tensor([float(ks[int(g)]) if not copies[:, i].all() else float("nan") for i, g in enumerate(gone)])
    alg1 = alg1_steps.float()
    use = copies[0] & ~k_star.isnan() & (alg1 >= 0)
    const = float(k_star[use].median()) if use.any() else float("nan")
    return {"ks": ks, "oracle_step": [None if v != v else v for v in k_star.tolist()], "alg1_step": alg1.tolist(),
            "n_used": int(use.sum()), "spearman": M.spearman(k_star[use], alg1[use]),
            "mean_abs_error_alg1": float((k_star[use] - alg1[use]).abs().mean()) if use.any() else None,
            "mean_abs_error_constant": float((k_star[use] - const).abs().mean()) if use.any() else None,
            "constant": const, "copy_rate_by_k": [float(c.float().mean()) for c in copies],
            "vs_defaults_spearman": M.spearman(k_star[use], defaults_steps.float()[use]),
            "levels": {level_key(lv): {"n_used": int((use & m).sum()), "spearman": M.spearman(k_star[use & m], alg1[use & m]),
                                       "oracle_median": float(k_star[use & m].median()) if (use & m).any() else None}
                       for lv, m in mb.levels()}}


def curve_picture(trace, b: Batch, path, per_prompt: int):
    """One memorized prompt's samples and one clean prompt's (its sibling), as render_curves draws them."""
    mem0 = [i for i in range(len(b.names)) if b.names[i] == b.names[0]][:per_prompt]
    clean0 = [i for i in range(len(b.names)) if not b.mem[i]][:2]
    idx = mem0 + clean0
    sub = dataclasses.replace(trace, norms=trace.norms[:, idx], scales=trace.scales[:, idx],
                              switch_step=trace.switch_step[idx], flagged=trace.flagged[idx])
    img = guidance.render_curves(sub, layout="overlay", denoised=True)[0]
    Image.fromarray((img.numpy() * 255).round().astype(np.uint8)).save(path)
    return {"memorized": b.names[mem0[0]], "clean": b.names[clean0[0]], "samples": idx}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--seeds", type=int, default=None, help=f"evaluation seeds per prompt (from 0; default {DEFAULT_SEEDS}, "
                   f"--full {FULL_SEEDS})")
    p.add_argument("--first-seed", type=int, default=0, help="first evaluation seed (pilots use 5000: never a reported seed)")
    p.add_argument("--full", action="store_true", help=f"{FULL_SEEDS} seeds per prompt (the published tables; ~3x the default's time)")
    p.add_argument("--prompts", type=int, default=None, help="memorized prompts evaluated (default all), each with its clean sibling")
    p.add_argument("--cfg", type=float, default=5.0)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--weights", default=str(WEIGHTS), help="the UNet weights (default: the shipped ones)")
    p.add_argument("--oracle", action="store_true", help="also sweep the switch step per memorized sample (slow)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=str(REPO / "artifacts" / "testbed"), help="folder for the PNGs")
    p.add_argument("--json", default=None, help="write the table and settings here")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(a.threads)
    t_start = time.time()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    tb, unet = load(), load_unet(a.weights)
    a.seeds = a.seeds or (FULL_SEEDS if a.full else DEFAULT_SEEDS)
    a.prompts = a.prompts or len(tb.memorized)
    if not 1 <= a.prompts <= len(tb.memorized):
        p.error(f"--prompts: {a.prompts} is outside 1..{len(tb.memorized)}; the testbed has {len(tb.memorized)} memorized prompts.")
    meas = M.Measure(tb, unet.augment)
    seeds = list(range(a.first_seed, a.first_seed + a.seeds))
    if set(seeds) & set(range(CAL_FLOOR, FRESH_UNCOND + 128)):
        p.error(f"--first-seed: evaluation seeds {seeds[0]}..{seeds[-1]} overlap the calibration seeds (10000-40127); use 0 or 5000.")
    b = Batch.of(tb, tb.memorized[:a.prompts] + tb.clean[:a.prompts], seeds)

    # 1. Copy floor: plain CFG on every unmemorized prompt, fresh seeds; fewer than 1 % exceed the threshold.
    clean_all = [q for q in all_prompts() if q not in tb.memorized]
    cb = Batch.of(tb, clean_all, [CAL_FLOOR, CAL_FLOOR + 1])
    xc, _ = sample(unet, cb.prompts, cb.noise, OFF, a.cfg, a.steps)
    sc = meas.nearest(xc)[0]
    thr = M.copy_threshold(sc)
    floor = {"threshold": thr, "calibration_samples": len(cb.names), "calibration_exceed": float((sc > thr).float().mean())}
    log.info("copy threshold %.4f from %d fresh clean samples (%.0f s)", thr, len(cb.names), time.time() - t_start)

    # 2. Detection threshold: the first-step norm of the memorized prompts and their clean siblings.
    db = Batch.of(tb, tb.memorized + tb.clean, range(CAL_DETECT, CAL_DETECT + 32))
    _, dtr = sample(unet, db.prompts, db.noise, OFF, a.cfg, a.steps, first_step_only=True)
    d0 = dtr.norms[0]
    dthr, tpr, fpr = M.best_threshold(d0[db.mem], d0[~db.mem])
    dthr = max(dthr, 0.0)  # below every norm: every sample flagged
    detection = {"auc_calibration": M.roc_auc(d0[db.mem], d0[~db.mem]), "threshold": dthr, "tpr_calibration": tpr,
                 "fpr_calibration": fpr, "calibration_samples": len(db.names),
                 "levels": {level_key(lv): {"auc_calibration": M.roc_auc(d0[m], d0[~db.mem])} for lv, m in db.levels()}}

    # 3. Auto's base method, on calibration seeds.
    base, pick = pick_base(unet, meas, tb, a.cfg, a.steps, range(CAL_PICK, CAL_PICK + 4), thr)
    log.info("auto base: %s (%.0f s)", base, time.time() - t_start)

    # 4. The table, on the evaluation seeds; the unconditional branch also on fresh seeds.
    by_key = dict((k, s) for k, _, s in ROWS)
    rows = ROWS + [("auto", f"auto (d0 > {dthr:.3g}: {base}, else CFG)", dataclasses.replace(by_key[base], detect_threshold=dthr)),
                   ("detect_og", f"detection + opposite (d0 > {dthr:.3g}: {DETECT_OG}, else CFG)",
                    dataclasses.replace(by_key[DETECT_OG], detect_threshold=dthr))]
    results, traces, table = {}, {}, []
    for key, label, settings in rows:
        t0 = time.time()
        cfg = 0.0 if key == "uncond" else a.cfg
        x, trace = sample(unet, b.prompts, b.noise, settings, cfg, a.steps)
        results[key], traces[key] = x, trace
        table.append({"key": key, "method": label, "settings": settings.to_dict(), "cfg": cfg, "seconds": time.time() - t0}
                     | evaluate(meas, x, trace, b, thr, unet.schedule))
        log.info("%s: %.0f s", label, time.time() - t0)
    fb = Batch.of(tb, [(None, None, None, None)], range(FRESH_UNCOND, FRESH_UNCOND + 128))
    xu, _ = sample(unet, fb.prompts, fb.noise, OFF, 0.0, a.steps)
    su, iu = meas.nearest(xu)
    uncond_fresh = {"samples": len(fb.names), "copy_rate": float((su > thr).float().mean()),
                    "exemplar_copy_rate": float(((su > thr) & (iu < len(tb.exemplars))).float().mean())}
    d0 = traces["cfg"].norms[0]
    detection["auc_eval"] = M.roc_auc(d0[b.mem], d0[~b.mem])
    for lv, m in b.levels():
        detection["levels"].setdefault(level_key(lv), {})["auc_eval"] = M.roc_auc(d0[m], d0[~b.mem])
    unflagged = ~traces["auto"].flagged
    detection["auto_unflagged"] = int(unflagged.sum())
    detection["auto_unflagged_max_abs_diff_vs_cfg"] = float((results["auto"][unflagged] - results["cfg"][unflagged]).abs().max()) if unflagged.any() else 0.0
    floor["eval_clean_exceed"] = next(e for e in table if e["key"] == "cfg")["clean"]["copy_rate"]

    # 5. Mechanism: zero guidance at every step.
    _, ztr = sample(unet, b.prompts, b.noise, ZERO_ALL, a.cfg, a.steps)
    mech = mechanism(ztr, b)
    report = {"config": {"seeds_per_prompt": a.seeds, "first_seed": a.first_seed, "prompts_memorized": [prompt_text(q) for q in tb.memorized[:a.prompts]],
                         "prompts_clean": [prompt_text(q) for q in tb.clean[:a.prompts]],
                         "levels": {prompt_text(q): tb.shares[k] for k, q in enumerate(tb.memorized[:a.prompts])}, "cfg": a.cfg, "steps": a.steps,
                         "precision": "fp32", "threads": a.threads, "sampler": "DDIM (eta 0) = euler + ddim_uniform",
                         "similarity": "cosine after subtracting the mean reference image",
                         "copy_references": f"{len(tb.exemplars)} exemplars + every training glyph at the "
                                            f"{len(BINS)} slant/width bin centres",
                         "alignment": f"{M.KNN}-NN digit classifier on augmented held-out glyphs", "weights_file": str(a.weights),
                         "weights": weights_metadata(a.weights)},
              "copy_floor": floor, "detection": detection, "auto_pick": {"base": base, "calibration": pick},
              "uncond_fresh": uncond_fresh, "rows": table, "mechanism": mech}
    report["curve_picture"] = curve_picture(traces["zero_dyn"], b, out / "curves_zero_dyn.png", 6)
    curve_picture(ztr, b, out / "curves_zero_all.png", 6)
    if a.oracle:
        t0 = time.time()
        report["oracle"] = oracle(unet, meas, b, a.cfg, a.steps, thr, traces["zero_alg1"].switch_step[b.mem],
                                  traces["zero_dyn"].switch_step[b.mem])
        log.info("oracle: %.0f s", time.time() - t0)
    report["seconds"] = time.time() - t_start
    print_table(report)
    if a.json:
        Path(a.json).write_text(json.dumps(report, indent=1))
    log.info("pictures in %s; %.0f s", out, report["seconds"])
    return report


def pct(v, w=4):
    return "-".rjust(w) if v is None else f"{100 * v:{w}.0f}"


def cell(g: dict) -> str:
    """Own-exemplar copies % with its 95 % interval."""
    return f"{pct(g['exemplar_copy_rate'], 1)} [{pct(g['exemplar_copy_ci'][0], 1)}, {pct(g['exemplar_copy_ci'][1], 1)}]"


def print_table(r: dict) -> None:
    """The paper's Tables 1 and 3 for the testbed, by duplication level (memorized) beside the clean siblings."""
    c, f = r["config"], r["copy_floor"]
    levels = list(r["rows"][0]["levels"])
    lines = [f"{c['seeds_per_prompt']} seeds x {len(c['prompts_memorized'])} memorized + {len(c['prompts_clean'])} clean prompts, "
             f"cfg {c['cfg']:g}, {c['steps']} steps; copy = similarity > {f['threshold']:.4f} (fewer than 1 % of "
             f"{f['calibration_samples']} fresh clean samples exceed it); columns = duplication level (the exemplar's share "
             f"of its own prompt's records, {r['rows'][0]['levels'][levels[0]]['n']} samples each)",
             "| method | " + " | ".join(f"{lv} %: own copies [95 % CI]" for lv in levels) + " | mem. align % by level | "
             "clean any copy % | clean align % | switch step median mem/clean | forced at latest % |",
             "|---|" + "---|" * (len(levels) + 5)]
    for e in r["rows"]:
        m, k, lv = e["memorized"], e["clean"], e["levels"]
        sw = "-" if m["switch_median"] is None else f"{m['switch_median']:g}/{k['switch_median']:g}" if k["switch_median"] is not None else f"{m['switch_median']:g}/-"
        lines.append(f"| {e['method']} | " + " | ".join(cell(lv[x]) for x in levels) + " | "
                     + "/".join(pct(lv[x]["align"], 1) for x in levels)
                     + f" | {pct(k['copy_rate'], 1)} | {pct(k['align'], 1)} | {sw} | {pct(m['forced_at_latest'], 1)} |")
    print("\n".join(lines))
    d, u = r["detection"], r["uncond_fresh"]
    print(f"unconditional branch on {u['samples']} fresh seeds: any copy {100 * u['copy_rate']:.1f} %, an exemplar {100 * u['exemplar_copy_rate']:.1f} %")
    print("detection AUC by level (eval / calibration): " + ", ".join(
        f"{k} %: {v.get('auc_eval', float('nan')):.3f} / {v['auc_calibration']:.3f}" for k, v in d["levels"].items()))
    print(f"detection (first-step norm): AUC {d['auc_eval']:.3f} on these seeds, {d['auc_calibration']:.3f} on "
          f"{d['calibration_samples']} calibration samples; threshold {d['threshold']:.4g}; auto base {r['auto_pick']['base']}; "
          f"{d['auto_unflagged']} unflagged, max |auto - CFG| {d['auto_unflagged_max_abs_diff_vs_cfg']:.3g}")
    mech = r["mechanism"]
    for name in ("norm", "denoised"):
        print(f"zero guidance, median {name} at steps {mech['steps']}: " + "; ".join(
            f"{g} {v}" for g, v in mech[name].items() if g not in ("auc", "auc_by_level", "peak_step_median")))
    if "oracle" in r:
        o = r["oracle"]
        num = lambda v: "-" if v is None or v != v else f"{v:.3g}"  # noqa: E731
        print(f"oracle: Spearman(oracle step, Alg. 1 step) {num(o['spearman'])} over {o['n_used']} samples; mean |error| "
              f"Alg. 1 {num(o['mean_abs_error_alg1'])}, constant step {num(o['constant'])}: {num(o['mean_abs_error_constant'])}; by level "
              + ", ".join(f"{k} %: {num(v['spearman'])} (n {v['n_used']})" for k, v in o["levels"].items()))


if __name__ == "__main__":
    main()
