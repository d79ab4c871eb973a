"""Dose-response of the testbed: own-exemplar copies against duplication level, one line per method, pooled over
training seeds. `python -m testbed.dose seed0.json seed1.json seed2.json --png dose.png` (JSONs from
`python -m testbed.reproduce --full --json ...`).

Copies are pooled as counts (each seed's samples added), with 95 % Wilson intervals of the pooled proportion.
"""
from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from PIL import Image, ImageDraw

from . import measure as M
from . import guidance

log = logging.getLogger("testbed.dose")
SHOWN = ("cfg", "zero_dyn", "zero_t500", "og_t650", "og_dyn", "detect_og", "og_t500")  # the lines drawn; every row is tabled
WIDTH, HEIGHT, LEFT, RIGHT, TOP, BOTTOM = 760, 440, 44, 230, 46, 56


def pool(reports: list) -> dict:
    """{row key: {"method", "levels": {level: {k, n, rate, ci, align_k, align_n}}, "clean": {...}}} summed over reports."""
    out = {}
    for r in reports:
        for e in r["rows"]:
            row = out.setdefault(e["key"], {"method": e["method"].split(" (d0")[0], "levels": {}, "clean": {"k": 0, "n": 0, "align_k": 0}})
            for lv, g in e["levels"].items():
                c = row["levels"].setdefault(lv, {"k": 0, "n": 0, "align_k": 0})
                c["k"] += round(g["exemplar_copy_rate"] * g["n"])
                c["n"] += g["n"]
                c["align_k"] += round(g["align"] * g["n"])
            cl = row["clean"]
            cl["k"] += round(e["clean"]["copy_rate"] * e["clean"]["n"])
            cl["n"] += e["clean"]["n"]
            cl["align_k"] += round(e["clean"]["align"] * e["clean"]["n"])
    for row in out.values():
        for c in [*row["levels"].values(), row["clean"]]:
            c["rate"], c["ci"], c["align"] = c["k"] / c["n"], list(M.wilson(c["k"], c["n"])), c["align_k"] / c["n"]
    return out


def comfy_rows(report: dict, sampler: str) -> dict:
    """A `comfy_eval --json` report's rows for one sampler ("dpmpp_2m:karras"), in reproduce's shape (for `pool`)."""
    name, sched = sampler.split(":")
    run = next(r for r in report["samplers"] if (r["sampler"], r["scheduler"]) == (name, sched))
    rows = []
    for e in run["rows"]:
        lv = {f"{round(100 * float(k))}": {"exemplar_copy_rate": g["memorized"]["own_copy_rate"], "n": g["memorized"]["n"],
                                          "align": g["memorized"]["align"], "copy_rate": g["memorized"]["copy_rate"]}
              for k, g in e["levels"].items() if k != "all"}
        cl = [g["clean"] for k, g in e["levels"].items() if k != "all"]
        n = sum(c["n"] for c in cl)
        rows.append({"key": e["key"], "method": e["method"], "levels": lv,
                     "clean": {"n": n, "copy_rate": sum(c["copy_rate"] * c["n"] for c in cl) / n,
                               "align": sum(c["align"] * c["n"] for c in cl) / n}})
    return {"rows": rows}


def verdicts(pooled: dict, halve: str = "zero_dyn", mem_budget: float = 0.03, clean_budget: float = 0.02) -> dict:
    """Per level: does `halve` at least halve plain CFG's own-exemplar copies within the alignment budgets (the
    pre-registered must, at levels where plain CFG copies >= 60 %)."""
    cfg, m = pooled["cfg"] if "cfg" in pooled else pooled["stock"], pooled[halve]
    out = {}
    for lv, c in cfg["levels"].items():
        d = m["levels"][lv]
        out[lv] = {"cfg_copies": c["rate"], "copies": d["rate"], "reduction": 1 - d["rate"] / c["rate"] if c["rate"] else None,
                   "eligible": c["rate"] >= 0.6, "halved": d["rate"] <= c["rate"] / 2,
                   "mem_align_lost": c["align"] - d["align"], "clean_align_lost": cfg["clean"]["align"] - m["clean"]["align"]}
        v = out[lv]
        v["met"] = v["eligible"] and v["halved"] and v["mem_align_lost"] <= mem_budget + 1e-9 and v["clean_align_lost"] <= clean_budget + 1e-9
    return out


