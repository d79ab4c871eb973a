"""Draw docs/icon.png (the registry icon, 400 x 400) in the curve renderer's style: a guidance-norm curve that is
high inside the attraction basin, falls to its first local minimum, and switches to CFG there (diamond), over the
shaded pre-transition phase; and docs/banner.png (21:9) from the help pages' pictures of a real testbed run
(js/docs/, written by ``tests/build_example_workflows.py --thumbnails``).  Run: ``python docs/icon.py`` (Pillow)."""
from __future__ import annotations

import math
from pathlib import Path

from PIL import Image, ImageDraw

SIZE, SS = 400, 4  # drawn at 4x and downsampled: smooth edges without an anti-aliasing library
BLUE, SHADE, INK = (31, 119, 180), (255, 236, 200), (40, 40, 40)


def norm_curve(t: float) -> float:
    """A made-up but typical memorized-prompt curve on t in [0, 1]: high early, a dip, then low and flat."""
    return 0.18 + 0.62 * math.exp(-((t - 0.05) / 0.22) ** 2) + 0.08 * math.exp(-((t - 0.62) / 0.2) ** 2)


def draw(path: Path) -> None:
    s = SIZE * SS
    img = Image.new("RGB", (s, s), (255, 255, 255))
    d = ImageDraw.Draw(img)
    d.rounded_rectangle([0, 0, s - 1, s - 1], radius=60 * SS, fill=(250, 250, 252), outline=(210, 210, 218), width=6 * SS)
    x0, x1, y0, y1 = 60 * SS, 350 * SS, 330 * SS, 60 * SS  # plot box: y0 is the bottom
    ts = [i / 200 for i in range(201)]
    vals = [norm_curve(t) for t in ts]
    k = next(i for i in range(1, 200) if vals[i] < vals[i - 1] and vals[i] <= vals[i + 1])  # first local minimum
    xs = [x0 + t * (x1 - x0) for t in ts]
    ys = [y0 - v * (y0 - y1) for v in vals]
    d.rectangle([x0, y1, xs[k], y0], fill=SHADE)
    d.line([xs[k], y1, xs[k], y0], fill=(150, 150, 150), width=4 * SS)
    d.line([(x0, y1), (x0, y0), (x1, y0)], fill=INK, width=7 * SS, joint="curve")
    w = 7 * SS
    for i in range(len(ts) - 1):  # stamped discs: PIL's wide polylines leave notches at the joints
        for f in (0.0, 0.25, 0.5, 0.75):
            px, py = xs[i] + f * (xs[i + 1] - xs[i]), ys[i] + f * (ys[i + 1] - ys[i])
            d.ellipse([px - w, py - w, px + w, py + w], fill=BLUE)
    r = 26 * SS
    cx, cy = xs[k], ys[k]
    d.polygon([(cx, cy - r), (cx + r, cy), (cx, cy + r), (cx - r, cy)], fill=(214, 39, 40), outline=(255, 255, 255))
    img.resize((SIZE, SIZE), Image.LANCZOS).save(path, optimize=True)


def banner(path: Path, width: int = 1470, height: int = 630) -> None:
    from PIL import ImageFont

    def font(px):
        try:
            return ImageFont.truetype("DejaVuSans.ttf", px)
        except OSError:
            return ImageFont.load_default(size=px)

    docs = Path(__file__).resolve().parents[1] / "js" / "docs"
    img = Image.new("RGB", (width, height), (250, 250, 252))
    d = ImageDraw.Draw(img)
    icon = Image.open(path.with_name("icon.png")).resize((150, 150), Image.LANCZOS)
    img.paste(icon, (50, 50))
    d.text((225, 62), "Memorization-Safe CFG", font=font(64), fill=(30, 30, 30))
    d.text((228, 145), "for ComfyUI: hold guidance off inside the attraction basin", font=font(30), fill=(80, 80, 80))
    samples = Image.open(docs / "testbed-samples.png")
    samples = samples.resize((int(samples.width * 350 / samples.height), 350), Image.LANCZOS)
    img.paste(samples, (50, 225))
    curve = Image.open(docs / "testbed-curve.png")
    if curve.width > 2 * curve.height:  # norm and d x sigma side by side: the banner shows the norm (left half)
        curve = curve.crop((0, 0, curve.width // 2, curve.height))
    curve = curve.resize((int(curve.width * 350 / curve.height), 350), Image.LANCZOS)
    img.paste(curve, (width - curve.width - 50, 225))
    d.text((50, height - 18), "a real run of the pack's testbed model: stock CFG copies a training image, the "
           "Memorization-Safe KSampler (opposite guidance, dynamic) does not; right: its guidance-norm curve", font=font(15), fill=(110, 110, 110),
           anchor="ls")
    img.save(path.with_name("banner.png"), optimize=True)


if __name__ == "__main__":
    draw(Path(__file__).with_name("icon.png"))
    banner(Path(__file__).with_name("icon.png"))
