"""Copy Check measured on the testbed, end to end in ComfyUI (issue 20): in process on the real ComfyUI stack, with
ComfyUI's input and user directories in a temporary folder.

    COMFYUI_PATH=/path/to/ComfyUI python tests/copy_check_eval.py [--json out.json]      # about 2 min on one core

It lives in tests/ (with host.py) because testbed/ never imports the pack's nodes. The published figures
(docs/copy-check.md) were measured on the v2 testbed (4 memorized prompts, threshold 0.965); v3 (10 memorized prompts,
8,392 references, floor 0.990) has not been measured with it. Steps:
1. Testbed Training Images (to input folder) writes the training set (the exemplars + 1397 training glyphs x 6 bin
   centres, the references testbed.measure compares against) into input/.
2. Samples, 50 steps euler + ddim_uniform, cfg 5, decoded by Testbed Decode (scale 8, 128 px), each prompt's conditioning
   in one batch: the stock KSampler and the CFG KSampler (Memorization-Safe, pack defaults) on the memorized prompts
   and their clean siblings (16 samples each, seed 0); the stock KSampler on all clean prompts (2 samples each,
   seed 1) for the false-positive rate. Calibration set, disjoint: the stock KSampler on the clean prompts, 2
   samples each, seed 10000 (the testbed's own floor is set the same way), written to input/ as PNGs.
3. Copy Check (model-free descriptor) on every sample against the training folder, for each calibration: 'held-out
   folder' (the calibration set), 'references leave-one-out', and 'fixed threshold' at the node's default. Its copy
   flags are compared with the testbed's own copy measure (nearest reference, cosine after subtracting the references'
   mean image, > testbed.measure.COPY_THRESHOLD): agreement over all samples, false-positive rate on clean-prompt samples, true-positive rate on
   the testbed's copies (95 % Wilson intervals).
"""
from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import host  # noqa: E402

SIBLINGS = 16
CLEAN_SEEDS = 2


def out(o):
    return tuple(o.args if hasattr(o, "args") else o.result)


