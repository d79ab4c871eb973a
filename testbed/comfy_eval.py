"""The testbed's mitigation table through ComfyUI's own samplers: `python -m testbed.comfy_eval --comfyui PATH`.

Beyond DDIM (issue 19, item 4). The testbed is a real ComfyUI MODEL (``nodes/testbed.py``); every row but stock CFG
runs through the pack's **CFG Model Patch (Memorization-Safe)** node, as a user wires it in front of a sampler, and
then through ComfyUI's own sampler and scheduler (``comfy.sample.sample_custom`` with ``comfy.samplers.ksampler`` and
``KSampler``'s sigmas: what the stock KSampler runs). The pack is loaded by file path as package ``memsafe_cfg``, as
ComfyUI loads a custom node; ``testbed/``'s library modules still never import ``nodes/``.

Per sample: one seed, noise from ComfyUI's ``prepare_noise`` for a batch-1 latent and, for samplers that draw noise
while sampling (ancestral, SDE), that seed's own noise stream as a batch-1 KSampler run draws it; so a batch of
samples is the same as one KSampler run per seed. Evaluation seeds 0..S-1 per prompt; the copy floor (stock CFG
through the same sampler on every unmemorized prompt) on seeds 10000+, the detection threshold on seeds 20000+, the
unconditional branch on seeds 40000+: all disjoint. Everything is reported per duplication level (``tb.shares``).
The default samplers include euler + normal, the ODE twin of euler_ancestral + normal (same steps, same sigmas): the
difference between the two is the ancestral noise, measured across the static switches (``basin``).
"""
from __future__ import annotations

import argparse
import dataclasses
import importlib
import importlib.util
import inspect
import json
import logging
import sys
import time
from pathlib import Path

import torch

from . import guidance
from . import measure as M
from .data import all_prompts, load
from .model import encode_prompt, prompt_text
from .sampler import WEIGHTS, augment_of, weights_metadata

log = logging.getLogger("testbed.comfy_eval")
REPO = Path(__file__).resolve().parents[1]
PACKAGE = "memsafe_cfg"
G = guidance.GuidanceSettings
OG_DYN = G(-2.0, "dynamic", earliest_percent=0.0, latest_percent=0.5)
ROWS = [  # (key, label, settings; None = stock CFG, the pack not in the MODEL); detect_og gets its threshold later
    ("stock", "stock CFG (pack off)", None),
    ("defaults", "pack defaults (zero, dynamic)", G()),
    ("zero_t500", "zero until t=500 (STP)", G(0.0, "static", switch_percent=0.5)),
    ("og_t500", "opposite -2 until t=500 (OG+STP)", G(-2.0, "static", switch_percent=0.5)),
    ("og_dyn", "opposite -2, dynamic (OG+DTP)", OG_DYN),
    ("detect_og", "detection + opposite -2, dynamic", OG_DYN),
]
STATIC_ROWS = ("zero_t500", "og_t500")  # the basin measurement: similarity to the exemplar across a static switch
SAMPLERS = "dpmpp_2m:karras,euler_ancestral:normal,euler:normal"
CAL_FLOOR, CAL_DETECT, FRESH_UNCOND = 10_000, 20_000, 40_000  # seed bases, disjoint from the evaluation seeds 0..S-1
SIZE = 16


# -- the host -----------------------------------------------------------------------------------------------------
def import_comfy(path) -> None:
    """ComfyUI from ``path`` on the CPU, ahead of this checkout on sys.path (its ``nodes`` must not be the pack's)."""
    path = str(Path(path).resolve())
    if not (Path(path) / "comfy" / "samplers.py").is_file():
        raise FileNotFoundError(f"--comfyui: {path} is not a ComfyUI checkout (no comfy/samplers.py).")
    if path in sys.path:
        sys.path.remove(path)
    sys.path.insert(0, path)
    from comfy.cli_args import args

    if "comfy.model_management" not in sys.modules:
        args.cpu = True
    import comfy.model_management  # noqa: F401
    import comfy.sample  # noqa: F401
    import comfy.samplers  # noqa: F401

    found = importlib.util.find_spec("nodes")  # ComfyUI's nodes.py must win over this checkout's nodes/ folder
    if found is None or Path(found.origin).resolve() != (Path(path) / "nodes.py").resolve():
        raise ImportError(f"'nodes' resolves to {found and found.origin}, not ComfyUI's nodes.py; put ComfyUI first on sys.path.")


