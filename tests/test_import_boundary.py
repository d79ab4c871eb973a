"""Import boundaries. The core stays host-free: nothing under guidance/ imports ComfyUI, and its only third-party
imports are torch, numpy, PIL and safetensors (checked in the source with ``ast`` and at run time in a fresh
interpreter). The layers point one way: guidance/ never imports testbed/ (or nodes/), testbed/ never imports
nodes/ (the pack's, or ComfyUI's ``nodes``)."""
from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CORE = REPO / "guidance"
HOST = {"comfy", "comfy_api", "comfy_extras", "nodes", "server", "folder_paths", "execution", "latent_preview"}
THIRD_PARTY = {"torch", "numpy", "PIL", "safetensors"}
STDLIB = set(sys.stdlib_module_names) | {"__future__"}
FILES = sorted(CORE.rglob("*.py"))


def imports(path: Path):
    """(top-level module or None for relative, relative level, line) for every import, at any depth."""
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name.split(".")[0], 0, node.lineno
        elif isinstance(node, ast.ImportFrom):
            yield (node.module or "").split(".")[0] or None, node.level, node.lineno
        elif isinstance(node, ast.Call):
            f = node.func
            name = f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else ""
            if name in ("__import__", "import_module"):
                arg = node.args[0] if node.args else None
                literal = arg.value if isinstance(arg, ast.Constant) and isinstance(arg.value, str) else "<dynamic>"
                yield literal.split(".")[0], 0, node.lineno


def pack_imports(path: Path, source: str = ""):
    """(first folder of the pack an import reaches, or None for outside the pack; the top-level name; line) for
    every import of ``path``: relative imports resolved against its place in the repo, absolute ones through
    ``memsafe_cfg.``; ``from .. import x`` reaches folder x. ``source``: read instead of the file."""
    here = list(path.relative_to(REPO).parent.parts)
    tree = ast.parse(source or path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = here[: len(here) - (node.level - 1)] + (node.module.split(".") if node.module else [])
            targets = [base + [a.name] for a in node.names] if not base else [base]
            for parts in targets:
                yield parts[0], parts[0], node.lineno
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            for name in names:
                parts = name.split(".")
                inside = parts[0] == "memsafe_cfg" and len(parts) > 1
                yield (parts[1] if inside else None), parts[0], node.lineno


LAYERS = [  # (folder, what it must never reach: pack folders, and top-level modules outside the pack)
    ("guidance", {"testbed", "nodes"}, {"testbed", "nodes"}),
    ("testbed", {"nodes"}, {"nodes"}),
]
# Host-side scripts: they drive a ComfyUI and the pack's nodes from outside (as a user's graph does), so they may reach
# nodes/ (loaded by path); nothing in the pack may import them, which keeps the layers one-way.
HOST_SCRIPTS = {"testbed/comfy_eval.py"}


def imports_module(path: Path, name: str, source: str = "") -> bool:
    """``path`` imports module ``name``: an import statement, or a dotted string naming it (importlib by name)."""
    for node in ast.walk(ast.parse(source or path.read_text(), filename=str(path))):
        if isinstance(node, ast.ImportFrom) and (name in (node.module or "").split(".") or any(a.name == name for a in node.names)):
            return True
        if isinstance(node, ast.Import) and any(name in a.name.split(".") for a in node.names):
            return True
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.split(".")[-1] == name and " " not in node.value:
            return True
    return False


def test_host_scripts_are_imported_by_nothing_in_the_pack():
    for path in sorted(REPO.glob("*.py")) + [p for f in ("guidance", "nodes", "testbed") for p in (REPO / f).rglob("*.py")]:
        if str(path.relative_to(REPO)) in HOST_SCRIPTS:
            continue
        for script in HOST_SCRIPTS:
            assert not imports_module(path, Path(script).stem), f"{path.relative_to(REPO)} imports the host-side script {script}"
    probe = REPO / "testbed" / "probe.py"  # never written: the checker itself must see each way of importing it
    for src in ("from . import comfy_eval\n", "from .comfy_eval import main\n", "import memsafe_cfg.testbed.comfy_eval\n",
                "importlib.import_module('memsafe_cfg.testbed.comfy_eval')\n"):
        assert imports_module(probe, "comfy_eval", src), src
    assert not imports_module(probe, "comfy_eval", '"""pools `comfy_eval --json` reports"""\n')


@pytest.mark.parametrize("folder, pack_forbidden, top_forbidden", LAYERS, ids=[f for f, _, _ in LAYERS])
def test_layers_point_one_way(folder, pack_forbidden, top_forbidden):
    files = sorted(p for p in (REPO / folder).rglob("*.py") if str(p.relative_to(REPO)) not in HOST_SCRIPTS)
    assert files
    for path in files:
        for reached, top, line in pack_imports(path):
            where = f"{path.relative_to(REPO)}:{line}"
            assert reached not in pack_forbidden, f"{where}: imports the pack's {reached}/"
            assert reached is not None or top not in top_forbidden, f"{where}: imports '{top}'"


def test_layer_checker_resolves_relative_imports():
    probe = REPO / "testbed" / "probe.py"  # never written: the source is given
    src = "from .. import nodes\nfrom ..nodes.adapter import x\nfrom . import guidance\nimport memsafe_cfg.nodes\nimport nodes\n"
    found = [(r, t) for r, t, _ in pack_imports(probe, src)]
    assert found == [("nodes", "nodes"), ("nodes", "nodes"), ("testbed", "testbed"), ("nodes", "memsafe_cfg"), (None, "nodes")]


def test_core_files_found():
    names = {p.name for p in FILES}
    assert {"__init__.py", "run.py", "render.py", "combine.py"} <= names


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(REPO)))
def test_no_host_and_only_allowed_imports(path):
    depth = len(path.relative_to(CORE).parts) - 1  # 0 for guidance/x.py
    for top, level, line in imports(path):
        where = f"{path.relative_to(REPO)}:{line}"
        if level:
            assert level <= depth + 1, f"{where}: relative import (level {level}) leaves the guidance package"
            continue
        assert top not in HOST, f"{where}: imports the host module '{top}'"
        assert top in STDLIB or top in THIRD_PARTY, f"{where}: '{top}' is neither stdlib nor one of {sorted(THIRD_PARTY)}"


