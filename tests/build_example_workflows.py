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
# The testbed workflow: '4 thin upright narrow' (a memorized prompt), seed 2, batch 4, 50 steps of euler + ddim_uniform,
# cfg 5; the MemSafe side uses opposite guidance (-2) with the dynamic switch, the row that mitigates on this testbed
# (the defaults' latest guard, t = 499.5, comes before its basin exit: testbed/README.md). Stock >= 3/4 copies and
# MemSafe <= 1/4 on 22 of 32 memorized prompt/seed pairs (seeds 0-7); this seed gives 4/4 and 0/4.
TESTBED = {"prompt": "4 thin upright narrow", "seed": 2, "batch": 4, "steps": 50, "cfg": 5.0}
TESTBED_GUIDANCE = {"guidance_before": -2.0, "transition": "dynamic", "switch_percent": 0.5, "earliest_percent": 0.0,
                    "latest_percent": 0.5, "detect_threshold": 0.0}


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


def testbed_sampling(denoised: bool) -> tuple[list, list]:
    """The testbed graphs' first two columns: model, prompts and latent (ids 1-4); the stock KSampler (5) beside the
    Memorization-Safe one (6) on the same seed and settings."""
    t = TESTBED
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
             {"id": 6, "type": "MemSafeKSampler", "widgets": {**sampler, **TESTBED_GUIDANCE, "curve_layout": "panels",
                                                              "curve_denoised": denoised},
              "inputs": wired, "title": "CFG KSampler (Memorization-Safe)", "size": [400, 780]}])


