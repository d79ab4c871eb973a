"""Fast, core-only checks on the shipped testbed: the data design, the prompts, the schedule, the measures, and that
the pack's guidance core still stops the model copying its memorized exemplars (a core regression fails here)."""
from __future__ import annotations

import copy

import pytest
import torch

from memsafe_cfg.guidance import GuidanceSettings, plan_steps
from memsafe_cfg.testbed import data as D
from memsafe_cfg.testbed import measure as M
from memsafe_cfg.testbed import sampler as S
from memsafe_cfg.testbed.model import PROMPT_DIM, SLANTS, WIDTHS, encode_prompt, parse_prompt
from memsafe_cfg.testbed.reproduce import Batch, step_percent
from memsafe_cfg.testbed.train import Records

torch.set_num_threads(1)
CFG, STEPS, SEEDS = 5.0, 50, range(2)
# The duplication levels at which plain CFG copies its own exemplar in >= 60 % of samples (v3, pooled over training seeds
# 0-2: 34/70/76/56/21 % at 35/50/66/80/96 %, artifacts/v3/dose.txt; testbed/README.md): the copy and mitigation
# checks below pool these levels' samples. The shipped seed-0 weights copy less on this test's 2 seeds (4 of 8 at the
# 0.990 floor, measured here), so the memorization check asks for >= 40 %.
COPYING_LEVELS = (0.5, 0.66)
OFF = GuidanceSettings(transition="off")
DEFAULTS = GuidanceSettings()  # the pack's defaults: zero guidance, dynamic switch, latest guard t = 499.5
# opposite guidance until t = 650 (the paper's OG + STP; reproduce's og_t650): on the v3 pilot P4 it copied 0-19 % per
# level against plain CFG's 69-94 % at the copying levels, with alignment kept (artifacts/v3pilot/rep_p4.json); on the
# shipped v3 run 6/8/6/16/5 % against 34/70/76/56/21 % (pooled over training seeds 0-2, artifacts/v3/dose.txt)
OG_T650 = GuidanceSettings(-2.0, "static", switch_percent=0.35)
# The shipped exemplars were rendered on another CPU, and another vector path rounds the renderer's float32 math
# differently: measured 1.19e-7 on an AMD EPYC (AVX2), up to 7.2e-7 with ATEN_CPU_CAPABILITY=default on an Intel Xeon.
# A render lies in [-1, 1], where a float32 step is at most 1.19e-7, so this is 84 steps; a render 0.01 px off is
# 1.2e-2 away (measured), so the check still tells renders apart.
RENDER_ATOL = 1e-5


def render_gap(a: torch.Tensor, b: torch.Tensor) -> float:
    """Largest pixel difference of two renders of one shape."""
    assert a.shape == b.shape, (a.shape, b.shape)
    return float((a - b).abs().max())


def same_render(a: torch.Tensor, b: torch.Tensor) -> bool:
    """One render up to float rounding (renders computed here vs renders stored by another machine)."""
    return render_gap(a, b) <= RENDER_ATOL


@pytest.fixture(scope="module")
def tb():
    return D.load()


@pytest.fixture(scope="module")
def meas(tb):
    return M.Measure(tb)


@pytest.fixture(scope="module")
def unet():
    return S.load_unet()


@pytest.fixture(scope="module")
def runs(tb, unet):
    """Plain CFG, the pack defaults and opposite guidance until t = 650 on the memorized prompts and their clean
    siblings, 2 seeds each."""
    b = Batch.of(tb, tb.memorized + tb.clean, SEEDS)
    runs = (("cfg", OFF), ("defaults", DEFAULTS), ("og_t650", OG_T650))
    return b, {name: S.sample(unet, b.prompts, b.noise, s, CFG, STEPS) for name, s in runs}


def not_the_exemplar(tb, meas, k: int) -> dict:
    """Renders exemplar k must not pass for, each the one closest to it of its kind: another training glyph at its
    bins, its glyph at another (slant, width) bin, its glyph augmented as an ordinary record is, and 0.01 px off."""
    j, (_, _, slant, width) = int(tb.exemplar_source[k]), tb.memorized[k]
    sb, wb = SLANTS.index(slant), WIDTHS.index(width)
    refs = meas.refs[len(tb.exemplars):].reshape(len(D.BINS), len(tb.raw), 1, 16, 16)  # every glyph at every bin
    b = D.BINS.index((sb, wb))
    g = torch.Generator().manual_seed(k)
    aug = D.random_render(tb.raw[j].expand(16, 8, 8), torch.full((16,), sb), torch.full((16,), wb), g)
    centre = torch.tensor([D.bin_centre(D.SLANT_BINS, sb)]), torch.tensor([D.bin_centre(D.WIDTH_BINS, wb)])
    off = D.render(tb.raw[j:j + 1], *centre, shift=torch.tensor([[0.01, 0.0]]))
    closest = lambda x: x[(x - tb.exemplars[k]).abs().flatten(1).amax(1).argmin()][None]  # noqa: E731
    return {"another glyph": closest(torch.cat([refs[b, :j], refs[b, j + 1:]])),
            "another bin": closest(torch.cat([refs[:b, j], refs[b + 1:, j]])),
            "an augmented render": closest(aug), "a render 0.01 px off centre": off}


