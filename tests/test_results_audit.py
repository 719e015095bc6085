"""Audit of the committed results pages against the result files they quote (plain text; no torch, no data).

1. ``results/README.md`` includes some ``table.md`` files verbatim (headings demoted by three levels), each
   between ``<!-- verbatim: results/.../table.md -->`` and ``<!-- /verbatim -->``: every such block must equal
   the file it names, and every demoted table title (a ``####`` heading) must lie inside such a block.
2. Every bullet of README.md's "Headline results" cites the result files its figures come from (Markdown links
   to files under ``results/``), and every decimal figure in it (88.13, 0.238, 6.8x, r = 0.5; counts such as
   "21 of 24" are not copied from a file and are not checked) appears in one of those files.
3. The title of every committed CIFAR-10 ``table.md`` names the copy of the images it was evaluated on.
"""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

# its own marker group: `pytest -m audit` runs only the audit, `-m "not audit"` everything else
pytestmark = pytest.mark.audit

ROOT = Path(__file__).resolve().parents[1]
RESULTS_README = ROOT / "results" / "README.md"
README = ROOT / "README.md"

VERBATIM = re.compile(r"^<!-- verbatim: (\S+) -->\n(.*?)^<!-- /verbatim -->$", re.S | re.M)
LINK = re.compile(r"\]\(([^)\s]+)\)")
# a decimal figure: not part of a word, a version or a section number (§5.2)
NUMBER = re.compile(r"(?<![\w.§])\d+\.\d+(?![\d.]*\d)")


def demote(text: str, levels: int = 3) -> str:
    return "\n".join("#" * levels + line if line.startswith("#") else line for line in text.splitlines())


def normalise(text: str) -> str:
    return "\n".join(line.rstrip() for line in text.strip("\n").splitlines())


def verbatim_blocks(text: str) -> list[tuple[str, str]]:
    return VERBATIM.findall(text)


def headline_bullets(text: str) -> list[str]:
    section = text.split("\n## Headline results\n", 1)[1].split("\n## ", 1)[0]
    bullets, current = [], None
    for line in section.splitlines():
        if line.startswith("- "):
            current = [line]
            bullets.append(current)
        elif current is not None and line.startswith("  "):
            current.append(line)
        else:
            current = None
    return [" ".join(part.strip() for part in b) for b in bullets]


def appears(number: str, text: str) -> bool:
    return re.search(rf"(?<![\d.]){re.escape(number)}(?![\d])", text) is not None


def test_verbatim_tables_equal_their_files():
    text = RESULTS_README.read_text()
    blocks = verbatim_blocks(text)
    assert blocks, "results/README.md marks no verbatim table"
    lines = text.splitlines()
    opened = sum(line.startswith("<!-- verbatim:") for line in lines)
    closed = sum(line == "<!-- /verbatim -->" for line in lines)
    assert len(blocks) == opened == closed, "an unclosed or malformed verbatim marker"
    for path, body in blocks:
        source = ROOT / path
        assert source.is_file(), f"{path} (named by a verbatim marker) does not exist"
        assert normalise(body) == normalise(demote(source.read_text())), \
            f"the table results/README.md includes as {path} differs from that file"


def test_every_included_table_is_marked():
    outside = VERBATIM.sub("", RESULTS_README.read_text())
    stray = [line for line in outside.splitlines() if line.startswith("#### ")]
    assert not stray, f"table titles outside any verbatim block: {stray}"


def test_headline_figures_appear_in_the_files_they_cite():
    bullets = headline_bullets(README.read_text())
    assert len(bullets) >= 5
    for bullet in bullets:
        cited = [link for link in LINK.findall(bullet)
                 if link.startswith("results/") and link != "results/README.md"]
        assert cited, f"headline bullet cites no result file: {bullet[:70]}..."
        texts = []
        for link in cited:
            assert (ROOT / link).is_file(), f"{link} (cited by a headline bullet) does not exist"
            texts.append((ROOT / link).read_text())
        prose = LINK.sub("]", bullet)  # the link targets themselves are not figures
        numbers = NUMBER.findall(prose)
        for number in numbers:
            assert any(appears(number, t) for t in texts), \
                f"{number} is in none of {cited} (headline bullet: {bullet[:70]}...)"


def test_the_auditor_catches_a_changed_figure():
    # the checks above are not vacuous: the headline figures are found, and a changed one is not
    bullet = next(b for b in headline_bullets(README.read_text()) if "Fine-tuning" in b)
    table = (ROOT / "results/finetune_vgg16_r0.5_20ep/table.md").read_text()
    assert appears("88.13", bullet) and appears("88.13", table)
    assert not appears("88.14", table)


COPIES = {"test": "JPEG q75 copy", "train": "JPEG q75 copy", "lossless_test": "lossless",
          "lossless_train": "lossless"}


@pytest.mark.parametrize("table", sorted(ROOT.glob("results/*/*/table.md")), ids=lambda p: str(p.parent.name))
def test_cifar10_table_titles_name_the_image_copy(table):
    config = yaml.safe_load((table.parent / "config.yaml").read_text())
    data = config["data"]
    if data["name"] != "cifar10_npz":
        pytest.skip("not CIFAR-10")
    split = data["eval_split"] if data["eval_on"] == "test" else "train"  # a holdout comes from train
    title = table.read_text().splitlines()[0]
    assert COPIES[split] in title, title
    other = ({"JPEG q75 copy", "lossless"} - {COPIES[split]}).pop()
    assert other not in title, title
