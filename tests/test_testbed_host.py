"""The shipped side-by-side workflow on a real ComfyUI server: the stock KSampler copies the memorized exemplar,
the CFG KSampler (Memorization-Safe) on the same seeds does not."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from workflows import to_api

pytestmark = pytest.mark.host
WORKFLOW = Path(__file__).resolve().parents[1] / "example_workflows" / "Testbed - stock CFG copies, Memorization-Safe does not (CPU).json"


def nearest_report(entry: dict, node_id: str) -> list[dict]:
    """The per-sample rows that 'Memorization Testbed Nearest Training Image' wrote (last line of its text)."""
    text = entry["outputs"][node_id]["text"][0]
    return json.loads(text.splitlines()[-1])


@pytest.fixture(scope="module")
def ran(comfy_server):
    workflow = json.loads(WORKFLOW.read_text())
    api = to_api(workflow, comfy_server.get("/object_info"))
    return workflow, api, comfy_server.run_prompt(api)


def node_of(workflow, type_, title_part=""):
    return next(str(n["id"]) for n in workflow["nodes"] if n["type"] == type_ and title_part in n.get("title", ""))


def test_workflow_is_listed_as_a_template(comfy_server):
    templates = comfy_server.get("/workflow_templates")
    assert any(WORKFLOW.stem in names for names in templates.values())


def test_stock_branch_copies_and_memsafe_branch_does_not(ran):
    workflow, api, entry = ran
    stock = nearest_report(entry, node_of(workflow, "MemSafeTestbedNearest", "stock"))
    safe = nearest_report(entry, node_of(workflow, "MemSafeTestbedNearest", "Memorization-Safe"))
    assert len(stock) == len(safe) >= 4
    stock_copies, safe_copies = sum(r["copy"] for r in stock), sum(r["copy"] for r in safe)
    assert stock_copies >= len(stock) - 1, f"stock KSampler copied only {stock_copies}/{len(stock)}: {stock}"
    assert safe_copies <= stock_copies // 2, f"MemSafe KSampler copied {safe_copies}/{len(safe)}: {safe}"
    digit = int(api[node_of(workflow, "MemSafeTestbedPrompt", "memorized")]["inputs"]["text"].split()[0])
    assert sum(r["classified_digit"] == digit for r in safe) >= len(safe) - 1  # still the requested digit


def test_same_seeds_and_settings_on_both_branches(ran):
    workflow, api, _ = ran
    stock, safe = api[node_of(workflow, "KSampler")]["inputs"], api[node_of(workflow, "MemSafeKSampler")]["inputs"]
    for key in ("seed", "steps", "cfg", "sampler_name", "scheduler", "latent_image", "positive", "negative", "model"):
        assert stock[key] == safe[key], key


def test_curve_and_images_are_shown(ran):
    workflow, _, entry = ran
    for node in workflow["nodes"]:
        if node["type"] in ("PreviewImage", "SaveImage"):
            images = entry["outputs"][str(node["id"])]["images"]
            assert images, f"node {node['id']} showed no image"


@pytest.mark.parametrize("linear_end", [None, 0.004])
def test_comfy_model_uses_the_schedule_the_weights_were_trained_on(comfy, tmp_path, linear_end):
    """The loader reads `schedule_betas` from the weights (train --linear-end); ComfyUI's sigmas equal the testbed's."""
    import importlib

    from safetensors.torch import load_file, save_file

    tb_nodes = importlib.import_module("memsafe_cfg.nodes.testbed")
    sampler = importlib.import_module("memsafe_cfg.testbed.sampler")
    meta = {k: v for k, v in sampler.weights_metadata().items() if k != "schedule_betas"}
    if linear_end is not None:
        meta["schedule_betas"] = json.dumps([sampler.LINEAR_START, linear_end])
    path = tmp_path / "w.safetensors"
    save_file(load_file(str(sampler.WEIGHTS)), str(path), metadata=meta)
    comfy_sigmas = tb_nodes.load_testbed_model(path).get_model_object("model_sampling").sigmas
    ours = sampler.load_unet(path).schedule.sigmas
    assert torch.allclose(comfy_sigmas.float(), ours, rtol=1e-6)
    assert abs(float(ours[-1]) - (14.61 if linear_end is None else 2.9)) < 0.1  # SD's sigma_max, or the shifted one