def pack_nodes():
    """The pack's node modules, the pack loaded by file path as ComfyUI loads it (reused when already loaded)."""
    if PACKAGE not in sys.modules:
        spec = importlib.util.spec_from_file_location(PACKAGE, REPO / "__init__.py", submodule_search_locations=[str(REPO)])
        module = importlib.util.module_from_spec(spec)
        sys.modules[PACKAGE] = module
        try:
            spec.loader.exec_module(module)
        except BaseException:
            del sys.modules[PACKAGE]
            raise
    return (importlib.import_module(f"{PACKAGE}.nodes.patch"), importlib.import_module(f"{PACKAGE}.nodes.adapter"),
            importlib.import_module(f"{PACKAGE}.nodes.testbed"))


def load_model(weights=WEIGHTS):
    """The testbed weights as a ComfyUI MODEL (``nodes/testbed.py``)."""
    return pack_nodes()[2].load_testbed_model(weights)


def patch(model, settings):
    """(MODEL, handle): ``model`` through the CFG Model Patch (Memorization-Safe) node with these settings, validated
    as ComfyUI validates widget values at queue time."""
    node, adapter, _ = pack_nodes()
    kwargs = settings.to_dict()
    ok = node.MemSafeCFGPatch.validate_inputs(**kwargs)
    if ok is not True:
        raise ValueError(ok)
    o = node.MemSafeCFGPatch.execute(model, **kwargs)
    patched = (o.args if hasattr(o, "args") else o.result)[0]
    return patched, adapter.find_handle(model=patched)


# -- samples ------------------------------------------------------------------------------------------------------
@dataclasses.dataclass
class Batch:
    """Prompts x seeds: prompt vectors [B, D], seeds, digit [B], exemplar index [B] (-1 clean), duplication level [B]
    (a clean sibling has its memorized prompt's level; NaN for other clean prompts)."""

    prompts: torch.Tensor
    seeds: list
    digit: torch.Tensor
    exemplar: torch.Tensor
    level: torch.Tensor

    @classmethod
    def of(cls, tb, prompts, seeds):
        rows = [(p, s) for p in prompts for s in seeds]
        share = dict(zip(tb.memorized, tb.shares)) | dict(zip(tb.clean, tb.shares))
        return cls(torch.stack([encode_prompt(*p) for p, _ in rows]), [int(s) for _, s in rows],
                   torch.tensor([-1 if p[0] is None else p[0] for p, _ in rows]),
                   torch.tensor([tb.memorized.index(p) if p in tb.memorized else -1 for p, _ in rows]),
                   torch.tensor([share.get(p, float("nan")) for p, _ in rows]))

    @property
    def mem(self) -> torch.Tensor:
        return self.exemplar >= 0


def noise_of(seeds) -> torch.Tensor:
    """[B, 1, 16, 16]: per seed, ComfyUI's prepare_noise of a batch-1 testbed latent."""
    import comfy.sample

    return torch.cat([comfy.sample.prepare_noise(torch.zeros(1, 1, SIZE, SIZE), s) for s in seeds])


def sampler_object(name: str, seeds, sigmas: torch.Tensor):
    """ComfyUI's sampler ``name``; one that draws noise while sampling gets each seed's own stream, as a batch-1
    KSampler run with that seed draws it (ComfyUI's default_noise_sampler or, for the SDE samplers that use one, its
    Brownian tree over the schedule's sigma range; per sample)."""
    import comfy.k_diffusion.sampling as kd
    import comfy.samplers

    fn = getattr(kd, f"sample_{name}", None)
    if fn is None or "noise_sampler" not in inspect.signature(fn).parameters:
        return comfy.samplers.ksampler(name)
    one = torch.zeros(1, 1, SIZE, SIZE)
    if "BrownianTreeNoiseSampler(" in inspect.getsource(fn):
        lo, hi = sigmas[sigmas > 0].min(), sigmas.max()
        streams = [kd.BrownianTreeNoiseSampler(one, lo, hi, seed=s, cpu=True) for s in seeds]
    else:
        streams = [kd.default_noise_sampler(one, seed=s) for s in seeds]
    return comfy.samplers.ksampler(name, {"noise_sampler": lambda sigma, sigma_next: torch.cat([f(sigma, sigma_next) for f in streams])})


def sigmas_of(model, sampler: str, scheduler: str, steps: int) -> torch.Tensor:
    """The schedule the stock KSampler runs for this sampler and scheduler."""
    import comfy.samplers

    return comfy.samplers.KSampler(model, steps=steps, device=model.load_device, sampler=sampler, scheduler=scheduler,
                                   denoise=1.0, model_options=model.model_options).sigmas


