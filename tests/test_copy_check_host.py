"""Issue 20, host tier: MemSafeCopyCheck on the real ComfyUI stack (in process): a tiny CLIP vision model built through
comfy.clip_vision's own class and state-dict loader, the model-free descriptor on the testbed's real samples, the cache,
chunking, progress and cancel, and one test per bad input. ComfyUI's input and user directories point at tmp folders."""
from __future__ import annotations

import json
import os
import re

import numpy as np
import pytest
import torch
from PIL import Image

import host
from conftest import load_test_module

CORE = load_test_module("test_core_copy")  # its picture maker and PNG writer
save = CORE.save
pytestmark = pytest.mark.host
TINY_CLIP = {"hidden_size": 32, "image_size": 32, "intermediate_size": 64, "num_attention_heads": 2,
             "num_hidden_layers": 2, "patch_size": 8, "projection_dim": 16, "hidden_act": "quick_gelu",
             "layer_norm_eps": 1e-5, "num_channels": 3, "model_type": "clip_vision_model"}


@pytest.fixture()
def dirs(comfy, tmp_path):
    """ComfyUI's input and user directories in tmp_path for one test (restored after)."""
    import folder_paths

    before = folder_paths.get_input_directory(), folder_paths.get_user_directory()
    (tmp_path / "input").mkdir()
    (tmp_path / "user").mkdir()
    folder_paths.set_input_directory(str(tmp_path / "input"))
    folder_paths.set_user_directory(str(tmp_path / "user"))
    yield tmp_path / "input"
    folder_paths.set_input_directory(before[0])
    folder_paths.set_user_directory(before[1])


def tiny_clip_vision(tmp_path, seed: int = 0):
    """A CLIP vision model with tiny random weights: ComfyUI's ClipVisionModel from a tiny config, its weights written
    as .safetensors and read back through comfy.utils.load_torch_file and ClipVisionModel.load_sd (as Load CLIP Vision
    does after detecting the config)."""
    import comfy.clip_vision
    import comfy.utils
    from safetensors.torch import save_file

    config = tmp_path / f"tiny_clip_vision_{seed}.json"
    config.write_text(json.dumps(TINY_CLIP))
    donor = comfy.clip_vision.ClipVisionModel(str(config))
    donor.model.float()
    host.init_weights(donor.model, seed)
    path = tmp_path / f"tiny_clip_vision_{seed}.safetensors"
    save_file({k: v.contiguous() for k, v in donor.model.state_dict().items()}, str(path))
    clip = comfy.clip_vision.ClipVisionModel(str(config))
    missing, unexpected = clip.load_sd(comfy.utils.load_torch_file(str(path)))
    assert not missing and not unexpected
    return clip


def pictures(n: int, seed: int = 0, size: int = 40) -> torch.Tensor:
    return CORE.pictures(n, seed, size)


def as_file(img: torch.Tensor) -> torch.Tensor:
    """What a PNG of ``img`` reads back as (8-bit)."""
    return torch.from_numpy((img.numpy() * 255).round().astype(np.uint8).astype(np.float32) / 255.0)


def training_folder(root, n: int = 12, seed: int = 0):
    imgs = pictures(n, seed)
    for i in range(n):
        save(imgs[i], root / "train" / ("sub" if i % 2 else "") / f"img_{i:02d}.png")
    return imgs


def node():
    from memsafe_cfg.nodes.copy_check import MemSafeCopyCheck

    return MemSafeCopyCheck


def run(images, folder="train", calibration="fixed threshold", threshold=0.9, rate=0.1, heldout="", chunk=4096, **kw):
    out = node().execute(images, folder, calibration, threshold, rate, heldout, chunk, **kw)
    return tuple(out.args if hasattr(out, "args") else out.result)


def embedded_now(report: str) -> tuple[int, int]:
    line = next(ln for ln in report.splitlines() if ln.startswith("references: "))
    now = int(line.split("(")[1].split(" embedded")[0])
    cached = int(line.split("now, ")[1].split(" from")[0])
    return now, cached


