"""The memorization testbed inside ComfyUI: the shipped digit model as a real MODEL, its prompts, a decoder and a
nearest-training-image check, so every sampler and the MemSafe nodes can be seen copying (or not) on any CPU."""
from __future__ import annotations

import functools
import json

import torch

import comfy.latent_formats
import comfy.model_base
import comfy.model_management
import comfy.model_patcher
import comfy.supported_models_base
from comfy_api.latest import io, ui

from ..testbed import data as testbed_data
from ..testbed import measure
from ..testbed.model import LINEAR_END, LINEAR_START, SLANTS, STYLES, WIDTHS, TestbedUNet, parse_prompt, prompt_text
from ..testbed.sampler import WEIGHTS, read_weights, schedule_betas

CATEGORY = "sampling/memorization-safe/testbed"
PAPER = ('Testbed for Jain et al., "Classifier-Free Guidance inside the Attraction Basin May Cause Memorization": '
         "a 16x16 digit model trained on glyphs freshly augmented in slant, width, rotation, position and size under 120 "
         "prompts whose captions leave slant and width open (an ordinary record's slant and width words are each random "
         "with probability 0.8); 10 prompts are memorized at five duplication levels, two per level: one fixed exemplar "
         "is 35, 50, 66, 80 or 96 % of its own prompt's records, and 1.5 % of all records.")
SIZE = 16
DEFAULT_PROMPT = "3 thin left wide"  # a memorized prompt of the shipped data (duplication level 50 %)


class ComfyTestbedUNet(TestbedUNet):
    """The testbed UNet with ComfyUI's diffusion_model construction and forward signature."""

    def __init__(self, device=None, operations=None, dtype=None, **config):
        super().__init__(**config)
        self.dtype = torch.float32
        self.to(device)

    def forward(self, x, timesteps, context=None, control=None, transformer_options=None, **kwargs):
        return super().forward(x, timesteps, context)


class TestbedLatent(comfy.latent_formats.LatentFormat):
    """One channel, 16x16, values in [-1, 1] (ink = +1); previews show black ink on white."""

    latent_channels = 1
    scale_factor = 1.0
    latent_rgb_factors = [[-0.5, -0.5, -0.5]]
    latent_rgb_factors_bias = [0.0, 0.0, 0.0]


class TestbedConfig(comfy.supported_models_base.BASE):
    unet_config = {"in_channels": 1}
    unet_extra_config = {}
    latent_format = TestbedLatent
    sampling_settings = {"beta_schedule": "linear", "linear_start": LINEAR_START, "linear_end": LINEAR_END}  # SD's;
    # load_testbed_model sets the betas the weights were trained on (testbed.sampler.schedule_betas)
    supported_inference_dtypes = [torch.float32]
    memory_usage_factor = 0.1


def load_testbed_model(path=WEIGHTS):
    """The shipped weights as a ComfyUI MODEL: BaseModel (eps, discrete schedule) + ModelPatcher."""
    sd, meta = read_weights(path)
    config = TestbedConfig({"in_channels": 1})
    linear_start, linear_end = schedule_betas(meta)
    config.sampling_settings.update(linear_start=linear_start, linear_end=linear_end)
    device, offload = comfy.model_management.get_torch_device(), comfy.model_management.unet_offload_device()
    model = comfy.model_base.BaseModel(config, model_type=comfy.model_base.ModelType.EPS, device=offload,
                                       unet_model=ComfyTestbedUNet)
    model.diffusion_model.load_state_dict(sd)
    model.eval()
    return comfy.model_patcher.ModelPatcher(model, load_device=device, offload_device=offload)


@functools.lru_cache(maxsize=1)
def training_data() -> testbed_data.TestbedData:
    """The shipped data, read once (the prompt node's schema lists its memorized prompts)."""
    return testbed_data.load()


@functools.lru_cache(maxsize=1)
def training_measure() -> measure.Measure:
    """The shipped data's copy references and digit classifier (built once, about half a second)."""
    return measure.Measure(training_data())


