"""Build the Copy Check example workflows (issue 20) with ``workflows.write_examples`` over the floor host's
/object_info; this file holds their graphs and thumbnails.

    python tests/build_copy_check_workflows.py OBJECT_INFO.json       # the two workflow JSONs
    python tests/build_copy_check_workflows.py --serve                # same, /object_info from a server at COMFYUI_PATH
    COMFYUI_PATH=... python tests/build_copy_check_workflows.py --thumbnails   # run the testbed workflow's branches in
                                                                      # process (real nodes, real ComfyUI) for the .jpgs
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from build_example_workflows import TESTBED_SETTINGS, level_text, memorized_by_level, testbed_pick, testbed_sampling
from workflows import CKPT, EXAMPLES as OUT, cli, columns, write_examples

REPO = OUT.parent
HELP_IMAGES = REPO / "js" / "docs"
TRAINING = "memsafe_testbed/training"
CHECK = {"reference_folder": TRAINING, "calibration": "fixed threshold", "threshold": 0.96, "calibration_rate": 0.01,
         "heldout_folder": "", "chunk_size": 4096}
# SD1.5: the CLIP vision model ComfyUI's own templates download (ViT-H/14, the one IPAdapter and Wan use)
CLIP_VISION = "clip_vision_h.safetensors"
CLIP_VISION_MODELS = [{"name": CLIP_VISION, "directory": "clip_vision",
                       "url": "https://huggingface.co/Comfy-Org/Wan_2.1_ComfyUI_repackaged/resolve/main/split_files/clip_vision/"
                              + CLIP_VISION}]
# where CHECK's threshold comes from (tests/copy_check_eval.py, 'held-out folder' calibration)
CHECK_SOURCE = ("the model-free descriptor's held-out calibration on the previous (v2) testbed, 1 % of 232 clean samples "
                "above it; not yet re-measured on this one")
SD_CHECK = {"reference_folder": "my_lora_training", "calibration": "references leave-one-out", "threshold": 0.96,
            "calibration_rate": 0.01, "heldout_folder": "", "chunk_size": 4096}
TESTBED_STEM = "Testbed - Copy Check beside stock CFG and Memorization-Safe (CPU)"
SD_STEM = "Copy Check - outputs against your training folder (SD1.5 + CLIP vision)"


def note(id, text, size=(380, 460)):
    return {"id": id, "type": "Note", "size": list(size), "text": text}


KIND = "defaults"  # the stock KSampler beside the pack defaults, on build_example_workflows' pick for them
GUIDANCE = TESTBED_SETTINGS[KIND]


def testbed_workflow():
    from testbed.data import load

    t, tb = testbed_pick(KIND), load()
    n_refs = len(tb.exemplars) + len(tb.raw) * 6
    inputs, samplers = testbed_sampling(KIND, denoised=False)
    return columns(
        [note(30, f"What this shows: Copy Check on the pack's tiny digit model (any CPU). The training images node writes "
                  f"the testbed's {n_refs:,} training images into input/{TRAINING} (once; unchanged files are left alone) and "
                  f"passes the decoded samples on, so each Copy Check runs after the folder exists. '{t['prompt']}' is "
                  f"memorized ({level_text(t['level'])} duplication level): at seed {t['seed']} the stock KSampler's "
                  "samples sit next to a training image (red frame = copy); the CFG KSampler (Memorization-Safe) with "
                  "the pack's defaults, same seed, copies fewer (the template 'Testbed - stock CFG copies, "
                  "Memorization-Safe does not (CPU)' counts them with the testbed's own measure).\n\n"
                  f"Threshold: {CHECK['threshold']}, {CHECK_SOURCE}. On your own model use 'held-out "
                  "folder' or 'references leave-one-out' (docs/copy-check.md).\n\nChange first: the seed (the same "
                  f"on both samplers), or the prompt (memorized, by level: {memorized_by_level()}; any other prompt is "
                  "clean)."),
         *inputs],
        samplers,
        [{"id": 7, "type": "MemSafeTestbedDecode", "widgets": {"scale": 8}, "inputs": {"samples": (5, 0)},
          "title": "Decode (stock)", "size": [320, 110]},
         {"id": 9, "type": "MemSafeTestbedTrainingImages", "widgets": {"folder": TRAINING}, "inputs": {"images": (7, 0)},
          "title": "Training images (stock branch)", "size": [380, 300]},
         {"id": 8, "type": "MemSafeTestbedDecode", "widgets": {"scale": 8}, "inputs": {"samples": (6, 0)},
          "title": "Decode (Memorization-Safe)", "size": [320, 110]},
         {"id": 10, "type": "MemSafeTestbedTrainingImages", "widgets": {"folder": TRAINING}, "inputs": {"images": (8, 0)},
          "title": "Training images (safe branch)", "size": [380, 300]}],
        [{"id": 11, "type": "MemSafeCopyCheck", "widgets": CHECK, "inputs": {"images": (9, 2)},
          "title": "Copy Check (stock)", "size": [420, 560]},
         {"id": 12, "type": "MemSafeCopyCheck", "widgets": CHECK, "inputs": {"images": (10, 2)},
          "title": "Copy Check (Memorization-Safe)", "size": [420, 560]}],
        [{"id": 13, "type": "PreviewImage", "inputs": {"images": (11, 0)}, "title": "Stock: pairs", "size": [560, 420]},
         {"id": 14, "type": "PreviewAny", "inputs": {"source": (11, 1)}, "title": "Stock: report", "size": [560, 300]},
         {"id": 15, "type": "PreviewImage", "inputs": {"images": (12, 0)}, "title": "Memorization-Safe: pairs",
          "size": [560, 420]},
         {"id": 16, "type": "PreviewAny", "inputs": {"source": (12, 1)}, "title": "Memorization-Safe: report",
          "size": [560, 300]}],
    )


def sd15_workflow():
    return columns(
        [note(30, "What this shows: your checkpoint or LoRA's outputs checked against its training images. Put the "
                  "training images in ComfyUI's input folder, e.g. input/my_lora_training (subfolders are searched), "
                  "and type that folder into Copy Check. Load CLIP Vision compares in CLIP image-embedding space; "
                  "disconnect it for the model-free descriptor (near-pixel copies only). The threshold comes from the "
                  "training images' own leave-one-out similarities; better: a 'held-out folder' of images never "
                  "trained on. The report says which, and the files it skipped. Embeddings are cached: the second "
                  "check embeds nothing again.\n\nChange first: reference_folder (your training images), then "
                  "the checkpoint and the prompt (your fine-tune's)."),
         {"id": 1, "type": "CheckpointLoaderSimple", "widgets": {"ckpt_name": CKPT}, "size": [360, 130]},
         {"id": 2, "type": "CLIPTextEncode", "widgets": {"text": "a photo of sks dog on the beach"}, "inputs": {"clip": (1, 1)},
          "title": "Prompt (your fine-tune's)", "size": [360, 200]},
         {"id": 3, "type": "CLIPTextEncode", "widgets": {"text": ""}, "inputs": {"clip": (1, 1)}, "title": "Negative",
          "size": [360, 200]},
         {"id": 4, "type": "EmptyLatentImage", "widgets": {"width": 512, "height": 512, "batch_size": 4}, "size": [360, 170]}],
        [{"id": 5, "type": "KSampler", "widgets": {"seed": 0, "steps": 25, "cfg": 7.5, "sampler_name": "dpmpp_2m",
                                                    "scheduler": "karras", "denoise": 1.0},
          "inputs": {"model": (1, 0), "positive": (2, 0), "negative": (3, 0), "latent_image": (4, 0)}, "size": [380, 360]},
         {"id": 6, "type": "VAEDecode", "inputs": {"samples": (5, 0), "vae": (1, 2)}, "size": [300, 110]},
         {"id": 7, "type": "CLIPVisionLoader", "widgets": {"clip_name": CLIP_VISION}, "title": "Load CLIP Vision",
          "size": [380, 110]}],
        [{"id": 8, "type": "MemSafeCopyCheck", "widgets": SD_CHECK, "inputs": {"images": (6, 0), "clip_vision": (7, 0)},
          "title": "Copy Check (nearest training image)", "size": [420, 560]}],
        [{"id": 9, "type": "PreviewImage", "inputs": {"images": (8, 0)}, "title": "Pairs (copies framed red)",
          "size": [560, 420]},
         {"id": 10, "type": "PreviewAny", "inputs": {"source": (8, 1)}, "title": "Report", "size": [560, 300]},
         {"id": 11, "type": "SaveImage", "widgets": {"filename_prefix": "copy_check"}, "inputs": {"images": (6, 0)},
          "size": [400, 440]}],
    )


WORKFLOWS = {TESTBED_STEM: (testbed_workflow, None), SD_STEM: (sd15_workflow, "your outputs vs your training folder")}


def write_workflows(object_info: dict) -> None:
    write_examples(WORKFLOWS, object_info)
    path = OUT / f"{SD_STEM}.json"  # the CLIP vision download the front end offers when the file is missing
    workflow = json.loads(path.read_text())
    for node in workflow["nodes"]:
        if node["type"] == "CLIPVisionLoader":
            node["properties"]["models"] = CLIP_VISION_MODELS
    path.write_text(json.dumps(workflow, indent=1) + "\n")


def run_testbed_branches():
    """The testbed workflow in process on the real ComfyUI stack (temporary input and user directories): the stock and
    the Memorization-Safe branch's Copy Check outputs, (pairs, report, max_similarity, copies) each."""
    import tempfile

    import torch

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import host

    host.import_comfy()
    host.load_pack()
    import folder_paths
    import nodes as comfy_nodes
    from memsafe_cfg.nodes.copy_check import MemSafeCopyCheck
    from memsafe_cfg.nodes.ksampler import MemSafeKSampler
    from memsafe_cfg.nodes.testbed import (MemSafeTestbedLoader, MemSafeTestbedPrompt, MemSafeTestbedTrainingImages,
                                           to_image)

    def out(o):
        return tuple(o.args if hasattr(o, "args") else o.result)

    torch.set_num_threads(1)
    tmp = Path(tempfile.mkdtemp(prefix="memsafe_copy_thumb_"))
    (tmp / "input").mkdir()
    (tmp / "user").mkdir()
    folder_paths.set_input_directory(str(tmp / "input"))
    folder_paths.set_user_directory(str(tmp / "user"))
    t = testbed_pick(KIND)
    model, _ = out(MemSafeTestbedLoader.execute())
    (pos,), (neg,) = out(MemSafeTestbedPrompt.execute(t["prompt"])), out(MemSafeTestbedPrompt.execute(""))
    latent = {"samples": torch.zeros(t["batch"], 1, 16, 16)}
    (stock,) = comfy_nodes.common_ksampler(model, t["seed"], t["steps"], t["cfg"], "euler", "ddim_uniform", pos, neg, latent)
    safe = out(MemSafeKSampler.execute(model, t["seed"], t["steps"], t["cfg"], "euler", "ddim_uniform", pos, neg, latent,
                                       **GUIDANCE))[0]
    results = []
    for lat in (stock, safe):
        folder, _, imgs = out(MemSafeTestbedTrainingImages.execute(TRAINING, "training (copy references)", 8,
                                                                   images=to_image(lat["samples"].float(), 8)))
        c = {k: v for k, v in CHECK.items() if k != "reference_folder"}
        results.append(out(MemSafeCopyCheck.execute(imgs, folder, c["calibration"], c["threshold"], c["calibration_rate"],
                                                    c["heldout_folder"], c["chunk_size"])))
    import shutil

    shutil.rmtree(tmp, ignore_errors=True)
    return results


