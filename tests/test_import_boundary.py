"""The core stays host-free: nothing under guidance/ imports ComfyUI, and its only third-party imports are
torch, numpy, PIL and safetensors (checked in the source with ``ast`` and at run time in a fresh interpreter)."""
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
import importlib.util, sys
spec = importlib.util.spec_from_file_location("memsafe_cfg", {str(REPO / '__init__.py')!r}, submodule_search_locations=[{str(REPO)!r}])
mod = importlib.util.module_from_spec(spec); sys.modules["memsafe_cfg"] = mod; spec.loader.exec_module(mod)
import torch
from memsafe_cfg.guidance import GuidanceRun, GuidanceSettings, render_curves
run = GuidanceRun(GuidanceSettings(), [3.0, 2.0, 1.0, 0.0], [900.0, 600.0, 300.0], lambda p: 3.0 * (1 - p))
for i in range(3):
    run.combine(torch.zeros(1, 4), torch.ones(1, 4), torch.tensor([3.0 - i]), 5.0)
    run.end_step(i)
trace = run.finish(); trace.save({str(tmp_path / 't.safetensors')!r}); render_curves(trace)
host = sorted(m for m in sys.modules if m.split(".")[0] in {sorted(HOST)!r} or m.startswith("memsafe_cfg.nodes"))
third = sorted({{m.split(".")[0] for m in sys.modules}} - set(sys.stdlib_module_names) - {{"memsafe_cfg", "__main__", "__mp_main__"}})
print("HOST", host); print("THIRD", third)
"""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": ""}
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "HOST []" in out.stdout, out.stdout
    third = ast.literal_eval(out.stdout.split("THIRD", 1)[1].strip())
    # torch pulls in its own helpers (sympy, typing_extensions, ...); PIL/numpy/safetensors must be the pack's only others
    assert {"torch", "numpy", "PIL", "safetensors"} <= set(third)
