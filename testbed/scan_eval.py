"""Evaluate the Memorization Scan on the testbed: `python -m testbed.scan_eval [--json out.json]` from the repo root.

The scores are guidance/scan.py's (the node's): the guidance norm at the first step of the 50-step ddim_uniform
schedule (what the CFG KSampler (Memorization-Safe)'s detection measures with `euler` + `ddim_uniform`, 50 steps), and the
alignment cosine(eps_u, eps_c - eps_u) on the same noise presented at the third-to-last timestep (t = 41). The network
runs in float32, as ComfyUI runs it on a CPU.

Prompt lists (`scan_lists`, a fixed rule on the data, never on results): a calibration clean list (20 clean prompts)
and a disjoint broad evaluation list (the memorized prompts, their clean siblings and 20 other clean prompts: every
digit, both styles, all three slants, both widths).

1. Calibration seeds (default 32 per prompt, from 10000): the calibration clean list sets the threshold at the target
   false-positive rate; the memorized prompts on these seeds fit the alignment weight (the norm needs none of them).
2. Evaluation seeds (default 16 per prompt, from 0; disjoint): the broad list is scored; per duplication level the
   prompt-level AUC of that level's memorized prompts against every clean prompt of the list and the per-sample TPR at
   the calibrated threshold; overall the prompt AUC, the ranking and the per-sample FPR on the broad clean list.
3. The norm threshold goes to the sampler as detect_threshold (pack defaults: zero guidance, dynamic switch; cfg 5,
   50 DDIM steps through testbed.sampler.sample) on the broad list and the evaluation seeds; against plain CFG
   (transition off) on the same noise: flagged and copy rates per level, unflagged samples bit-identical to plain CFG.
   Copies are judged against a copy floor calibrated as testbed.reproduce does (plain CFG on every unmemorized prompt,
   seeds 10000-10001) unless --copy-threshold is given.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import torch

from . import guidance
from . import measure as M
from .data import SHARES, all_prompts, load
from .model import SLANTS, STYLES, WIDTHS, encode_prompt, prompt_text
from .sampler import SD, WEIGHTS, load_unet, noise_for, sample, weights_metadata

S = guidance.scan
G = guidance.GuidanceSettings
log = logging.getLogger("testbed.scan_eval")
CAL_SEEDS, CAL_FLOOR = 10_000, 10_000  # seed bases of the scan's calibration and of the copy floor; evaluation from 0
PER_DIGIT = 2  # other clean prompts per digit in each list


def scan_lists(memorized, siblings, per_digit: int = PER_DIGIT) -> tuple[list, list]:
    """(calibration clean list, other clean prompts of the evaluation list), fixed before any result was seen.

    For digit d = 0..9, slot i = 0 .. 2 * per_digit - 1 asks for (STYLES[(d + i) % 2], SLANTS[(d + i) % 3],
    WIDTHS[(d + i // 2) % 2]); slots 0 .. per_digit - 1 go to the evaluation list, the rest to the calibration list. A slot whose prompt is memorized, a clean sibling or already taken moves to the next prompt of
    the same digit in `all_prompts()` order (cyclic). Raises if either list misses a digit, style, slant or width.
    """
    taken = set(memorized) | set(siblings)
    prompts = all_prompts()
    ev, cal = [], []
    for d in range(10):
        own = [p for p in prompts if p[0] == d]
        for i in range(2 * per_digit):
            want = (d, STYLES[(d + i) % 2], SLANTS[(d + i) % 3], WIDTHS[(d + i // 2) % 2])
            j = own.index(want)
            p = next(own[(j + k) % len(own)] for k in range(len(own)) if own[(j + k) % len(own)] not in taken)
            taken.add(p)
            (ev if i < per_digit else cal).append(p)
    for name, lst in (("evaluation", ev), ("calibration", cal)):
        for pos, words in enumerate((range(10), STYLES, SLANTS, WIDTHS)):
            missing = set(words) - {p[pos] for p in lst}
            if missing:
                raise ValueError(f"scan_lists: the {name} list misses {sorted(map(str, missing))}")
    return cal, ev


def probe_points(steps: int = 50, schedule=SD):
    """(first sigma and timestep of the ddim_uniform schedule at `steps`, the third-to-last of its 50-step schedule)."""
    sig, ts = schedule.ddim(steps)
    sig50, ts50 = schedule.ddim(50)
    return (float(sig[0]), float(ts[0])), (float(sig50[-4]), float(ts50[-3]))


@torch.no_grad()
def score_prompts(unet, prompts, seeds, steps: int = 50, batch: int = 64):
    """Per prompt: {'norm': [S], 'alignment': [S]} from one cond + uncond evaluation per probe and seed, as the node
    computes them (x at the first step = noise * sigma as KSampler builds it below sigma_max; the alignment probe
    presents the unit noise itself to the network). Returns (scores, model evaluations)."""
    (s0, t0), (sl, tl) = probe_points(steps, getattr(unet, "schedule", SD))
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


def evaluate(res_cal: S.ScanResult, eval_items, level_of: dict, siblings: set):
    """On the evaluation items with res_cal's score and threshold: overall and per duplication level, prompt-level AUC
    (mean score per prompt, memorized vs every clean prompt) and per-sample TPR; per-sample FPR on the clean prompts."""
    res = S.ScanResult(items=eval_items, score=res_cal.score, weight=res_cal.weight)
    mean = {it.prompt: float(res.scores(it).mean()) for it in eval_items}
    mem = [it for it in eval_items if it.prompt in level_of]
    cln = [it for it in eval_items if it.prompt not in level_of]
    ranked = res.ranked()
    rank = {it.prompt: r for r, it in enumerate(ranked, 1)}
    thr = res_cal.threshold
    cat = lambda group: torch.cat([res.scores(it) for it in group])  # noqa: E731
    rate = lambda group: float((cat(group) >= thr).float().mean()) if group and thr > 0 else float("nan")  # noqa: E731
    clean_means = [mean[it.prompt] for it in cln]
    out = {"prompt_auc": S.auc([mean[it.prompt] for it in mem], clean_means), "sample_auc": S.auc(cat(mem), cat(cln)),
           "top_k": len(mem), "memorized_in_top_k": sum(it.prompt in level_of for it in ranked[:len(mem)]),
           "ranking": [it.prompt + (f" * {level_of[it.prompt]:g}" if it.prompt in level_of else "") for it in ranked],
           "levels": {}}
    for lv in sorted(set(level_of.values())):
        group = [it for it in mem if level_of[it.prompt] == lv]
        out["levels"][f"{lv:g}"] = {"prompts": [it.prompt for it in group], "ranks": [rank[it.prompt] for it in group],
                                    "prompt_auc": S.auc([mean[it.prompt] for it in group], clean_means),
                                    "sample_auc": S.auc(cat(group), cat(cln)), "tpr": rate(group)}
    if thr > 0:
        out |= {"threshold": thr, "calibration_fpr": res_cal.calibration_fpr, "eval_fpr": rate(cln),
                "eval_fpr_siblings": rate([it for it in cln if it.prompt in siblings]),
                "eval_fpr_other_clean": rate([it for it in cln if it.prompt not in siblings]), "eval_tpr": rate(mem)}
    return out


def copy_floor(unet, tb, meas, cfg: float, steps: int) -> dict:
    """testbed.reproduce's copy floor: plain CFG on every unmemorized prompt at seeds 10000-10001; fewer than 1 %
    of these samples' nearest-reference similarities exceed the threshold."""
    clean_all = [q for q in all_prompts() if q not in tb.memorized]
    seeds = [CAL_FLOOR, CAL_FLOOR + 1]
    prompts = torch.stack([encode_prompt(*q) for q in clean_all for _ in seeds])
    x, _ = sample(unet, prompts, noise_for([s for _ in clean_all for s in seeds]), G(transition="off"), cfg, steps)
    sim = meas.nearest(x)[0]
    thr = M.copy_threshold(sim)
    return {"threshold": thr, "source": f"calibrated: plain CFG, {len(clean_all)} unmemorized prompts x seeds {seeds}",
            "calibration_samples": len(sim), "calibration_exceed": float((sim > thr).float().mean())}


def run_sampler(unet, tb, meas, prompts, seeds, thr: float, copy_thr: float, cfg: float, steps: int, d0_scan, level_of):
    """Step 3: plain CFG and detect_threshold = thr (pack defaults otherwise) on the same noise; rates per level."""
    names = [prompt_text(q) for q in prompts for _ in seeds]
    prompts_t = torch.stack([encode_prompt(*q) for q in prompts for _ in seeds])
    ex = torch.tensor([tb.memorized.index(q) if q in tb.memorized else -1 for q in prompts for _ in seeds])
    mem = ex >= 0
    noise = noise_for([s for _ in prompts for s in seeds])
    c0 = time.process_time()
    x_plain, tr_plain = sample(unet, prompts_t, noise, G(transition="off"), cfg, steps)
    x_auto, tr_auto = sample(unet, prompts_t, noise, G(detect_threshold=thr), cfg, steps)
    cpu = time.process_time() - c0
    flagged, unflagged = tr_auto.flagged, ~tr_auto.flagged
    own = {}
    for key, x in (("plain", x_plain), ("auto", x_auto)):
        sim, _ = meas.nearest(x)
        own_sim = torch.full_like(sim, -2.0)
        if mem.any():
            own_sim[mem] = meas.exemplar_similarity(x[mem], ex[mem])
        own[key] = (own_sim > copy_thr, sim > copy_thr)

    def rates(m):
        n = int(m.sum())
        return {"samples": n, "flagged": float(flagged[m].float().mean()),
                "own_copy_plain": float(own["plain"][0][m].float().mean()), "own_copy_auto": float(own["auto"][0][m].float().mean()),
                "any_copy_plain": float(own["plain"][1][m].float().mean()), "any_copy_auto": float(own["auto"][1][m].float().mean())}

    lv = torch.tensor([level_of.get(n, 0.0) for n in names])
    return {"settings": G(detect_threshold=thr).to_dict(), "cfg": cfg, "steps": steps, "samples": int(len(flagged)),
            "copy_threshold": copy_thr, "memorized": rates(mem), "clean": rates(~mem),
            "levels": {f"{v:g}": rates(lv == v) for v in sorted(set(level_of.values()))},
            "unflagged": int(unflagged.sum()),
            "unflagged_max_abs_diff_vs_plain_cfg": float((x_auto[unflagged] - x_plain[unflagged]).abs().max()) if unflagged.any() else 0.0,
            "unflagged_bit_identical": bool(torch.equal(x_auto[unflagged], x_plain[unflagged])),
            "first_step_norm_max_abs_diff_sampler_vs_scan": float((tr_plain.norms[0] - d0_scan).abs().max()),
            "flags_match_scan_threshold": bool(torch.equal(flagged, d0_scan >= thr)), "cpu_s": round(cpu, 1)}


def targets(norm: dict, sampler: dict, level_of: dict, min_copy: float = 0.6) -> dict:
    """Issue 19's bar on the norm score: at the levels where plain CFG copies >= min_copy of the memorized samples
    (own exemplar), prompt AUC >= 0.9 and TPR >= 50 % at the calibrated threshold, per level and pooled."""
    lv = [k for k, e in sampler["levels"].items() if e["own_copy_plain"] >= min_copy]
    per = {k: {"prompt_auc": norm["levels"][k]["prompt_auc"], "tpr": norm["levels"][k]["tpr"],
               "met": norm["levels"][k]["prompt_auc"] >= 0.9 and norm["levels"][k]["tpr"] >= 0.5} for k in lv}
    return {"copying_levels": lv, "rule": f"plain CFG own-exemplar copies >= {min_copy:.0%}; prompt AUC >= 0.9, TPR >= 50 %",
            "per_level": per, "all_met": bool(lv) and all(e["met"] for e in per.values())}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--calib-seeds", type=int, default=32, help="calibration seeds per prompt (from 10000)")
    p.add_argument("--eval-seeds", type=int, default=16, help="evaluation seeds per prompt (from 0; disjoint)")
    p.add_argument("--sample-seeds", type=int, default=None, help="evaluation seeds sampled in step 3 (default: all)")
    p.add_argument("--fpr", type=float, default=0.05, help="target false-positive rate of the threshold")
    p.add_argument("--cfg", type=float, default=5.0)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--weights", default=str(WEIGHTS), help="the UNet weights (default: the shipped ones)")
    p.add_argument("--copy-threshold", type=float, default=None, help="copy floor for step 3 (default: calibrated)")
    p.add_argument("--no-sampling", action="store_true", help="skip step 3 (the sampler runs)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", default=None, help="write the results here")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(a.threads)
    t_wall, t_cpu = time.time(), time.process_time()
    unet, tb = load_unet(a.weights), load()
    cal_clean, other = scan_lists(tb.memorized, tb.clean)
    eval_prompts = tb.memorized + tb.clean + other
    level_of = {prompt_text(q): lv for q, lv in zip(tb.memorized, tb.shares)}
    siblings = {prompt_text(q) for q in tb.clean}
    cal_seeds = list(range(CAL_SEEDS, CAL_SEEDS + a.calib_seeds))
    eval_seeds = list(range(a.eval_seeds))

    c0 = time.process_time()
    cal_prompts = cal_clean + tb.memorized  # the memorized prompts fit the alignment weight only
    cal_scores, cal_evals = score_prompts(unet, cal_prompts, cal_seeds, a.steps)
    cal_cpu = time.process_time() - c0
    c0 = time.process_time()
    ev_scores, ev_evals = score_prompts(unet, eval_prompts, eval_seeds, a.steps)
    ev_cpu = time.process_time() - c0
    log.info("scores: calibration %.1f CPU s, evaluation %.1f CPU s", cal_cpu, ev_cpu)
    cal_items = items_for(cal_prompts, cal_scores, ["clean"] * len(cal_clean) + ["memorized"] * len(tb.memorized))
    eval_items = items_for(eval_prompts, ev_scores, ["scan"] * len(eval_prompts))
    numel = 16 * 16
    (s0, t0), (sl, tl) = probe_points(a.steps, getattr(unet, "schedule", SD))

    results = {}
    variants = [("norm", "norm", None), ("norm + alignment (fitted weight)", "norm + alignment", None),
                ("norm + alignment (paper SD1 weight)", "norm + alignment", S.default_weight(numel)),
                ("alignment alone", "norm + alignment", 1e6)]
    for label, score, weight in variants:
        res_cal = S.calibrate(cal_items, score, a.fpr, weight=weight, numel=numel)
        results[label] = {"weight": res_cal.weight, "weight_note": res_cal.weight_note,
                          "calibration_sample_auc": res_cal.calibration_auc()} | evaluate(res_cal, eval_items, level_of, siblings)
    # The fitted weight saw the evaluated memorized prompts (other seeds); here it is fitted on the first memorized
    # prompt of each level and evaluated on the second one of each level only.
    half = {prompt_text(q) for q in tb.memorized[:len(SHARES)]}
    res_cal = S.calibrate([it for it in cal_items if it.kind == "clean" or it.prompt in half], "norm + alignment", a.fpr, numel=numel)
    split = {"weight": res_cal.weight, "fitted_on": sorted(half)} | evaluate(
        res_cal, [it for it in eval_items if it.prompt not in half], {k: v for k, v in level_of.items() if k not in half}, siblings)

    meta = weights_metadata(a.weights)
    report = {"config": {"weights": str(a.weights), "augment": str(getattr(unet, "augment", "")),
                         "weights_metadata": {k: meta[k] for k in sorted(meta) if len(meta[k]) < 400},
                         "calibration_seeds": [cal_seeds[0], cal_seeds[-1]], "evaluation_seeds": [eval_seeds[0], eval_seeds[-1]],
                         "target_fpr": a.fpr, "first_probe": {"sigma": s0, "timestep": t0},
                         "alignment_probe": {"sigma": sl, "timestep": tl}, "schedule": f"ddim_uniform, {a.steps} steps",
                         "precision": "float32", "threads": a.threads, "list_rule": scan_lists.__doc__.strip(),
                         "calibration_clean_list": [prompt_text(q) for q in cal_clean],
                         "evaluation_list": {"memorized": [{"prompt": k, "level": v} for k, v in level_of.items()],
                                             "clean_siblings": [prompt_text(q) for q in tb.clean],
                                             "other_clean": [prompt_text(q) for q in other]}},
              "headline": "norm", "scores": results, "prompt_disjoint_fitted_weight": split,
              "cost": {"calibration_model_evaluations": cal_evals, "calibration_cpu_s": round(cal_cpu, 2),
                       "evaluation_model_evaluations": ev_evals, "evaluation_cpu_s": round(ev_cpu, 2),
                       "per_prompt_and_seed": "1 cond + 1 uncond per probe: 2 evaluations (norm), 4 (norm + alignment)"}}

    if not a.no_sampling:
        meas = M.Measure(tb, unet.augment)
        if a.copy_threshold is None:
            floor = copy_floor(unet, tb, meas, a.cfg, a.steps)
            log.info("copy floor %.4f", floor["threshold"])
        else:
            floor = {"threshold": a.copy_threshold, "source": "--copy-threshold"}
        report["copy_floor"] = floor
        seeds = eval_seeds[:a.sample_seeds] if a.sample_seeds is not None else eval_seeds
        d0 = torch.cat([sc["norm"][:len(seeds)] for sc in ev_scores])
        report["sampler"] = run_sampler(unet, tb, meas, eval_prompts, seeds, results["norm"]["threshold"], floor["threshold"],
                                        a.cfg, a.steps, d0, level_of)
        report["sampler"]["seeds"] = [seeds[0], seeds[-1]]
        report["targets"] = targets(results["norm"], report["sampler"], level_of)
    report["seconds_wall"] = round(time.time() - t_wall, 1)
    report["seconds_cpu"] = round(time.process_time() - t_cpu, 1)
    print_report(report)
    if a.json:
        Path(a.json).write_text(json.dumps(report, indent=1))
    return report


def _pct(v: float) -> str:
    return "-" if v != v else f"{100 * v:.0f}%"


def print_report(r: dict) -> None:
    c = r["config"]
    ev = c["evaluation_list"]
    print(f"Memorization scan on the testbed ({c['weights']}): calibration seeds {c['calibration_seeds']}, evaluation "
          f"seeds {c['evaluation_seeds']} (disjoint); first probe t={c['first_probe']['timestep']:.0f}, alignment probe "
          f"t={c['alignment_probe']['timestep']:.0f}; target FPR {c['target_fpr']:g}; {c['precision']}")
    print(f"lists: calibration {len(c['calibration_clean_list'])} clean prompts; evaluation {len(ev['memorized'])} memorized, "
          f"{len(ev['clean_siblings'])} clean siblings, {len(ev['other_clean'])} other clean (disjoint from calibration)")
    print(f"{'score':<38}{'weight':>9}{'prompt AUC':>11}{'top-k':>8}{'sample AUC':>11}{'thresh':>10}{'FPR cal':>8}"
          f"{'FPR eval':>9}{'TPR eval':>9}")
    for label, e in r["scores"].items():
        w = "-" if e["weight"] is None else f"{e['weight']:.3g}"
        print(f"{label:<38}{w:>9}{e['prompt_auc']:>11.3f}{e['memorized_in_top_k']:>5}/{e['top_k']:<2}{e['sample_auc']:>11.3f}"
              f"{e['threshold']:>10.4g}{100 * e['calibration_fpr']:>7.1f}%{100 * e['eval_fpr']:>8.1f}%{100 * e['eval_tpr']:>8.1f}%")
    sp = r["prompt_disjoint_fitted_weight"]
    print(f"  fitted weight, prompt-disjoint (fitted on one memorized prompt per level, evaluated on the other): weight "
          f"{sp['weight']:.3g}, prompt AUC {sp['prompt_auc']:.3f}, FPR eval {100 * sp['eval_fpr']:.1f}%, TPR eval {100 * sp['eval_tpr']:.1f}%")
    n = r["scores"]["norm"]
    print(f"norm (headline): FPR eval on the broad clean list {100 * n['eval_fpr']:.1f}% (siblings "
          f"{100 * n['eval_fpr_siblings']:.1f}%, other clean {100 * n['eval_fpr_other_clean']:.1f}%)")
    s = r.get("sampler")
    print(f"{'level':>6}  {'prompt AUC':>10}  {'sample AUC':>10}  {'TPR':>5}  {'ranks':>8}"
          + (f"  {'copies plain':>12}  {'-> auto':>7}  {'flagged':>7}" if s else "") + "  prompts")
    for lv, e in n["levels"].items():
        row = f"{lv:>6}  {e['prompt_auc']:>10.3f}  {e['sample_auc']:>10.3f}  {_pct(e['tpr']):>5}  {','.join(map(str, e['ranks'])):>8}"
        if s:
            q = s["levels"][lv]
            row += f"  {_pct(q['own_copy_plain']):>12}  {_pct(q['own_copy_auto']):>7}  {_pct(q['flagged']):>7}"
        print(row + "  " + "; ".join(e["prompts"]))
    print("ranking (norm, evaluation seeds; * level = memorized): " + ", ".join(n["ranking"]))
    co = r["cost"]
    print(f"cost: calibration {co['calibration_model_evaluations']} model evaluations, {co['calibration_cpu_s']} CPU s; "
          f"evaluation {co['evaluation_model_evaluations']} evaluations, {co['evaluation_cpu_s']} CPU s")
    if s:
        f = r["copy_floor"]
        m, cl = s["memorized"], s["clean"]
        print(f"copy floor {f['threshold']:.4f} ({f['source']})")
        print(f"sampler (detect_threshold {s['settings']['detect_threshold']:.4g}, zero guidance dynamic, cfg {s['cfg']:g}, "
              f"{s['steps']} steps, seeds {s['seeds']}, {s['samples']} samples): flagged memorized {_pct(m['flagged'])}, clean "
              f"{_pct(cl['flagged'])}; {s['unflagged']} unflagged, bit-identical to plain CFG: "
              f"{s['unflagged_bit_identical']} (max |diff| {s['unflagged_max_abs_diff_vs_plain_cfg']:.3g}); first-step norm "
              f"sampler vs scan max |diff| {s['first_step_norm_max_abs_diff_sampler_vs_scan']:.2g}, flags = scan's: "
              f"{s['flags_match_scan_threshold']}; own-exemplar copies memorized {_pct(m['own_copy_plain'])} -> "
              f"{_pct(m['own_copy_auto'])}, clean any copy {_pct(cl['any_copy_plain'])} -> {_pct(cl['any_copy_auto'])}; "
              f"{s['cpu_s']} CPU s")
        t = r["targets"]
        per = "; ".join(f"{k}: AUC {e['prompt_auc']:.2f} TPR {_pct(e['tpr'])} {'met' if e['met'] else 'NOT met'}"
                        for k, e in t["per_level"].items())
        print(f"issue 19 bar ({t['rule']}): copying levels {', '.join(t['copying_levels']) or 'none'}"
              + (f" ({per})" if per else "") + f"; all met: {t['all_met']}")
    print(f"total {r['seconds_wall']} s wall, {r['seconds_cpu']} s CPU", file=sys.stderr)


if __name__ == "__main__":
    main()
