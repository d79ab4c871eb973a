"""The per-run trace: what the guidance measured and applied, per step and per sample."""
from __future__ import annotations

import json
from dataclasses import dataclass, field

import torch

from .settings import GuidanceSettings

NEVER = -1  # switch_step of a sample that was never switched


@dataclass
class Trace:
    """One sampling run. ``norms`` and ``scales`` are float32 [steps, B]; unvisited steps are NaN.

    ``switch_step[b]`` is the first step sample b was guided with full CFG (NEVER if none);
    ``flagged[b]`` is False when detection judged sample b not memorized (plain CFG from step 0).
    """

    settings: GuidanceSettings
    sigmas: torch.Tensor  # [steps + 1], the schedule (sample_sigmas)
    timesteps: torch.Tensor  # [steps], the model's timestep for each step's sigma
    norms: torch.Tensor
    scales: torch.Tensor
    visited: torch.Tensor  # bool [steps]: the sampler evaluated the model in this step
    switch_step: torch.Tensor  # int64 [B]
    flagged: torch.Tensor  # bool [B]
    cfg: float = 0.0
    meta: dict = field(default_factory=dict)

    @property
    def steps(self) -> int:
        return int(self.norms.shape[0])

    @property
    def batch(self) -> int:
        return int(self.norms.shape[1])

    def summary(self) -> list[str]:
        """Per sample: its switch step, or why it has none."""
        out = []
        for b in range(self.batch):
            step = int(self.switch_step[b])
            if self.settings.off:
                out.append("plain CFG (transition off)")
            elif not bool(self.flagged[b]):
                out.append("plain CFG (not flagged)")
            elif step == NEVER:
                out.append(f"{self.settings.phase_label} throughout (never switched)")
            else:
                out.append(f"switch at step {step} (t={float(self.timesteps[step]):.0f})")
        return out

    def save(self, path: str) -> None:
        from safetensors.torch import save_file

        tensors = {k: getattr(self, k).contiguous() for k in ("sigmas", "timesteps", "norms", "scales", "switch_step")}
        tensors["visited"] = self.visited.to(torch.uint8)
        tensors["flagged"] = self.flagged.to(torch.uint8)
        meta = {"settings": json.dumps(self.settings.to_dict()), "cfg": repr(float(self.cfg)), "meta": json.dumps(self.meta)}
        save_file(tensors, path, metadata=meta)

    @classmethod
    def load(cls, path: str) -> "Trace":
        from safetensors import safe_open

        with safe_open(path, framework="pt") as f:
            meta = f.metadata()
            t = {k: f.get_tensor(k) for k in f.keys()}
        return cls(
            settings=GuidanceSettings.from_dict(json.loads(meta["settings"])),
            sigmas=t["sigmas"], timesteps=t["timesteps"], norms=t["norms"], scales=t["scales"],
            visited=t["visited"].bool(), switch_step=t["switch_step"], flagged=t["flagged"].bool(),
            cfg=float(meta["cfg"]), meta=json.loads(meta["meta"]),
        )