def test_checker_catches_violations(tmp_path):
    """The checker itself sees host imports hidden in functions, relative escapes and dynamic imports."""
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    import comfy.samplers\n    from .. import nodes\n    from ...x import y\n"
                   "    import importlib; importlib.import_module('folder_paths')\n    import scipy\n")
    found = list(imports(bad))
    assert ("comfy", 0, 2) in found and (None, 2, 3) in found and ("folder_paths", 0, 5) in found and ("scipy", 0, 6) in found
    assert ("x", 3, 4) in found


def test_importing_and_using_core_loads_no_host_module(tmp_path):
    code = f"""
import sys
sys.path.insert(0, {str(REPO / 'tests')!r})
import host; host.load_pack()
import torch
from memsafe_cfg.guidance import GuidanceRun, GuidanceSettings, render_curves
run = GuidanceRun(GuidanceSettings(), [3.0, 2.0, 1.0, 0.0], [900.0, 600.0, 300.0], lambda p: 3.0 * (1 - p))
for i in range(3):
    run.combine(torch.zeros(1, 4), torch.ones(1, 4), torch.tensor([3.0 - i]), 5.0)
    run.end_step(i)
trace = run.finish(); trace.save({str(tmp_path / 't.safetensors')!r}); render_curves(trace)
host = sorted(m for m in sys.modules if m.split(".")[0] in {sorted(HOST)!r} or m.startswith("memsafe_cfg.nodes"))
third = sorted({{m.split(".")[0] for m in sys.modules}} - set(sys.stdlib_module_names) - {{"memsafe_cfg", "host", "__main__", "__mp_main__"}})
print("HOST", host); print("THIRD", third)
"""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": ""}
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "HOST []" in out.stdout, out.stdout
    third = ast.literal_eval(out.stdout.split("THIRD", 1)[1].strip())
    # torch pulls in its own helpers (sympy, typing_extensions, ...); PIL/numpy/safetensors must be the pack's only others
    assert {"torch", "numpy", "PIL", "safetensors"} <= set(third)
