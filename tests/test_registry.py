"""Issue 11: publishable, findable, self-explaining.

Core tier (no ComfyUI): the registry metadata in pyproject.toml, the publish workflow, what .comfyignore leaves in
the registry archive (and, when comfy-cli is installed, what `comfy node pack` really builds), the workflows'
thumbnails and model download URLs. Host tier: search aliases in /object_info where the host has them, the help
pages and thumbnails served by a real server.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import urllib.parse
import zipfile
from pathlib import Path

import pytest

from conftest import load_test_module

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = pytest.importorskip("tomli", reason="reading pyproject.toml needs Python 3.11 or tomli")

REPO = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
WORKFLOWS = sorted((REPO / "example_workflows").glob("*.json"))
HELP = REPO / "js" / "docs"
GUIDANCE_NODES = ["MemSafeKSampler", "MemSafeCFGGuider", "MemSafeCFGPatch", "MemSafeGuidanceCurve"]
# comfy-cli's accepted classifier values (comfy_cli/registry/config_parser.py; docs.comfy.org/registry/specifications)
OS_PREFIXES = ("Microsoft", "POSIX", "MacOS", "OS Independent")
ACCELERATORS = {"GPU :: NVIDIA CUDA", "GPU :: AMD ROCm", "GPU :: Intel Arc", "NPU :: Huawei Ascend", "GPU :: Apple Metal"}
MAX_ARCHIVE = 7 * 1024 * 1024
NEEDED = ["__init__.py", "pyproject.toml", "LICENSE", "README.md", "requirements.txt", "nodes/ksampler.py",
          "guidance/run.py", "js/memsafe_cfg.js", "js/docs/MemSafeKSampler.md", "locales/en/nodeDefs.json",
          "locales/zh/nodeDefs.json", "testbed/testbed_unet.safetensors", "testbed/digits16.safetensors",
          "testbed/model.py", "testbed/sampler.py", "testbed/data.py", "testbed/measure.py"]
NOT_SHIPPED = ("tests/", "bench/", ".ci/", ".github/", "artifacts/")


# ---------------------------------------------------------------- .comfyignore (gitignore syntax, as comfy-cli reads it)
def _pattern_regex(pattern: str) -> re.Pattern:
    """gitwildmatch for the patterns this repo uses: '*', '**', a trailing '/' (a folder), a leading '/' (anchored)."""
    anchored = pattern.startswith("/") or "/" in pattern.rstrip("/")
    body = pattern.strip("/")
    out, i = "", 0
    while i < len(body):
        if body.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif body.startswith("**", i):
            out, i = out + ".*", i + 2
        elif body[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif body[i] == "?":
            out, i = out + "[^/]", i + 1
        else:
            out, i = out + re.escape(body[i]), i + 1
    prefix = "" if anchored else "(?:.*/)?"
    return re.compile(f"^{prefix}{out}(?:/.*)?$")  # a match on a folder covers everything under it


def comfyignore_excludes(path: str, lines: list[str]) -> bool:
    """Last matching pattern wins; '!' re-includes."""
    excluded = False
    for raw in lines:
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        if _pattern_regex(line[1:] if negate else line).match(path):
            excluded = not negate
    return excluded


def git_files() -> list[str]:
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("not a git checkout: the archive is built from git-tracked files")
    out = subprocess.run(["git", "-C", str(REPO), "ls-files"], capture_output=True, text=True, check=True).stdout
    return [p for p in out.splitlines() if p]


def shipped_files() -> list[str]:
    lines = (REPO / ".comfyignore").read_text().splitlines()
    return [p for p in git_files() if not comfyignore_excludes(p, lines)]


def test_matcher_follows_gitignore_rules():
    lines = ["tests/", "docs/*", "!docs/keep.png", "**/.gitignore", "/top.txt"]
    assert comfyignore_excludes("tests/test_x.py", lines) and comfyignore_excludes("tests/browser/a.mjs", lines)
    assert comfyignore_excludes("docs/icon.png", lines) and not comfyignore_excludes("docs/keep.png", lines)
    assert comfyignore_excludes("bench/.gitignore", lines) and comfyignore_excludes("top.txt", lines)
    assert not comfyignore_excludes("nodes/tests.py", lines) and not comfyignore_excludes("a/top.txt", lines)


def test_comfyignore_leaves_out_tests_bench_and_ci_and_keeps_what_users_need():
    tracked, shipped = git_files(), shipped_files()
    for prefix in NOT_SHIPPED:
        assert not [p for p in shipped if p.startswith(prefix)], f"{prefix} would be in the registry archive"
    assert [p for p in tracked if p.startswith(("tests/", "bench/", ".ci/"))], "nothing to exclude: is this the repo?"
    missing = [p for p in NEEDED if p not in shipped]
    assert not missing, f"the archive would lack {missing} (tracked? excluded by .comfyignore?)"
    workflows = [p for p in tracked if p.startswith("example_workflows/")]
    assert workflows and all(p in shipped for p in workflows)
    size = sum((REPO / p).stat().st_size for p in shipped)
    assert size <= MAX_ARCHIVE, f"{size / 2**20:.1f} MB uncompressed"


@pytest.mark.skipif(not (os.environ.get("COMFY_CLI") or shutil.which("comfy")),
                    reason="comfy-cli not installed (set COMFY_CLI=/path/to/comfy to run `comfy node pack` for real)")
def test_comfy_node_pack_builds_only_what_users_need(tmp_path):
    comfy = os.environ.get("COMFY_CLI") or shutil.which("comfy")
    clone = tmp_path / "pack"
    subprocess.run(["git", "clone", "-q", str(REPO), str(clone)], check=True)
    for path in (".comfyignore", "pyproject.toml"):  # the working tree's, committed or not
        shutil.copy(REPO / path, clone / path)
    env = dict(os.environ, HOME=str(tmp_path / "home"), DO_NOT_TRACK="1")  # comfy-cli's own config stays in tmp
    for args in (["node", "validate"], ["node", "pack"]):
        run = subprocess.run([comfy, "--skip-prompt", *args], cwd=clone, env=env,
                             capture_output=True, text=True, timeout=300)
        assert run.returncode == 0, f"comfy {' '.join(args)}: {run.stdout}\n{run.stderr}"
    archive = clone / "node.zip"
    names = zipfile.ZipFile(archive).namelist()
    assert archive.stat().st_size <= MAX_ARCHIVE
    assert not [n for n in names if n.startswith(NOT_SHIPPED)]
    assert not [p for p in NEEDED if p not in names and (clone / p).exists()]


# ---------------------------------------------------------------- pyproject and the publish workflow
def raw_url(repository: str) -> str:
    owner_repo = urllib.parse.urlparse(repository).path.strip("/").removesuffix(".git")
    return f"https://raw.githubusercontent.com/{owner_repo}/main/"


def test_classifiers_are_ones_the_registry_accepts():
    classifiers = PYPROJECT["project"]["classifiers"]
    systems = [c.removeprefix("Operating System :: ") for c in classifiers if c.startswith("Operating System :: ")]
    accelerators = [c.removeprefix("Environment :: ") for c in classifiers if c.startswith("Environment :: ")]
    assert systems and all(s.startswith(OS_PREFIXES) for s in systems)
    assert accelerators and set(accelerators) <= ACCELERATORS


def test_icon_and_banner_are_shipped_files_of_the_repository():
    from PIL import Image

    comfy, repository = PYPROJECT["tool"]["comfy"], PYPROJECT["project"]["urls"]["Repository"]
    for key, check in (("Icon", lambda w, h: w == h <= 400), ("Banner", lambda w, h: abs(w / h - 21 / 9) < 0.05)):
        url = comfy.get(key)
        if key == "Banner" and not url:
            continue
        assert url.startswith(raw_url(repository)), f"{key} {url} is not a file of {repository} (main branch)"
        path = REPO / url.removeprefix(raw_url(repository))
        assert path.is_file(), f"{key}: {path} is missing"
        with Image.open(path) as img:
            assert check(*img.size), f"{key}: {img.size}"


def test_publish_workflow_is_the_registrys_action():
    text = (REPO / ".github" / "workflows" / "publish.yml").read_text()
    assert "Comfy-Org/publish-node-action" in text and "secrets.REGISTRY_ACCESS_TOKEN" in text
    assert re.search(r"paths:\s*\n\s*- \"pyproject.toml\"", text) and re.search(r"branches:\s*\n\s*- main", text)


def test_readme_names_the_two_values_a_maintainer_sets_before_publishing():
    section = (REPO / "docs" / "publishing.md").read_text()  # the README's Publishing section, moved (issue 21)
    assert PYPROJECT["project"]["urls"]["Repository"] in section and PYPROJECT["tool"]["comfy"]["PublisherId"] in section


# ---------------------------------------------------------------- templates: thumbnails, titles, model downloads
@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.stem)
def test_workflow_has_a_same_stem_jpg_thumbnail(path):
    from PIL import Image

    thumb = path.with_suffix(".jpg")
    assert thumb.is_file(), f"no thumbnail {thumb.name}: run tests/build_example_workflows.py --thumbnails"
    with Image.open(thumb) as img:
        assert img.format == "JPEG" and min(img.size) >= 256


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.stem)
def test_workflow_title_is_readable(path):
    """The template browser shows the file name as the title (custom-node templates have no other title field)."""
    assert " " in path.stem and not path.stem.startswith("memsafe_"), path.stem


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.stem)
def test_checkpoint_loaders_carry_their_download(path):
    for node in json.loads(path.read_text())["nodes"]:
        if node["type"] == "CheckpointLoaderSimple":
            models = node["properties"].get("models")
            assert models, f"node {node['id']}: no properties.models"
            assert models[0]["name"] == node["widgets_values"][0] and models[0]["directory"] == "checkpoints"
            assert models[0]["url"].startswith("https://") and models[0]["url"].endswith("/" + models[0]["name"])


# ---------------------------------------------------------------- help pages (files)
def pack_nodes() -> list[str]:
    return sorted(json.loads((REPO / "locales" / "en" / "nodeDefs.json").read_text(encoding="utf-8")))


def help_pages() -> list[Path]:
    return sorted(HELP.glob("*.md")) + sorted(HELP.glob("*/*.md"))


def images_of(page: Path) -> list[str]:
    return re.findall(r"!\[[^\]]*\]\(([^)\s]+)", page.read_text(encoding="utf-8"))


def test_every_node_has_a_help_page_naming_its_inputs_and_outputs():
    defs = json.loads((REPO / "locales" / "en" / "nodeDefs.json").read_text(encoding="utf-8"))
    for node_id, entry in defs.items():
        pages = [HELP / f"{node_id}.md", *sorted((HELP / node_id).glob("*.md"))]
        assert pages[0].is_file(), f"js/docs/{node_id}.md is missing"
        for page in pages:
            text = page.read_text(encoding="utf-8")
            for name in [*entry["inputs"], *(o["name"] for o in entry["outputs"].values())]:
                assert f"`{name}`" in text, f"{page.relative_to(REPO)} does not explain `{name}`"


def test_help_images_resolve_against_the_docs_folder():
    """The front end renders every help page with base URL /extensions/<pack>/docs/ (the per-language pages too),
    so a relative image is a file in js/docs/ itself."""
    for page in help_pages():
        for src in images_of(page):
            assert not src.startswith(("/", "http", "..")), f"{page.name}: {src}"
            assert (HELP / src).is_file(), f"{page.relative_to(REPO)}: image {src} is not in js/docs/"


# ---------------------------------------------------------------- host tier
@pytest.fixture(scope="module")
def object_info(comfy_server):
    return comfy_server.get("/object_info")


def schema_has_search_aliases() -> bool:
    import dataclasses

    from comfy_api.latest import io

    return "search_aliases" in {f.name for f in dataclasses.fields(io.Schema)}


@pytest.mark.host
def test_guidance_nodes_are_findable(object_info):
    """0.33 sends search_aliases in /object_info (the front end's node search reads it); 0.3.64's Schema has no
    such field and the nodes load without it."""
    from host import import_comfy

    import_comfy()
    for node_id in GUIDANCE_NODES:
        aliases = object_info[node_id].get("search_aliases")
        if schema_has_search_aliases():
            for word in ("memorization", "memorized", "copy", "training data", "cfg", "guidance", "guidance schedule"):
                assert word in aliases, f"{node_id}: no alias {word!r}"
        else:
            assert not aliases and object_info[node_id]["category"] == "sampling/memorization-safe"


@pytest.mark.host
def test_help_pages_and_their_images_are_served(comfy_server, object_info):
    pack = load_test_module("server").PACK_DIR_NAME
    assert set(pack_nodes()) == {k for k in object_info if k.startswith("MemSafe")}
    for page in help_pages():
        rel = page.relative_to(HELP).as_posix()
        assert comfy_server.get(f"/extensions/{urllib.parse.quote(pack)}/docs/{rel}", raw=True) == page.read_bytes()
        for src in images_of(page):
            assert comfy_server.get(f"/extensions/{urllib.parse.quote(pack)}/docs/{src}", raw=True) == (HELP / src).read_bytes()


@pytest.mark.host
def test_thumbnails_are_served_beside_the_templates(comfy_server):
    pack = load_test_module("server").PACK_DIR_NAME
    listed = comfy_server.get("/workflow_templates")[pack]
    assert sorted(listed) == sorted(p.stem for p in WORKFLOWS)
    for p in WORKFLOWS:
        url = f"/api/workflow_templates/{urllib.parse.quote(pack)}/{urllib.parse.quote(p.stem)}.jpg"
        assert comfy_server.get(url, raw=True) == p.with_suffix(".jpg").read_bytes()