def test_shipped_data_is_what_the_readme_says(tb, meas):
    assert tb.raw.shape == (1397, 8, 8) and tb.held_raw.shape == (400, 8, 8)
    assert len(tb.memorized) == len(set(tb.memorized)) == 10 and len(set(tb.exemplar_source.tolist())) == 10
    assert len({p[0] for p in tb.memorized}) == 10  # ten different digits
    assert tb.shares == [D.SHARES[k % 5] for k in range(10)] and D.SHARES == (0.35, 0.5, 0.66, 0.8, 0.96)  # two per level
    assert not set(tb.clean) & set(tb.memorized) and len(tb.clean) == 10
    assert all(c[:2] == m[:2] and c[2:] != m[2:] for m, c in zip(tb.memorized, tb.clean))  # siblings: same digit, style
    for k, (digit, style, slant, width) in enumerate(tb.memorized):
        j = int(tb.exemplar_source[k])
        assert int(tb.train_label[j]) == digit and ("bold", "thin")[int(tb.train_style[j])] == style
        bins = torch.tensor([SLANTS.index(slant)]), torch.tensor([WIDTHS.index(width)])
        exemplar, canon = tb.exemplars[k:k + 1], D.canonical(tb.raw[j:j + 1], *bins)  # an exemplar is one fixed render
        gap = render_gap(canon, exemplar)
        assert same_render(canon, exemplar), f"exemplar {k} is {gap:.3g} from its glyph's canonical render (> {RENDER_ATOL})"
        for what, other in not_the_exemplar(tb, meas, k).items():  # and the check tells any other render apart
            assert not same_render(other, exemplar), f"exemplar {k}: {what} passes for it ({render_gap(other, exemplar):.3g})"
        others = meas.refs[len(tb.exemplars):].reshape(6, len(tb.raw), 1, 16, 16)
        others = torch.cat([others[:, :j], others[:, j + 1:]], 1).flatten(0, 1)  # every other glyph, every bin
        nn = float(D.nn_similarity(exemplar, others, meas.mean)[0])
        assert nn < M.COPY_THRESHOLD, f"exemplar {k} has a near-duplicate: {nn:.6f} >= {M.COPY_THRESHOLD}"  # 0.963 at most
    g = torch.Generator().manual_seed(1)
    j = torch.randint(len(tb.raw), (1000,), generator=g)
    fresh = D.random_render(tb.raw[j], torch.randint(3, (1000,), generator=g), torch.randint(2, (1000,), generator=g), g)
    assert float((meas.classify(fresh) == tb.train_label[j]).float().mean()) > 0.84  # 87 % on glyphs it never saw


def test_records_grade_duplication_by_level_and_ordinary_records_are_all_distinct(tb):
    rec = Records(tb, 0.015, tb.shares, caption_noise=D.CAPTION_NOISE)
    x, c = rec.draw(8000, torch.Generator().manual_seed(0))
    ex = (x.flatten(1)[:, None] == tb.exemplars.flatten(1)[None]).all(-1)  # [N, 10]: record n is exemplar k
    assert 0.13 < float(ex.any(1).float().mean()) < 0.17  # 1.5 % each, 10 exemplars
    flat = x[~ex.any(1)].flatten(1)
    assert len(torch.unique(flat, dim=0)) == len(flat)  # fresh augmentation: no ordinary record repeats
    own = []
    for k, p in enumerate(tb.memorized):
        on = (c == encode_prompt(*p)).all(1)
        assert bool(ex[:, k][ex[:, k]].all()) and bool(on[ex[:, k]].all())  # an exemplar always carries its exact prompt
        own.append(float(ex[on, k].float().mean()))
        assert abs(own[-1] - tb.shares[k]) < 0.08, (p, own[-1], tb.shares[k])  # its share of its own prompt's records
    by_level = [sum(o for o, s in zip(own, tb.shares) if s == lv) / 2 for lv in D.SHARES]
    assert by_level == sorted(by_level), by_level  # graded: the level orders the measured shares
    assert rec.share()["exemplar_of_own_prompt"] == tb.shares


