"""Copy Check's reference files: a folder typed by the user (kept inside a base folder), the images in it read with
Pillow (every mode; what cannot be read is skipped with its reason, never silently), and an on-disk embedding cache
per file keyed by (relative path, size, mtime) and the embedder's identity, stored as safetensors shards.

A shard is one safetensors file: tensor ``embeddings`` [n, D] float32 and, in its metadata, ``keys`` (JSON list of
[relative path, size, mtime_ns]). New embeddings go to a new shard; a shard none of whose rows is current any more is
deleted. No pickle anywhere.
"""
from __future__ import annotations

import hashlib
import json
import os
import uuid
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".gif")
REDUCE_ABOVE = 2048  # longer sides are box-reduced by an integer factor on load (bounded memory per image)


class Skipped(Exception):
    """A reference file that was not used; the message is the reason shown in the report."""


def relative_text(base, typed: str, input_name: str) -> str:
    """``typed`` stripped, or ValueError naming ``input_name`` when it is empty, absolute or contains '..'."""
    where = f"a folder inside ComfyUI's input directory ({base})"
    text = str(typed).strip()
    if not text:
        raise ValueError(f"{input_name}: empty; type {where}, e.g. 'my_lora_training'.")
    if os.path.isabs(text) or text.startswith(("/", "\\")) or (len(text) > 1 and text[1] == ":"):
        raise ValueError(f"{input_name}: '{text}' is an absolute path; type a path relative to the input directory "
                         f"({base}) and copy or link the images there.")
    if ".." in Path(text.replace("\\", "/")).parts:
        raise ValueError(f"{input_name}: '{text}' contains '..'; type {where}, without '..'.")
    return text


def resolve_inside(base: str | Path, typed: str, input_name: str) -> Path:
    """The folder ``typed`` relative to ``base``, or ValueError naming ``input_name`` and the fix. Refuses absolute
    paths, '..', links that lead out of ``base``, a missing folder and a file."""
    text = relative_text(base, typed, input_name)
    root = Path(base).resolve()
    path = root / text
    if not path.exists():
        raise ValueError(f"{input_name}: '{text}' does not exist in {root}; create it and put the images there "
                         "(subfolders are searched too).")
    real = path.resolve()
    if real != root and root not in real.parents:
        raise ValueError(f"{input_name}: '{text}' is a link that leads out of the input directory (to {real}); copy the "
                         f"images into {root} instead.")
    if not real.is_dir():
        raise ValueError(f"{input_name}: '{text}' is a file, not a folder; type the folder that holds the images.")
    return real


def make_inside(base: str | Path, typed: str, input_name: str) -> Path:
    """``resolve_inside`` for a folder that may not exist yet: created only when the path, links resolved, stays
    inside ``base`` (a link on the way that leads out is refused before anything is made)."""
    root = Path(base).resolve()
    target = (root / relative_text(base, typed, input_name)).resolve()
    if target != root and root not in target.parents:
        raise ValueError(f"{input_name}: '{str(typed).strip()}' leads out of the input directory (to {target}) through a "
                         f"link; type a folder inside {root}.")
    target.mkdir(parents=True, exist_ok=True)
    return resolve_inside(base, typed, input_name)


def list_images(folder: Path, base: Path) -> tuple[list[tuple[str, Path]], list[tuple[str, str]]]:
    """(images as (relative path, path) sorted by path, skipped as (relative path, reason)) under ``folder``, subfolders
    included. Links are followed only while they stay inside ``base``; other files are skipped with their reason."""
    base = Path(base).resolve()
    found, skipped, seen = [], [], set()

    def inside(p: Path) -> bool:
        r = p.resolve()
        return r == base or base in r.parents

    for top, dirs, files in os.walk(folder, followlinks=True):
        here = Path(top)
        real = here.resolve()
        if real in seen:  # a link loop, or a folder linked twice
            dirs[:] = []
            continue
        seen.add(real)
        for d in list(dirs):
            if not inside(here / d):
                dirs.remove(d)
                skipped.append(((here / d).relative_to(folder).as_posix() + "/", "a link that leads out of the input directory"))
        dirs.sort()
        for f in sorted(files):
            p = here / f
            rel = p.relative_to(folder).as_posix()
            if not p.suffix.lower() in IMAGE_EXTS:
                if not f.startswith("."):
                    skipped.append((rel, f"not an image file ({p.suffix or 'no extension'})"))
            elif not inside(p):
                skipped.append((rel, "a link that leads out of the input directory"))
            else:
                found.append((rel, p))
    return found, skipped


def stat_key(rel: str, path: Path) -> tuple[str, int, int]:
    st = path.stat()
    return (rel, int(st.st_size), int(st.st_mtime_ns))


