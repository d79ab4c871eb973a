"""Build the Memorization Scan example workflows (issue 13) with tests/build_example_workflows.py's writer
(``workflows.write_examples`` over the floor host's /object_info); this file holds their graphs and thumbnails.

    python tests/build_scan_workflows.py OBJECT_INFO.json         # the two workflow JSONs
    python tests/build_scan_workflows.py --serve                  # same, /object_info from a server started at COMFYUI_PATH
    COMFYUI_PATH=... python tests/build_scan_workflows.py --thumbnails   # run the testbed scan in process (real node,
                                                                  # real ComfyUI stack) for the .jpg thumbnails and the help picture
"""
from __future__ import annotations

import sys
from pathlib import Path

from build_example_workflows import GUIDE, note, save_help_picture
from workflows import CKPT, EXAMPLES as OUT, cli, columns, write_examples

REPO = OUT.parent
HELP_IMAGES = REPO / "js" / "docs"

# The testbed: scan testbed.scan_eval's broad evaluation list (the memorized prompts, their clean siblings and 20 other
# clean prompts: every digit, style, slant and width) and calibrate on its calibration clean list (20 clean prompts,
# disjoint from the broad list). Both come from scan_eval.scan_lists, a fixed rule on the data.
sys.path.insert(0, str(REPO))  # the repo's testbed/ (plain torch) by name
from testbed.data import load as _load_testbed  # noqa: E402
from testbed.model import prompt_text  # noqa: E402
from testbed.scan_eval import scan_lists  # noqa: E402

_TB = _load_testbed()
_CAL, _OTHER = scan_lists(_TB.memorized, _TB.clean)
TB_MEMORIZED = [prompt_text(q) for q in _TB.memorized]
TB_CLEAN_SCANNED = [prompt_text(q) for q in _TB.clean + _OTHER]  # the siblings, then the other clean prompts
TB_CLEAN_REFERENCE = [prompt_text(q) for q in _CAL]
TESTBED_SCAN = {"prompts": "\n".join(TB_MEMORIZED + TB_CLEAN_SCANNED), "negative": "", "seeds_per_prompt": 8, "first_seed": 0,
                "width": 128, "height": 128, "scheduler": "ddim_uniform", "steps": 50, "score": "norm",
                "clean_prompts": "\n".join(TB_CLEAN_REFERENCE), "false_positive_rate": 0.05, "memorized_prompts": ""}
# SD1.5: a user's list, to be replaced with your own (a fine-tune's training captions; or the memorized / clean SD
# prompt lists that ship with detection papers' code, e.g. sd1_mem.txt / sd1_nmem.txt). The first is a famous,
# much-duplicated artwork; nothing here is claimed to be memorized.
SD_PROMPTS = ["the great wave off kanagawa by hokusai", "mona lisa by leonardo da vinci", "the starry night by van gogh",
              "a watercolor painting of a red fox in the snow", "a photo of a cup of coffee on a wooden table",
              "an astronaut riding a horse on the moon, digital art"]
SD_CLEAN = ["a photo of a dog playing in a park", "a bowl of fruit on a kitchen counter, soft light",
            "a city street at night in the rain", "a portrait of an old man with a beard, oil painting",
            "a mountain lake at sunrise", "a small wooden boat on a calm sea", "a cat sleeping on a sofa",
            "a plate of pasta with tomato sauce"]
SD_SCAN = {"prompts": "\n".join(SD_PROMPTS), "negative": "", "seeds_per_prompt": 4, "first_seed": 0, "width": 512, "height": 512,
           "scheduler": "karras", "steps": 30, "score": "norm", "clean_prompts": "\n".join(SD_CLEAN),
           "false_positive_rate": 0.05, "memorized_prompts": ""}


TESTBED_THRESHOLD = 0.0137  # this workflow's scan output, rounded (write_thumbnails prints the exact value)


