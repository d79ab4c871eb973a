"""The guidance inputs every node shares, written once."""
from __future__ import annotations

import dataclasses

from comfy_api.latest import io

from ..guidance import TRANSITIONS, GuidanceSettings

CATEGORY = "sampling/memorization-safe"
PAPER = ('Jain et al., "Classifier-Free Guidance inside the Attraction Basin May Cause Memorization": '
         "guidance inside the attraction basin copies training images; hold it off until the trajectory leaves.")
GUIDE = ("Which node and which settings, when: the decision guide in the pack's README (linked from this node's "
         "help page).")
NORM_NOTE = ("The guidance norm is the per-sample RMS of (uncond_denoised - cond_denoised) / sigma: the paper's "
             "||eps_c - eps_u|| for eps and v models (up to a constant; on v models not the raw v difference the "
             "paper's reference code measures, so its thresholds do not carry over), the velocity difference for flow "
             "models.")
DENOISED_NOTE = ("Also draw d x sigma, the denoised-space difference RMS(x0_cond - x0_uncond), beside the norm: on small "
                 "models the eps-space norm is dominated by the noise level and this shows the basin exit; the switch "
                 "still uses the norm (the paper's quantity).")
TRACE = io.Custom("MEMSAFE_TRACE")
GUIDANCE_NAMES = ("guidance_before", "transition", "switch_percent", "earliest_percent", "latest_percent", "detect_threshold")
_D = GuidanceSettings()
SEARCH_ALIASES = ["memorization", "memorized", "memorisation", "copy", "copying", "training data", "regurgitation",
                  "replication", "cfg", "classifier-free guidance", "guidance", "guidance schedule", "cfg schedule",
                  "attraction basin", "memsafe"]


def schema_extras(**fields) -> dict:
    """The Schema fields the running host has: search_aliases exists on ComfyUI 0.33 (in /object_info, searched by
    the front end) but not on 0.3.64, whose Schema would reject it. Unknown fields are left out, never an error."""
    known = {f.name for f in dataclasses.fields(io.Schema)}
    return {k: v for k, v in fields.items() if k in known}


def guidance_inputs() -> list:
    """guidance_before, transition, switch_percent, earliest_percent, latest_percent, detect_threshold."""
    pct = dict(min=0.0, max=1.0, step=0.01)
    return [
        io.Float.Input("guidance_before", default=_D.guidance_before, min=-10.0, max=10.0, step=0.1,
                       tooltip="CFG scale before the transition. 0 = zero guidance (Algorithm 1); negative = opposite "
                               "guidance, leaves the basin sooner (paper: -2 until t=650); 1 = conditional only."),
        io.Combo.Input("transition", options=list(TRANSITIONS), default=_D.transition,
                       tooltip="dynamic: switch to cfg at the step after the first local minimum of the guidance norm, per "
                               "sample (Algorithm 1). static: switch at switch_percent. off: plain CFG (equals stock CFG)."),
        io.Float.Input("switch_percent", default=_D.switch_percent, **pct,
                       tooltip="static only: where to switch, in ComfyUI's percent of the noise scale, compared in "
                               "sigma (0.5 = t 499.5 of 999 on SD-style schedules, so a step at exactly t 500 switches "
                               "one step later than the paper's script; 0.35 = t 649.35; 1.0 never switches: "
                               "guidance_before throughout)."),
        io.Float.Input("earliest_percent", default=_D.earliest_percent, **pct,
                       tooltip="dynamic only: no switch before this percent of the noise scale (compared in sigma); "
                               "minima before it are ignored."),
        io.Float.Input("latest_percent", default=_D.latest_percent, **pct,
                       tooltip="dynamic only: a sample with no local minimum by this percent switches here (never left "
                               "unguided to the end; 0.5 = t 499.5 of 999 on SD-style schedules, compared in sigma). "
                               "Must be >= earliest_percent."),
        io.Float.Input("detect_threshold", default=_D.detect_threshold, min=0.0, max=1000.0, step=0.001, round=0.00001,
                       tooltip="0 disables detection. Otherwise a sample whose first-step guidance norm is below this is "
                               "judged not memorized and gets plain CFG from step 1; the others get the transition. "
                               + NORM_NOTE),
    ]


def settings_from(kwargs: dict) -> GuidanceSettings:
    """Validated settings from node inputs; raises ValueError naming the input."""
    return GuidanceSettings(**{k: (kwargs[k] if k == "transition" else float(kwargs[k])) for k in GUIDANCE_NAMES})


def node_id(cls):
    """The executing node's id (None when execute is called outside a prompt)."""
    return getattr(cls.hidden, "unique_id", None)


def validate(kwargs: dict):
    """V3 validate_inputs: reject bad widget values at queue time, before anything samples."""
    if not all(k in kwargs and kwargs[k] is not None for k in GUIDANCE_NAMES):
        return True  # a linked input: checked again in execute
    try:
        settings_from(kwargs)
    except ValueError as e:
        return str(e)
    return True