def testbed_workflow():
    t = TESTBED
    inputs, samplers = testbed_sampling(denoised=True)
    return columns(
        [note(30, f"What this shows: the pack's tiny digit model (any CPU) with '{t['prompt']}', a prompt it memorized "
                  "(one training image is ~96 % of that prompt's records). The stock KSampler copies that image in "
                  f"4 of 4 samples at seed {t['seed']}; the CFG KSampler (Memorization-Safe) with opposite guidance (-2) "
                  "and the dynamic switch, on the same seed and settings, in 0 of 4, still drawing a 4. The Nearest "
                  "nodes say which samples copy. This seed illustrates; the testbed's tables give the rates.\n\n"
                  "Change first: the seed, or the prompt (memorized: 5 bold left wide, 3 thin left wide, 4 thin "
                  "upright narrow, 0 thin upright narrow; any digit, thin/bold, left/upright/right, narrow/wide). "
                  "guidance_before 0, the pack's default, removes fewer copies on this model. " + GUIDE, size=(380, 500)),
         *inputs],
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


# file stem (= the title the template browser shows) -> (graph, what its thumbnail says)
WORKFLOWS = {
    "Memorization-Safe KSampler (SD1.5)": (ksampler_workflow, "one node: sampler + guidance-norm curve"),
    "Memorization-Safe Guider with SamplerCustomAdvanced (SD1.5)": (guider_workflow, "GUIDER for SamplerCustomAdvanced + curve node"),
    "Memorization-Safe CFG patch with the stock KSampler (SD1.5)": (patch_workflow, "MODEL patch for any sampler + curve node"),
    "Testbed - stock CFG copies, Memorization-Safe does not (CPU)": (testbed_workflow, None),
}
TESTBED_STEM = "Testbed - stock CFG copies, Memorization-Safe does not (CPU)"


def save_help_picture(img, name: str) -> None:
    """js/docs/<name>, the help panel's copy (it resolves every locale's page against js/docs/), and one beside each
    locale page that shows it (js/docs/<node>/<name>), so the picture also shows where that page is read as a file."""
    img.save(HELP_IMAGES / name, optimize=True)
    for page in HELP_IMAGES.glob("*/*.md"):
        if f"]({name})" in page.read_text(encoding="utf-8"):
            img.save(page.parent / name, optimize=True)


def write_workflows(object_info: dict) -> None:
    write_examples(WORKFLOWS, object_info)


def testbed_run():
    """The testbed workflow's two branches in plain torch (euler + ddim_uniform = testbed.sampler's DDIM path, the
    noise drawn as ComfyUI's prepare_noise draws a batch): (stock x0, MemSafe x0, MemSafe trace, copy flags)."""
    import torch

    from testbed import guidance, measure
    from testbed.data import load
    from testbed.model import parse_prompt
    from testbed.sampler import load_unet, sample

    t = TESTBED
    unet, tb = load_unet(), load()
    noise = torch.randn((t["batch"], 1, 16, 16), generator=torch.manual_seed(t["seed"]))
    prompts = parse_prompt(t["prompt"]).expand(t["batch"], -1)
    stock, _ = sample(unet, prompts, noise, guidance.GuidanceSettings(transition="off"), t["cfg"], t["steps"])
    safe, trace = sample(unet, prompts, noise, guidance.GuidanceSettings(**TESTBED_GUIDANCE), t["cfg"], t["steps"])
    meas = measure.Measure(tb)
    copies = [meas.nearest(x)[0] > measure.COPY_THRESHOLD for x in (stock, safe)]
    return stock, safe, trace, copies


def write_thumbnails(size: int = 512) -> None:
    """One 512 x 512 jpg per workflow, from a real testbed run: the testbed's shows both branches' samples and a
    MemSafe curve; the SD1.5 ones show the title over a real testbed curve (no SD1.5 checkpoint here) and say so."""
    from PIL import Image, ImageDraw

    from guidance.copy_report import font
    from testbed import guidance

    stock, safe, trace, (stock_copy, safe_copy) = testbed_run()
    curve = Image.fromarray((guidance.render_curves(trace, "panels", denoised=True)[0].numpy() * 255).astype("uint8"))
    save_help_picture(curve, "testbed-curve.png")  # the help pages' picture (js/docs/ is served)

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
        if what is None:  # the testbed: the real samples of both branches, then the curve
            d.text((16, 10), f"'{TESTBED['prompt']}', seed {TESTBED['seed']}: stock CFG", font=font(20), fill=(30, 30, 30))
            d.text((16, 34), f"{int(stock_copy.sum())}/{len(stock_copy)} copy a training image (red)", font=font(17),
                   fill=(214, 39, 40))
            img.paste(digits(stock, stock_copy.tolist(), 84), (16, 58))
            d.text((16, 150), "Memorization-Safe KSampler", font=font(20), fill=(30, 30, 30))
            d.text((16, 174), f"{int(safe_copy.sum())}/{len(safe_copy)} copies", font=font(17), fill=(44, 130, 44))
            img.paste(digits(safe, safe_copy.tolist(), 84), (16, 198))
            h = size - 292
            c = curve.resize((int(h * curve.width / curve.height), h), Image.LANCZOS)
            img.paste(c, ((size - c.width) // 2, 288))
        else:
            y = 18
            for line in textwrap.wrap(name, 28):
                d.text((20, y), line, font=font(30), fill=(30, 30, 30))
                y += 38
            d.text((20, y + 4), what, font=font(18), fill=(90, 90, 90))
            c = curve.resize((size - 24, int((size - 24) * curve.height / curve.width)), Image.LANCZOS)
            img.paste(c, (12, size - c.height - 40))
            d.text((20, size - 32), f"the curve shown: a real run of the pack's testbed model ('{TESTBED['prompt']}', seed {TESTBED['seed']})",
                    font=font(13), fill=(110, 110, 110))
        img.save(OUT / f"{name}.jpg", quality=88, optimize=True)
        if what is None:
            save_help_picture(img.crop((0, 0, size, 288)), "testbed-samples.png")
        print(f"wrote example_workflows/{name}.jpg")


if __name__ == "__main__":
    cli(write_workflows, write_thumbnails)