def load_image(path: Path) -> torch.Tensor:
    """IMAGE [H, W, 3] float32 in 0..1 from any Pillow mode: RGBA / LA / palette with transparency composited on white,
    16-bit and 32-bit grayscale scaled by their range, CMYK converted; EXIF orientation applied; the first frame of an
    animation. Raises Skipped with the reason for a corrupt, truncated or decompression-bomb-sized file."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                im.seek(0)
                im = ImageOps.exif_transpose(im)
                if max(im.size) > REDUCE_ABOVE:
                    im = im.reduce(-(-max(im.size) // REDUCE_ABOVE))
                return to_rgb(im)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise Skipped(f"too large to open safely ({e.__class__.__name__}: over Pillow's MAX_IMAGE_PIXELS)") from e
    except UnidentifiedImageError as e:
        raise Skipped("not a readable image (corrupt, or a format Pillow cannot read)") from e
    except (OSError, ValueError, SyntaxError) as e:
        raise Skipped(f"unreadable ({e.__class__.__name__}: {str(e)[:80]})") from e


def to_rgb(im: Image.Image) -> torch.Tensor:
    if im.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        a = np.asarray(im, dtype=np.float64)
        top = 65535.0 if im.mode.startswith("I;16") or (im.mode == "I" and a.max() > 255) else (255.0 if im.mode == "I" else 1.0)
        a = np.clip(a / top, 0, 1).astype(np.float32)
        return torch.from_numpy(np.repeat(a[..., None], 3, axis=2).copy())
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        im = Image.alpha_composite(white, rgba)
    a = np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(a.copy())


class EmbeddingCache:
    """Embeddings of one embedder for the files under one folder, kept in ``directory`` as safetensors shards."""

    def __init__(self, directory: str | Path, identity: str, folder_key: str):
        tag = hashlib.sha256(f"{identity}\n{folder_key}".encode()).hexdigest()[:16]
        self.dir = Path(directory) / tag
        self.identity = identity
        self.rows: dict[tuple, tuple[Path, int]] = {}
        if self.dir.is_dir():
            from safetensors import safe_open

            for shard in sorted(self.dir.glob("shard-*.safetensors")):
                try:
                    with safe_open(str(shard), framework="pt") as f:
                        meta = f.metadata() or {}
                    if meta.get("identity") != identity:
                        continue
                    for i, k in enumerate(json.loads(meta["keys"])):
                        self.rows[tuple(k)] = (shard, i)
                except Exception:  # a shard cut short by a crash: ignored, and overwritten rows re-embedded
                    continue

    def has(self, key: tuple) -> bool:
        return tuple(key) in self.rows

    def add(self, keys: list[tuple], embeddings: torch.Tensor) -> None:
        """Write one new shard (atomically: a temporary name, then renamed)."""
        from safetensors.torch import save_file

        self.dir.mkdir(parents=True, exist_ok=True)
        name = self.dir / f"shard-{uuid.uuid4().hex[:12]}.safetensors"
        tmp = name.with_suffix(".tmp")
        meta = {"identity": self.identity, "keys": json.dumps([list(k) for k in keys])}
        save_file({"embeddings": embeddings.float().contiguous().cpu()}, str(tmp), metadata=meta)
        os.replace(tmp, name)
        for i, k in enumerate(keys):
            self.rows[tuple(k)] = (name, i)

    def prune(self, current: list[tuple]) -> int:
        """Delete shards none of whose rows is among ``current`` keys; returns how many were deleted."""
        keep = {self.rows[tuple(k)][0] for k in current if tuple(k) in self.rows}
        gone = 0
        for shard in {s for s, _ in self.rows.values()} - keep:
            shard.unlink(missing_ok=True)
            gone += 1
        self.rows = {k: v for k, v in self.rows.items() if v[0] in keep}
        return gone

    def chunks(self, keys: list[tuple], chunk: int):
        """The embeddings of ``keys`` (all cached), in order, ``chunk`` rows at a time: only the rows of one chunk are
        read into memory (safetensors slices; consecutive rows of a shard in one read)."""
        from safetensors import safe_open

        handles = {}
        try:
            for start in range(0, len(keys), chunk):
                runs = []  # [shard, first row, last row + 1]
                for k in keys[start:start + chunk]:
                    shard, i = self.rows[tuple(k)]
                    if runs and runs[-1][0] == shard and runs[-1][2] == i:
                        runs[-1][2] += 1
                    else:
                        runs.append([shard, i, i + 1])
                part = []
                for shard, a, b in runs:
                    if shard not in handles:
                        handles[shard] = safe_open(str(shard), framework="pt").__enter__()
                    part.append(handles[shard].get_slice("embeddings")[a:b])
                yield torch.cat(part)
        finally:
            for h in handles.values():
                h.__exit__(None, None, None)
