"""Every document the repository cites is in the repository (issue 12).

A reader of a fresh clone must be able to open whatever a comment, docstring, test or page points at. This scans
every git-tracked text file for document references and checks, separately:
- nothing points at the team's reference folder outside the repository (its spec folder or its build notes);
- every `*.md` named anywhere (`docs/agd.md`, a bare `README.md`, a markdown link) exists, next to the citing file
  or from the repository root;
- every relative markdown link target exists;
- every anchor cited as `docs/x.md#anchor` (or in a link) is a heading of that page;
- every section cited as `docs/x.md §N` (or §N.M, or "rule N") is a numbered heading of that page.
"""
from __future__ import annotations

import re
import subprocess
from functools import lru_cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SELF = Path(__file__).resolve().relative_to(ROOT).as_posix()

# Assembled from pieces so that this file does not match itself.
OUTSIDE = re.compile("|".join([r"\bspec" + r"s/", r"BUILD" + r"-NOTES", r"\bDESIGN" + r"\.md", r"\bSTYLE" + r"\.md"]))
URL = re.compile(r"[a-z][a-z0-9+.-]*://\S+")
# A path or bare name ending in .md, with an optional #anchor; not the tail of a longer path or word.
MD_REF = re.compile(r"(?<![\w./-])((?:\.{1,2}/)*(?:[\w.-]+/)*[\w-][\w.-]*\.md)(?![\w])(#[\w-]+)?")
MD_LINK = re.compile(r"\]\(([^)\s]+)\)")
# "docs/x.md §5", "docs/x.md §5.1", "docs/x.md, §5" and "docs/x.md rule 5": numbered sections.
SECTION = re.compile(r"((?:[\w.-]+/)*[\w-][\w.-]*\.md),? (?:§|rule )(\d+(?:\.\d+)*)")
HEADING = re.compile(r"^#{1,6}\s+(.*?)\s*#*\s*$")
HTML_ANCHOR = re.compile(r"""<a\s+(?:id|name)=["']([^"']+)["']""")


@lru_cache(maxsize=None)
def tracked_text_files() -> tuple[tuple[str, str], ...]:
    """(path, text) of every git-tracked file that decodes as UTF-8 and holds no NUL byte."""
    try:
        out = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout: the tracked files are unknown")
    files = []
    for rel in out.decode().split("\0"):
        path = ROOT / rel
        if not rel or not path.is_file() or rel == SELF:  # this file's examples are patterns, not references
            continue
        data = path.read_bytes()
        if b"\0" in data:
            continue
        try:
            files.append((rel, data.decode("utf-8")))
        except UnicodeDecodeError:
            continue
    return tuple(files)


def lines(text: str):
    for number, line in enumerate(text.splitlines(), 1):
        yield number, URL.sub("", line)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, markup and punctuation dropped, spaces to hyphens."""
    text = re.sub(r"`|\*\*|__", "", heading.strip()).lower()
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text)  # a link in a heading keeps its text
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


@lru_cache(maxsize=None)
def headings(path: Path) -> tuple[list[str], set[str]]:
    """(heading texts, anchors) of a markdown page; code fences are skipped, duplicate slugs get -1, -2 ..."""
    texts, anchors, seen, fenced = [], set(), {}, False
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
            continue
        anchors.update(HTML_ANCHOR.findall(line))
        match = None if fenced else HEADING.match(line)
        if match:
            texts.append(match.group(1))
            base = slug(match.group(1))
            n = seen.get(base, 0)
            seen[base] = n + 1
            anchors.add(base if n == 0 else f"{base}-{n}")
    return texts, anchors


def resolve(citing: str, target: str) -> Path | None:
    """The repository file a reference names: beside the citing file, else from the repository root."""
    for base in (ROOT / citing).parent, ROOT:
        path = (base / target).resolve()
        if path.is_file() and path.is_relative_to(ROOT):
            return path
    return None


def md_references():
    """(where, target, anchor) for every *.md named in a tracked text file, markdown links included."""
    for rel, text in tracked_text_files():
        for number, line in lines(text):
            for match in MD_REF.finditer(line):
                yield f"{rel}:{number}", rel, match.group(1), (match.group(2) or "")[1:]


def test_nothing_points_outside_the_repository():
    bad = [f"{rel}:{number}: {line.strip()[:120]}"
           for rel, text in tracked_text_files() for number, line in lines(text) if OUTSIDE.search(line)]
    assert not bad, (f"{len(bad)} lines cite documents that are not in this repository (the team's reference "
                     "folder); cite the page under docs/ that covers it instead:\n" + "\n".join(bad))


def test_every_cited_document_exists():
    bad = [f"{where}: {target}" for where, rel, target, _ in md_references() if resolve(rel, target) is None]
    assert not bad, f"{len(bad)} references to documents this repository lacks:\n" + "\n".join(bad)


def test_every_markdown_link_resolves():
    bad = []
    for rel, text in tracked_text_files():
        if not rel.endswith(".md"):
            continue
        for number, line in lines(text):
            for target in MD_LINK.findall(line):
                path, _, anchor = target.partition("#")
                if not path:  # a link within the page
                    if anchor and anchor not in headings(ROOT / rel)[1]:
                        bad.append(f"{rel}:{number}: #{anchor} is no heading of this page")
                elif resolve(rel, path) is None:
                    bad.append(f"{rel}:{number}: {target} does not exist")
    assert not bad, f"{len(bad)} broken markdown links:\n" + "\n".join(bad)


def test_every_cited_anchor_is_a_heading():
    bad = []
    for where, rel, target, anchor in md_references():
        path = resolve(rel, target)
        if anchor and path is not None and anchor not in headings(path)[1]:
            bad.append(f"{where}: {target}#{anchor} (anchors there: {', '.join(sorted(headings(path)[1]))})")
    assert not bad, f"{len(bad)} cited anchors that are no heading of their page:\n" + "\n".join(bad)


def test_every_cited_section_number_is_a_heading():
    bad = []
    for rel, text in tracked_text_files():
        for number, line in lines(text):
            for target, section in SECTION.findall(line):
                path = resolve(rel, target)
                if path is not None and not any(h.startswith((f"{section}. ", f"{section} "))
                                                for h in headings(path)[0]):
                    bad.append(f"{rel}:{number}: {target} §{section}")
    assert not bad, f"{len(bad)} cited sections that are no numbered heading of their page:\n" + "\n".join(bad)


def test_the_checks_see_what_they_must():
    """The patterns themselves: a regression here would let every check above pass vacuously."""
    assert slug("5. Decisions: what agd_kernels does") == "5-decisions-what-agd_kernels-does"
    assert slug("`step` counters and **found_inf**") == "step-counters-and-found_inf"
    refs = [(m.group(1), m.group(2)) for m in MD_REF.finditer("see docs/agd.md#5-decisions, README.md and x/y.md.")]
    assert refs == [("docs/agd.md", "#5-decisions"), ("README.md", None), ("x/y.md", None)]
    assert not MD_REF.search("torch.md5sum or mdfile.mdx")
    assert SECTION.findall("docs/agd.md §5.1 and docs/lamb.md, §3; docs/design.md rule 8") == [
        ("docs/agd.md", "5.1"), ("docs/lamb.md", "3"), ("docs/design.md", "8")]
    assert OUTSIDE.search("(spec" "s/agd.md §5)") and OUTSIDE.search("BUILD" "-NOTES.md")
    assert any(rel == "README.md" for rel, _ in tracked_text_files())
