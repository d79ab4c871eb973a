"""UI-format workflow JSON (what the ComfyUI front end saves): build it, check it against /object_info, and turn
it into the API format that /prompt takes. Used by the tests and to (re)build example_workflows/."""
from __future__ import annotations

import json
from pathlib import Path

WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
EXAMPLES = Path(__file__).resolve().parents[1] / "example_workflows"
CKPT = "v1-5-pruned-emaonly-fp16.safetensors"
# The download the front end offers when the checkpoint is missing, in the format of ComfyUI's own templates
# (properties.models on the loader: name, url, directory); the same file ComfyUI's default graph names.
CKPT_MODELS = [{"name": CKPT, "url": "https://huggingface.co/Comfy-Org/stable-diffusion-v1-5-archive/resolve/main/" + CKPT,
                "directory": "checkpoints"}]
FILE_COMBOS = {("CheckpointLoaderSimple", "ckpt_name"), ("UNETLoader", "unet_name"), ("CLIPVisionLoader", "clip_name")}
# The front end's own note nodes: drawn and saved in the workflow, never sent to /prompt, absent from /object_info.
NOTES = {"Note", "MarkdownNote"}


def columns(*cols: list[dict], x: float = 0, y: float = 0, gap: tuple[float, float] = (90, 110)) -> list[dict]:
    """Lay node specs (each with a "size") out in columns, left to right: a column starts ``gap[0]`` right of the
    widest node of the one before, and its nodes stack downwards ``gap[1]`` apart. The gaps leave room for the title
    bar drawn above a node's pos and for Nodes 2.0, which draws nodes taller than their saved size (issue 21)."""
    out = []
    for col in cols:
        top = y
        for n in col:
            n["pos"] = [x, top]
            top += n["size"][1] + gap[1]
            out.append(n)
        x += max(n["size"][0] for n in col) + gap[0]
    return out


def input_specs(info: dict) -> list[tuple[str, str, dict, bool]]:
    """(name, type, options, optional) for every visible input, in the node's input order."""
    out = []
    order = info.get("input_order") or {k: list(v) for k, v in info["input"].items()}
    for section in ("required", "optional"):
        for name in order.get(section, []):
            spec = info["input"][section][name]
            typ, opts = spec[0], (spec[1] if len(spec) > 1 else {})
            if isinstance(typ, list):
                typ, opts = "COMBO", {**opts, "options": typ}
            out.append((name, typ, opts, section == "optional"))
    return out


def widget_names(info: dict) -> list[str]:
    """widgets_values layout: each widget, plus the front end's control value after a control_after_generate INT."""
    names = []
    for name, typ, opts, _ in input_specs(info):
        if typ in WIDGET_TYPES:
            names.append(name)
            if opts.get("control_after_generate"):
                names.append(f"{name}:control")
    return names


def socket_inputs(info: dict) -> list[tuple[str, str, bool]]:
    return [(n, t, o) for n, t, _, o in input_specs(info) if t not in WIDGET_TYPES]


def build(spec: list[dict], object_info: dict) -> dict:
    """spec: [{"id", "type", "pos", "widgets": {name: value}, "inputs": {name: (src_id, src_slot)}, "title"?}]."""
    nodes, links = [], []
    by_id = {n["id"]: n for n in spec}
    out_links: dict[tuple[int, int], list[int]] = {}
    for n in spec:
        for name, (src, slot) in n.get("inputs", {}).items():
            lid = len(links) + 1
            typ = object_info[by_id[src]["type"]]["output"][slot]
            tgt_slot = [s[0] for s in socket_inputs(object_info[n["type"]])].index(name)
            links.append([lid, src, slot, n["id"], tgt_slot, typ])
            out_links.setdefault((src, slot), []).append(lid)
    for order, n in enumerate(spec):
        if n["type"] in NOTES:
            nodes.append({"id": n["id"], "type": n["type"], "pos": list(n["pos"]), "size": list(n["size"]), "flags": {},
                          "order": order, "mode": 0, "inputs": [], "outputs": [], "properties": {},
                          "widgets_values": [n["text"]], "color": "#432", "bgcolor": "#653"})
            continue
        info = object_info[n["type"]]
        link_of = {l[4]: l[0] for l in links if l[3] == n["id"]}
        inputs = [{"name": name, "type": typ, "link": link_of.get(k)} for k, (name, typ, _) in enumerate(socket_inputs(info))]
        outputs = [{"name": info["output_name"][k], "type": typ, "links": out_links.get((n["id"], k), []), "slot_index": k}
                   for k, typ in enumerate(info["output"])]
        values = []
        for name in widget_names(info):
            if name.endswith(":control"):
                values.append("fixed")
            else:
                spec_opts = next(o for nm, _, o, _ in input_specs(info) if nm == name)
                values.append(n.get("widgets", {}).get(name, spec_opts.get("default")))
        node = {"id": n["id"], "type": n["type"], "pos": list(n["pos"]), "size": list(n.get("size", [320, 60 + 26 * (len(values) + len(inputs))])),
                "flags": {}, "order": order, "mode": 0, "inputs": inputs, "outputs": outputs,
                "properties": {"Node name for S&R": n["type"]}, "widgets_values": values}
        if "title" in n:
            node["title"] = n["title"]
        nodes.append(node)
    return {"last_node_id": max(by_id), "last_link_id": len(links), "nodes": nodes, "links": links, "groups": [],
            "config": {}, "extra": {"ds": {"scale": 0.8, "offset": [0, 0]}}, "version": 0.4}


