"""MemSafeCopyCheck: each output beside its nearest training image, with a calibrated copy threshold.

The ComfyUI plumbing only: the folders are resolved inside folder_paths' input directory, the cache lives in the user
directory, a CLIP_VISION is called through its own encode_image, progress and cancellation go through comfy.utils and
comfy.model_management. Descriptors, cache, search, calibration, report and picture are guidance/copy_*.py.
"""
from __future__ import annotations

import logging
import os

import torch

import comfy.model_management
import comfy.utils
import folder_paths
from comfy_api.latest import io, ui

from ..guidance import copy_cache as C
from ..guidance import copy_index as X
from ..guidance import copy_report as R
from ..guidance.copy_descriptor import PIXEL_BLIND, ModelEmbedder, PixelEmbedder, weights_fingerprint
from .common import CATEGORY, GUIDE, PAPER, schema_extras

log = logging.getLogger(__name__)
DEFAULT_THRESHOLD = 0.960  # the pixel descriptor's held-out calibration on the testbed (tests/copy_check_eval.py: 0.9604)
COPY_PAPERS = ("Copy detection as in the memorization literature: similarity to the nearest training image in an image "
               "embedding (SSCD, Pizzi et al. 2022; Somepalli et al. 2023 \"Diffusion Art or Digital Forgery?\"; Carlini "
               "et al. 2023 \"Extracting Training Data from Diffusion Models\"; Wen et al. 2024). ")
ALIASES = ["copy", "copy check", "copies", "training image", "training images", "nearest", "nearest training image",
           "memorization", "memorisation", "memorized", "regurgitation", "replication", "duplicate", "lora audit",
           "clip vision", "memsafe"]


def cache_dir() -> str:
    return os.path.join(folder_paths.get_user_directory(), "memsafe_cfg", "copy_cache")


def folder(typed, input_name: str):
    """(resolved folder, images found) or ValueError naming the input; empty text = no folder."""
    if not str(typed or "").strip():
        return None, []
    base = folder_paths.get_input_directory()
    path = C.resolve_inside(base, typed, input_name)
    found, _ = C.list_images(path, base)
    if not found:
        raise ValueError(f"{input_name}: '{typed}' holds no images ({', '.join(C.IMAGE_EXTS)}), subfolders included; "
                         "put the images there.")
    return path, found


def check(images=None, reference_folder="", references=None, calibration=X.CALIBRATIONS[1], heldout_folder="",
          calibration_rate=0.01, resolve=True) -> list[str]:
    """Every input error, each naming the input and the fix; folders are resolved and listed (nothing is read).
    ``resolve=False`` (queue time): the folder text only, since an upstream node may still write the folder."""
    errs = []
    if images is False:
        errs.append("images: nothing arrived (an upstream node passed no IMAGE); connect decoded images.")
    elif images is not None and (images.ndim != 4 or images.shape[0] == 0):
        errs.append("images: the batch is empty; connect the sampler's decoded images.")
    if references is not None and (references.ndim != 4 or references.shape[0] == 0):
        errs.append("references: the batch is empty; connect the training images, or disconnect it and use reference_folder.")
    for name, typed in (("reference_folder", reference_folder), ("heldout_folder", heldout_folder if calibration == X.CALIBRATIONS[2] else "")):
        try:
            if resolve:
                folder(typed, name)
            elif str(typed or "").strip():
                C.relative_text(folder_paths.get_input_directory(), typed, name)
        except ValueError as e:
            errs.append(str(e))
    if not str(reference_folder or "").strip() and references is None:
        errs.append("reference_folder: empty and no references connected; type a folder inside ComfyUI's input directory "
                    "that holds the training images, or connect them as an IMAGE batch to references.")
    if calibration not in X.CALIBRATIONS:
        errs.append(f"calibration: '{calibration}' is not one of {', '.join(X.CALIBRATIONS)}.")
    elif calibration == X.CALIBRATIONS[2] and not str(heldout_folder or "").strip():
        errs.append("heldout_folder: empty but calibration is 'held-out folder'; type a folder of images that were never "
                    "trained on (or outputs of prompts known to be clean), or choose another calibration.")
    if not 0.0 < float(calibration_rate) < 1.0:
        errs.append(f"calibration_rate: {calibration_rate} is outside (0, 1); use e.g. 0.01 for 1 %.")
    return errs