def run(model, b: Batch, settings, sampler: str, scheduler: str, cfg: float, steps: int, first_step_only=False,
        uncond_only=False):
    """Sample ``b`` through ComfyUI; returns (samples [B, 1, 16, 16], trace or None, x0 predictions [steps, B, 1, 16, 16]).
    ``settings`` None: the stock MODEL. ``uncond_only``: the empty prompt as the positive at cfg 1 (stock's cfg-1
    shortcut then runs only that branch: the unconditional model)."""
    import comfy.sample

    handle = None
    if settings is not None:
        model, handle = patch(model, settings)
    sig = sigmas_of(model, sampler, scheduler, steps)
    if first_step_only:
        sig = sig[:2]
    pos = torch.zeros_like(b.prompts) if uncond_only else b.prompts
    positive = [[pos[:, None].clone(), {}]]
    negative = [[torch.zeros(1, 1, b.prompts.shape[1]), {}]]
    seen = []

    def callback(step, x0, x, total):
        seen.append(x0.detach().float().cpu().clone())

    x = comfy.sample.sample_custom(model, noise_of(b.seeds), 1.0 if uncond_only else cfg, sampler_object(sampler, b.seeds, sig),
                                   sig, positive, negative, torch.zeros(len(b.seeds), 1, SIZE, SIZE), callback=callback,
                                   disable_pbar=True, seed=b.seeds[0])
    trace = handle.trace_for(x) if handle is not None else None
    return x.float().cpu(), trace, (torch.stack(seen) if seen else None)


# -- measures -----------------------------------------------------------------------------------------------------
def copy_floor(model, meas, tb, sampler, scheduler, cfg, steps, seeds) -> dict:
    """Stock CFG through this sampler on every unmemorized prompt, calibration seeds: fewer than 1 % exceed it."""
    cb = Batch.of(tb, [q for q in all_prompts() if q not in tb.memorized], seeds)
    x, _, _ = run(model, cb, None, sampler, scheduler, cfg, steps)
    sim = meas.nearest(x)[0]
    thr = M.copy_threshold(sim)
    return {"threshold": thr, "seeds": list(seeds), "samples": len(cb.seeds), "exceed": float((sim > thr).float().mean())}


def detection(model, tb, sampler, scheduler, cfg, steps, seeds) -> dict:
    """The first-step guidance norm (the pack's trace, pack off) of the memorized prompts and their clean siblings on
    calibration seeds; the threshold maximises Youden's J."""
    db = Batch.of(tb, tb.memorized + tb.clean, seeds)
    _, trace, _ = run(model, db, G(transition="off"), sampler, scheduler, cfg, steps, first_step_only=True)
    d0 = trace.norms[0]
    thr, tpr, fpr = M.best_threshold(d0[db.mem], d0[~db.mem])
    return {"threshold": max(thr, 0.0), "seeds": list(seeds), "samples": len(db.seeds), "tpr": tpr, "fpr": fpr,
            "auc": M.roc_auc(d0[db.mem], d0[~db.mem])}


def group(meas, x, b: Batch, m: torch.Tensor, thr: float) -> dict:
    """Copy rates (own exemplar with its 95 % Wilson interval, any reference) and digit alignment of b[m]."""
    n = int(m.sum())
    if n == 0:
        return {"n": 0}
    sim, _ = meas.nearest(x[m])
    out = {"n": n, "copy_rate": float((sim > thr).float().mean()), "sim_median": float(sim.median()),
           "align": float((meas.classify(x[m]) == b.digit[m]).float().mean())}
    if bool(b.mem[m].all()):
        k = int((meas.exemplar_similarity(x[m], b.exemplar[m]) > thr).sum())
        out |= {"own_copies": k, "own_copy_rate": k / n, "own_copy_ci": list(M.wilson(k, n))}
    return out


def switch_summary(trace, m: torch.Tensor) -> dict:
    """Median switch step and samples per switch step (over the flagged samples when detection is on) and, with
    detection, the flagged share."""
    if trace is None or trace.settings.off:
        return {}
    detect = trace.settings.detect_threshold > 0
    steps = trace.switch_step[m & trace.flagged] if detect else trace.switch_step[m]
    hit = steps[steps != guidance.NEVER].float()
    out = {"switch_median": float(hit.median()) if len(hit) else None,
           "switch_counts": torch.bincount(hit.long(), minlength=len(trace.norms)).tolist() if len(hit) else []}
    return out | ({"flagged": float(trace.flagged[m].float().mean())} if detect else {})