def testbed_scan_workflow():
    sampler = {"seed": 4, "steps": 50, "cfg": 5.0, "sampler_name": "euler", "scheduler": "ddim_uniform", "denoise": 1.0,
               "guidance_before": 0.0, "transition": "dynamic", "switch_percent": 0.5, "earliest_percent": 0.0,
               "latest_percent": 0.5, "detect_threshold": TESTBED_THRESHOLD, "curve_layout": "panels"}
    return columns(
        [note(30, f"What this shows: the Memorization Scan ranks {len(TB_MEMORIZED) + len(TB_CLEAN_SCANNED)} testbed "
              f"prompts by first-step guidance norm (8 seeds each): the {len(TB_MEMORIZED)} memorized prompts (two at each "
              f"of five duplication levels, 35-96 %), their {len(_TB.clean)} clean siblings and {len(_OTHER)} other clean "
              "prompts covering every digit, style, slant and width. It calibrates detect_threshold on a disjoint list of "
              f"{len(TB_CLEAN_REFERENCE)} clean prompts at a 5 % false-positive rate ({TESTBED_THRESHOLD} here). On this "
              "testbed how well the norm separates memorized from clean prompts at each duplication level is measured "
              "in testbed/README.md. Below, the CFG KSampler (Memorization-Safe) uses that "
              "threshold: flagged samples get the transition, the others plain CFG.\n\n"
              "Change first: the prompts list (for your own model: its training captions, one per line) and the clean "
              "list (prompts you know are clean); then type the scan's detect_threshold into the sampler, with the "
              "scan's scheduler and steps. " + GUIDE, size=(380, 560)),
         {"id": 1, "type": "MemSafeTestbedLoader", "size": [380, 100], "title": "Testbed model + text encoder"},
         {"id": 6, "type": "CLIPTextEncode", "widgets": {"text": "3 thin left wide"}, "inputs": {"clip": (1, 1)},
          "title": "Prompt (stock CLIP Text Encode)", "size": [380, 150]},
         {"id": 7, "type": "CLIPTextEncode", "widgets": {"text": ""}, "inputs": {"clip": (1, 1)},
          "title": "Negative (empty)", "size": [380, 150]},
         {"id": 8, "type": "EmptyLatentImage", "widgets": {"width": 128, "height": 128, "batch_size": 4}, "size": [380, 170]}],
        [{"id": 2, "type": "MemSafeMemorizationScan", "widgets": TESTBED_SCAN, "inputs": {"model": (1, 0), "clip": (1, 1)},
          "title": "Memorization Scan (testbed prompts)", "size": [460, 900]},
         {"id": 9, "type": "MemSafeKSampler", "widgets": sampler,
          "inputs": {"model": (1, 0), "positive": (6, 0), "negative": (7, 0), "latent_image": (8, 0)},
          "title": "CFG KSampler (Memorization-Safe)", "size": [460, 760]}],
        [{"id": 3, "type": "PreviewImage", "inputs": {"images": (2, 0)}, "title": "Ranked chart", "size": [820, 520]},
         {"id": 4, "type": "PreviewAny", "inputs": {"source": (2, 1)}, "title": "Report", "size": [820, 420]},
         {"id": 5, "type": "PreviewAny", "inputs": {"source": (2, 2)}, "title": "detect_threshold (from the scan)",
          "size": [460, 160]},
         {"id": 10, "type": "MemSafeTestbedDecode", "widgets": {"scale": 8}, "inputs": {"samples": (9, 0)},
          "size": [320, 110]}],
        [{"id": 11, "type": "PreviewImage", "inputs": {"images": (10, 0)}, "title": "Samples (flagged: transition)",
          "size": [460, 320]},
         {"id": 12, "type": "PreviewImage", "inputs": {"images": (9, 1)}, "title": "Guidance norm curve (dashed: threshold)",
          "size": [720, 440]}],
    )


def sd15_scan_workflow():
    return columns(
        [note(30, "What this shows: the Memorization Scan on your checkpoint: it ranks a prompt list by first-step "
              "guidance norm (4 seeds each), calibrates detect_threshold on prompts known to be clean at a 5 % "
              "false-positive rate, and reports each prompt's score. The prompts shipped here are examples; nothing "
              "in them is claimed to be memorized. Below, the CFG KSampler (Memorization-Safe) samples one prompt; "
              "its detect_threshold is 0 (detection off) until you type the scan's value.\n\n"
              "Change first: the checkpoint, the prompts list (a fine-tune's training captions, one per line) and the "
              "clean list; then type the scan's detect_threshold into the sampler (same scheduler and steps). " + GUIDE,
              size=(380, 440)),
         {"id": 1, "type": "CheckpointLoaderSimple", "widgets": {"ckpt_name": CKPT}, "size": [380, 130]},
         {"id": 6, "type": "CLIPTextEncode", "widgets": {"text": SD_PROMPTS[0]}, "inputs": {"clip": (1, 1)},
          "title": "Prompt (one the scan flagged)", "size": [380, 180]},
         {"id": 7, "type": "CLIPTextEncode", "widgets": {"text": ""}, "inputs": {"clip": (1, 1)}, "title": "Negative",
          "size": [380, 180]},
         {"id": 8, "type": "EmptyLatentImage", "widgets": {"width": 512, "height": 512, "batch_size": 2}, "size": [380, 170]}],
        [{"id": 2, "type": "MemSafeMemorizationScan", "widgets": SD_SCAN, "inputs": {"model": (1, 0), "clip": (1, 1)},
          "title": "Memorization Scan (your prompt list)", "size": [480, 940]},
         {"id": 9, "type": "MemSafeKSampler",
          "widgets": {"seed": 42, "steps": 30, "cfg": 7.5, "sampler_name": "dpmpp_2m", "scheduler": "karras", "denoise": 1.0,
                      "guidance_before": 0.0, "transition": "dynamic", "switch_percent": 0.5, "earliest_percent": 0.0,
                      "latest_percent": 0.5, "detect_threshold": 0.0, "curve_layout": "panels"},
          "inputs": {"model": (1, 0), "positive": (6, 0), "negative": (7, 0), "latent_image": (8, 0)},
          "title": "CFG KSampler (Memorization-Safe)", "size": [480, 760]}],
        [{"id": 3, "type": "PreviewImage", "inputs": {"images": (2, 0)}, "title": "Ranked chart", "size": [820, 520]},
         {"id": 4, "type": "PreviewAny", "inputs": {"source": (2, 1)}, "title": "Report", "size": [820, 420]},
         {"id": 5, "type": "PreviewAny", "inputs": {"source": (2, 2)}, "title": "detect_threshold (karras, 30 steps)",
          "size": [480, 160]},
         {"id": 10, "type": "VAEDecode", "inputs": {"samples": (9, 0), "vae": (1, 2)}, "size": [320, 110]}],
        [{"id": 11, "type": "SaveImage", "widgets": {"filename_prefix": "memsafe_scan"}, "inputs": {"images": (10, 0)},
          "size": [460, 480]}],
    )


