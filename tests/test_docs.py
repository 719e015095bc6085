"""The specification lives in ``docs/`` and every citation of it resolves (plain text; no torch, no data).

1. No file of the package, tests, benchmarks, configs, root scripts or the two README pages points at the
   specification's old location outside the repository (a sibling ``shared`` checkout that users do not have).
2. Every ``docs/<file>`` path those files mention exists in the repository.
3. Every ``docs/<file>.md §N`` citation (including runs such as ``§1, §11``, ``§4.2/§5.5`` or ``§1.4-§1.6``) names
   a numbered section heading of that file, and every ``docs/method.md Table X`` names a table it transcribes.
4. Relative Markdown links inside ``docs/`` resolve.
"""
from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
TEXT_SUFFIXES = {".py", ".md", ".yaml", ".yml", ".txt", ".cfg", ".toml"}
SCANNED_DIRS = ("lbyl_pl", "tests", "benchmarks", "configs")
SCANNED_FILES = ("README.md", "results/README.md")

# Built at run time so that this file does not contain the string it forbids.
OLD_LOCATION = "shared" + "/docs"
# a repository-relative docs path: not part of a longer path or URL (``../x/docs/``, ``https://.../docs/``)
DOCS_PATH = re.compile(r"(?<![\w./-])docs/([\w./-]*\w)")
# ``docs/<file>.md`` followed (after closing quotes, backticks or brackets) by one or more section numbers
CITATION = re.compile(
    r"(?<![\w./-])docs/([\w-]+\.md)[`'\")\]]*"
    r"((?:(?:\s*,\s*|\s*/\s*|\s+and\s+|\s*-\s*|\s+)§\d+(?:\.\d+)*)+)")
SECTION = re.compile(r"§(\d+(?:\.\d+)*)")
TABLE_CITATION = re.compile(r"(?<![\w./-])docs/(?:method\.md)[`'\")\]]*\s+Table\s+(A?\d+)")
HEADING = re.compile(r"^#{1,6}\s+(\d+(?:\.\d+)*)\.?(?:\s|$)", re.M)
MD_LINK = re.compile(r"\]\(([^)\s#]+)(?:#[^)\s]*)?\)")


def scanned_files() -> list[Path]:
    files = [ROOT / name for name in SCANNED_FILES if (ROOT / name).is_file()]
    files += sorted(p for p in ROOT.glob("*.py") if p.is_file())
    for directory in SCANNED_DIRS:
        files += sorted(p for p in (ROOT / directory).rglob("*")
                        if p.is_file() and p.suffix in TEXT_SUFFIXES and "__pycache__" not in p.parts)
    return files


def read(path: Path) -> str:
    return path.read_text(encoding="utf-8", errors="replace")


def rel(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def line_of(text: str, index: int) -> int:
    return text.count("\n", 0, index) + 1


def section_numbers(doc: Path) -> set[str]:
    return set(HEADING.findall(read(doc)))


def test_the_docs_exist():
    for name in ("README.md", "method.md", "intra_fusion.md", "discovery.md", "data_free.md"):
        assert (DOCS / name).is_file(), f"docs/{name} is missing"


def test_scanned_files_are_found():
    names = {rel(p) for p in scanned_files()}
    assert {"README.md", "results/README.md", "lbyl_pl/methods/lbyl.py", "tests/test_docs.py"} <= names


def test_no_reference_to_the_specification_outside_the_repository():
    offenders = []
    for path in scanned_files():
        text = read(path)
        for match in re.finditer(re.escape(OLD_LOCATION), text):
            offenders.append(f"{rel(path)}:{line_of(text, match.start())}")
    assert not offenders, f"references to {OLD_LOCATION} (use docs/...): {offenders}"


def test_every_docs_path_exists():
    missing = []
    for path in scanned_files():
        text = read(path)
        for match in DOCS_PATH.finditer(text):
            target = match.group(1).rstrip(".")
            if not (DOCS / target).exists():
                missing.append(f"{rel(path)}:{line_of(text, match.start())}: docs/{target}")
    assert not missing, f"docs paths that do not exist: {missing}"


def test_every_section_citation_names_a_heading():
    headings: dict[str, set[str]] = {}
    bad, seen = [], 0
    for path in scanned_files():
        text = read(path)
        for match in CITATION.finditer(text):
            doc = DOCS / match.group(1)
            if not doc.is_file():
                continue  # reported by test_every_docs_path_exists
            numbers = headings.setdefault(doc.name, section_numbers(doc))
            for section in SECTION.findall(match.group(2)):
                seen += 1
                if section not in numbers:
                    bad.append(f"{rel(path)}:{line_of(text, match.start())}: docs/{doc.name} §{section}")
    assert not bad, f"citations of sections that docs/ does not have: {bad}"
    assert seen > 20, "the citation pattern found almost nothing: is it still right?"


def test_every_table_citation_names_a_transcribed_table():
    method = read(DOCS / "method.md")
    bad = []
    for path in scanned_files():
        text = read(path)
        for match in TABLE_CITATION.finditer(text):
            if f"**Table {match.group(1)}:" not in method:
                bad.append(f"{rel(path)}:{line_of(text, match.start())}: Table {match.group(1)}")
    assert not bad, f"tables that docs/method.md does not transcribe: {bad}"


@pytest.mark.parametrize("doc", sorted(p.name for p in DOCS.glob("*.md")))
def test_relative_links_inside_docs_resolve(doc):
    text = read(DOCS / doc)
    broken = [target for target in MD_LINK.findall(text)
              if "://" not in target and not (DOCS / target).resolve().exists()]
    assert not broken, f"docs/{doc}: broken links {broken}"


def test_cited_sections_keep_their_numbers():
    # sections cited from code and tests by number; renumbering docs/method.md would break them silently
    numbers = section_numbers(DOCS / "method.md")
    for section in ("0", "1", "2", "3", "4.1", "4.2", "5.2", "5.3", "5.4", "5.5", "5.6.2", "5.6.6", "6.1", "7",
                    "8", "10.5", "10.6", "11", "12.2", "12.4", "12.5", "12.7"):
        assert section in numbers, f"docs/method.md lost its §{section} heading"
    fusion = section_numbers(DOCS / "intra_fusion.md")
    for section in ("1.3", "1.4", "1.5", "1.6", "2", "4"):
        assert section in fusion, f"docs/intra_fusion.md lost its §{section} heading"