def clip_embedder(clip_vision) -> ModelEmbedder:
    model = getattr(clip_vision, "model", None)
    kind = f"{type(model).__name__}:{getattr(clip_vision, 'model_type', 'clip_vision_model')}:{clip_vision.image_size}:" \
           f"{list(clip_vision.image_mean)}:{list(clip_vision.image_std)}"
    ident = "clip-vision-" + weights_fingerprint(model.state_dict(), kind)
    return ModelEmbedder(lambda x: clip_vision.encode_image(x, crop=True)["image_embeds"], ident, clip_vision.image_size,
                         f"CLIP vision image_embeds cosine ({type(model).__name__}, {clip_vision.image_size} px)")


class MemSafeCopyCheck(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="MemSafeCopyCheck", display_name="Copy Check (nearest training image)", category=CATEGORY,
            description=("Finds each output's nearest and second-nearest training image and flags copies at a calibrated "
                         "threshold: audit a LoRA or fine-tune for regurgitated training images. Without clip_vision it "
                         "uses a model-free descriptor (32 x 32 grayscale correlation): " + PIXEL_BLIND + ". Reference "
                         "embeddings are cached per file in ComfyUI's user directory. " + COPY_PAPERS + PAPER + " " + GUIDE),
            inputs=[
                io.Image.Input("images", tooltip="The outputs to check (e.g. VAE Decode's IMAGE)."),
                io.String.Input("reference_folder", default="",
                                tooltip="The training images: a folder inside ComfyUI's input directory, subfolders "
                                        "included (no '..', no absolute path, no link out). Empty: only the references input."),
                io.Combo.Input("calibration", options=list(X.CALIBRATIONS), default=X.CALIBRATIONS[1],
                               tooltip="How the copy threshold is chosen (always stated in the report): 'fixed threshold' "
                                       "= the threshold input; 'references leave-one-out' = from each reference's nearest "
                                       "other reference (near-duplicates >= 0.98 set aside); 'held-out folder' = from "
                                       "images never trained on (or outputs of prompts known to be clean)."),
                io.Float.Input("threshold", default=DEFAULT_THRESHOLD, min=-1.0, max=1.0, step=0.001, round=0.0001,
                               tooltip="fixed threshold only: a similarity above it is a copy. Default 0.960: the pixel "
                                       "descriptor's held-out calibration on the testbed (1 % of 232 clean samples above "
                                       "it); the testbed's number, not yours: calibrate on your data, always for clip_vision."),
                io.Float.Input("calibration_rate", default=0.01, min=0.0, max=1.0, step=0.001,
                               tooltip="Calibrated thresholds: the share of calibration similarities allowed above the "
                                       "threshold (the expected false-positive rate), in (0, 1)."),
                io.String.Input("heldout_folder", default="",
                                tooltip="held-out folder only: a folder inside the input directory of images of the same "
                                        "kind that were never trained on, or outputs of prompts known to be clean."),
                io.Int.Input("chunk_size", default=4096, min=1, max=1 << 20,
                             tooltip="References compared at a time: memory is outputs x chunk_size, whatever the number "
                                     "of references. Results do not depend on it."),
                io.Image.Input("references", optional=True,
                               tooltip="Optional: training images as an IMAGE batch (with or instead of the folder); "
                                       "named references[i] in the report; not cached."),
                io.ClipVision.Input("clip_vision", optional=True,
                                    tooltip="Optional: compare in this CLIP vision model's image-embedding space (Load CLIP "
                                            "Vision); sees content and layout, so calibrate its threshold. Without it: "
                                            "the model-free pixel descriptor."),
            ],
            outputs=[
                io.Image.Output(display_name="pairs", tooltip="One image per output: the output (left) beside its nearest "
                                "reference (right), the similarity and file name written under them, copies framed in red."),
                io.String.Output(display_name="report", tooltip="Per output the nearest and second-nearest reference and "
                                 "their similarities, COPY or not; the threshold and how it was chosen; the descriptor; "
                                 "files skipped and why."),
                io.Float.Output(display_name="max_similarity", tooltip="The highest nearest-reference similarity over the outputs."),
                io.Int.Output(display_name="copies", tooltip="How many outputs are above the threshold."),
            ],
            is_output_node=True,
            **schema_extras(search_aliases=ALIASES),
        )

    @classmethod
    def validate_inputs(cls, reference_folder=None, calibration=None, heldout_folder=None, calibration_rate=None):
        if None in (reference_folder, calibration, heldout_folder, calibration_rate):
            return True  # a linked input: checked in execute
        errs = [e for e in check(None, reference_folder, None, calibration, heldout_folder, calibration_rate, resolve=False)
                if not e.startswith("reference_folder: empty and no references")]  # references may be linked
        return " ".join(errs) if errs else True

    @classmethod
    def execute(cls, images, reference_folder, calibration, threshold, calibration_rate, heldout_folder, chunk_size,
                references=None, clip_vision=None) -> io.NodeOutput:
        errs = check(False if images is None else images, reference_folder, references, calibration, heldout_folder,
                     calibration_rate)
        if errs:
            raise ValueError(" ".join(errs))
        embedder = clip_embedder(clip_vision) if clip_vision is not None else PixelEmbedder()
        cancel = comfy.model_management.throw_exception_if_processing_interrupted
        base = folder_paths.get_input_directory()
        ref_path = C.resolve_inside(base, reference_folder, "reference_folder") if str(reference_folder or "").strip() else None
        held_path = C.resolve_inside(base, heldout_folder, "heldout_folder") if calibration == X.CALIBRATIONS[2] else None
        pbar = comfy.utils.ProgressBar(100)

        def progress(done, total, lo=0, hi=100):
            pbar.update_absolute(lo + (hi - lo) * done // max(total, 1), 100)

        refs = X.References(center=embedder.center)
        if ref_path is not None:
            cache = C.EmbeddingCache(cache_dir(), embedder.identity, os.path.relpath(ref_path, base))
            refs = X.embed_folder(ref_path, base, embedder, cache, progress=lambda d, t: progress(d, t, 0, 90), cancel=cancel)
        if references is not None:
            refs.batch = X.embed_images(references, embedder, cancel=cancel)
            refs.names += [f"references[{i}]" for i in range(len(references))]
        if len(refs) == 0:
            raise ValueError(f"reference_folder: none of the {len(refs.skipped)} files in '{reference_folder}' could be read "
                             f"({refs.skipped[0][1] if refs.skipped else 'no images'}); see the files and fix or replace them.")
        queries = refs.compared(X.embed_images(images, embedder, cancel=cancel), chunk_size)
        if calibration == X.CALIBRATIONS[0]:
            cal = X.Calibration(float(threshold), "fixed threshold (the threshold input)")
        elif calibration == X.CALIBRATIONS[1]:
            cal = X.leave_one_out(refs, float(calibration_rate), chunk_size, cancel)
        else:
            hcache = C.EmbeddingCache(cache_dir(), embedder.identity, os.path.relpath(held_path, base))
            held = X.embed_folder(held_path, base, embedder, hcache, progress=lambda d, t: progress(d, t, 90, 99), cancel=cancel)
            rows = torch.cat(list(hcache.chunks(held.keys, chunk_size))) if held.keys else torch.zeros(0, queries.shape[1])
            cal = X.held_out(rows, refs, float(calibration_rate), chunk_size, heldout_folder)
            refs.skipped += [(f"{heldout_folder}/{rel}", why) for rel, why in held.skipped]
        cancel()
        sim, idx = X.search(queries, refs, chunk_size)
        n_folder = len(refs.keys)
        nearest = []
        for q in range(len(images)):
            i = int(idx[q, 0])
            if i >= n_folder:
                nearest.append(references[i - n_folder])
            else:
                try:
                    nearest.append(C.load_image(ref_path / refs.names[i]))
                except (C.Skipped, OSError):
                    nearest.append(torch.full((8, 8, 3), 0.5))
        text = R.report(sim, idx, refs.names, cal.threshold, cal.source, embedder.name, embedder.blind, len(refs),
                        refs.skipped, refs.embedded, n_folder - refs.embedded)
        picture = R.pairs(images, nearest, sim[:, 0], [refs.names[int(i)] for i in idx[:, 0]], cal.threshold)
        copies = int(R.is_copy(sim[:, 0], cal.threshold).sum())
        pbar.update_absolute(100, 100)
        log.info("copy check: %d of %d outputs above %.4f", copies, len(images), cal.threshold)
        return io.NodeOutput(picture, text, float(sim[:, 0].max()), copies,
                             ui={**ui.PreviewImage(picture, cls=cls).as_dict(), "text": (text,)})


NODES = [MemSafeCopyCheck]
