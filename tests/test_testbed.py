"""Fast, core-only checks on the shipped testbed: the data, the prompts, the schedule, and that the pack's guidance
core still stops the model copying its memorized exemplars (a core regression that stops mitigating fails here)."""
from __future__ import annotations

import pytest
import torch

from memsafe_cfg.guidance import GuidanceSettings
from memsafe_cfg.testbed import data as D
from memsafe_cfg.testbed import measure as M
from memsafe_cfg.testbed import sampler as S
from memsafe_cfg.testbed.model import PROMPT_DIM, encode_prompt, parse_prompt

torch.set_num_threads(1)
CFG, STEPS, SEEDS = 5.0, 50, range(4)
MEM = [D.MEMORIZED[d] for d in (0, 4, 8)]
CLEAN = [D.CLEAN[d] for d in (3, 5, 9)]  # not '1 thin': thin ones are so alike that any sample is near one
OFF = GuidanceSettings(transition="off")
OG_STATIC = GuidanceSettings(-2.0, "static", switch_percent=0.35)  # the paper's OG+STP (opposite -2 until t=650)


@pytest.fixture(scope="module")
def tb():
    return D.load()


@pytest.fixture(scope="module")
def unet():
    return S.load_unet()


def batch(prompts):
    """Every prompt with every seed of SEEDS: (prompt vectors, noise, digits)."""
    rows = [(d, s, seed) for d, s in prompts for seed in SEEDS]
    return (torch.stack([encode_prompt(d, s) for d, s, _ in rows]), S.noise_for([r[2] for r in rows]),
            torch.tensor([r[0] for r in rows]))


@pytest.fixture(scope="module")
def runs(unet):
    """Plain CFG and OG+STP on 3 memorized and 3 clean prompts, 4 seeds each (one batch per method)."""
    prompts = MEM + CLEAN
    p, noise, digit = batch(prompts)
    out = {name: S.sample(unet, p, noise, s, CFG, STEPS) for name, s in (("cfg", OFF), ("og", OG_STATIC))}
    mem = torch.arange(len(p)) < 3 * len(SEEDS)
    return out, mem, digit


def test_shipped_data_is_what_the_readme_says(tb):
    assert tb.train.shape == (1397, 1, 16, 16) and tb.held.shape == (400, 1, 16, 16)
    assert float(tb.train.min()) >= -1 and float(tb.train.max()) <= 1
    assert sorted(tb.exemplar) == sorted(D.MEMORIZED)
    for (digit, style), i in tb.exemplar.items():
        assert int(tb.train_label[i]) == digit and ("bold", "thin")[int(tb.train_style[i])] == style
        others = torch.cat([tb.train[:i], tb.train[i + 1:]])
        sim, _ = D.nn_similarity(tb.train[i:i + 1], others, tb.mean)
        assert float(sim) < M.COPY_THRESHOLD  # the exemplar has no near-duplicate: a copy of it is memorization
    assert float((M.classify(tb, tb.train) == tb.train_label).float().mean()) > 0.9


def test_prompts_parse_and_bad_words_are_named():
    assert torch.equal(parse_prompt("3 bold"), encode_prompt(3, "bold"))
    assert torch.equal(parse_prompt("digit seven, thin"), encode_prompt(7, "thin"))
    assert torch.equal(parse_prompt("  "), torch.zeros(PROMPT_DIM))
    with pytest.raises(ValueError, match="'italic'.*prompt|prompt.*'italic'"):
        parse_prompt("3 italic")
    with pytest.raises(ValueError, match="'4'"):
        parse_prompt("3 4")


def test_schedule_is_ddim_uniform_on_sd_betas():
    sig, ts = S.ddim_schedule(50)
    assert ts[0] == 981 and ts[-1] == 1 and len(ts) == 50 and sig[-1] == 0
    assert bool((sig[:-1] > sig[1:]).all())
    assert abs(float(S.SIGMAS[0]) - 0.0292) < 1e-3 and abs(float(S.SIGMAS[-1]) - 14.61) < 0.01  # SD's sigma range
    s650 = S.percent_to_sigma(0.35)
    assert float(S.SIGMAS[641]) < s650 < float(S.SIGMAS[661])


def test_plain_cfg_copies_memorized_prompts_and_og_static_does_not(runs, tb):
    out, mem, digit = runs
    copies = {k: M.nearest(tb, x)[0] > M.COPY_THRESHOLD for k, (x, _) in out.items()}
    plain, og = float(copies["cfg"][mem].float().mean()), float(copies["og"][mem].float().mean())
    assert plain >= 0.5, f"plain CFG copied only {plain:.0%} of memorized samples: the testbed lost its memorization"
    assert og <= plain / 2, f"OG+STP copied {og:.0%} vs plain CFG {plain:.0%}: the core no longer mitigates"
    align = {k: float((M.classify(tb, x[mem]) == digit[mem]).float().mean()) for k, (x, _) in out.items()}
    assert align["og"] >= align["cfg"] - 0.25


def test_clean_prompts_are_not_copied(runs, tb):
    out, mem, digit = runs
    exemplars = torch.tensor(sorted(tb.exemplar.values()))
    for name, (x, _) in out.items():
        sim, idx = M.nearest(tb, x[~mem])
        assert float((sim > M.COPY_THRESHOLD).float().mean()) <= 0.25, name
        assert not bool(torch.isin(idx[sim > M.COPY_THRESHOLD], exemplars).any()), f"{name}: a clean prompt copied an exemplar"
        assert float((M.classify(tb, x[~mem]) == digit[~mem]).float().mean()) >= 0.75, name


def test_first_step_norm_is_the_same_signal_under_every_schedule(runs):
    out, _, _ = runs
    assert torch.equal(out["cfg"][1].norms[0], out["og"][1].norms[0])  # detection sees it before guidance acts
    assert not torch.equal(out["cfg"][1].norms[-1], out["og"][1].norms[-1])


def test_roc_helpers():
    pos, neg = torch.tensor([0.5, 0.7, 0.9]), torch.tensor([0.1, 0.6, 0.3])
    assert M.roc_auc(pos, neg) == pytest.approx(8 / 9)
    assert M.roc_auc(neg, pos) == pytest.approx(1 / 9)
    thr, tpr, fpr = M.best_threshold(pos, neg)
    assert 0.3 < thr <= 0.5 and (tpr, fpr) == (1.0, pytest.approx(1 / 3))
    assert M.wilson(0, 10)[0] == 0 and 0.2 < M.wilson(5, 10)[0] < 0.5 < M.wilson(5, 10)[1] < 0.8


def test_auto_mode_leaves_unflagged_samples_identical_to_plain_cfg(runs, unet):
    out, mem, _ = runs
    d0 = out["cfg"][1].norms[0]
    threshold = float((d0[mem].median() + d0[~mem].median()) / 2)
    prompts, noise, _ = batch(MEM + CLEAN)
    x, trace = S.sample(unet, prompts, noise, GuidanceSettings(-2.0, "static", switch_percent=0.35, detect_threshold=threshold), CFG, STEPS)
    plain = ~trace.flagged
    assert 0 < int(plain.sum()) < len(plain)
    assert torch.equal(x[plain], out["cfg"][0][plain])  # bit for bit
    assert torch.equal(x[~plain], out["og"][0][~plain])  # flagged samples get exactly the OG+STP schedule
