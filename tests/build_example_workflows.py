"""Rebuild the example workflows and their template-browser thumbnails.

    python tests/build_example_workflows.py OBJECT_INFO.json   # the workflow JSONs, from a live server's /object_info
    python tests/build_example_workflows.py --thumbnails       # the .jpg beside each, from a real testbed run (torch)

Dump /object_info with ``curl http://127.0.0.1:8188/object_info`` from a ComfyUI that has this pack installed.

The template browser (front end 1.49-1.58) lists a custom node's templates by file name: the file name IS the
title, so the names below are written for people; a ``<name>.jpg`` beside ``<name>.json`` is the thumbnail
(served at /api/workflow_templates/<install folder>/<name>.jpg). The category is the install folder's name unless
locales/*/main.json names it (tests/build_locales.py).
"""
from __future__ import annotations

import functools
import sys
import textwrap

from workflows import CKPT, EXAMPLES as OUT, cli, columns, write_examples

HELP_IMAGES = OUT.parent / "js" / "docs"
sys.path.insert(0, str(OUT.parent))  # plain torch, no ComfyUI: the repo's testbed/ and guidance/ by name
from testbed.measure import COPY_THRESHOLD  # noqa: E402  the calibrated copy floor, the Nearest node's default
PROMPT = "the great wave off kanagawa by hokusai"  # a famous, much-duplicated image: a good prompt to watch the curve on
NEGATIVE = ""
GUIDANCE = {"guidance_before": -2.0, "transition": "dynamic", "switch_percent": 0.5, "earliest_percent": 0.0,
            "latest_percent": 0.5, "detect_threshold": 0.0}
# The testbed workflows: stock KSampler beside the CFG KSampler (Memorization-Safe) on one memorized prompt and seed,
# batch 4, 50 steps of euler + ddim_uniform, cfg 5. Two of them, one per guidance setting, each at a duplication level
# (the exemplar's share of its prompt's records) taken from the lead's v3 decisions (v3_decisions.json):
# - "defaults": the pack defaults (zero guidance, dynamic switch) at DEFAULTS_LEVEL, a level where they remove copies;
# - "opposite": opposite guidance (-2) with the paper's static switch at t = 650 (switch_percent 0.35; testbed.reproduce's
#   og_t650, the row that removes copies at every level) at OPPOSITE_LEVEL (96 %).
# The prompt and seed are not chosen by hand: testbed_pick() applies PICK_RULE on the shipped weights at build time.
DEFAULTS_LEVEL = 0.5
OPPOSITE_LEVEL = 0.96
TESTBED_RUN = {"batch": 4, "steps": 50, "cfg": 5.0}
PICK_SEEDS = range(8)
PICK_RULE = ("the first (prompt, seed), memorized prompts of the level in the data's order and seeds 0-7, where the stock "
             "KSampler copies a training image in >= 3 of the batch of 4, the Memorization-Safe one in <= 1, and >= 3 of "
             "its 4 are still the prompt's digit (copies as the Nearest node counts them: nearest training image above "
             "testbed.measure.COPY_THRESHOLD)")
FALLBACK_RULE = ("none met the rule, so the first pair with the fewest Memorization-Safe copies among those where stock "
                 "copies >= 3 of 4 and >= 3 Memorization-Safe samples are the prompt's digit")
TESTBED_SETTINGS = {
    "defaults": {"guidance_before": 0.0, "transition": "dynamic", "switch_percent": 0.5, "earliest_percent": 0.0,
                 "latest_percent": 0.5, "detect_threshold": 0.0},
    "opposite": {"guidance_before": -2.0, "transition": "static", "switch_percent": 0.35, "earliest_percent": 0.0,
                 "latest_percent": 0.5, "detect_threshold": 0.0},
}
TESTBED_LEVEL = {"defaults": DEFAULTS_LEVEL, "opposite": OPPOSITE_LEVEL}


GUIDE = "Which node and which settings, when: the decision guide in the pack's README."


def note(id, text, size=(380, 400)):
    """The stock Note node: what the workflow shows and what to change first (front end only, never queued)."""
    return {"id": id, "type": "Note", "size": list(size), "text": text}


