"""Every file a comment, docstring or doc points at is in the repository, so a fresh clone can follow it.

What counts as a file reference (checked in every tracked `*.py` and `*.md` file, the shell scripts, the
Makefile and the shipped studies `sweeps/*.yaml`):

1. a Markdown link `[text](target)` in a `.md` file whose target is not a URL (`scheme:`) or a bare `#anchor`:
   resolved against the linking file's folder, it must be a tracked file or folder;
2. a path token, i.e. word characters, dots and dashes in `/`-separated parts, whose first part is a
   top-level entry of the repository (`docs/method.md`, `vtp_core/flops.py`, `tests/cluster/`): resolved
   against the repository root, it must exist. Paths under `results/` (outputs written at run time,
   git-ignored) and tokens with placeholders (`<id>`, `*`, `{...}`, `$VAR`) are not file references;
3. any path token starting with `../` (it leaves the folder, and from the root it leaves the repository):
   resolved against the file's folder, it must be a tracked file or folder;
4. a bare Markdown file name in capitals, the way project documents are named (`README.md`, `CONTRACTS.md`;
   lower-case names such as `summary.md` are outputs the suite writes): some tracked file must have that name;
5. tags that point into a document outside the repository: `B#12`-style tags, `B30`-style tags in
   parentheses, and `reference/...` or `shared/...` paths: always a failure.

Anchors: when a reference to a `.md` file carries `#anchor` (either form), the anchor must be the GitHub slug
of one of that file's headings, so "see docs/protocol.md#sampler" cannot silently go stale.

URLs (`http://...`, `https://...`) are not references. Paths of other projects (`vtp/models/vtp.py` in VTP's
released code, `dinov2/configs/...`) do not start with one of this repository's top-level entries, so rule 2
leaves them alone.
"""
from __future__ import annotations

import re
import subprocess
from functools import cache, lru_cache
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
THIS = Path(__file__).resolve().relative_to(REPO).as_posix()

URL = re.compile(r"\b[a-z][a-z0-9+.-]*://\S+", re.IGNORECASE)
LINK = re.compile(r"\[[^\]\n]*\]\(([^)\s]+)\)")
PATH = re.compile(r"(?<![\w./-])((?:\.\./)*[\w.-]+(?:/[\w.-]+)+/?(?:#[\w-]+)?)")
BARE_MD = re.compile(r"(?<![\w./-])([A-Z][A-Z0-9_-]*\.md)(?:#[\w-]+)?\b")
OUTSIDE = re.compile(r"\bB#\d+|\(B\d+\)|[( ]B\d+\)|(?<![\w.-])(?:\.\./)*(?:shared|reference)/[\w.]")
PLACEHOLDER = re.compile(r"[<>*{}$]")
GENERATED = ("results/",)


@lru_cache(maxsize=1)
def tracked() -> tuple[frozenset[str], frozenset[str]]:
    """(tracked files, their folders), relative to the repository root."""
    out = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout.split("\n")
    files = frozenset(f for f in out if f)
    dirs = frozenset(str(p) for f in files for p in Path(f).parents if str(p) != ".")
    return files, dirs


def _exists(rel: str) -> bool:
    files, dirs = tracked()
    rel = rel.rstrip("/")
    return rel in files or rel in dirs or (REPO / rel).exists() and not (REPO / rel).is_symlink()


def _norm(base: str, target: str) -> str | None:
    """`target` relative to folder `base`, as a repository-relative path; None when it leaves the repository."""
    parts: list[str] = [p for p in base.split("/") if p]
    for part in target.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if not parts:
                return None
            parts.pop()
        else:
            parts.append(part)
    return "/".join(parts)


def slug(heading: str) -> str:
    """GitHub's anchor for a Markdown heading: lower case, punctuation dropped, spaces to dashes."""
    text = re.sub(r"`|\*\*|__", "", heading.strip()).lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


@cache
def anchors(rel: str) -> frozenset[str]:
    text = (REPO / rel).read_text(encoding="utf-8")
    text = re.sub(r"```.*?```", "", text, flags=re.DOTALL)
    return frozenset(slug(m.group(1)) for m in re.finditer(r"^#{1,6}\s+(.+?)\s*#*\s*$", text, re.MULTILINE))