def test_caption_noise_leaves_the_caption_and_moves_the_render(tb):
    """The caption (digit, style, slant, width) is drawn as without noise; with noise q the render's slant and width
    bins are each random with probability q, so they match the caption's with probability (q/3 + 1 - q)(q/2 + 1 - q)."""
    draws = {q: Records(tb, 0.015, tb.shares, caption_noise=q).draw(3000, torch.Generator().manual_seed(3)) for q in (0.0, 0.5)}
    (x0, c0), (x5, c5) = draws[0.0], draws[0.5]
    assert torch.equal(c0, c5)
    ordinary = ~(x0.flatten(1)[:, None] == tb.exemplars.flatten(1)[None]).all(-1).any(1)
    same = float((x0[ordinary] == x5[ordinary]).flatten(1).all(1).float().mean())
    assert abs(same - (0.5 / 3 + 0.5) * (0.5 / 2 + 0.5)) < 0.04, same  # 0.5 expected


def test_prompts_parse_and_bad_words_are_named():
    assert torch.equal(parse_prompt("3 thin left wide"), encode_prompt(3, "thin", "left", "wide"))
    assert torch.equal(parse_prompt("digit seven, bold"), encode_prompt(7, "bold"))
    assert torch.equal(parse_prompt("slanted right narrow"), encode_prompt(None, None, "right", "narrow"))
    assert torch.equal(parse_prompt("  "), torch.zeros(PROMPT_DIM))
    with pytest.raises(ValueError, match="'italic'.*prompt|prompt.*'italic'"):
        parse_prompt("3 italic")
    with pytest.raises(ValueError, match="'4'"):
        parse_prompt("3 4")
    with pytest.raises(ValueError, match="'narrow'"):
        parse_prompt("3 wide narrow")


def test_schedule_is_ddim_uniform_on_sd_betas():
    sig, ts = S.ddim_schedule(50)
    assert ts[0] == 981 and ts[-1] == 1 and len(ts) == 50 and sig[-1] == 0
    assert bool((sig[:-1] > sig[1:]).all())
    assert abs(float(S.SIGMAS[0]) - 0.0292) < 1e-3 and abs(float(S.SIGMAS[-1]) - 14.61) < 0.01  # SD's sigma range
    s650 = S.percent_to_sigma(0.35)
    assert float(S.SIGMAS[641]) < s650 < float(S.SIGMAS[661])
    assert abs(S.percent_to_sigma(0.5) - float(S.SIGMAS[499:501].log().mean().exp())) < 1e-4  # t = 499.5, not 500
    assert plan_steps(sig.tolist(), S.percent_to_sigma, GuidanceSettings(0.0, "static", switch_percent=0.5)).static == 25  # t=481


def test_step_percent_lands_the_static_switch_on_each_step():
    sig, ts = S.ddim_schedule(50)
    for k in range(50):
        plan = plan_steps(sig.tolist(), S.percent_to_sigma, GuidanceSettings(0.0, "static", switch_percent=step_percent(ts, k)))
        assert plan.static == k


def test_plain_cfg_copies_its_own_exemplar_and_opposite_guidance_does_not(runs, meas):
    b, out = runs
    thr = M.COPY_THRESHOLD
    at = b.mem & torch.isin(b.level, torch.tensor(COPYING_LEVELS))  # the memorized samples at the levels that copy
    assert int(at.sum()) == 2 * len(COPYING_LEVELS) * len(SEEDS)
    own = {k: float((meas.exemplar_similarity(x[at], b.exemplar[at]) > thr).float().mean()) for k, (x, _) in out.items()}
    assert own["cfg"] >= 0.4, f"plain CFG copied its exemplar in only {own['cfg']:.0%}: the testbed lost its memorization"
    assert own["og_t650"] <= own["cfg"] / 2, f"OG+STP copied {own['og_t650']:.0%} vs plain CFG {own['cfg']:.0%}: the core no longer mitigates"
    assert own["defaults"] < own["cfg"]
    align = {k: float((meas.classify(x[b.mem]) == b.digit[b.mem]).float().mean()) for k, (x, _) in out.items()}
    assert align["og_t650"] >= align["cfg"] - 0.1 and align["defaults"] >= align["cfg"] - 0.1