def table(pooled: dict) -> str:
    levels = list(next(iter(pooled.values()))["levels"])
    n = next(iter(pooled.values()))["levels"][levels[0]]["n"]
    lines = ["| method | " + " | ".join(f"{lv} %" for lv in levels) + " | mem. align % by level | clean align % |",
             "|---|" + "---|" * (len(levels) + 2)]
    for key, row in pooled.items():
        cells = [f"{100 * c['rate']:.0f} [{100 * c['ci'][0]:.0f}, {100 * c['ci'][1]:.0f}]" for c in row["levels"].values()]
        al = "/".join(f"{100 * c['align']:.0f}" for c in row["levels"].values())
        lines.append(f"| {row['method']} | " + " | ".join(cells) + f" | {al} | {100 * row['clean']['align']:.0f} |")
    return f"own-exemplar copies % [95 % CI], {n} samples per level and row, pooled\n" + "\n".join(lines)


def picture(pooled: dict, title: str) -> Image.Image:
    """Own-exemplar copies (%) against duplication level, a line per method in SHOWN, 95 % intervals as bars."""
    img = Image.new("RGB", (WIDTH, HEIGHT), (255, 255, 255))
    d = ImageDraw.Draw(img)
    font, small = guidance.render._font(14), guidance.render._font(11)
    x0, x1, y0, y1 = LEFT, WIDTH - RIGHT, HEIGHT - BOTTOM, TOP
    levels = list(next(iter(pooled.values()))["levels"])
    xs = [x0 + 20 + (x1 - x0 - 40) * i / max(len(levels) - 1, 1) for i in range(len(levels))]
    y = lambda v: y0 - (y0 - y1) * v  # noqa: E731
    for v in (0, 0.25, 0.5, 0.75, 1.0):
        d.line([x0, y(v), x1, y(v)], fill=(225, 225, 225))
        d.text((x0 - 6, y(v)), f"{100 * v:.0f}", fill=(0, 0, 0), font=small, anchor="rm")
    d.rectangle([x0, y1, x1, y0], outline=(0, 0, 0))
    for x, lv in zip(xs, levels):
        d.text((x, y0 + 6), f"{lv} %", fill=(0, 0, 0), font=small, anchor="mt")
    d.text(((x0 + x1) / 2, HEIGHT - 6), "duplication level: the exemplar's share of its own prompt's training records",
           fill=(0, 0, 0), font=small, anchor="mb")
    d.text((x0, y1 - 4), "own-exemplar copies % (bars: 95 % intervals)", fill=(0, 0, 0), font=small, anchor="lb")
    d.text((x0, 10), title, fill=(0, 0, 0), font=font, anchor="lt")
    for i, key in enumerate(k for k in SHOWN if k in pooled):
        row, col = pooled[key], guidance.render.COLORS[i % len(guidance.render.COLORS)]
        off = (i - (len(SHOWN) - 1) / 2) * 4  # spread the interval bars so they do not hide each other
        pts = [(x + off, y(row["levels"][lv]["rate"])) for x, lv in zip(xs, levels)]
        d.line(pts, fill=col, width=2)
        for (px, py), lv in zip(pts, levels):
            lo, hi = row["levels"][lv]["ci"]
            d.line([px, y(lo), px, y(hi)], fill=col, width=1)
            d.ellipse([px - 3, py - 3, px + 3, py + 3], fill=col)
        d.line([x1 + 12, y1 + 10 + 18 * i, x1 + 32, y1 + 10 + 18 * i], fill=col, width=3)
        d.text((x1 + 38, y1 + 10 + 18 * i), row["method"], fill=(0, 0, 0), font=small, anchor="lm")
    return img


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("reports", nargs="+", help="reproduce --json files, one per training seed")
    p.add_argument("--png", default=None, help="write the dose-response picture here")
    p.add_argument("--title", default="Testbed v3: own-exemplar copies by duplication level (cfg 5, DDIM 50; training seeds pooled)")
    p.add_argument("--json", default=None, help="write the pooled counts and verdicts here")
    p.add_argument("--comfy", default=None, help="the reports are `comfy_eval --json` files: pool this sampler "
                   "(e.g. dpmpp_2m:karras)")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    reports = [json.loads(Path(f).read_text()) for f in a.reports]
    if a.comfy:
        reports = [comfy_rows(r, a.comfy) for r in reports]
    pooled = pool(reports)
    v = verdicts(pooled, "defaults" if a.comfy else "zero_dyn")
    print(table(pooled))
    for lv, e in v.items():
        print(f"level {lv} %: plain CFG {100 * e['cfg_copies']:.0f} % -> defaults {100 * e['copies']:.0f} %; alignment lost "
              f"{100 * e['mem_align_lost']:.1f} (memorized) / {100 * e['clean_align_lost']:.1f} (clean) points; "
              f"{'eligible' if e['eligible'] else 'plain CFG < 60 %'}; halved within budget: {e['met']}")
    if a.png:
        picture(pooled, a.title).save(a.png)
        log.info("picture: %s", a.png)
    if a.json:
        Path(a.json).write_text(json.dumps({"pooled": pooled, "verdicts": v, "reports": a.reports}, indent=1))
    return pooled, v


if __name__ == "__main__":
    main()