def inputs_column():
    return [
        {"id": 2, "type": "CLIPTextEncode", "widgets": {"text": PROMPT}, "inputs": {"clip": (1, 1)}, "title": "Prompt",
         "size": [400, 200]},
        {"id": 3, "type": "CLIPTextEncode", "widgets": {"text": NEGATIVE}, "inputs": {"clip": (1, 1)}, "title": "Negative",
         "size": [400, 200]},
        {"id": 4, "type": "EmptyLatentImage", "widgets": {"width": 512, "height": 512, "batch_size": 2}, "size": [400, 170]},
    ]


def checkpoint():
    return {"id": 1, "type": "CheckpointLoaderSimple", "widgets": {"ckpt_name": CKPT}, "size": [360, 130]}


def decode_save(src):
    return [
        {"id": 20, "type": "VAEDecode", "inputs": {"samples": src, "vae": (1, 2)}, "size": [320, 110]},
        {"id": 21, "type": "SaveImage", "widgets": {"filename_prefix": "memsafe"}, "inputs": {"images": (20, 0)},
         "size": [440, 480]},
    ]


SD_CHANGE = ("Change first: the checkpoint and the prompt (the graph is built for SD1.5; the nodes take eps, v-prediction "
             "and flow models). "
             "guidance_before is -2 here (opposite guidance: fewer copies, some prompt adherence lost); 0 is the "
             "pack's default (zero guidance, prompt kept). To treat only memorized prompts, set detect_threshold "
             "from the Memorization Scan template. " + GUIDE)


def guider_workflow():
    return columns(
        [note(30, "What this shows: CFG Guider (Memorization-Safe) as the GUIDER of SamplerCustomAdvanced. Each "
                  "sample gets no guidance (here: opposite guidance) until its guidance norm passes its first minimum "
                  "(at the latest halfway), then normal CFG; Guidance Norm Curve draws where each sample switched.\n\n" + SD_CHANGE),
         checkpoint()],
        inputs_column(),
        [{"id": 5, "type": "MemSafeCFGGuider", "widgets": {"cfg": 7.5, **GUIDANCE},
          "inputs": {"model": (1, 0), "positive": (2, 0), "negative": (3, 0)}, "size": [380, 440]},
         {"id": 6, "type": "RandomNoise", "widgets": {"noise_seed": 42}, "size": [380, 130]},
         {"id": 7, "type": "KSamplerSelect", "widgets": {"sampler_name": "dpmpp_2m"}, "size": [380, 100]},
         {"id": 8, "type": "BasicScheduler", "widgets": {"scheduler": "karras", "steps": 30, "denoise": 1.0},
          "inputs": {"model": (1, 0)}, "size": [380, 180]}],
        [{"id": 9, "type": "SamplerCustomAdvanced",
          "inputs": {"noise": (6, 0), "guider": (5, 0), "sampler": (7, 0), "sigmas": (8, 0), "latent_image": (4, 0)},
          "size": [360, 240]},
         {"id": 10, "type": "MemSafeGuidanceCurve", "inputs": {"latent": (9, 0), "guider": (5, 0)}, "size": [520, 520]}],
        decode_save((9, 0)),
    )


def ksampler_workflow():
    return columns(
        [note(30, "What this shows: CFG KSampler (Memorization-Safe), one node in place of the stock KSampler. Each "
                  "sample gets no guidance (here: opposite guidance) until its guidance norm passes its first minimum "
                  "(at the latest halfway), then normal CFG; the live curve draws on the node while it samples, and the curve image previews "
                  "beside it.\n\n" + SD_CHANGE),
         checkpoint()],
        inputs_column(),
        [{"id": 5, "type": "MemSafeKSampler",
          "widgets": {"seed": 42, "steps": 30, "cfg": 7.5, "sampler_name": "dpmpp_2m", "scheduler": "karras", "denoise": 1.0,
                      **GUIDANCE},
          "inputs": {"model": (1, 0), "positive": (2, 0), "negative": (3, 0), "latent_image": (4, 0)}, "size": [400, 760]}],
        decode_save((5, 0)) + [{"id": 10, "type": "PreviewImage", "inputs": {"images": (5, 1)}, "title": "Guidance norm curve",
                                "size": [520, 440]}],
    )


