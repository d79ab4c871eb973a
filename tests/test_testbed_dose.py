"""testbed.dose: pooling reproduce reports over training seeds, the pre-registered halving verdict, the picture."""
from __future__ import annotations

import pytest

from memsafe_cfg.testbed import dose
from memsafe_cfg.testbed import measure as M


def group(rate, n, align):
    return {"exemplar_copy_rate": rate, "copy_rate": rate, "n": n, "align": align}


def report(cfg_rates, dyn_rates, dyn_align=1.0, clean_align=(1.0, 1.0), n=32):
    """A reproduce report with two rows (plain CFG, defaults) over levels 35 and 96."""
    rows = []
    for key, rates, al, cl in (("cfg", cfg_rates, 1.0, clean_align[0]), ("zero_dyn", dyn_rates, dyn_align, clean_align[1])):
        rows.append({"key": key, "method": key, "levels": {lv: group(r, n, al) for lv, r in zip(("35", "96"), rates)},
                     "clean": {"copy_rate": 0.0, "n": 2 * n, "align": cl}})
    return {"rows": rows}


def test_pool_adds_counts_over_seeds_and_intervals_are_wilson():
    p = dose.pool([report((0.5, 1.0), (0.25, 1.0)), report((0.75, 0.5), (0.0, 0.5))])
    c = p["cfg"]["levels"]["35"]
    assert (c["k"], c["n"]) == (16 + 24, 64) and c["rate"] == pytest.approx(40 / 64)
    assert c["ci"] == pytest.approx(list(M.wilson(40, 64)))
    assert p["zero_dyn"]["levels"]["96"]["k"] == 32 + 16


def test_verdict_needs_eligibility_halving_and_both_alignment_budgets():
    v = dose.verdicts(dose.pool([report((0.8, 0.9), (0.4, 0.8))]))
    assert v["35"]["met"] and not v["96"]["met"]  # 80 -> 40 halves; 90 -> 80 does not
    v = dose.verdicts(dose.pool([report((0.5, 0.9), (0.0, 0.8))]))
    assert not v["35"]["eligible"] and not v["35"]["met"]  # plain CFG under 60 %: not a level the must speaks of
    v = dose.verdicts(dose.pool([report((0.8, 0.9), (0.2, 0.8), dyn_align=30 / 32)]))
    assert not v["35"]["met"] and v["35"]["mem_align_lost"] == pytest.approx(2 / 32)  # 6 points of memorized alignment
    v = dose.verdicts(dose.pool([report((0.8, 0.9), (0.2, 0.8), clean_align=(1.0, 0.97))]))
    assert not v["35"]["met"]  # 3 points of clean alignment > 2


def test_picture_draws_a_line_per_method():
    img = dose.picture(dose.pool([report((0.8, 0.9), (0.2, 0.8))]), "t")
    assert img.size == (dose.WIDTH, dose.HEIGHT)
    colors = {c for _, c in img.getcolors(1 << 16)}
    assert dose.guidance.render.COLORS[0] in colors and dose.guidance.render.COLORS[1] in colors


def test_comfy_eval_reports_pool_like_reproduce_reports():
    def lv(own, n, align, clean_align):
        return {"memorized": {"n": n, "own_copy_rate": own, "copy_rate": own, "align": align},
                "clean": {"n": n, "copy_rate": 0.0, "align": clean_align}}
    run = {"sampler": "euler", "scheduler": "normal", "rows": [
        {"key": "stock", "method": "stock", "levels": {"0.35": lv(0.5, 8, 1.0, 1.0), "0.96": lv(1.0, 8, 1.0, 0.5), "all": {}}},
        {"key": "defaults", "method": "defaults", "levels": {"0.35": lv(0.25, 8, 1.0, 1.0), "0.96": lv(0.5, 8, 1.0, 0.5), "all": {}}}]}
    other = dict(run, sampler="dpmpp_2m", rows=[])
    rows = dose.comfy_rows({"samplers": [other, run]}, "euler:normal")["rows"]
    assert [r["key"] for r in rows] == ["stock", "defaults"] and list(rows[0]["levels"]) == ["35", "96"]
    assert rows[0]["clean"]["n"] == 16 and rows[0]["clean"]["align"] == pytest.approx(0.75)
    p = dose.pool([{"rows": rows}, {"rows": rows}])
    assert (p["stock"]["levels"]["96"]["k"], p["stock"]["levels"]["96"]["n"]) == (16, 16)
    v = dose.verdicts(p, "defaults")
    assert v["96"]["halved"] and not v["35"]["eligible"]  # 100 -> 50 halves; plain 50 % is under 60 %
