"""Copy Check's outputs: the plain-text report and the pairs picture (each output beside its nearest reference, the
similarity and file name written under them, copies framed in red)."""
from __future__ import annotations

from collections import Counter

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

CELL, GAP, CAPTION, BORDER = 256, 8, 44, 6
COPY_RED, OK_GREY = (220, 30, 30), (200, 200, 200)


def is_copy(similarity: torch.Tensor, threshold: float) -> torch.Tensor:
    """A copy: similarity strictly above the threshold."""
    return similarity > threshold


def report(sim: torch.Tensor, idx: torch.Tensor, names: list[str], threshold: float, source: str, descriptor: str,
           blind: str, n_refs: int, skipped: list[tuple[str, str]], embedded: int, cached: int) -> str:
    """Per output the nearest and second-nearest reference and their similarities, copy or not; then the threshold
    and its source, what the descriptor cannot see, the references used, the files skipped and why."""
    copies = is_copy(sim[:, 0], threshold)
    lines = [f"Copy Check: {int(copies.sum())} of {len(sim)} outputs are copies (similarity > {threshold:.4f}); "
             f"max similarity {float(sim[:, 0].max()):.4f}",
             f"threshold {threshold:.4f}: {source}",
             f"descriptor: {descriptor}; {blind}",
             f"references: {n_refs} ({embedded} embedded now, {cached} from the cache)"]
    for q in range(len(sim)):
        second = (f"{names[int(idx[q, 1])]} {float(sim[q, 1]):.4f}" if int(idx[q, 1]) >= 0 else "none")
        lines.append(f"output {q}: nearest {names[int(idx[q, 0])]} {float(sim[q, 0]):.4f}; second {second}"
                     f"{'  COPY' if bool(copies[q]) else ''}")
    if skipped:
        why = Counter(r for _, r in skipped)
        lines.append(f"skipped {len(skipped)} files: " + "; ".join(f"{n} {r}" for r, n in why.most_common()))
        lines += [f"  skipped {rel}: {r}" for rel, r in skipped[:50]]
        if len(skipped) > 50:
            lines.append(f"  ... and {len(skipped) - 50} more")
    else:
        lines.append("skipped: none")
    return "\n".join(lines)


def font(px: int):
    """DejaVu Sans at px, else Pillow's default font (scalable where Pillow has it)."""
    try:
        return ImageFont.truetype("DejaVuSans.ttf", px)
    except OSError:
        try:
            return ImageFont.load_default(size=px)
        except TypeError:
            return ImageFont.load_default()


def _tile(image: torch.Tensor) -> Image.Image:
    """IMAGE [H, W, C] -> a CELL x CELL tile, aspect kept, on white (nearest neighbour when enlarging a small image)."""
    a = (image[..., :3].clamp(0, 1).numpy() * 255).round().astype(np.uint8)
    im = Image.fromarray(a)
    s = CELL / max(im.size)
    size = (max(1, round(im.width * s)), max(1, round(im.height * s)))
    im = im.resize(size, Image.NEAREST if s >= 1 else Image.LANCZOS)
    tile = Image.new("RGB", (CELL, CELL), (255, 255, 255))
    tile.paste(im, ((CELL - im.width) // 2, (CELL - im.height) // 2))
    return tile


def _short(name: str, width: int = 34) -> str:
    return name if len(name) <= width else "..." + name[-(width - 3):]


def pairs(outputs: torch.Tensor, nearest: list[torch.Tensor], sim: torch.Tensor, names: list[str], threshold: float):
    """IMAGE [B, CELL + 2 BORDER + CAPTION, 2 CELL + GAP + 2 BORDER, 3]: output left, nearest reference right."""
    face = font(15)
    out = []
    for q in range(len(outputs)):
        copy = bool(sim[q] > threshold)
        w, h = 2 * CELL + GAP + 2 * BORDER, CELL + 2 * BORDER + CAPTION
        pic = Image.new("RGB", (w, h), COPY_RED if copy else OK_GREY)
        pic.paste(Image.new("RGB", (w - 2 * BORDER, h - 2 * BORDER), (255, 255, 255)), (BORDER, BORDER))
        pic.paste(_tile(outputs[q]), (BORDER, BORDER))
        pic.paste(_tile(nearest[q]), (BORDER + CELL + GAP, BORDER))
        d = ImageDraw.Draw(pic)
        verdict = f"> {threshold:.4f}  COPY" if copy else f"<= {threshold:.4f}  no copy"
        d.text((BORDER + 4, BORDER + CELL + 4), f"output {q}   similarity {float(sim[q]):.4f} {verdict}",
               font=face, fill=COPY_RED if copy else (40, 40, 40))
        d.text((BORDER + 4, BORDER + CELL + 23), f"nearest: {_short(names[q], 56)}", font=face, fill=(70, 70, 70))
        out.append(torch.from_numpy(np.asarray(pic, dtype=np.float32) / 255.0))
    return torch.stack(out)