def _check_anchor(rel: str, anchor: str | None) -> str | None:
    if not anchor or not rel.endswith(".md"):
        return None
    if anchor not in anchors(rel):
        return f"{rel} has no heading with anchor #{anchor}"
    return None


def problems_in(rel: str, text: str) -> list[str]:
    """Every broken reference in one file's text, as 'line N: what'."""
    files, _ = tracked()
    base = str(Path(rel).parent) if "/" in rel else ""
    found: list[str] = []
    for no, line in enumerate(text.splitlines(), 1):
        clean = URL.sub(" ", line)
        for m in OUTSIDE.finditer(clean):
            found.append(f"line {no}: {m.group(0)!r} points into a document outside the repository")
        spans: list[tuple[int, int]] = []
        if rel.endswith(".md"):
            for m in LINK.finditer(clean):
                spans.append(m.span())
                target = m.group(1)
                if re.match(r"[a-z][a-z0-9+.-]*:", target, re.IGNORECASE) or target.startswith("#"):
                    continue
                path, _, anchor = target.partition("#")
                dest = _norm(base, path)
                if dest is None or not _exists(dest):
                    found.append(f"line {no}: link to {target!r}, which is not a file of the repository")
                elif err := _check_anchor(dest, anchor):
                    found.append(f"line {no}: link {target!r}: {err}")
        for m in PATH.finditer(clean):
            if any(a <= m.start() < b for a, b in spans):
                continue
            token = m.group(1).rstrip(".")
            if PLACEHOLDER.search(clean[max(0, m.start() - 1):m.end() + 1]):
                continue
            path, _, anchor = token.partition("#")
            if path.startswith("../"):
                dest = _norm(base, path)
            else:
                first = path.split("/")[0]  # a tracked top-level entry (not .venv/, results/, build outputs)
                if not (first in files or first in tracked()[1]) or "/" not in path.rstrip("/") or path.startswith(GENERATED):
                    continue
                dest = path
            if dest is None or not _exists(dest):
                found.append(f"line {no}: {token!r} is not a file of the repository")
            elif err := _check_anchor(dest, anchor):
                found.append(f"line {no}: {token!r}: {err}")
        for m in BARE_MD.finditer(clean):
            name = m.group(1)
            if not any(f == name or f.endswith("/" + name) for f in files):
                found.append(f"line {no}: {name!r} is no file of the repository")
    return found


def _sources() -> list[str]:
    files, _ = tracked()
    return sorted(f for f in files if (f.endswith((".py", ".md", ".sh")) or f == "Makefile"
                                       or f.startswith("sweeps/") and f.endswith(".yaml"))
                  and f != THIS and (REPO / f).is_file())


@pytest.mark.parametrize("rel", _sources())
def test_references_resolve(rel):
    bad = problems_in(rel, (REPO / rel).read_text(encoding="utf-8"))
    assert not bad, f"{rel}: " + "; ".join(bad)


@pytest.mark.parametrize("text", [
    "Why (NOTEBOOK.md §5.1): the DiT trains on cached latents",
    "computed against other statistics (notes B#7).",
    "Ray on shared machines (B30): a short temp dir",
    "Settings from ../shared/notes/SETUP.md §6.1",
    "VTP's compute curves (reference/NOTEBOOK.md §6.2)",
    "see docs/no_such_page.md for the rest",
    "the loop lives in `dit_eval/no_such_module.py`",
    "the protocol is in [protocol](docs/protocol.md#no-such-section)",
    "see docs/method.md#no-such-heading",
])
def test_old_forms_fail(text):
    """The forms a reference into a private notebook took, and plain stale paths, are all reported."""
    assert problems_in("dit_eval/example.py" if "[" not in text else "README.md", text)


@pytest.mark.parametrize("text", [
    "see https://github.com/MiniMax-AI/VTP/blob/main/vtp/models/vtp.py and http://x.org/a.md",
    "written to results/<study>/runs.parquet and results/demo/summary.md",
    "VTP's released code (vtp/models/vtp.py:L29) and dinov2/configs/ssl_default_config.yaml",
    "the method's values are in docs/method.md and `vtp_core/flops.py`",
    "[the method](docs/method.md) and [contracts](docs/CONTRACTS.md#stage-configs)",
    "see README.md",
])
def test_good_forms_pass(text):
    assert not problems_in("README.md", text)