# -- the CLIP vision path ----------------------------------------------------------------------------------------------
def test_clip_vision_embedding_cache_hit_and_invalidation(dirs, tmp_path):
    clip = tiny_clip_vision(tmp_path)
    imgs = training_folder(dirs)
    queries = torch.stack([as_file(imgs[3]), pictures(1, seed=9)[0]])
    pairs, report, mx, copies = run(queries, clip_vision=clip, threshold=0.999)
    assert "CLIP vision image_embeds" in report and embedded_now(report) == (12, 0)
    assert "output 0: nearest sub/img_03.png 1.0000" in report and copies >= 1 and mx == pytest.approx(1.0, abs=1e-4)
    # the descriptor is the model's own image_embeds, unit length (as encode_image returns them for that image)
    from memsafe_cfg.nodes.copy_check import clip_embedder

    emb = clip_embedder(clip)
    prepared = emb.prepare(as_file(imgs[5]))[None]
    assert prepared.shape == (1, TINY_CLIP["image_size"], TINY_CLIP["image_size"], 3)
    direct = clip.encode_image(prepared)["image_embeds"].detach().float()
    assert torch.allclose(emb.embed(prepared), direct / direct.norm(), atol=1e-5)
    lines = [ln for ln in report.splitlines() if ln.startswith("output ")]
    assert float(lines[1].split()[4].rstrip(";")) < float(lines[0].split()[4].rstrip(";"))
    # cache hit: nothing embedded again
    _, report2, mx2, _ = run(queries, clip_vision=clip, threshold=0.999)
    assert embedded_now(report2) == (0, 12) and mx2 == mx
    files = [p for p in (tmp_path / "user").rglob("*") if p.is_file()]
    assert files and all(p.suffix == ".safetensors" for p in files)
    # invalidation: a changed file is re-embedded, the rest come from the cache
    save(pictures(1, seed=5)[0], dirs / "train" / "img_00.png")
    st = (dirs / "train" / "img_00.png").stat()
    os.utime(dirs / "train" / "img_00.png", ns=(st.st_atime_ns, st.st_mtime_ns + 3_000_000_000))
    _, report3, _, _ = run(queries, clip_vision=clip, threshold=0.999)
    assert embedded_now(report3) == (1, 11)
    # another model (other weights) gets its own cache
    _, report4, _, _ = run(queries, clip_vision=tiny_clip_vision(tmp_path, seed=1), threshold=0.999)
    assert embedded_now(report4) == (12, 0)


def test_chunking_gives_identical_results(dirs, tmp_path):
    clip = tiny_clip_vision(tmp_path)
    training_folder(dirs, n=15)
    queries = pictures(4, seed=7)
    refs = pictures(3, seed=8)
    # (the tiny random CLIP embeds everything within 0.98 of everything: too alike for leave-one-out)
    for extra in ({"calibration": "references leave-one-out"}, {"clip_vision": clip}):
        whole = run(queries, chunk=4096, references=refs, **extra)
        for chunk in (1, 4, 7):
            part = run(queries, chunk=chunk, references=refs, **extra)
            assert part[2] == whole[2] and part[3] == whole[3]
            assert part[1].split("\nreferences:")[1] == whole[1].split("\nreferences:")[1].replace("(15 embedded now, 0", "(0 embedded now, 15")
            assert torch.equal(part[0], whole[0])


# -- the model-free path on the testbed -----------------------------------------------------------------------------
def test_model_free_descriptor_flags_the_testbeds_copies(dirs):
    """Real testbed samples through the stock KSampler (plain CFG): the memorized prompt's samples that the testbed's
    own measure calls copies are flagged, the clean prompt's samples are not."""
    import comfy.sample
    import nodes as comfy_nodes
    from memsafe_cfg.nodes.testbed import MemSafeTestbedLoader, MemSafeTestbedTrainingImages, to_image, training_measure
    from memsafe_cfg.testbed import measure

    out = MemSafeTestbedTrainingImages.execute("tb/train", "training (copy references)", 8)
    folder, count, passed = out.args if hasattr(out, "args") else out.result
    n_refs = 10 + 1397 * 6  # the 10 exemplars, then 1397 training glyphs at the 6 slant/width bin centres
    assert folder == "tb/train" and count == n_refs and passed is None and len(list((dirs / "tb" / "train").rglob("*.png"))) == n_refs
    before = {p: p.stat().st_mtime_ns for p in list((dirs / "tb" / "train" / "exemplars").iterdir())}
    img = torch.rand(2, 8, 8, 3)
    again = MemSafeTestbedTrainingImages.execute("tb/train", "training (copy references)", 8, images=img)
    assert (again.args if hasattr(again, "args") else again.result)[2] is img  # passed through, after the write
    assert {p: p.stat().st_mtime_ns for p in before} == before  # unchanged files are not rewritten
    model, clip = (lambda o: o.args if hasattr(o, "args") else o.result)(MemSafeTestbedLoader.execute())
    (neg,) = comfy_nodes.CLIPTextEncode().encode(clip, "")
    samples = []
    # a memorized prompt (50 %) and its clean sibling, on the seed the defaults workflow shows (stock: 3 of 4 copies)
    for text in ("6 bold left wide", "6 bold upright narrow"):
        (pos,) = comfy_nodes.CLIPTextEncode().encode(clip, text)
        latent = torch.zeros(4, 1, 16, 16)
        samples.append(comfy.sample.sample(model, comfy.sample.prepare_noise(latent, 4), 50, 5.0, "euler", "ddim_uniform",
                                           pos, neg, latent, seed=4, disable_pbar=True))
    x = torch.cat(samples).float()
    tb_sim, _ = training_measure().nearest(x)
    tb_copy = tb_sim > measure.COPY_THRESHOLD
    assert tb_copy[:4].sum() >= 2 and not tb_copy[4:].any()
    pairs, report, mx, copies = run(to_image(x, 8), folder, threshold=0.960)
    flags = torch.tensor([("COPY" in ln) for ln in report.splitlines() if ln.startswith("output ")])
    assert flags[tb_copy].all() and not flags[4:].any(), report  # every testbed copy flagged, no clean sample
    assert copies == int(flags.sum()) and pairs.shape[0] == 8 and "exemplar_6_6_bold_left_wide" in report


