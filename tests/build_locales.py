"""Write locales/en/ from the node schemas, so the English locale never drifts from the code, and report what the
other languages lack.

    COMFYUI_PATH=/path/to/ComfyUI python tests/build_locales.py          # rewrite locales/en/*.json
    COMFYUI_PATH=/path/to/ComfyUI python tests/build_locales.py --check  # exit 1 if locales/ disagree with the schemas

ComfyUI serves ``locales/<lang>/main.json`` (plus nodeDefs.json, commands.json, settings.json merged under those
keys) of every custom node at ``/i18n`` (app/custom_node_manager.py); the front end merges them into its messages.
- ``nodeDefs.<NodeId>``: display_name, description, inputs.<name>.{name, tooltip}, outputs.<index>.{name, tooltip}.
- ``nodeCategories.<segment>``: the node library translates each segment of a node's category.
- ``templateWorkflows.category.<install folder>``: the template browser names a custom node's template group by its
  install folder's name unless this key exists (dots in the folder name become underscores). The folder is whatever
  the pack was cloned or installed as, so the usual names are listed in TEMPLATE_FOLDERS.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
LOCALES = REPO / "locales"
TITLE = "Memorization-Safe CFG"
# Install folder names: the registry / Manager install (project name), a plain git clone of the repository, the
# folder the README names, and the one the host tests use (tests/server.py).
TEMPLATE_FOLDERS = ["memorization-safe-cfg", "comfyui-memorization-safe-cfg", "ComfyUI-MemSafe-CFG", "memsafe_cfg"]


def i18n_key(name: str) -> str:
    """The front end's normalizeI18nKey: dots become underscores."""
    return name.replace(".", "_")


def node_infos() -> dict[str, dict]:
    """Every pack node's /object_info entry, computed in process from its schema (ComfyUI on the path)."""
    sys.path.insert(0, str(HERE))
    from host import import_comfy, load_pack

    import_comfy()
    pack = load_pack()
    import importlib

    nodes = importlib.import_module(f"{pack.__name__}.nodes")
    return {cls.GET_SCHEMA().node_id: cls.GET_NODE_INFO_V1() for cls in nodes.NODES}


def node_defs(infos: dict[str, dict]) -> dict:
    """The English nodeDefs.json, in the front end's format."""
    out = {}
    for node_id, info in infos.items():
        inputs = {}
        for section in ("required", "optional"):
            for name, spec in (info.get("input") or {}).get(section, {}).items():
                opts = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
                inputs[name] = {"name": name, "tooltip": opts.get("tooltip")}
        tips = info.get("output_tooltips") or [None] * len(info["output"])
        outputs = {str(i): {"name": info["output_name"][i], "tooltip": tips[i]} for i in range(len(info["output"]))}
        out[i18n_key(node_id)] = {"display_name": info["display_name"], "description": info["description"],
                                  "inputs": inputs, "outputs": outputs}
    return out


def main_json(infos: dict[str, dict]) -> dict:
    core = {"sampling"}  # ComfyUI's own category, translated by the front end already
    segments = sorted({seg for info in infos.values() for seg in info["category"].split("/")} - core)
    return {"nodeCategories": {s: s for s in segments},
            "templateWorkflows": {"category": {i18n_key(f): TITLE for f in TEMPLATE_FOLDERS}}}


def missing(reference: dict, other: dict, path: str = "") -> list[str]:
    """Keys of ``reference`` that ``other`` lacks (a translation must cover every node, input and output)."""
    gaps = []
    for key, value in reference.items():
        where = f"{path}.{key}" if path else key
        if key not in other:
            gaps.append(where)
        elif isinstance(value, dict) and isinstance(other[key], dict):
            gaps += missing(value, other[key], where)
    return gaps


def expected() -> dict[str, dict]:
    infos = node_infos()
    return {"main.json": main_json(infos), "nodeDefs.json": node_defs(infos)}


def dump(data: dict) -> str:
    return json.dumps(data, indent=2, ensure_ascii=False) + "\n"


def run(check: bool) -> int:
    want = expected()
    status = 0
    for name, data in want.items():
        path = LOCALES / "en" / name
        if check:
            if not path.is_file() or json.loads(path.read_text(encoding="utf-8")) != data:
                print(f"locales/en/{name} disagrees with the node schemas: run tests/build_locales.py")
                status = 1
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(dump(data), encoding="utf-8")
            print(f"wrote locales/en/{name}")
    for lang in sorted(p.name for p in LOCALES.iterdir() if p.is_dir() and p.name != "en"):
        for name, data in want.items():
            path = LOCALES / lang / name
            other = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
            gaps = missing(data, other)
            if gaps:
                print(f"locales/{lang}/{name} lacks {len(gaps)} keys: {', '.join(gaps[:12])}{' ...' if len(gaps) > 12 else ''}")
                status = 1 if check else status
    return status


if __name__ == "__main__":
    if not os.environ.get("COMFYUI_PATH"):
        sys.exit("set COMFYUI_PATH to a ComfyUI checkout (the schemas are read through ComfyUI's own classes)")
    sys.exit(run(check="--check" in sys.argv[1:]))