def patch_workflow():
    return columns(
        [note(30, "What this shows: CFG Model Patch (Memorization-Safe) on the MODEL, sampled by the stock KSampler "
                  "(cfg comes from the KSampler; other samplers and other packs' CFG patches work the same). Guidance "
                  "Norm Curve draws where each sample switched.\n\n" + SD_CHANGE),
         checkpoint()],
        inputs_column(),
        [{"id": 5, "type": "MemSafeCFGPatch", "widgets": GUIDANCE, "inputs": {"model": (1, 0)}, "size": [380, 400]},
         {"id": 6, "type": "KSampler",
          "widgets": {"seed": 42, "steps": 30, "cfg": 7.5, "sampler_name": "dpmpp_2m", "scheduler": "karras", "denoise": 1.0},
          "inputs": {"model": (5, 0), "positive": (2, 0), "negative": (3, 0), "latent_image": (4, 0)}, "size": [380, 360]}],
        [{"id": 10, "type": "MemSafeGuidanceCurve", "inputs": {"latent": (6, 0), "model": (5, 0)}, "size": [520, 520]}],
        decode_save((6, 0)),
    )


@functools.lru_cache(maxsize=None)
def testbed_pick(kind: str) -> dict:
    """PICK_RULE on the shipped weights for TESTBED_SETTINGS[kind] at TESTBED_LEVEL[kind], in plain torch (euler +
    ddim_uniform = testbed.sampler's DDIM path; the noise drawn as ComfyUI's prepare_noise draws a batch of 4 from the
    seed): {"prompt", "seed", "level", "stock_copies", "safe_copies", "safe_digit", "qualifying", "tried", ...}.
    When no pair qualifies: for "defaults" (its title claims the copies go) it raises; for "opposite" it takes
    FALLBACK_RULE and says so ("met_rule" False), so the workflow shows what the weights do."""
    import torch

    from testbed import guidance, measure
    from testbed.data import load
    from testbed.model import parse_prompt, prompt_text
    from testbed.sampler import load_unet, sample

    torch.set_num_threads(1)
    unet, tb = load_unet(), load()
    meas = measure.Measure(tb, unet.augment)
    level, t = TESTBED_LEVEL[kind], TESTBED_RUN
    prompts = [q for q, share in zip(tb.memorized, tb.shares) if share == level]
    if not prompts:
        raise SystemExit(f"testbed_pick({kind}): no memorized prompt at level {level} (levels: {sorted(set(tb.shares))})")
    rows = []
    for q in prompts:
        noise = torch.cat([torch.randn((t["batch"], 1, 16, 16), generator=torch.manual_seed(s)) for s in PICK_SEEDS])
        cond = parse_prompt(prompt_text(q)).expand(len(noise), -1)
        stock, _ = sample(unet, cond, noise, guidance.GuidanceSettings(transition="off"), t["cfg"], t["steps"])
        safe, _ = sample(unet, cond, noise, guidance.GuidanceSettings(**TESTBED_SETTINGS[kind]), t["cfg"], t["steps"])
        per_seed = lambda v: v.view(len(PICK_SEEDS), t["batch"]).sum(1).tolist()  # noqa: E731
        counts = zip(per_seed(meas.nearest(stock)[0] > measure.COPY_THRESHOLD),
                     per_seed(meas.nearest(safe)[0] > measure.COPY_THRESHOLD), per_seed(meas.classify(safe) == q[0]))
        rows += [{"prompt": prompt_text(q), "seed": s, "stock_copies": int(a), "safe_copies": int(b), "safe_digit": int(d)}
                 for s, (a, b, d) in zip(PICK_SEEDS, counts)]
    ok = [r for r in rows if r["stock_copies"] >= 3 and r["safe_copies"] <= 1 and r["safe_digit"] >= 3]
    print(f"testbed_pick({kind}), level {level:.0%}: " + "; ".join(
        f"{r['prompt']} seed {r['seed']}: {r['stock_copies']}/{r['safe_copies']}/{r['safe_digit']}" for r in rows))
    if ok:
        return {**ok[0], "level": level, "qualifying": len(ok), "tried": len(rows), "met_rule": True, **t}
    if kind == "defaults":
        raise SystemExit(f"testbed_pick({kind}): no (prompt, seed) at level {level:.0%} meets the rule ({PICK_RULE}); "
                         "stock/safe/digit counts above. Choose another level (DEFAULTS_LEVEL).")
    copying = [r for r in rows if r["stock_copies"] >= 3 and r["safe_digit"] >= 3] or rows
    best = min(copying, key=lambda r: (r["safe_copies"] - r["stock_copies"] if copying is rows else r["safe_copies"]))
    print(f"testbed_pick({kind}): no pair meets the rule; {FALLBACK_RULE}: {best}")
    return {**best, "level": level, "qualifying": 0, "tried": len(rows), "met_rule": False, **t}