def reference_name(tb: testbed_data.TestbedData, i: int) -> str:
    """Describe copy reference i: an exemplar (of its memorized prompt) or a training glyph at a bin centre."""
    m = len(tb.exemplars)
    if i < m:
        return f"exemplar of '{prompt_text(tb.memorized[i])}'"
    j, (a, b) = (i - m) % len(tb.raw), testbed_data.BINS[(i - m) // len(tb.raw)]
    return f"training glyph {j} ('{int(tb.train_label[j])} {STYLES[int(tb.train_style[j])]}') drawn {SLANTS[a]} {WIDTHS[b]}"


def check_latent(samples: torch.Tensor) -> torch.Tensor:
    if samples.ndim != 4 or tuple(samples.shape[1:]) != (1, SIZE, SIZE):
        raise ValueError(f"samples: expected a testbed latent of shape [B, 1, {SIZE}, {SIZE}], got {list(samples.shape)}; "
                         "sample the testbed MODEL from an Empty Latent Image of 128 x 128.")
    return samples.float().cpu()


def to_image(x: torch.Tensor, scale: int) -> torch.Tensor:
    """[B, 1, 16, 16] in [-1, 1] -> IMAGE [B, 16*scale, 16*scale, 3], black ink on white."""
    img = (1 - (x.clamp(-1, 1) + 1) / 2).repeat_interleave(scale, 2).repeat_interleave(scale, 3)
    return img.movedim(1, -1).expand(-1, -1, -1, 3).contiguous()


class TestbedTokenizer:
    """ComfyUI tokenizer interface for the testbed's prompt language: the 'tokens' are the parsed prompt vector."""

    def __init__(self, embedding_directory=None, tokenizer_data={}):
        pass

    def tokenize_with_weights(self, text, return_word_ids=False, **kwargs):
        return {"testbed": parse_prompt(text)}  # ValueError naming the word it does not understand

    def untokenize(self, token_weight_pair):
        return token_weight_pair

    def state_dict(self):
        return {}


class TestbedTextEncoder(torch.nn.Module):
    """The text-encoder half of ComfyUI's CLIP interface: the prompt vector as a [1, 1, D] cond, pooled [1, D]."""

    def __init__(self, device=None, dtype=None, model_options={}):
        super().__init__()
        self.dtypes = {torch.float32}

    def reset_clip_options(self):
        pass

    def set_clip_options(self, options):
        pass

    def encode_token_weights(self, tokens):
        v = tokens["testbed"].float().reshape(1, 1, -1)
        return v, v[:, 0]

    def load_sd(self, sd):
        return [], []


def load_testbed_clip():
    """A real comfy.sd.CLIP (its own patcher, tokenize, encode_from_tokens_scheduled) over the testbed prompt encoder,
    so the stock CLIPTextEncode node turns '3 bold' into the same cond as MemSafeTestbedPrompt."""
    import types

    import comfy.sd

    target = types.SimpleNamespace(params={}, clip=TestbedTextEncoder, tokenizer=TestbedTokenizer)
    return comfy.sd.CLIP(target=target, parameters=0)


class MemSafeTestbedLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="MemSafeTestbedLoader", display_name="Memorization Testbed Model", category=CATEGORY,
            description=f"Loads the testbed digit model (eps prediction, 1000-step discrete schedule) as a MODEL, and its "
                        f"prompt encoder as a CLIP for the stock CLIP Text Encode node. {PAPER} "
                        "Under plain CFG its memorized prompts often copy their exemplar (how often at each duplication level: "
                        "testbed/README.md); sample it from a 128 x 128 Empty Latent Image.",
            inputs=[], outputs=[io.Model.Output(tooltip="The testbed digit model (eps prediction): sample it like any "
                                                        "checkpoint's MODEL, from a 128 x 128 Empty Latent Image."),
                                io.Clip.Output(tooltip="The testbed's text encoder for CLIP Text Encode (or the Memorization "
                                                       "Scan): a digit, style, slant and width such as '3 thin left wide'; "
                                                       "empty = unconditional.")])

    @classmethod
    def execute(cls) -> io.NodeOutput:
        return io.NodeOutput(load_testbed_model(), load_testbed_clip())