def flags(report: str) -> list[bool]:
    return [" COPY" in ln for ln in report.splitlines() if re.match(r"output \d+:", ln)]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--json", help="write the numbers here")
    args = ap.parse_args()
    torch.set_num_threads(1)
    host.import_comfy()
    host.load_pack()
    import folder_paths
    import nodes as comfy_nodes
    from memsafe_cfg.nodes.copy_check import DEFAULT_THRESHOLD, MemSafeCopyCheck
    from memsafe_cfg.nodes.ksampler import MemSafeKSampler
    from memsafe_cfg.nodes.testbed import (MemSafeTestbedLoader, MemSafeTestbedTrainingImages, to_image, training_data,
                                           training_measure, write_png_if_changed)
    from memsafe_cfg.testbed import data as tb_data
    from memsafe_cfg.testbed.measure import COPY_THRESHOLD, wilson
    from memsafe_cfg.testbed.model import parse_prompt, prompt_text

    t0 = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix="memsafe_copy_eval_"))
    (tmp / "input").mkdir()
    (tmp / "user").mkdir()
    folder_paths.set_input_directory(str(tmp / "input"))
    folder_paths.set_user_directory(str(tmp / "user"))
    train, n_refs, _ = out(MemSafeTestbedTrainingImages.execute("memsafe_testbed/training", "training (copy references)", 8))
    model, _ = out(MemSafeTestbedLoader.execute())
    tb, meas = training_data(), training_measure()
    memorized, siblings = list(tb.memorized), list(tb.clean)
    clean_all = [p for p in tb_data.all_prompts() if p not in memorized]
    neg = [[torch.zeros(1, 1, parse_prompt("").numel()), {}]]

    def cond(prompts, k):
        return [[torch.stack([parse_prompt(prompt_text(p)) for p in prompts for _ in range(k)])[:, None], {}]]

    def stock(prompts, k, seed):
        latent = {"samples": torch.zeros(len(prompts) * k, 1, 16, 16)}
        (res,) = comfy_nodes.common_ksampler(model, seed, 50, 5.0, "euler", "ddim_uniform", cond(prompts, k), neg, latent)
        return res["samples"].float()

    def memsafe(prompts, k, seed):
        latent = {"samples": torch.zeros(len(prompts) * k, 1, 16, 16)}
        res = out(MemSafeKSampler.execute(model, seed, 50, 5.0, "euler", "ddim_uniform", cond(prompts, k), neg, latent,
                                          guidance_before=0.0, transition="dynamic", switch_percent=0.5,
                                          earliest_percent=0.0, latest_percent=0.5, detect_threshold=0.0))
        return res[0]["samples"].float()

    rows = {  # name: (latents, clean prompt?)
        "stock, memorized": (stock(memorized, SIBLINGS, 0), False),
        "stock, clean siblings": (stock(siblings, SIBLINGS, 0), True),
        "Memorization-Safe, memorized": (memsafe(memorized, SIBLINGS, 0), False),
        "Memorization-Safe, clean siblings": (memsafe(siblings, SIBLINGS, 0), True),
        "stock, 116 clean prompts": (stock(clean_all, CLEAN_SEEDS, 1), True),
    }
    calib = stock(clean_all, CLEAN_SEEDS, 10000)
    held = Path(tmp / "input" / "memsafe_testbed" / "clean_outputs")
    for i, im in enumerate(to_image(calib, 8)):
        write_png_if_changed(held / f"clean_{i:03d}.png", im)
    t_sample = time.perf_counter() - t0

    result = {"references": n_refs, "testbed_copy_threshold": COPY_THRESHOLD, "calibrations": {}}
    x_all = torch.cat([x for x, _ in rows.values()])
    clean_mask = torch.cat([torch.full((len(x),), c) for x, c in rows.values()])
    tb_sim, _ = meas.nearest(x_all)
    tb_flag = tb_sim > COPY_THRESHOLD
    timing = {}
    for cal in ("held-out folder", "references leave-one-out", "fixed threshold"):
        t1 = time.perf_counter()
        got, thr, source = [], None, None
        for a in range(0, len(x_all), 64):
            _, report, _, _ = out(MemSafeCopyCheck.execute(to_image(x_all[a:a + 64], 8), train, cal, DEFAULT_THRESHOLD, 0.01,
                                                           "memsafe_testbed/clean_outputs", 4096))
            got += flags(report)
            line = report.splitlines()[1]
            thr, source = float(line.split()[1].rstrip(":")), line.split(": ", 1)[1]
        timing[cal] = round(time.perf_counter() - t1, 1)
        cc = torch.tensor(got)
        agree = int((cc == tb_flag).sum())
        fp, n_clean = int((cc & clean_mask).sum()), int(clean_mask.sum())
        tp, n_copies = int((cc & tb_flag).sum()), int(tb_flag.sum())
        per_row, start = {}, 0
        for name, (x, _) in rows.items():
            sl = slice(start, start + len(x))
            per_row[name] = {"samples": len(x), "testbed copies": int(tb_flag[sl].sum()), "Copy Check copies": int(cc[sl].sum()),
                             "agree": int((cc[sl] == tb_flag[sl]).sum())}
            start += len(x)
        result["calibrations"][cal] = {
            "threshold": round(thr, 4), "source": source,
            "agreement": [agree, len(cc), round(agree / len(cc), 4), [round(v, 4) for v in wilson(agree, len(cc))]],
            "fpr_clean_prompts": [fp, n_clean, round(fp / n_clean, 4), [round(v, 4) for v in wilson(fp, n_clean)]],
            "tpr_testbed_copies": [tp, n_copies, round(tp / max(n_copies, 1), 4), [round(v, 4) for v in wilson(tp, n_copies)]],
            "rows": per_row}
    result["seconds"] = {"sampling": round(t_sample, 1), "copy_check": timing, "total": round(time.perf_counter() - t0, 1)}
    for cal, r in result["calibrations"].items():
        a, f, t = r["agreement"], r["fpr_clean_prompts"], r["tpr_testbed_copies"]
        print(f"{cal}: threshold {r['threshold']:.4f} | agreement {a[0]}/{a[1]} = {a[2]:.1%} [{a[3][0]:.1%}, {a[3][1]:.1%}] | "
              f"FPR clean prompts {f[0]}/{f[1]} = {f[2]:.1%} [{f[3][0]:.1%}, {f[3][1]:.1%}] | TPR testbed copies "
              f"{t[0]}/{t[1]} = {t[2]:.1%} [{t[3][0]:.1%}, {t[3][1]:.1%}]")
        for name, row in r["rows"].items():
            print(f"    {name}: {row['samples']} samples, testbed copies {row['testbed copies']}, Copy Check copies "
                  f"{row['Copy Check copies']}, agree {row['agree']}")
        print(f"    source: {r['source']}")
    print(f"seconds: {result['seconds']}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