def level_text(level: float) -> str:
    return f"{round(level * 100)} %"


def testbed_sampling(kind: str, denoised: bool) -> tuple[list, list]:
    """The testbed graphs' first two columns: model, prompts and latent (ids 1-4); the stock KSampler (5) beside the
    Memorization-Safe one (6, TESTBED_SETTINGS[kind]) on the pick's prompt and seed and the same settings."""
    t = testbed_pick(kind)
    sampler = {"seed": t["seed"], "steps": t["steps"], "cfg": t["cfg"], "sampler_name": "euler", "scheduler": "ddim_uniform",
               "denoise": 1.0}
    wired = {"model": (1, 0), "positive": (2, 0), "negative": (3, 0), "latent_image": (4, 0)}
    return ([{"id": 1, "type": "MemSafeTestbedLoader", "size": [360, 100]},
             {"id": 2, "type": "MemSafeTestbedPrompt", "widgets": {"text": t["prompt"]}, "title": "Prompt (memorized)",
              "size": [360, 110]},
             {"id": 3, "type": "MemSafeTestbedPrompt", "widgets": {"text": ""}, "title": "Negative (empty)", "size": [360, 110]},
             {"id": 4, "type": "EmptyLatentImage", "widgets": {"width": 128, "height": 128, "batch_size": t["batch"]},
              "title": "Empty Latent (16x16 latent)", "size": [360, 170]}],
            [{"id": 5, "type": "KSampler", "widgets": sampler, "inputs": wired, "title": "KSampler (stock CFG)", "size": [380, 360]},
             {"id": 6, "type": "MemSafeKSampler", "widgets": {**sampler, **TESTBED_SETTINGS[kind], "curve_layout": "panels",
                                                              "curve_denoised": denoised},
              "inputs": wired, "title": "CFG KSampler (Memorization-Safe)", "size": [400, 780]}])


def memorized_by_level() -> str:
    """'35 %: 5 bold left wide, 9 thin upright narrow; 50 %: ...' from the shipped data."""
    from testbed.data import load
    from testbed.model import prompt_text

    tb = load()
    return "; ".join(f"{level_text(lv)}: " + ", ".join(prompt_text(q) for q, s in zip(tb.memorized, tb.shares) if s == lv)
                     for lv in sorted(set(tb.shares)))


TESTBED_WHAT = {
    "defaults": "the pack's defaults (zero guidance, dynamic switch)",
    "opposite": "opposite guidance (guidance_before -2; the pack's default is 0) and the paper's static switch at t = 650 "
                "(transition static, switch_percent 0.35)",
}


def pick_text(t: dict) -> str:
    """How the prompt and seed were picked (PICK_RULE, or FALLBACK_RULE when no pair met it)."""
    if t["met_rule"]:
        return (f"This seed illustrates: it is the first of the level's {t['tried']} prompt/seed pairs (seeds 0-7) where "
                f"stock copies >= 3 of 4 and Memorization-Safe <= 1 with >= 3 still the digit ({t['qualifying']} of "
                f"{t['tried']} qualify).")
    return (f"At this level none of the {t['tried']} prompt/seed pairs (seeds 0-7) has stock copies >= 3 of 4 with "
            "Memorization-Safe <= 1 and >= 3 still the digit; this seed is the first with the fewest Memorization-Safe "
            "copies among those where stock copies >= 3.")


def testbed_note(kind: str) -> str:
    t = testbed_pick(kind)
    digit = t["prompt"].split()[0]
    other = TESTBED_STEMS["opposite" if kind == "defaults" else "defaults"]
    return (f"What this shows: the pack's tiny digit model (any CPU) with '{t['prompt']}', a memorized prompt at the "
            f"{level_text(t['level'])} duplication level (one training image, its exemplar, is {level_text(t['level'])} of "
            f"that prompt's training records). The stock KSampler copies a training image in {t['stock_copies']} of 4 "
            f"samples at seed {t['seed']}; the CFG KSampler (Memorization-Safe) with {TESTBED_WHAT[kind]}, on the same seed "
            f"and settings, in {t['safe_copies']} of 4, and {t['safe_digit']} of 4 are still a {digit}. The Nearest nodes "
            f"say which samples copy. {pick_text(t)} The copy rates over many seeds, per duplication level and setting, "
            "are in testbed/README.md.\n\n"
            f"Change first: the seed, or the prompt (memorized, by level: {memorized_by_level()}; any digit, thin/bold, "
            f"left/upright/right, narrow/wide). The other testbed template, '{other}', shows "
            f"{TESTBED_WHAT['opposite' if kind == 'defaults' else 'defaults']} at the {level_text(TESTBED_LEVEL['opposite' if kind == 'defaults' else 'defaults'])} level. " + GUIDE)