def per_level(meas, x, trace, b: Batch, thr: float, levels) -> dict:
    """{level or 'all': {memorized: ..., clean: ...}}: the memorized prompts of a level and their clean siblings."""
    out = {}
    for lv in [*levels, "all"]:
        at = torch.ones_like(b.mem) if lv == "all" else b.level == lv
        out[str(lv)] = {"memorized": group(meas, x, b, at & b.mem, thr) | switch_summary(trace, at & b.mem),
                        "clean": group(meas, x, b, at & ~b.mem, thr) | switch_summary(trace, at & ~b.mem)}
    return out


def basin(meas, b: Batch, x, trace, x0s, thr: float) -> dict:
    """Across a static switch at step k, memorized samples: own-exemplar similarity of the x0 prediction of step k
    (the first under CFG: where x_k lies when guidance comes on) against the result's. An ODE sampler follows x_k's
    course; an ancestral one re-injects noise after k. ``auc``: how well the similarity at the switch predicts that
    the result copies (None when all or none copy); ``rose``: the share whose similarity rose after the switch."""
    m = b.mem
    k = int(trace.switch_step[m].max())  # static: one step for every sample
    if k >= len(x0s):
        return {"switch_step": k, "n": int(m.sum())}
    at = meas.exemplar_similarity(x0s[k][m], b.exemplar[m])
    end = meas.exemplar_similarity(x[m], b.exemplar[m])
    ends = end > thr
    auc = M.roc_auc(at[ends], at[~ends]) if 0 < int(ends.sum()) < len(ends) else None
    curve = [float(meas.exemplar_similarity(x0s[i][m], b.exemplar[m]).median()) for i in range(len(x0s))]
    return {"switch_step": k, "n": int(m.sum()), "sim_at_switch_median": float(at.median()),
            "sim_end_median": float(end.median()), "copy_end": float(ends.float().mean()), "auc": auc,
            "rose": float((end > at).float().mean()), "x0_similarity_median_per_step": [round(v, 4) for v in curve]}


def evaluate_sampler(model, meas, tb, sampler, scheduler, cfg, steps, seeds, floor_seeds, detect_seeds, uncond_seeds) -> dict:
    """One sampler: calibrate the copy floor and the detection threshold, then every row on the evaluation seeds."""
    t0 = time.time()
    overlap = set(seeds) & (set(floor_seeds) | set(detect_seeds) | set(uncond_seeds))
    if overlap:
        raise ValueError(f"seeds: calibration seeds {sorted(overlap)} are also evaluation seeds; keep them disjoint.")
    floor = copy_floor(model, meas, tb, sampler, scheduler, cfg, steps, floor_seeds)
    thr = floor["threshold"]
    log.info("%s + %s: copy floor %.4f from %d stock samples (%.0f s)", sampler, scheduler, thr, floor["samples"], time.time() - t0)
    det = detection(model, tb, sampler, scheduler, cfg, steps, detect_seeds)
    b = Batch.of(tb, tb.memorized + tb.clean, seeds)
    levels = sorted(set(tb.shares))
    rows, outputs = [], {}
    for key, label, settings in ROWS:
        t1 = time.time()
        if key == "detect_og":
            settings = dataclasses.replace(settings, detect_threshold=det["threshold"])
            label = f"{label} (d0 > {det['threshold']:.4g})"
        x, trace, x0s = run(model, b, settings, sampler, scheduler, cfg, steps)
        outputs[key] = x
        row = {"key": key, "method": label, "settings": None if settings is None else settings.to_dict(),
               "levels": per_level(meas, x, trace, b, thr, levels), "seconds": time.time() - t1}
        if key in STATIC_ROWS:
            row["basin"] = basin(meas, b, x, trace, x0s, thr)
        rows.append(row)
        log.info("  %s: %.0f s", label, time.time() - t1)
    ub = Batch.of(tb, [(None, None, None, None)], uncond_seeds)
    xu, _, _ = run(model, ub, None, sampler, scheduler, cfg, steps, uncond_only=True)
    su, iu = meas.nearest(xu)
    uncond = {"seeds": [uncond_seeds[0], uncond_seeds[-1]], "samples": len(ub.seeds),
              "copy_rate": float((su > thr).float().mean()),
              "exemplar_copy_rate": float(((su > thr) & (iu < len(tb.exemplars))).float().mean())}
    stock = outputs["stock"]
    floor["eval_clean_exceed"] = rows[0]["levels"]["all"]["clean"]["copy_rate"]
    return {"sampler": sampler, "scheduler": scheduler, "copy_floor": floor, "detection": det, "rows": rows,
            "uncond_fresh": uncond, "seconds": time.time() - t0,
            "defaults_changed_memorized": float((outputs["defaults"][b.mem] - stock[b.mem]).abs().flatten(1).amax(1).gt(1e-3).float().mean())}