def write_thumbnails(size: int = 512) -> None:
    from PIL import Image, ImageDraw

    from guidance.copy_report import font

    (stock, safe) = run_testbed_branches()

    def pil(t):
        return Image.fromarray((t.numpy() * 255).round().astype("uint8"))

    for r, label in ((stock, "stock"), (safe, "Memorization-Safe")):
        print(f"{label}: copies {r[3]} of {r[0].shape[0]}, max similarity {r[2]:.4f}\n{r[1]}")
    pil(stock[0][0]).save(HELP_IMAGES / "copy-check-pairs.png", optimize=True)
    (HELP_IMAGES / "MemSafeCopyCheck").mkdir(exist_ok=True)
    pil(stock[0][0]).save(HELP_IMAGES / "MemSafeCopyCheck" / "copy-check-pairs.png", optimize=True)
    for name, (_, what) in WORKFLOWS.items():
        thumb = Image.new("RGB", (size, size), (250, 250, 252))
        d = ImageDraw.Draw(thumb)
        d.text((16, 12), "Copy Check: testbed (CPU)" if what is None else "Copy Check (SD1.5 + CLIP vision)",
               font=font(26), fill=(30, 30, 30))
        sub = (f"real run: stock {stock[3]}/4 copies, Memorization-Safe {safe[3]}/4" if what is None else what)
        d.text((16, 46), sub, font=font(15), fill=(90, 90, 90))
        w = (size - 24) // 2
        for col, (r, label) in enumerate(((stock, "stock CFG"), (safe, "Memorization-Safe"))):
            x = 8 + col * (w + 8)
            d.text((x + 4, 74), label, font=font(15), fill=(50, 50, 50))
            for row in range(2):
                p = pil(r[0][row])
                p = p.resize((w, round(w * p.height / p.width)), Image.LANCZOS)
                thumb.paste(p, (x, 96 + row * (p.height + 8)))
        if what is not None:
            d.text((16, size - 22), "pairs: a real testbed run; SD1.5 pairs have the same layout", font=font(13),
                   fill=(110, 110, 110))
        thumb.save(OUT / f"{name}.jpg", quality=88, optimize=True)
        print(f"wrote example_workflows/{name}.jpg")


if __name__ == "__main__":
    cli(write_workflows, write_thumbnails)