def testbed_workflow(kind: str = "defaults"):
    t = testbed_pick(kind)
    inputs, samplers = testbed_sampling(kind, denoised=True)
    return columns(
        [note(30, testbed_note(kind), size=(380, 620)), *inputs],
        samplers,
        [{"id": 7, "type": "MemSafeTestbedDecode", "widgets": {"scale": 8}, "inputs": {"samples": (5, 0)},
          "title": "Decode (stock)", "size": [320, 110]},
         {"id": 11, "type": "MemSafeTestbedNearest", "widgets": {"threshold": COPY_THRESHOLD, "scale": 4},
          "inputs": {"samples": (5, 0)}, "title": "Nearest training image (stock)", "size": [360, 180]},
         {"id": 8, "type": "MemSafeTestbedDecode", "widgets": {"scale": 8}, "inputs": {"samples": (6, 0)},
          "title": "Decode (Memorization-Safe)", "size": [320, 110]},
         {"id": 12, "type": "MemSafeTestbedNearest", "widgets": {"threshold": COPY_THRESHOLD, "scale": 4},
          "inputs": {"samples": (6, 0)}, "title": "Nearest training image (Memorization-Safe)", "size": [380, 180]}],
        [{"id": 9, "type": "PreviewImage", "inputs": {"images": (7, 0)}, "title": "Stock KSampler samples", "size": [440, 300]},
         {"id": 10, "type": "PreviewImage", "inputs": {"images": (8, 0)}, "title": "Memorization-Safe samples",
          "size": [440, 300]},
         {"id": 15, "type": "PreviewImage", "inputs": {"images": (6, 1)}, "title": "Guidance norm curve (per sample)",
          "size": [640, 440]}],
    )


# file stem (= the title the template browser shows) of each testbed workflow
TESTBED_STEMS = {"defaults": "Testbed - stock CFG copies, Memorization-Safe does not (CPU)",
                 "opposite": "Testbed - opposite guidance at the highest duplication level (CPU)"}
TESTBED_STEM = TESTBED_STEMS["defaults"]
# file stem -> (graph, what its thumbnail says; a testbed kind for the testbed workflows)
WORKFLOWS = {
    "Memorization-Safe KSampler (SD1.5)": (ksampler_workflow, "one node: sampler + guidance-norm curve"),
    "Memorization-Safe Guider with SamplerCustomAdvanced (SD1.5)": (guider_workflow, "GUIDER for SamplerCustomAdvanced + curve node"),
    "Memorization-Safe CFG patch with the stock KSampler (SD1.5)": (patch_workflow, "MODEL patch for any sampler + curve node"),
    **{stem: (functools.partial(testbed_workflow, kind), kind) for kind, stem in TESTBED_STEMS.items()},
}


def save_help_picture(img, name: str) -> None:
    """js/docs/<name>, the help panel's copy (it resolves every locale's page against js/docs/), and one beside each
    locale page that shows it (js/docs/<node>/<name>), so the picture also shows where that page is read as a file."""
    img.save(HELP_IMAGES / name, optimize=True)
    for page in HELP_IMAGES.glob("*/*.md"):
        if f"]({name})" in page.read_text(encoding="utf-8"):
            img.save(page.parent / name, optimize=True)


def write_workflows(object_info: dict) -> None:
    write_examples(WORKFLOWS, object_info)


def testbed_run(kind: str = "defaults"):
    """A testbed workflow's two branches in plain torch (euler + ddim_uniform = testbed.sampler's DDIM path, the
    noise drawn as ComfyUI's prepare_noise draws a batch): (stock x0, MemSafe x0, MemSafe trace, copy flags)."""
    import torch

    from testbed import guidance, measure
    from testbed.data import load
    from testbed.model import parse_prompt
    from testbed.sampler import load_unet, sample

    t = testbed_pick(kind)
    unet, tb = load_unet(), load()
    noise = torch.randn((t["batch"], 1, 16, 16), generator=torch.manual_seed(t["seed"]))
    prompts = parse_prompt(t["prompt"]).expand(t["batch"], -1)
    stock, _ = sample(unet, prompts, noise, guidance.GuidanceSettings(transition="off"), t["cfg"], t["steps"])
    safe, trace = sample(unet, prompts, noise, guidance.GuidanceSettings(**TESTBED_SETTINGS[kind]), t["cfg"], t["steps"])
    meas = measure.Measure(tb, unet.augment)
    copies = [meas.nearest(x)[0] > measure.COPY_THRESHOLD for x in (stock, safe)]
    return stock, safe, trace, copies