def ancestral_effect(results: list) -> dict:
    """What ancestral noise does to the basin: per sampler, stock's and each static switch's own-exemplar copy rate,
    and how the similarity to the exemplar moves after the switch (``basin``)."""
    out = {}
    for r in results:
        byrow = {e["key"]: e for e in r["rows"]}
        out[f"{r['sampler']}+{r['scheduler']}"] = {"stock_own_copy": byrow["stock"]["levels"]["all"]["memorized"]["own_copy_rate"]} | {
            key: {"own_copy": byrow[key]["levels"]["all"]["memorized"]["own_copy_rate"]}
            | {k: v for k, v in byrow[key]["basin"].items() if k != "x0_similarity_median_per_step"} for key in STATIC_ROWS}
    return out


# -- printout -----------------------------------------------------------------------------------------------------
def pct(v, w=3):
    return "-".rjust(w) if v is None else f"{100 * v:{w}.0f}"


def print_sampler(r: dict, cfg: float, steps: int, seeds: int) -> None:
    f, d, u = r["copy_floor"], r["detection"], r["uncond_fresh"]
    levels = [k for k in r["rows"][0]["levels"] if k != "all"]
    print(f"\n### {r['sampler']} + {r['scheduler']}, cfg {cfg:g}, {steps} steps, {seeds} seeds per prompt "
          f"({r['seconds']:.0f} s)")
    print(f"copy = similarity > {f['threshold']:.4f} ({100 * f['exceed']:.1f} % of {f['samples']} fresh stock samples of the "
          f"unmemorized prompts exceed it; {100 * f['eval_clean_exceed']:.0f} % of the clean evaluation samples); detection "
          f"threshold {d['threshold']:.4g} (AUC {d['auc']:.3f} on {d['samples']} calibration samples)")
    print("\nOwn-exemplar copies % by duplication level (share of its prompt's records):\n")
    print("| method | " + " | ".join(f"{float(lv):.2f}" for lv in levels) + " | all [95 % CI] |")
    print("|---|" + "---|" * (len(levels) + 1))
    for e in r["rows"]:
        cells = [pct(e["levels"][lv]["memorized"].get("own_copy_rate")) for lv in levels]
        a = e["levels"]["all"]["memorized"]
        print(f"| {e['method']} | " + " | ".join(cells) + f" | {pct(a['own_copy_rate'])} [{pct(a['own_copy_ci'][0], 1)}, "
              f"{pct(a['own_copy_ci'][1], 1)}] |")
    print("\n| method | level | own-exemplar copies % [95 % CI] | any copy % | mem. align % | clean any copy % | "
          "clean align % | switch step median mem/clean | flagged % mem/clean |")
    print("|---|---|---|---|---|---|---|---|---|")
    for e in r["rows"]:
        for lv in [*levels, "all"]:
            m, c = e["levels"][lv]["memorized"], e["levels"][lv]["clean"]
            sw = "/".join("-" if g.get("switch_median") is None else f"{g['switch_median']:g}" for g in (m, c))
            fl = "-" if "flagged" not in m else f"{pct(m['flagged'])}/{pct(c['flagged'])}"
            k, n = m["own_copies"], m["n"]
            print(f"| {e['method'] if lv == levels[0] else ''} | {lv if lv == 'all' else f'{float(lv):.2f}'} | {k}/{n} = "
                  f"{pct(m['own_copy_rate'])} [{pct(m['own_copy_ci'][0], 1)}, {pct(m['own_copy_ci'][1], 1)}] | "
                  f"{pct(m['copy_rate'])} | {pct(m['align'])} | {pct(c['copy_rate'])} | {pct(c['align'])} | {sw} | {fl} |")
    print(f"unconditional branch on {u['samples']} fresh seeds: any copy {100 * u['copy_rate']:.1f} %, an exemplar "
          f"{100 * u['exemplar_copy_rate']:.1f} %; pack defaults changed {100 * r['defaults_changed_memorized']:.0f} % of "
          f"memorized samples (max |x - stock| > 1e-3)")


