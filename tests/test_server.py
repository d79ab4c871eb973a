"""Issue 2, host tier: the pack inside a real ComfyUI server (loopback), and the shipped example workflows."""
from __future__ import annotations

import json
import urllib.parse
from pathlib import Path

import pytest

from conftest import load_test_module

PACK_DIR_NAME = load_test_module("server").PACK_DIR_NAME
from workflows import problems

pytestmark = pytest.mark.host
REPO = Path(__file__).resolve().parents[1]
NODE_IDS = ["MemSafeCFGGuider", "MemSafeKSampler", "MemSafeCFGPatch", "MemSafeGuidanceCurve", "MemSafeMemorizationScan",
            "MemSafeCopyCheck"]
WORKFLOWS = sorted((REPO / "example_workflows").glob("*.json"))


@pytest.fixture(scope="module")
def object_info(comfy_server):
    return comfy_server.get("/object_info")


def test_object_info_lists_the_nodes_with_tooltips_and_paper(object_info):
    for node_id in NODE_IDS:
        info = object_info[node_id]
        assert info["category"] == "sampling/memorization-safe"
        assert "Jain et al." in info["description"]
        for section in ("required", "optional"):
            for name, spec in info["input"].get(section, {}).items():
                assert len(spec) > 1 and spec[1].get("tooltip"), f"{node_id}.{name} has no tooltip"
    guidance = ["guidance_before", "transition", "switch_percent", "earliest_percent", "latest_percent", "detect_threshold"]
    for node_id in ("MemSafeCFGGuider", "MemSafeKSampler", "MemSafeCFGPatch"):
        assert all(g in object_info[node_id]["input"]["required"] for g in guidance), node_id
    assert object_info["MemSafeKSampler"]["output"] == ["LATENT", "IMAGE", "MEMSAFE_TRACE"]
    assert object_info["MemSafeCFGGuider"]["input"]["required"]["cfg"][1]["default"] == 7.5
    for node_id, name in (("MemSafeGuidanceCurve", "show_denoised"), ("MemSafeKSampler", "curve_denoised")):
        spec = object_info[node_id]["input"]["optional"][name]  # optional: saved prompts without it still queue
        assert spec[0] == "BOOLEAN" and spec[1]["default"] is False and "d x sigma" in spec[1]["tooltip"], node_id
        assert object_info[node_id]["input_order"]["optional"][-1] == name, node_id  # appended: old widgets_values load


def test_workflow_templates_list_and_serve_the_examples(comfy_server):
    listed = comfy_server.get("/workflow_templates")[PACK_DIR_NAME]
    assert sorted(listed) == sorted(p.stem for p in WORKFLOWS)
    for p in WORKFLOWS:
        served = comfy_server.get(f"/api/workflow_templates/{PACK_DIR_NAME}/{urllib.parse.quote(p.name)}")
        assert served == json.loads(p.read_text())


def test_js_is_served_once(comfy_server):
    """Installed under a folder name that is not the project name, the js is still listed exactly once (issue 9:
    WEB_DIRECTORY and pyproject's [tool.comfy] web used to register it twice, under both names)."""
    assert PACK_DIR_NAME != "memorization-safe-cfg"
    files = sorted(p.name for p in (REPO / "js").glob("*.js"))
    assert files, "js/ has no extension file"
    extensions = comfy_server.get("/extensions")
    for name in files:
        url = f"/extensions/{PACK_DIR_NAME}/{name}"
        assert extensions.count(url) == 1, url
        assert [e for e in extensions if e.endswith(f"/{name}")] == [url], "the same file is served under another name"
        assert comfy_server.get(url, raw=True) == (REPO / "js" / name).read_bytes()


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.stem)
def test_example_workflow_matches_object_info(path, object_info):
    workflow = json.loads(path.read_text())
    assert problems(workflow, object_info) == []
    types = {n["type"] for n in workflow["nodes"]}
    assert types & set(NODE_IDS), "an example workflow without a MemSafe node"


def test_invalid_settings_rejected_at_queue_time(comfy_server):
    """latest before earliest: /prompt refuses it (validate_inputs) before anything is sampled."""
    prompt = {"1": {"class_type": "UNETLoader", "inputs": {"unet_name": "tiny_sd3.safetensors", "weight_dtype": "default"}},
              "2": {"class_type": "MemSafeCFGPatch", "inputs": {"model": ["1", 0], "guidance_before": 0.0, "transition": "dynamic",
                                                                "switch_percent": 0.5, "earliest_percent": 0.6,
                                                                "latest_percent": 0.3, "detect_threshold": 0.0}},
              "3": {"class_type": "MemSafeGuidanceCurve", "inputs": {"latent": ["4", 0], "model": ["2", 0], "layout": "panels",
                                                                     "save_trace": False, "filename_prefix": "x"}},
              "4": {"class_type": "EmptySD3LatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}}}
    status, body = comfy_server.post("/prompt", {"prompt": prompt})
    assert status == 400
    assert "latest_percent" in json.dumps(body)