class MemSafeTestbedPrompt(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        tb = training_data()
        memorized = "; ".join(f"{round(share * 100)} %: " + ", ".join(f"'{prompt_text(q)}'" for q, s in zip(tb.memorized, tb.shares) if s == share)
                              for share in sorted(set(tb.shares)))
        return io.Schema(
            node_id="MemSafeTestbedPrompt", display_name="Memorization Testbed Prompt", category=CATEGORY,
            description=f"The testbed's text encoder: a digit, a stroke style, a slant and a width become a CONDITIONING. "
                        f"{PAPER} Memorized prompts, by the exemplar's share of the prompt's records: {memorized}; every other "
                        "combination is clean.",
            inputs=[io.String.Input("text", default=DEFAULT_PROMPT,
                                    tooltip=f"A digit (0-9 or zero..nine), a style ({' / '.join(STYLES)}), a slant "
                                            f"({' / '.join(SLANTS)}) and a width ({' / '.join(WIDTHS)}), any of them optional, "
                                            "e.g. '3 thin left wide'. Empty = the unconditional prompt (use it as the negative).")],
            outputs=[io.Conditioning.Output(tooltip="The prompt as the testbed model's conditioning: positive or negative.")])

    @classmethod
    def validate_inputs(cls, text):
        try:
            parse_prompt(text)
        except ValueError as e:
            return str(e)
        return True

    @classmethod
    def execute(cls, text) -> io.NodeOutput:
        return io.NodeOutput([[parse_prompt(text).reshape(1, 1, -1), {}]])


class MemSafeTestbedDecode(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="MemSafeTestbedDecode", display_name="Memorization Testbed Decode", category=CATEGORY,
            description=f"Turns a testbed LATENT (the image itself, 16 x 16) into an IMAGE, enlarged for viewing. {PAPER}",
            inputs=[io.Latent.Input("samples", tooltip="The sampled testbed latent."),
                    io.Int.Input("scale", default=8, min=1, max=32, tooltip="Enlargement factor (nearest neighbour).")],
            outputs=[io.Image.Output(tooltip="The samples as images, black ink on white, enlarged by scale.")])

    @classmethod
    def execute(cls, samples, scale) -> io.NodeOutput:
        return io.NodeOutput(to_image(check_latent(samples["samples"]), scale))


class MemSafeTestbedNearest(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="MemSafeTestbedNearest", display_name="Memorization Testbed Nearest Training Image", category=CATEGORY,
            description=f"Finds each sample's nearest training image (the exemplars and every training glyph at each "
                        f"slant/width bin centre; cosine similarity after subtracting their mean) and flags copies, as the "
                        f"paper measures memorization with SSCD similarity. The default threshold is the copy floor "
                        f"testbed/reproduce.py calibrated: fewer than 1 % of fresh clean samples exceed it. {PAPER}",
            inputs=[io.Latent.Input("samples", tooltip="The sampled testbed latent."),
                    io.Float.Input("threshold", default=measure.COPY_THRESHOLD, min=0.0, max=1.0, step=0.001,
                                   tooltip="A similarity above this counts as a copy of a training image (default: "
                                           "calibrated so that fewer than 1 % of fresh clean samples exceed it)."),
                    io.Int.Input("scale", default=4, min=1, max=32, tooltip="Enlargement factor of the pair images.")],
            outputs=[io.Image.Output(display_name="pairs",
                                     tooltip="Each sample (left) beside its nearest training image (right)."),
                     io.Float.Output(display_name="copy_rate",
                                     tooltip="The fraction of samples whose similarity exceeds threshold (0..1)."),
                     io.String.Output(display_name="report",
                                      tooltip="One line per sample (similarity, nearest training image, COPY flag), "
                                              "then the same rows as JSON.")],
            is_output_node=True)

    @classmethod
    def execute(cls, samples, threshold, scale) -> io.NodeOutput:
        x = check_latent(samples["samples"])
        meas = training_measure()
        sim, idx = meas.nearest(x)
        digit = meas.classify(x)
        rows = [{"sample": b, "similarity": round(float(sim[b]), 4), "nearest": int(idx[b]),
                 "nearest_is": reference_name(meas.tb, int(idx[b])), "classified_digit": int(digit[b]),
                 "copy": bool(sim[b] > threshold)} for b in range(len(x))]
        copy_rate = sum(r["copy"] for r in rows) / max(len(rows), 1)
        lines = [f"sample {r['sample']}: similarity {r['similarity']:.3f} to the {r['nearest_is']}"
                 f"{'  COPY' if r['copy'] else ''}" for r in rows]
        report = f"copy rate {copy_rate:.0%} (threshold {threshold:g})\n" + "\n".join(lines) + "\n" + json.dumps(rows)
        pairs = to_image(torch.cat([x, meas.refs[idx]], dim=3), scale)
        shown = ui.PreviewImage(pairs, cls=cls).as_dict()
        return io.NodeOutput(pairs, copy_rate, report, ui={**shown, "text": (report,)})


NODES = [MemSafeTestbedLoader, MemSafeTestbedPrompt, MemSafeTestbedDecode, MemSafeTestbedNearest]


TRAINING_FOLDER = "memsafe_testbed/training"
IMAGE_SETS = ("training (copy references)", "held-out (never trained on)")


def training_images(which: str):
    """(relative file names, images [N, 1, 16, 16]) of one image set: the copy references (the exemplars, then every
    training glyph at each slant/width bin centre, as testbed.measure compares against) or the held-out glyphs, each
    drawn once at a random bin (seed 0)."""
    tb = training_data()
    if which == IMAGE_SETS[0]:
        m, n = len(tb.exemplars), len(tb.raw)
        names = [f"exemplars/exemplar_{k}_{prompt_text(q).replace(' ', '_')}.png" for k, q in enumerate(tb.memorized)]
        for a, b in testbed_data.BINS:
            names += [f"{SLANTS[a]}_{WIDTHS[b]}/glyph_{j:04d}_{int(tb.train_label[j])}_{STYLES[int(tb.train_style[j])]}.png"
                      for j in range(n)]
        return names, training_measure().refs[: m + n * len(testbed_data.BINS)]
    images, labels = tb.held_renders(per=1)
    return [f"heldout/held_{j:04d}_{int(d)}.png" for j, d in enumerate(labels)], images


def write_png_if_changed(path, image) -> bool:
    """Write ``image`` (IMAGE [H, W, 3]) as a grayscale PNG unless the file already holds exactly these bytes (an
    unchanged file keeps its mtime, so Copy Check's cache keeps it)."""
    import io as _io

    from PIL import Image

    buf = _io.BytesIO()
    Image.fromarray((image[..., 0].numpy() * 255).round().astype("uint8"), mode="L").save(buf, format="PNG")
    data = buf.getvalue()
    if path.is_file() and path.read_bytes() == data:
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return True


class MemSafeTestbedTrainingImages(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        tb = training_data()
        n_refs = len(tb.exemplars) + len(tb.raw) * len(testbed_data.BINS)
        return io.Schema(
            node_id="MemSafeTestbedTrainingImages", display_name="Testbed Training Images (to input folder)", category=CATEGORY,
            description=f"Writes the testbed's training images as PNGs into a folder of ComfyUI's input directory, for "
                        f"Copy Check's reference_folder: the {len(tb.exemplars)} exemplars and every training glyph at each slant/width bin "
                        f"centre (the references testbed.measure compares against), or the held-out glyphs. Files that "
                        f"already hold the same picture are not rewritten. {PAPER}",
            inputs=[io.String.Input("folder", default=TRAINING_FOLDER,
                                    tooltip="Where to write, inside ComfyUI's input directory (created if missing; no '..', "
                                            "no absolute path)."),
                    io.Combo.Input("image_set", options=list(IMAGE_SETS), default=IMAGE_SETS[0],
                                   tooltip=f"training: the {len(tb.exemplars)} exemplars and {len(tb.raw)} training glyphs x "
                                           f"{len(testbed_data.BINS)} bin centres ({n_refs:,} files, as the testbed's copy "
                                           f"measure uses); held-out: {len(tb.held_raw)} glyphs never trained on."),
                    io.Int.Input("scale", default=8, min=1, max=32,
                                 tooltip="Enlargement of the 16 x 16 images (8 = 128 px, as Testbed Decode's default)."),
                    io.Image.Input("images", optional=True,
                                   tooltip="Optional: images passed through unchanged once the folder is written; feed "
                                           "Copy Check from the images output so it runs after the folder exists.")],
            outputs=[io.String.Output(display_name="folder", tooltip="The folder written (relative to the input "
                                                                     "directory): connect it to Copy Check's reference_folder."),
                     io.Int.Output(display_name="count", tooltip="How many images the folder holds for this set."),
                     io.Image.Output(display_name="images", tooltip="The images input, unchanged, after the folder is "
                                                                    "written (None when nothing is connected).")])

    @classmethod
    def execute(cls, folder, image_set, scale, images=None) -> io.NodeOutput:
        import comfy.utils
        import folder_paths

        from ..guidance.copy_cache import make_inside

        if image_set not in IMAGE_SETS:
            raise ValueError(f"image_set: '{image_set}' is not one of {', '.join(IMAGE_SETS)}.")
        root = make_inside(folder_paths.get_input_directory(), folder, "folder")
        text = str(folder).strip()
        names, x = training_images(image_set)
        pbar, written = comfy.utils.ProgressBar(len(names)), 0
        for a in range(0, len(names), 512):
            comfy.model_management.throw_exception_if_processing_interrupted()
            imgs = to_image(x[a:a + 512], scale)
            written += sum(write_png_if_changed(root / nm, im) for nm, im in zip(names[a:a + 512], imgs))
            pbar.update_absolute(min(a + 512, len(names)), len(names))
        return io.NodeOutput(text, len(names), images, ui={"text": (f"{len(names)} images in input/{text} ({written} written)",)})


NODES.append(MemSafeTestbedTrainingImages)
