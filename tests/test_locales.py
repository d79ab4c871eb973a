"""Issue 11, host tier: locales/ agree with the node schemas (tests/build_locales.py writes locales/en from them),
every translation covers every node, input and output, and ComfyUI serves them at /i18n."""
from __future__ import annotations

import json
import re

import pytest

from conftest import load_test_module

pytestmark = pytest.mark.host
build_locales = load_test_module("build_locales")
PACK_DIR_NAME = load_test_module("server").PACK_DIR_NAME
LANGS = sorted(p.name for p in build_locales.LOCALES.iterdir() if p.is_dir())
CJK = re.compile(r"[\u4e00-\u9fff]")


@pytest.fixture(scope="module")
def expected():
    return build_locales.expected()


def read(lang: str, name: str) -> dict:
    return json.loads((build_locales.LOCALES / lang / name).read_text(encoding="utf-8"))


@pytest.mark.parametrize("name", ["main.json", "nodeDefs.json"])
def test_en_locale_is_what_the_schemas_say(expected, name):
    assert read("en", name) == expected[name], f"locales/en/{name} is stale: run tests/build_locales.py"


def test_every_node_has_display_name_description_and_tooltips(expected):
    for node_id, entry in expected["nodeDefs.json"].items():
        assert entry["display_name"] and "Jain et al." in entry["description"], node_id
        for name, spec in {**entry["inputs"], **entry["outputs"]}.items():
            assert spec["tooltip"], f"{node_id}.{name} has no tooltip"


@pytest.mark.parametrize("lang", [lang for lang in LANGS if lang != "en"])
@pytest.mark.parametrize("name", ["main.json", "nodeDefs.json"])
def test_translation_covers_every_node_input_and_output(expected, lang, name):
    assert build_locales.missing(expected[name], read(lang, name)) == []


def test_chinese_is_translated_not_copied(expected):
    zh, en = read("zh", "nodeDefs.json"), expected["nodeDefs.json"]
    for node_id, entry in zh.items():
        assert CJK.search(entry["display_name"]) and CJK.search(entry["description"]), node_id
        for kind in ("inputs", "outputs"):
            for name, spec in entry[kind].items():
                assert spec["tooltip"] and spec["tooltip"] != en[node_id][kind][name]["tooltip"], f"{node_id}.{kind}.{name}"


def test_i18n_serves_the_pack_in_every_language(comfy_server, expected):
    served = comfy_server.get("/i18n")
    nodes = set(expected["nodeDefs.json"])
    for lang in LANGS:
        assert nodes <= set(served[lang]["nodeDefs"]), lang
        assert served[lang]["nodeDefs"]["MemSafeKSampler"] == read(lang, "nodeDefs.json")["MemSafeKSampler"]
        # the template browser's name for this install folder's templates (the test server's folder)
        title = served[lang]["templateWorkflows"]["category"][build_locales.i18n_key(PACK_DIR_NAME)]
        assert "Memorization-Safe CFG" in title, (lang, title)
    assert served["en"]["templateWorkflows"]["category"][build_locales.i18n_key(PACK_DIR_NAME)] == build_locales.TITLE


def test_every_served_node_has_output_and_input_tooltips(comfy_server):
    info = comfy_server.get("/object_info")
    ours = {k: v for k, v in info.items() if k.startswith("MemSafe")}
    assert len(ours) >= 8
    for node_id, entry in ours.items():
        tips = entry.get("output_tooltips") or []
        assert len(tips) == len(entry["output"]) and all(tips), f"{node_id}: output tooltips {tips}"
        for section in ("required", "optional"):
            for name, spec in entry["input"].get(section, {}).items():
                assert len(spec) > 1 and spec[1].get("tooltip"), f"{node_id}.{name} has no tooltip"