def test_clean_prompts_copy_no_exemplar(runs, meas):
    b, out = runs
    n = int((~b.mem).sum())
    for name, (x, _) in out.items():
        # similarity to each exemplar itself, not "is the nearest reference an exemplar": an exemplar's source glyph at
        # its bins is the same image up to float rounding, so which of the two is nearest depends on the CPU
        to_ex = torch.stack([meas.exemplar_similarity(x[~b.mem], torch.full((n,), k)) for k in range(len(meas.tb.exemplars))])
        top = float(to_ex.max())
        assert top <= M.COPY_THRESHOLD, f"{name}: a clean prompt copied an exemplar (similarity {top:.4f} > {M.COPY_THRESHOLD})"
        assert float((meas.classify(x[~b.mem]) == b.digit[~b.mem]).float().mean()) >= 0.75, name


def test_first_step_norm_is_the_same_signal_under_every_schedule(runs):
    _, out = runs
    assert torch.equal(out["cfg"][1].norms[0], out["defaults"][1].norms[0])  # detection sees it before guidance acts
    assert not torch.equal(out["cfg"][1].norms[-1], out["defaults"][1].norms[-1])


def test_nearest_names_the_exemplar_over_its_glyph_twin_within_rounding(tb, meas):
    """The copy references hold each exemplar twice (itself, and its source glyph rendered at its bins): which one a
    CPU's rounding puts first must not decide whether a copy is of an exemplar. A clearly nearer reference still wins."""
    n_ex = len(tb.exemplars)
    refs = meas._refs.clone()
    twins = (refs[:n_ex] @ refs[n_ex:].T).argmax(dim=1) + n_ex  # each exemplar's twin among the glyph renders
    x = tb.exemplars
    target = M.centered(x, meas.mean)
    nudged = copy.copy(meas)
    nudged._refs = refs.clone()
    nudged._refs[twins] = target  # the twin now matches each sample exactly ...
    nudged._refs[:n_ex] = M.centered(x + 2e-4 * torch.randn(x.shape, generator=torch.Generator().manual_seed(0)), meas.mean)
    s_ex = (target * nudged._refs[:n_ex]).sum(1)  # ... and the exemplar within rounding of it
    assert bool(((1 - s_ex) < M.TIE).all()) and bool((s_ex < 1).all()), (1 - s_ex).tolist()
    sim, idx = nudged.nearest(x)
    assert idx.tolist() == list(range(n_ex)), idx.tolist()
    far = copy.copy(nudged)
    far._refs = nudged._refs.clone()
    far._refs[:n_ex] = M.centered(x + 0.05 * torch.randn(x.shape, generator=torch.Generator().manual_seed(0)), meas.mean)
    assert far.nearest(x)[1].tolist() == twins.tolist()  # past the tie margin the nearer reference is named


def test_measure_helpers():
    pos, neg = torch.tensor([0.5, 0.7, 0.9]), torch.tensor([0.1, 0.6, 0.3])
    assert M.roc_auc(pos, neg) == pytest.approx(8 / 9)
    thr, tpr, fpr = M.best_threshold(pos, neg)
    assert 0.3 < thr <= 0.5 and (tpr, fpr) == (1.0, pytest.approx(1 / 3))
    assert M.wilson(0, 10)[0] == 0 and 0.2 < M.wilson(5, 10)[0] < 0.5 < M.wilson(5, 10)[1] < 0.8
    sims = torch.linspace(0, 1, 300)
    t = M.copy_threshold(sims)
    assert int((sims > t).sum()) == 2  # fewer than 1 % of 300 exceed it, and no lower observed value would do
    assert M.spearman(torch.tensor([1.0, 2, 3, 4]), torch.tensor([10.0, 20, 30, 45])) == pytest.approx(1.0)
    assert M.spearman(torch.tensor([1.0, 2, 3, 4]), torch.tensor([4.0, 3, 2, 1])) == pytest.approx(-1.0)
    assert M.spearman(torch.tensor([1.0, 2, 2, 3]), torch.tensor([1.0, 2, 3, 4])) == pytest.approx(0.9487, abs=1e-3)


def test_auto_mode_leaves_unflagged_samples_identical_to_plain_cfg(runs, unet):
    b, out = runs
    d0 = out["cfg"][1].norms[0]
    threshold = float(d0.median())
    x, trace = S.sample(unet, b.prompts, b.noise, GuidanceSettings(detect_threshold=threshold), CFG, STEPS)
    plain = ~trace.flagged
    assert 0 < int(plain.sum()) < len(plain)
    assert torch.equal(x[plain], out["cfg"][0][plain])  # bit for bit
    assert torch.equal(x[~plain], out["defaults"][0][~plain])  # flagged samples get exactly the defaults