def write_thumbnails(size: int = 512) -> None:
    """One 512 x 512 jpg per workflow, from a real testbed run: each testbed one shows both branches' samples and a
    MemSafe curve; the SD1.5 ones show the title over a real testbed curve (no SD1.5 checkpoint here) and say so."""
    from PIL import Image, ImageDraw

    from guidance.copy_report import font
    from testbed import guidance

    runs = {kind: testbed_run(kind) for kind in TESTBED_STEMS}
    curves = {kind: Image.fromarray((guidance.render_curves(r[2], "panels", denoised=True)[0].numpy() * 255).astype("uint8"))
              for kind, r in runs.items()}
    save_help_picture(curves["defaults"], "testbed-curve.png")  # the help pages' picture (js/docs/ is served)
    shown = testbed_pick("defaults")

    def digits(x, flags, cell):
        row = Image.new("RGB", (cell * len(x) + 6 * (len(x) - 1), cell), (255, 255, 255))
        for i, (img, copy) in enumerate(zip(x, flags)):
            a = ((1 - (img[0].clamp(-1, 1) + 1) / 2) * 255).byte().numpy()
            tile = Image.fromarray(a, "L").resize((cell, cell), Image.NEAREST).convert("RGB")
            ImageDraw.Draw(tile).rectangle([0, 0, cell - 1, cell - 1], outline=(214, 39, 40) if copy else (44, 160, 44), width=4)
            row.paste(tile, (i * (cell + 6), 0))
        return row

    for name, (_, what) in WORKFLOWS.items():
        img = Image.new("RGB", (size, size), (250, 250, 252))
        d = ImageDraw.Draw(img)
        if what in TESTBED_STEMS:  # a testbed workflow: the real samples of both branches, then the curve
            stock, safe, _, (stock_copy, safe_copy) = runs[what]
            t, curve = testbed_pick(what), curves[what]
            d.text((16, 10), f"'{t['prompt']}' ({level_text(t['level'])}), seed {t['seed']}: stock CFG", font=font(20),
                   fill=(30, 30, 30))
            d.text((16, 34), f"{int(stock_copy.sum())}/{len(stock_copy)} copy a training image (red)", font=font(17),
                   fill=(214, 39, 40))
            img.paste(digits(stock, stock_copy.tolist(), 84), (16, 58))
            label = "defaults" if what == "defaults" else "opposite -2"
            d.text((16, 150), f"Memorization-Safe KSampler, {label}", font=font(20), fill=(30, 30, 30))
            d.text((16, 174), f"{int(safe_copy.sum())}/{len(safe_copy)} copies", font=font(17), fill=(44, 130, 44))
            img.paste(digits(safe, safe_copy.tolist(), 84), (16, 198))
            h = size - 292
            c = curve.resize((int(h * curve.width / curve.height), h), Image.LANCZOS)
            img.paste(c, ((size - c.width) // 2, 288))
        else:
            curve = curves["defaults"]
            y = 18
            for line in textwrap.wrap(name, 28):
                d.text((20, y), line, font=font(30), fill=(30, 30, 30))
                y += 38
            d.text((20, y + 4), what, font=font(18), fill=(90, 90, 90))
            c = curve.resize((size - 24, int((size - 24) * curve.height / curve.width)), Image.LANCZOS)
            img.paste(c, (12, size - c.height - 40))
            d.text((20, size - 32), f"the curve shown: a real run of the pack's testbed model ('{shown['prompt']}', seed {shown['seed']})",
                    font=font(13), fill=(110, 110, 110))
        img.save(OUT / f"{name}.jpg", quality=88, optimize=True)
        if what == "defaults":
            save_help_picture(img.crop((0, 0, size, 288)), "testbed-samples.png")
        print(f"wrote example_workflows/{name}.jpg")


if __name__ == "__main__":
    cli(write_workflows, write_thumbnails)
