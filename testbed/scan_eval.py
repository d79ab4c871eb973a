"""Evaluate the Memorization Scan on the testbed: `python -m testbed.scan_eval [--json out.json]` from the repo root.

The scores are guidance/scan.py's (the node's): the guidance norm at the first step of the 50-step ddim_uniform
schedule (what the CFG KSampler (Memorization-Safe)'s detection measures with `euler` + `ddim_uniform`, 50 steps), and the
alignment cosine(eps_u, eps_c - eps_u) on the same noise presented at the third-to-last timestep (t = 41). The network
runs in float32, as ComfyUI runs it on a CPU.

1. Calibration seeds (default 32 per prompt, from 10000): the clean list (the 16 clean siblings) sets the threshold at
   the target false-positive rate; the known-memorized list (the 16 memorized prompts) fits the alignment weight.
2. Evaluation seeds (default 16 per prompt, from 0; disjoint): every prompt is scored; prompt-level AUC memorized vs
   clean, memorized prompts in the top k (k = 16), and the false-positive / true-positive rates the calibrated
   thresholds give per sample. Also a prompt-disjoint split: calibrate on the first two memorized prompts and their
   siblings, evaluate on the other two and theirs.
3. The norm threshold goes to the sampler as detect_threshold (pack defaults: zero guidance, dynamic switch; cfg 5,
   50 DDIM steps through testbed.sampler.sample) on the evaluation seeds; against plain CFG (transition off) on the
   same noise: flagged rates, unflagged samples bit-identical to plain CFG, copy rates.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from . import guidance
from . import measure as M
from .data import load
from .model import encode_prompt, prompt_text
from .sampler import ddim_schedule, load_unet, noise_for, sample

S = guidance.scan
G = guidance.GuidanceSettings


def probe_points(steps: int = 50):
    """(first sigma and timestep of the ddim_uniform schedule at `steps`, the third-to-last of its 50-step schedule)."""
    sig, ts = ddim_schedule(steps)
    sig50, ts50 = ddim_schedule(50)
    return (float(sig[0]), float(ts[0])), (float(sig50[-4]), float(ts50[-3]))


@torch.no_grad()
def score_prompts(unet, prompts, seeds, steps: int = 50, batch: int = 64):
    """Per prompt: {'norm': [S], 'alignment': [S]} from one cond + uncond evaluation per probe and seed, as the node
    computes them (x at the first step = noise * sigma as KSampler builds it below sigma_max; the alignment probe
    presents the unit noise itself to the network). Returns (scores, model evaluations)."""
    (s0, t0), (sl, tl) = probe_points(steps)
    noise = noise_for(seeds)
    out, evals = [], 0
    for prompt in prompts:
        vec = encode_prompt(*prompt)
        parts = {"norm": [], "alignment": []}
        for k in range(0, len(seeds), batch):
            z = noise[k:k + batch]
            B = z.shape[0]
            ctx = torch.cat([vec.expand(B, -1), torch.zeros(B, vec.numel())])[:, None]
            for name, sigma, t, x in (("norm", s0, t0, z * s0), ("alignment", sl, tl, z * (sl * sl + 1) ** 0.5)):
                xin = torch.cat([x, x]) / (sigma * sigma + 1) ** 0.5
                eps = unet(xin, torch.full((2 * B,), t), ctx).float()
                den = torch.cat([x, x]) - sigma * eps
                evals += 2 * B
                if name == "norm":
                    parts[name].append(S.norm_score(den[:B], den[B:], sigma))
                else:
                    parts[name].append(S.alignment_score(x, den[:B], den[B:], sigma))
        out.append({k: torch.cat(v) for k, v in parts.items()})
    return out, evals


def items_for(prompts, scores, kinds):
    return [S.PromptScore(prompt_text(p), sc["norm"], sc["alignment"], kind=k) for p, sc, k in zip(prompts, scores, kinds)]


def evaluate(res_cal: S.ScanResult, eval_items, mem_names):
    """Prompt-level AUC and top-k, and per-sample FPR / TPR of res_cal's thresholds on the evaluation items."""
    res = S.ScanResult(items=eval_items, score=res_cal.score, weight=res_cal.weight)
    mean = {it.prompt: float(res.scores(it).mean()) for it in eval_items}
    mem = [it for it in eval_items if it.prompt in mem_names]
    cln = [it for it in eval_items if it.prompt not in mem_names]
    k = len(mem)
    top = [it.prompt for it in res.ranked()[:k]]
    per_mem = torch.cat([res.scores(it) for it in mem])
    per_cln = torch.cat([res.scores(it) for it in cln])
    out = {"prompt_auc": S.auc([mean[it.prompt] for it in mem], [mean[it.prompt] for it in cln]),
           "sample_auc": S.auc(per_mem, per_cln), "top_k": k, "memorized_in_top_k": sum(p in mem_names for p in top),
           "ranking": [it.prompt + (" *" if it.prompt in mem_names else "") for it in res.ranked()]}
    if res_cal.threshold > 0:
        out |= {"threshold": res_cal.threshold, "calibration_fpr": res_cal.calibration_fpr,
                "eval_fpr": float((per_cln >= res_cal.threshold).float().mean()),
                "eval_tpr": float((per_mem >= res_cal.threshold).float().mean())}
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--calib-seeds", type=int, default=32, help="calibration seeds per prompt (from 10000)")
    p.add_argument("--eval-seeds", type=int, default=16, help="evaluation seeds per prompt (from 0; disjoint)")
    p.add_argument("--fpr", type=float, default=0.05, help="target false-positive rate of the threshold")
    p.add_argument("--cfg", type=float, default=5.0)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--no-sampling", action="store_true", help="skip step 3 (the sampler runs)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", default=None, help="write the results here")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    t_wall, t_cpu = time.time(), time.process_time()
    unet, tb = load_unet(), load()
    prompts = tb.memorized + tb.clean
    mem_names = {prompt_text(q) for q in tb.memorized}
    cal_seeds = list(range(10_000, 10_000 + a.calib_seeds))
    eval_seeds = list(range(a.eval_seeds))

    c0 = time.process_time()
    cal_scores, cal_evals = score_prompts(unet, prompts, cal_seeds, a.steps)
    cal_cpu = time.process_time() - c0
    c0 = time.process_time()
    ev_scores, ev_evals = score_prompts(unet, prompts, eval_seeds, a.steps)
    ev_cpu = time.process_time() - c0
    kinds = ["memorized"] * len(tb.memorized) + ["clean"] * len(tb.clean)
    cal_items = items_for(prompts, cal_scores, kinds)
    eval_items = items_for(prompts, ev_scores, ["scan"] * len(prompts))
    numel = 16 * 16
    (s0, t0), (sl, tl) = probe_points(a.steps)

    results = {}
    variants = [("norm", "norm", None), ("norm + alignment (fitted weight)", "norm + alignment", None),
                ("norm + alignment (paper SD1 weight)", "norm + alignment", S.default_weight(numel)),
                ("alignment alone", "norm + alignment", 1e6)]
    for label, score, weight in variants:
        res_cal = S.calibrate(cal_items, score, a.fpr, weight=weight, numel=numel)
        entry = {"weight": res_cal.weight, "weight_note": res_cal.weight_note,
                 "calibration_sample_auc": res_cal.calibration_auc()} | evaluate(res_cal, eval_items, mem_names)
        results[label] = entry

    # Prompt-disjoint split: calibrate on the digits of the first half of the memorized prompts, evaluate on the rest.
    first = {str(q[0]) for q in tb.memorized[:len(tb.memorized) // 2]}
    split = {}
    for label, score, weight in variants[:2]:
        cal = [it for it in cal_items if it.prompt[0] in first]
        res_cal = S.calibrate(cal, score, a.fpr, weight=weight, numel=numel)
        ev = [it for it in eval_items if it.prompt[0] not in first]
        split[label] = {"weight": res_cal.weight} | evaluate(res_cal, ev, mem_names)
        split[label].pop("ranking")

    report = {"config": {"calibration_seeds": [cal_seeds[0], cal_seeds[-1]], "evaluation_seeds": [eval_seeds[0], eval_seeds[-1]],
                         "target_fpr": a.fpr, "first_probe": {"sigma": s0, "timestep": t0},
                         "alignment_probe": {"sigma": sl, "timestep": tl}, "schedule": f"ddim_uniform, {a.steps} steps",
                         "precision": "float32", "threads": a.threads, "clean_list": "the 16 clean siblings",
                         "memorized_list": "the 16 memorized prompts", "copy_threshold": M.COPY_THRESHOLD},
              "scores": results, "prompt_disjoint_split": split,
              "cost": {"calibration_model_evaluations": cal_evals, "calibration_cpu_s": round(cal_cpu, 2),
                       "evaluation_model_evaluations": ev_evals, "evaluation_cpu_s": round(ev_cpu, 2),
                       "per_prompt_and_seed": "1 cond + 1 uncond per probe: 2 evaluations (norm), 4 (norm + alignment)"}}

    if not a.no_sampling:
        thr = results["norm"]["threshold"]
        prompts_t = torch.stack([encode_prompt(*q) for q in prompts for _ in eval_seeds])
        mem_mask = torch.tensor([q in tb.memorized for q in prompts for _ in eval_seeds])
        noise = noise_for([s for _ in prompts for s in eval_seeds])
        c0 = time.process_time()
        x_plain, tr_plain = sample(unet, prompts_t, noise, G(transition="off"), a.cfg, a.steps)
        x_auto, tr_auto = sample(unet, prompts_t, noise, G(detect_threshold=thr), a.cfg, a.steps)
        samp_cpu = time.process_time() - c0
        flagged = tr_auto.flagged
        unflagged = ~flagged
        d0_scan = torch.cat([sc["norm"] for sc in ev_scores])
        meas = M.Measure(tb)
        sim_p, _ = meas.nearest(x_plain)
        sim_a, _ = meas.nearest(x_auto)
        copy_p, copy_a = sim_p > M.COPY_THRESHOLD, sim_a > M.COPY_THRESHOLD
        report["sampler"] = {
            "settings": G(detect_threshold=thr).to_dict(), "cfg": a.cfg, "steps": a.steps, "samples": int(len(flagged)),
            "flagged_memorized": float(flagged[mem_mask].float().mean()), "flagged_clean": float(flagged[~mem_mask].float().mean()),
            "unflagged": int(unflagged.sum()),
            "unflagged_max_abs_diff_vs_plain_cfg": float((x_auto[unflagged] - x_plain[unflagged]).abs().max()) if unflagged.any() else 0.0,
            "unflagged_bit_identical": bool(torch.equal(x_auto[unflagged], x_plain[unflagged])),
            "first_step_norm_max_abs_diff_sampler_vs_scan": float((tr_plain.norms[0] - d0_scan).abs().max()),
            "flags_match_scan_threshold": bool(torch.equal(flagged, d0_scan >= thr)),
            "copy_rate_memorized_plain": float(copy_p[mem_mask].float().mean()),
            "copy_rate_memorized_auto": float(copy_a[mem_mask].float().mean()),
            "copy_rate_clean_plain": float(copy_p[~mem_mask].float().mean()),
            "copy_rate_clean_auto": float(copy_a[~mem_mask].float().mean()),
            "cpu_s": round(samp_cpu, 1)}
    report["seconds_wall"] = round(time.time() - t_wall, 1)
    report["seconds_cpu"] = round(time.process_time() - t_cpu, 1)
    print_report(report)
    if a.json:
        Path(a.json).write_text(json.dumps(report, indent=1))
    return report


def print_report(r: dict) -> None:
    c = r["config"]
    print(f"Memorization scan on the testbed: calibration seeds {c['calibration_seeds']}, evaluation seeds "
          f"{c['evaluation_seeds']} (disjoint); first probe t={c['first_probe']['timestep']:.0f}, alignment probe "
          f"t={c['alignment_probe']['timestep']:.0f}; target FPR {c['target_fpr']:g}; {c['precision']}")
    print(f"{'score':<38}{'weight':>9}{'prompt AUC':>11}{'top-k':>8}{'sample AUC':>11}{'thresh':>10}{'FPR cal':>8}"
          f"{'FPR eval':>9}{'TPR eval':>9}")
    for label, e in r["scores"].items():
        w = "-" if e["weight"] is None else f"{e['weight']:.3g}"
        print(f"{label:<38}{w:>9}{e['prompt_auc']:>11.3f}{e['memorized_in_top_k']:>5}/{e['top_k']:<2}{e['sample_auc']:>11.3f}"
              f"{e['threshold']:>10.4g}{100 * e['calibration_fpr']:>7.1f}%{100 * e['eval_fpr']:>8.1f}%{100 * e['eval_tpr']:>8.1f}%")
    for label, e in r["prompt_disjoint_split"].items():
        print(f"  prompt-disjoint (cal on half the digits, eval on the rest) {label}: prompt AUC {e['prompt_auc']:.3f}, top-k "
              f"{e['memorized_in_top_k']}/{e['top_k']}, FPR eval {100 * e['eval_fpr']:.1f}%, TPR eval {100 * e['eval_tpr']:.1f}%")
    print("ranking (norm, evaluation seeds; * = memorized): " + ", ".join(r["scores"]["norm"]["ranking"]))
    co = r["cost"]
    print(f"cost: calibration {co['calibration_model_evaluations']} model evaluations, {co['calibration_cpu_s']} CPU s; "
          f"evaluation {co['evaluation_model_evaluations']} evaluations, {co['evaluation_cpu_s']} CPU s")
    if "sampler" in r:
        s = r["sampler"]
        print(f"sampler (detect_threshold {s['settings']['detect_threshold']:.4g}, zero guidance dynamic, cfg {s['cfg']:g}, "
              f"{s['steps']} steps, {s['samples']} samples): flagged memorized {100 * s['flagged_memorized']:.1f}%, clean "
              f"{100 * s['flagged_clean']:.1f}%; {s['unflagged']} unflagged, bit-identical to plain CFG: "
              f"{s['unflagged_bit_identical']} (max |diff| {s['unflagged_max_abs_diff_vs_plain_cfg']:.3g}); first-step norm "
              f"sampler vs scan max |diff| {s['first_step_norm_max_abs_diff_sampler_vs_scan']:.2g}, flags = scan's: "
              f"{s['flags_match_scan_threshold']}; copies memorized {100 * s['copy_rate_memorized_plain']:.0f}% -> "
              f"{100 * s['copy_rate_memorized_auto']:.0f}%, clean {100 * s['copy_rate_clean_plain']:.0f}% -> "
              f"{100 * s['copy_rate_clean_auto']:.0f}%; {s['cpu_s']} CPU s")
    print(f"total {r['seconds_wall']} s wall, {r['seconds_cpu']} s CPU", file=sys.stderr)


if __name__ == "__main__":
    main()