# -- bad input: one test each, all refused before anything is read ------------------------------------------------------
def refused(images, match, **kw):
    with pytest.raises(ValueError, match=match) as e:
        run(images, **kw)
    return str(e.value)


def test_dotdot_is_refused(dirs):
    training_folder(dirs)
    msg = refused(pictures(1), "reference_folder", folder="train/../train")
    assert "'..'" in msg
    assert "'..'" in node().validate_inputs("train/../train", "fixed threshold", "", 0.01)


def test_absolute_path_is_refused(dirs):
    training_folder(dirs)
    assert "absolute path" in refused(pictures(1), "reference_folder", folder=str(dirs / "train"))
    assert "absolute path" in node().validate_inputs(str(dirs / "train"), "fixed threshold", "", 0.01)


def test_symlink_that_leads_out_is_refused(dirs, tmp_path):
    outside = tmp_path / "outside"
    training_folder(outside)
    (dirs / "link").symlink_to(outside / "train")
    assert "leads out" in refused(pictures(1), "reference_folder", folder="link")
    # at queue time only the text is checked (an upstream node may still write the folder); execute resolves it
    assert node().validate_inputs("link", "fixed threshold", "", 0.01) is True


def test_training_images_never_write_through_a_link_that_leads_out(dirs, tmp_path):
    from memsafe_cfg.nodes.testbed import MemSafeTestbedTrainingImages

    outside = tmp_path / "outside"
    outside.mkdir()
    (dirs / "link").symlink_to(outside)
    for typed in ("link/train", "../outside/train", str(outside / "train")):
        with pytest.raises(ValueError, match="folder"):
            MemSafeTestbedTrainingImages.execute(typed, "training (copy references)", 8)
    assert list(outside.iterdir()) == []  # nothing made or written outside the input directory


def test_missing_folder_is_refused(dirs):
    assert "does not exist" in refused(pictures(1), "reference_folder", folder="nope")


def test_empty_folder_is_refused(dirs):
    (dirs / "empty" / "sub").mkdir(parents=True)
    (dirs / "empty" / "readme.txt").write_text("no images here")
    assert "holds no images" in refused(pictures(1), "reference_folder", folder="empty")


def test_empty_batches_are_refused(dirs):
    training_folder(dirs)
    refused(torch.zeros(0, 8, 8, 3), "images: the batch is empty")
    refused(None, "images: nothing arrived")
    refused(pictures(1), "references: the batch is empty", references=torch.zeros(0, 8, 8, 3))
    refused(pictures(1), "reference_folder: empty and no references", folder="")


def test_held_out_calibration_needs_its_folder(dirs):
    training_folder(dirs)
    refused(pictures(1), "heldout_folder: empty", calibration="held-out folder")
    refused(pictures(1), "heldout_folder", calibration="held-out folder", heldout="../x")