WORKFLOWS = {
    # file stem = the title the template browser shows
    "Memorization Scan - rank the testbed prompts, then sample with the threshold (CPU)": (testbed_scan_workflow, None),
    "Memorization Scan - rank your prompts, calibrate detect_threshold (SD1.5)": (sd15_scan_workflow, "rank your prompts, calibrate detect_threshold"),
}


def write_workflows(object_info: dict) -> None:
    write_examples(WORKFLOWS, object_info)


def run_testbed_scan():
    """The testbed workflow's scan node, executed in process on the real ComfyUI stack: (chart, report, threshold)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import host

    host.import_comfy()
    host.load_pack()
    from memsafe_cfg.nodes.scan import MemSafeMemorizationScan
    from memsafe_cfg.nodes.testbed import MemSafeTestbedLoader

    out = MemSafeTestbedLoader.execute()
    model, clip = out.args if hasattr(out, "args") else out.result
    w = dict(TESTBED_SCAN)
    res = MemSafeMemorizationScan.execute(model, clip, w.pop("prompts"), **w)
    return tuple(res.args if hasattr(res, "args") else res.result)


def write_thumbnails(size: int = 512) -> None:
    from PIL import Image, ImageDraw

    from guidance.copy_report import font

    chart, report, thr = run_testbed_scan()
    if abs(thr - TESTBED_THRESHOLD) > 5e-5:  # the workflow carries it rounded to 4 places; another CPU moves ~1e-8
        print(f"note: this run's detect_threshold {thr:.6g} differs from TESTBED_THRESHOLD {TESTBED_THRESHOLD}; update it")
    img = Image.fromarray((chart[0].numpy() * 255).round().astype("uint8"))
    HELP_IMAGES.mkdir(parents=True, exist_ok=True)
    save_help_picture(img, "scan-chart.png")  # js/docs/ and beside each locale page that shows it
    (REPO / "artifacts").mkdir(exist_ok=True)
    (REPO / "artifacts" / "scan_testbed_report.txt").write_text(report + "\n")
    print(report)

    for name, (_, what) in WORKFLOWS.items():
        thumb = Image.new("RGB", (size, size), (250, 250, 252))
        d = ImageDraw.Draw(thumb)
        title = "Memorization Scan: testbed (CPU)" if what is None else "Memorization Scan (SD1.5)"
        d.text((16, 12), title, font=font(26), fill=(30, 30, 30))
        sub = f"real run: {len(TB_MEMORIZED) + len(TB_CLEAN_SCANNED)} prompts x 8 seeds, detect_threshold {TESTBED_THRESHOLD}" if what is None else what
        d.text((16, 46), sub, font=font(15), fill=(90, 90, 90))
        c = img.resize((size - 16, int((size - 16) * img.height / img.width)), Image.LANCZOS)
        if c.height > size - 100:
            c = c.crop((0, 0, c.width, size - 100))
        thumb.paste(c, (8, 76))
        if what is not None:
            d.text((16, size - 22), "chart: a real testbed run; an SD1.5 chart has the same layout", font=font(13),
                   fill=(110, 110, 110))
        thumb.save(OUT / f"{name}.jpg", quality=88, optimize=True)
        print(f"wrote example_workflows/{name}.jpg")


if __name__ == "__main__":
    cli(write_workflows, write_thumbnails)
