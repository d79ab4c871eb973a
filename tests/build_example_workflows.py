"""Rebuild the SD1.5 example workflows from a live server's /object_info:
``python tests/build_example_workflows.py OBJECT_INFO.json`` (dump it with ``curl http://127.0.0.1:8188/object_info``)."""
from __future__ import annotations

import json
import sys
from pathlib import Path

from workflows import build

OUT = Path(__file__).resolve().parents[1] / "example_workflows"
CKPT = "v1-5-pruned-emaonly-fp16.safetensors"
PROMPT = "the great wave off kanagawa by hokusai"  # a famous, much-duplicated image: a good prompt to watch the curve on
NEGATIVE = ""
GUIDANCE = {"guidance_before": -2.0, "transition": "dynamic", "switch_percent": 0.5, "earliest_percent": 0.0,
            "latest_percent": 0.5, "detect_threshold": 0.0}


def common(x=0):
    return [
        {"id": 1, "type": "CheckpointLoaderSimple", "pos": [x, 100], "widgets": {"ckpt_name": CKPT}},
        {"id": 2, "type": "CLIPTextEncode", "pos": [x + 380, 0], "widgets": {"text": PROMPT}, "inputs": {"clip": (1, 1)},
         "title": "Prompt", "size": [400, 160]},
        {"id": 3, "type": "CLIPTextEncode", "pos": [x + 380, 220], "widgets": {"text": NEGATIVE}, "inputs": {"clip": (1, 1)},
         "title": "Negative", "size": [400, 160]},
        {"id": 4, "type": "EmptyLatentImage", "pos": [x + 380, 440], "widgets": {"width": 512, "height": 512, "batch_size": 2}},
    ]


def decode_save(src, x):
    return [
        {"id": 20, "type": "VAEDecode", "pos": [x, 0], "inputs": {"samples": src, "vae": (1, 2)}},
        {"id": 21, "type": "SaveImage", "pos": [x + 240, 0], "widgets": {"filename_prefix": "memsafe"}, "inputs": {"images": (20, 0)},
         "size": [400, 440]},
    ]


def guider_workflow():
    return common() + [
        {"id": 5, "type": "MemSafeCFGGuider", "pos": [860, 0], "widgets": {"cfg": 7.5, **GUIDANCE},
         "inputs": {"model": (1, 0), "positive": (2, 0), "negative": (3, 0)}},
        {"id": 6, "type": "RandomNoise", "pos": [860, 580], "widgets": {"noise_seed": 42}},
        {"id": 7, "type": "KSamplerSelect", "pos": [860, 690], "widgets": {"sampler_name": "dpmpp_2m"}},
        {"id": 8, "type": "BasicScheduler", "pos": [860, 790], "widgets": {"scheduler": "karras", "steps": 30, "denoise": 1.0},
         "inputs": {"model": (1, 0)}},
        {"id": 9, "type": "SamplerCustomAdvanced", "pos": [1220, 200],
         "inputs": {"noise": (6, 0), "guider": (5, 0), "sampler": (7, 0), "sigmas": (8, 0), "latent_image": (4, 0)}},
        {"id": 10, "type": "MemSafeGuidanceCurve", "pos": [1220, 420], "inputs": {"latent": (9, 0), "guider": (5, 0)},
         "size": [500, 420]},
    ] + decode_save((9, 0), 1560)


def ksampler_workflow():
    return common() + [
        {"id": 5, "type": "MemSafeKSampler", "pos": [860, 0], "size": [360, 520],
         "widgets": {"seed": 42, "steps": 30, "cfg": 7.5, "sampler_name": "dpmpp_2m", "scheduler": "karras", "denoise": 1.0, **GUIDANCE},
         "inputs": {"model": (1, 0), "positive": (2, 0), "negative": (3, 0), "latent_image": (4, 0)}},
        {"id": 10, "type": "PreviewImage", "pos": [1260, 560], "inputs": {"images": (5, 1)}, "title": "Guidance norm curve",
         "size": [500, 400]},
    ] + decode_save((5, 0), 1260)


def patch_workflow():
    return common() + [
        {"id": 5, "type": "MemSafeCFGPatch", "pos": [860, 0], "widgets": GUIDANCE, "inputs": {"model": (1, 0)}},
        {"id": 6, "type": "KSampler", "pos": [860, 560], "size": [320, 300],
         "widgets": {"seed": 42, "steps": 30, "cfg": 7.5, "sampler_name": "dpmpp_2m", "scheduler": "karras", "denoise": 1.0},
         "inputs": {"model": (5, 0), "positive": (2, 0), "negative": (3, 0), "latent_image": (4, 0)}},
        {"id": 10, "type": "MemSafeGuidanceCurve", "pos": [1220, 420], "inputs": {"latent": (6, 0), "model": (5, 0)},
         "size": [500, 420]},
    ] + decode_save((6, 0), 1220)


WORKFLOWS = {
    "memsafe_guider_sampler_custom_advanced": guider_workflow,
    "memsafe_ksampler_all_in_one": ksampler_workflow,
    "memsafe_patch_stock_ksampler": patch_workflow,
}

if __name__ == "__main__":
    object_info = json.loads(Path(sys.argv[1]).read_text())
    for name, make in WORKFLOWS.items():
        (OUT / f"{name}.json").write_text(json.dumps(build(make(), object_info), indent=1) + "\n")