def problems(workflow: dict, object_info: dict) -> list[str]:
    """Everything that would make the front end or /prompt reject this workflow."""
    errs = []
    nodes = {n["id"]: n for n in workflow["nodes"]}
    for n in workflow["nodes"]:
        if n["type"] in NOTES:
            if not (len(n.get("widgets_values", [])) == 1 and isinstance(n["widgets_values"][0], str)) or n.get("inputs") or n.get("outputs"):
                errs.append(f"node {n['id']} {n['type']}: a note holds one text and no sockets")
            continue
        info = object_info.get(n["type"])
        if info is None:
            errs.append(f"node {n['id']}: type {n['type']} is not registered")
            continue
        names = widget_names(info)
        values = n.get("widgets_values", [])
        if len(values) != len(names):
            errs.append(f"node {n['id']} {n['type']}: {len(values)} widget values for {len(names)} widgets {names}")
            continue
        specs = {nm: (t, o) for nm, t, o, _ in input_specs(info)}
        for name, value in zip(names, values):
            if name.endswith(":control"):
                ok = value in ("fixed", "increment", "decrement", "randomize")
            else:
                errs += [f"node {n['id']} {n['type']}.{name}: {e}" for e in _check(n["type"], name, value, *specs[name])]
                continue
            if not ok:
                errs.append(f"node {n['id']} {n['type']}.{name}: bad value {value!r}")
        sockets = socket_inputs(info)
        for k, (name, typ, optional) in enumerate(sockets):
            link = next((i.get("link") for i in n.get("inputs", []) if i["name"] == name), None)
            if link is None and not optional:
                errs.append(f"node {n['id']} {n['type']}: required input {name} is not connected")
    for lid, src, slot, dst, dslot, typ in workflow["links"]:
        if src not in nodes or dst not in nodes:
            errs.append(f"link {lid}: dangling")
            continue
        out_t = object_info[nodes[src]["type"]]["output"][slot]
        in_t = socket_inputs(object_info[nodes[dst]["type"]])[dslot][1]
        if not (out_t == typ and in_t in (out_t, "*")):  # "*" inputs (PreviewAny, ...) take any type
            errs.append(f"link {lid}: {nodes[src]['type']} output {out_t} -> {nodes[dst]['type']} input {in_t} (link says {typ})")
    return errs


def _check(node_type, name, value, typ, opts) -> list[str]:
    if typ == "COMBO":
        if (node_type, name) in FILE_COMBOS:
            return [] if isinstance(value, str) and value.endswith((".safetensors", ".ckpt", ".pt")) else [f"not a model file name: {value!r}"]
        return [] if value in opts.get("options", []) else [f"{value!r} is not one of the options"]
    if typ == "BOOLEAN":
        return [] if isinstance(value, bool) else [f"{value!r} is not a boolean"]
    if typ == "STRING":
        return [] if isinstance(value, str) else [f"{value!r} is not a string"]
    if not isinstance(value, (int, float)) or isinstance(value, bool) or (typ == "INT" and not float(value).is_integer()):
        return [f"{value!r} is not a number of type {typ}"]
    lo, hi = opts.get("min", float("-inf")), opts.get("max", float("inf"))
    return [] if lo <= value <= hi else [f"{value} is outside {lo}..{hi}"]


def to_api(workflow: dict, object_info: dict) -> dict:
    """The API-format prompt for /prompt (muted / bypassed nodes are left out)."""
    prompt = {}
    links = {l[0]: l for l in workflow["links"]}
    for n in workflow["nodes"]:
        if n.get("mode", 0) != 0 or n["type"] in NOTES:
            continue
        info = object_info[n["type"]]
        inputs = {name: v for name, v in zip(widget_names(info), n.get("widgets_values", [])) if not name.endswith(":control")}
        for i in n.get("inputs", []):
            if i.get("link") is not None:
                _, src, slot, *_ = links[i["link"]]
                inputs[i["name"]] = [str(src), slot]
        prompt[str(n["id"])] = {"class_type": n["type"], "inputs": inputs}
    return prompt


def write_examples(graphs: dict, object_info: dict) -> None:
    """example_workflows/<title>.json for each ``{title: (make_spec, ...)}``: built against ``object_info`` (use the
    floor host's, 0.3.64), checkpoint loaders carrying the download the front end offers when the file is missing."""
    for name, (make, *_) in graphs.items():
        workflow = build(make(), object_info)
        for node in workflow["nodes"]:
            if node["type"] == "CheckpointLoaderSimple":
                node["properties"]["models"] = CKPT_MODELS
        (EXAMPLES / f"{name}.json").write_text(json.dumps(workflow, indent=1) + "\n")
        print(f"wrote example_workflows/{name}.json")


def cli(write_workflows, write_thumbnails) -> None:
    """The builders' command line: ``OBJECT_INFO.json`` | ``--serve`` (/object_info from a server at COMFYUI_PATH) |
    ``--thumbnails``."""
    import os
    import sys

    args = sys.argv[1:]
    if args == ["--thumbnails"]:
        write_thumbnails()
    elif args == ["--serve"]:
        from server import ComfyServer

        with ComfyServer(os.environ["COMFYUI_PATH"]) as srv:
            write_workflows(srv.get("/object_info"))
    else:
        write_workflows(json.loads(Path(args[0]).read_text()))