def print_ancestral(a: dict) -> None:
    print("\n### What ancestral noise does to the basin\n\nMemorized samples, all levels: own-exemplar similarity of the x0 "
          "prediction at the static switch step k (the first under CFG: where x_k lies) and of the result; AUC: how well "
          "the similarity at the switch predicts a copy at the end; rose: samples drawn closer to the exemplar after k.\n")
    print("| sampler | stock copies % | row | switch step | copies % | similarity at switch / end (median) | AUC | rose % |")
    print("|---|---|---|---|---|---|---|---|")
    num = lambda v, f: "-" if v is None else format(v, f)  # noqa: E731
    for name, v in a.items():
        for key in STATIC_ROWS:
            s = v[key]
            print(f"| {name} | {pct(v['stock_own_copy'])} | {key} | {s['switch_step']} | {pct(s['own_copy'])} | "
                  f"{num(s.get('sim_at_switch_median'), '.3f')} / {num(s.get('sim_end_median'), '.3f')} | "
                  f"{num(s.get('auc'), '.2f')} | {pct(s.get('rose'))} |")


def parse_samplers(text: str) -> list[tuple[str, str]]:
    out = []
    for item in text.split(","):
        name, _, sched = item.strip().partition(":")
        out.append((name, sched or "normal"))
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--comfyui", required=True, help="a ComfyUI checkout (0.3.64 or newer)")
    p.add_argument("--weights", default=str(WEIGHTS), help="the UNet weights (default: the shipped ones)")
    p.add_argument("--seeds", type=int, default=16, help="evaluation seeds per prompt (0..S-1)")
    p.add_argument("--samplers", default=SAMPLERS, help="comma-separated sampler:scheduler pairs (ComfyUI names)")
    p.add_argument("--cfg", type=float, default=7.5)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--floor-seeds", type=int, default=2, help="copy-floor calibration seeds per unmemorized prompt (from 10000)")
    p.add_argument("--detect-seeds", type=int, default=8, help="detection calibration seeds per prompt (from 20000)")
    p.add_argument("--uncond-seeds", type=int, default=64, help="fresh seeds for the unconditional branch (from 40000)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", default=None, help="write every number and the settings here")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(a.threads)
    t0 = time.time()
    import_comfy(a.comfyui)
    import comfyui_version  # noqa: F401  (ComfyUI's own version file, on sys.path now)

    tb = load()
    meas = M.Measure(tb, augment_of(weights_metadata(a.weights)))
    model = load_model(a.weights)
    seeds = list(range(a.seeds))
    floor_seeds = list(range(CAL_FLOOR, CAL_FLOOR + a.floor_seeds))
    detect_seeds = list(range(CAL_DETECT, CAL_DETECT + a.detect_seeds))
    uncond_seeds = list(range(FRESH_UNCOND, FRESH_UNCOND + a.uncond_seeds))
    results = [evaluate_sampler(model, meas, tb, s, sch, a.cfg, a.steps, seeds, floor_seeds, detect_seeds, uncond_seeds)
               for s, sch in parse_samplers(a.samplers)]
    report = {"config": {"comfyui": str(a.comfyui), "comfyui_version": sys.modules["comfyui_version"].__version__,
                         "weights_file": str(a.weights), "weights": weights_metadata(a.weights), "cfg": a.cfg,
                         "steps": a.steps, "seeds_per_prompt": a.seeds, "threads": a.threads,
                         "memorized": [prompt_text(q) for q in tb.memorized], "clean": [prompt_text(q) for q in tb.clean],
                         "shares": list(tb.shares), "precision": "fp32 (ComfyUI on the CPU)",
                         "noise": "per sample: ComfyUI's prepare_noise of a batch-1 latent with its seed; ancestral noise "
                                  "from that seed's own default_noise_sampler stream"},
              "samplers": results, "ancestral_effect": ancestral_effect(results)}
    report["seconds"] = time.time() - t0
    print(f"ComfyUI {report['config']['comfyui_version']}, weights {a.weights}; {len(tb.memorized)} memorized prompts and "
          f"their clean siblings, seeds 0..{a.seeds - 1} each")
    for r in results:
        print_sampler(r, a.cfg, a.steps, a.seeds)
    print_ancestral(report["ancestral_effect"])
    print(f"\n{report['seconds']:.0f} s")
    if a.json:
        Path(a.json).write_text(json.dumps(report, indent=1))
    return report


if __name__ == "__main__":
    main()
