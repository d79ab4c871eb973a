"""Issue 21, core tier: every relative link and #anchor in the pack's Markdown resolves.

A link resolves when its file exists and its anchor is the GitHub slug of a heading in the target (or of one in the
same file for a bare ``#anchor``). Links to this repository's own GitHub address (pyproject's Repository, ``/blob/main/``
or ``/tree/main/``) are checked as the local file they name. Help pages (``js/docs/``) are read in two places: on
GitHub, relative to their own folder, and in the front end's help panel, which resolves every locale's page against
``/extensions/<pack>/docs/`` (the front end's getNodeHelpBaseUrl), i.e. ``js/docs/``: their links must resolve in both.
"""
from __future__ import annotations

import re
import sys
import tomllib
import unicodedata
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
HELP = REPO / "js" / "docs"
PAGES = sorted({*REPO.glob("README.md"), *REPO.glob("docs/*.md"), *REPO.glob("testbed/README.md"), *REPO.glob("bench/README.md"),
                *REPO.glob("bench/results/*.md"), *HELP.rglob("*.md")})
REPOSITORY = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["urls"]["Repository"].rstrip("/")
FENCE = re.compile(r"^(```|~~~).*?^\1", re.M | re.S)
CODE = re.compile(r"(`+)(?!`).*?(?<!`)\1(?!`)", re.S)
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
HTML_SRC = re.compile(r"<(?:img|a)\b[^>]*?\b(?:src|href)=\"([^\"]+)\"", re.I)
SCHEME = re.compile(r"^[a-z][a-z0-9+.-]*:", re.I)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: the rendered text, lowercased, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link's text only
    text = re.sub(r"<[^>]+>", "", text).strip().lower()
    text = "".join(c for c in text if c in " -_" or unicodedata.category(c)[0] in "LNM")
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every heading's slug (repeats get -1, -2, ... as on GitHub) and every explicit <a name/id> in the file."""
    text = FENCE.sub("", path.read_text(encoding="utf-8"))
    seen: dict[str, int] = {}
    out = set(re.findall(r"<a\s+(?:name|id)=\"([^\"]+)\"", text))
    for heading in re.findall(r"^#{1,6}\s+(.+?)\s*#*\s*$", text, re.M):
        base = slug(heading)
        k = seen.get(base, 0)
        out.add(base if k == 0 else f"{base}-{k}")
        seen[base] = k + 1
    return out


def links(path: Path) -> list[str]:
    """Link and image targets outside code (fenced blocks and inline code spans are not links)."""
    text = CODE.sub("", FENCE.sub("", path.read_text(encoding="utf-8")))
    return LINK.findall(text) + HTML_SRC.findall(text)


def local_target(url: str) -> str | None:
    """The repository-relative part of a link to this repository on GitHub, else None."""
    for kind in ("blob", "tree"):
        prefix = f"{REPOSITORY}/{kind}/main/"
        if url.startswith(prefix):
            return url[len(prefix):]
    return "README.md" + url[len(REPOSITORY):] if url == REPOSITORY or url.startswith(REPOSITORY + "#") else None


def problem(base: Path, url: str, page: Path) -> str | None:
    """Why ``url`` read from folder ``base`` does not resolve (None when it does)."""
    target, _, anchor = url.partition("#")
    file = (base / target).resolve() if target else page
    if REPO not in file.parents and file != REPO:
        return f"{url} leaves the repository"
    if not file.exists():
        return f"{url}: {file.relative_to(REPO) if REPO in file.parents else file} does not exist"
    if anchor and file.suffix == ".md" and anchor not in anchors(file):
        return f"{url}: no heading with anchor #{anchor} in {file.relative_to(REPO)}"
    return None


def test_the_pages_are_found():
    names = {p.relative_to(REPO).as_posix() for p in PAGES}
    assert {"README.md", "testbed/README.md", "bench/README.md", "js/docs/MemSafeKSampler.md",
            "js/docs/MemSafeKSampler/zh.md", "docs/method.md"} <= names


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(REPO).as_posix())
def test_every_relative_link_and_anchor_resolves(page):
    bad = []
    for url in links(page):
        if url.startswith("#"):
            bad.append(problem(page.parent, url, page))
            continue
        own = local_target(url)
        if own is not None:
            bad.append(problem(REPO, own, page))
            continue
        if SCHEME.match(url) or url.startswith("/"):
            continue  # another site, or a server path
        bad.append(problem(page.parent, url, page))
        if HELP in page.parents and page.parent != HELP:  # the help panel reads it from js/docs/
            seen = problem(HELP, url, page)
            bad.append(seen and f"in the help panel (base js/docs/): {seen}")
    assert [b for b in bad if b] == []


def test_slugs_follow_github():
    """The slug rule on headings of the kinds these pages use (checked against the anchors GitHub renders)."""
    assert slug("Which node and which settings, when") == "which-node-and-which-settings-when"
    assert slug("Memorization Scan (`scan_eval.py`)") == "memorization-scan-scan_evalpy"
    assert slug("The mechanism: what the guidance norm shows on this model") == "the-mechanism-what-the-guidance-norm-shows-on-this-model"
    assert slug("Seed 0 (shipped): copy threshold 0.9652") == "seed-0-shipped-copy-threshold-09652"
    assert slug("如何阅读曲线") == "如何阅读曲线"


def test_a_broken_link_is_caught(tmp_path, monkeypatch):
    page = tmp_path / "page.md"
    page.write_text("# Title\n[ok](#title) [gone](#nowhere) [file](missing.md) `[code](not-a-link.md)`\n")
    monkeypatch.setattr(sys.modules[__name__], "REPO", tmp_path)
    found = [problem(page.parent, url, page) for url in links(page)]
    assert found[0] is None and "no heading" in found[1] and "does not exist" in found[2] and len(found) == 3


GUIDE = f"{REPOSITORY}/blob/main/README.md#which-node-and-which-settings-when"
GUIDED_PAGES = ["MemSafeKSampler", "MemSafeCFGGuider", "MemSafeCFGPatch", "MemSafeGuidanceCurve", "MemSafeMemorizationScan",
                "MemSafeCopyCheck"]


@pytest.mark.parametrize("node", GUIDED_PAGES)
def test_help_pages_point_to_the_readme_decision_guide(node):
    """Every language's help page of a guidance node links the same section of the README (the help panel opens
    links in a new tab, so the link is the repository's address; test_every_relative_link_and_anchor_resolves checks
    that the anchor exists)."""
    pages = [HELP / f"{node}.md", *sorted((HELP / node).glob("*.md"))]
    assert len(pages) >= 2 and all(GUIDE in links(p) for p in pages), [p.name for p in pages if GUIDE not in links(p)]