def test_corrupt_and_other_files_are_counted_not_silent(dirs):
    imgs = training_folder(dirs, n=4)
    (dirs / "train" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (dirs / "train" / "notes.txt").write_text("captions")
    _, report, _, _ = run(as_file(imgs[:1]))
    assert "references: 4 " in report and "skipped 2 files" in report
    assert "broken.png: not a readable image" in report and "notes.txt: not an image file (.txt)" in report


def test_rgba_grayscale_and_16_bit_references_are_read(dirs):
    img = pictures(1, seed=4)[0]
    a8 = (img.numpy() * 255).round().astype(np.uint8)
    (dirs / "modes").mkdir()
    Image.fromarray(np.dstack([a8, np.full(a8.shape[:2], 255, np.uint8)]), "RGBA").save(dirs / "modes" / "rgba.png")
    gray = Image.fromarray(a8).convert("L")
    gray.save(dirs / "modes" / "gray.png")
    Image.fromarray(np.asarray(gray, dtype=np.uint16) * 257).save(dirs / "modes" / "g16.png")
    for i, other in enumerate(pictures(3, seed=11)):
        save(other, dirs / "modes" / f"other_{i}.png")
    _, report, _, _ = run(as_file(img[None]), folder="modes")
    assert "skipped: none" in report and "references: 6 " in report
    line = next(ln for ln in report.splitlines() if ln.startswith("output 0"))
    assert "rgba.png 1.0000" in line  # the opaque RGBA file is the output itself
    gray_q = torch.from_numpy(np.asarray(gray, dtype=np.float32) / 255.0)[..., None].expand(-1, -1, 3)
    _, report, _, _ = run(gray_q[None].contiguous(), folder="modes")
    line = next(ln for ln in report.splitlines() if ln.startswith("output 0"))
    assert ("g16.png 1.0000" in line or "gray.png 1.0000" in line) and line.count("1.0000") == 2


# -- progress, cancel, schema -------------------------------------------------------------------------------------
def test_progress_reaches_the_end_and_cancel_stops_before_embedding(dirs, comfy):
    import comfy.model_management as mm
    import comfy.utils

    training_folder(dirs)
    seen, before = [], comfy.utils.PROGRESS_BAR_HOOK
    comfy.utils.set_progress_bar_global_hook(lambda value, total, preview, node_id=None: seen.append((value, total)))
    try:
        run(pictures(1))
    finally:
        comfy.utils.set_progress_bar_global_hook(before)
    assert seen and seen[-1] == (100, 100) and [v for v, _ in seen] == sorted(v for v, _ in seen)
    mm.interrupt_current_processing(True)
    try:
        with pytest.raises(mm.InterruptProcessingException):
            run(pictures(1), folder="train")
    finally:
        mm.interrupt_current_processing(False)


def test_schema_tooltips_aliases_and_papers(comfy):
    import dataclasses

    from comfy_api.latest import io

    info = node().GET_NODE_INFO_V1()
    assert all(info["output_tooltips"]) and info["output_name"] == ["pairs", "report", "max_similarity", "copies"]
    for section in ("required", "optional"):
        for name, spec in info["input"].get(section, {}).items():
            assert spec[1].get("tooltip"), name
    assert all(w in info["description"] for w in ("Jain et al.", "Pizzi et al.", "Somepalli et al.", "cropped, flipped"))
    if "search_aliases" in {f.name for f in dataclasses.fields(io.Schema)}:
        assert {"copy", "training image", "nearest", "memorization"} <= set(info["search_aliases"])


def test_testbed_workflow_runs_on_a_real_server(comfy_server):
    """The shipped testbed template through /prompt: the training folder written, both branches checked; the stock
    branch copies the prompt's exemplar, the Memorization-Safe branch (pack defaults) copies fewer, on the seed the
    builder picked (tests/build_example_workflows.py, testbed_pick("defaults"))."""
    from pathlib import Path

    from workflows import problems, to_api

    from memsafe_cfg.testbed.data import load
    from memsafe_cfg.testbed.model import prompt_text

    stem = "Testbed - Copy Check beside stock CFG and Memorization-Safe (CPU)"
    workflow = json.loads((Path(__file__).resolve().parents[1] / "example_workflows" / f"{stem}.json").read_text())
    text = next(n["widgets_values"][0] for n in workflow["nodes"] if n.get("title") == "Prompt (memorized)")
    tb = load()
    k = [prompt_text(q) for q in tb.memorized].index(text)  # the prompt is memorized (ValueError otherwise)
    info = comfy_server.get("/object_info")
    assert problems(workflow, info) == []
    ids = {n.get("title"): str(n["id"]) for n in workflow["nodes"]}
    outs = comfy_server.run_prompt(to_api(workflow, info))["outputs"]
    stock, safe = ("".join(outs[ids[t]]["text"]) for t in ("Copy Check (stock)", "Copy Check (Memorization-Safe)"))
    copies = [int(re.match(r"Copy Check: (\d+) of 4 outputs", r).group(1)) for r in (stock, safe)]
    assert copies[0] >= 3 and copies[1] < copies[0], (stock, safe)
    assert f"exemplar_{k}_{text.replace(' ', '_')}" in stock and "threshold 0.9600: fixed threshold" in stock
    assert all("images" in outs[ids[t]] for t in ("Stock: pairs", "Memorization-Safe: pairs"))
