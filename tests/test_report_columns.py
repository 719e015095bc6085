"""report.py gives every run its own column (per-epoch table, curves.csv, report.json's curves, the legend of
curves.png), also when runs share a label, or a label and a ratio. The run directories are built here as
finetune.py writes them: a finetune.json and TensorBoard events with ``curve/val_acc1`` per epoch."""
from __future__ import annotations

import csv
import json

import pytest

from lbyl_pl.cli import report

LBYL_A = {0: 10.0, 1: 20.0, 2: 30.0}
LBYL_B = {0: 11.5, 1: 21.5, 2: 31.5}
LBYL_C = {0: 12.25, 1: 22.25}  # stops one epoch early: a blank / a dash at epoch 2
PRUNE = {0: 5.0, 1: 15.0, 2: 25.0}


def make_run(path, method, ratio, curve, init="restored", criterion="l2-norm"):
    """A finetune.py output directory: finetune.json and the Lightning logger's event file."""
    from torch.utils.tensorboard import SummaryWriter

    path.mkdir(parents=True)
    (path / "finetune.json").write_text(json.dumps({
        "method": method, "criterion": criterion, "ratio": float(ratio), "init": init,
        "epochs": max(curve), "before_acc1": curve[0], "after": {"val/acc1": curve[max(curve)]},
        "resumed": False, "seconds": 1.0}))
    writer = SummaryWriter(str(path / "lightning_logs" / "version_0"))
    for epoch, value in curve.items():
        writer.add_scalar(report.TAG, value, epoch)
    writer.close()
    return path


@pytest.fixture
def legends(monkeypatch):
    """The legend entries of every curves.png written during the test."""
    from matplotlib.figure import Figure

    seen, savefig = [], Figure.savefig

    def recording(fig, *args, **kwargs):
        seen.append([t.get_text() for t in fig.axes[0].get_legend().get_texts()])
        return savefig(fig, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", recording)
    return seen


def run_report(runs, out) -> dict:
    assert report.main([*map(str, runs), "--output-dir", str(out), "--title", "t"]) == 0
    with open(out / "curves.csv", newline="") as f:
        reader = csv.DictReader(f)
        per_epoch = list(reader)
        header = reader.fieldnames
    markdown = (out / "table.md").read_text()
    return {"json": json.loads((out / "report.json").read_text()), "csv": per_epoch, "csv_header": header,
            "md": markdown, "md_lines": markdown.splitlines()}


def check_columns(result, expected: dict[str, dict[int, float]], keys: dict[str, str]):
    """``expected``: column -> the curve of the run it must show (in run order); ``keys``: column -> the key
    of that run's curve in report.json and in the legend."""
    columns = list(expected)
    assert result["csv_header"] == ["epoch", *columns]
    epochs = sorted({e for c in expected.values() for e in c})
    assert [int(r["epoch"]) for r in result["csv"]] == epochs
    for row in result["csv"]:
        for column, curve in expected.items():
            e = int(row["epoch"])
            assert row[column] == ("" if e not in curve else str(round(curve[e], 2))), (column, e)
    md = result["md_lines"]
    head = md.index("| epoch | " + " | ".join(columns) + " |")  # the per-epoch table, one column per run
    assert md[head + 1] == "|---" * (len(columns) + 1) + "|"
    for i, e in enumerate(epochs):
        cells = ["–" if e not in c else f"{c[e]:.2f}" for c in expected.values()]
        assert md[head + 2 + i] == f"| {e} | " + " | ".join(cells) + " |"
    curves = result["json"]["curves"]
    assert list(curves) == [keys[c] for c in columns]
    for column, curve in expected.items():
        assert curves[keys[column]] == {str(e): v for e, v in curve.items()}


def test_same_label_different_ratios(tmp_path, legends):
    a = make_run(tmp_path / "runs" / "lbyl_r0.3", "lbyl", 0.3, LBYL_A)
    b = make_run(tmp_path / "runs" / "lbyl_r0.5", "lbyl", 0.5, LBYL_B)
    result = run_report([a, b], tmp_path / "out")
    expected = {"LBYL (r=0.3)": LBYL_A, "LBYL (r=0.5)": LBYL_B}
    check_columns(result, expected, {c: c for c in expected})
    assert legends == [list(expected)]
    # the summary rows name the same runs as the columns
    assert "| LBYL (r=0.3) | 30% | l2-norm | 2 | 10.00 → 30.00 | 30.00 |" in result["md_lines"]
    assert "| LBYL (r=0.5) | 50% | l2-norm | 2 | 11.50 → 31.50 | 31.50 |" in result["md_lines"]
    assert [r["label"] for r in result["json"]["rows"]] == ["LBYL", "LBYL"]  # the rows keep the plain label


def test_same_label_and_ratio_twice_then_another_label(tmp_path, legends):
    runs = tmp_path / "runs"
    a = make_run(runs / "a_seed0", "lbyl", 0.5, LBYL_A)
    b = make_run(runs / "b_seed1", "lbyl", 0.5, LBYL_C)
    c = make_run(runs / "c_prune", "prune", 0.5, PRUNE)
    result = run_report([a, b, c], tmp_path / "out")  # used to raise KeyError
    expected = {"LBYL (r=0.5, a_seed0)": LBYL_A, "LBYL (r=0.5, b_seed1)": LBYL_C, "prune": PRUNE}
    keys = {"LBYL (r=0.5, a_seed0)": "LBYL (r=0.5, a_seed0)", "LBYL (r=0.5, b_seed1)": "LBYL (r=0.5, b_seed1)",
            "prune": "prune (r=0.5)"}
    check_columns(result, expected, keys)
    assert legends == [list(keys.values())]
    assert result["csv"][2]["LBYL (r=0.5, b_seed1)"] == ""  # that run stopped after epoch 1
    # the parent directory holding the three runs gives the same report
    again = run_report([runs], tmp_path / "again")
    assert again["md"] == result["md"] and again["json"] == result["json"]


def test_same_run_name_in_two_parents_and_a_run_named_twice(tmp_path, legends):
    a = make_run(tmp_path / "p1" / "run", "lbyl", 0.5, LBYL_A)
    b = make_run(tmp_path / "p2" / "run", "lbyl", 0.5, LBYL_B)
    result = run_report([a, b], tmp_path / "out")
    expected = {f"LBYL (r=0.5, {a})": LBYL_A, f"LBYL (r=0.5, {b})": LBYL_B}
    check_columns(result, expected, {k: k for k in expected})
    result = run_report([a, a], tmp_path / "twice")  # nothing tells them apart: they are numbered
    expected = {f"LBYL (r=0.5, {a}) #1": LBYL_A, f"LBYL (r=0.5, {a}) #2": LBYL_A}
    check_columns(result, expected, {k: k for k in expected})
    assert len(legends) == 2 and legends[1] == list(expected)


def test_unique_labels_keep_the_plain_layout(tmp_path, legends):
    a = make_run(tmp_path / "lbyl", "lbyl", 0.5, LBYL_A)
    b = make_run(tmp_path / "scratch", "prune", 0.5, PRUNE, init="scratch")
    result = run_report([a, b], tmp_path / "out")
    check_columns(result, {"LBYL": LBYL_A, "Scratch": PRUNE}, {"LBYL": "LBYL (r=0.5)", "Scratch": "Scratch (r=0.5)"})
    assert legends == [["LBYL (r=0.5)", "Scratch (r=0.5)"]]
    assert "| LBYL | 50% | l2-norm | 2 | 10.00 → 30.00 | 30.00 |" in result["md_lines"]
    assert "| Scratch | 50% | l2-norm | 2 | 5.00 → 25.00 | 25.00 |" in result["md_lines"]


@pytest.mark.parametrize("candidates,names", [
    ([["A", "A1"], ["B", "B1"]], ["A", "B"]),
    ([["A", "A1"], ["A", "A2"], ["B", "B1"]], ["A1", "A2", "B"]),
    ([["A", "A1", "A1x"], ["A", "A1", "A1y"], ["A", "A2", "A2z"]], ["A1x", "A1y", "A2"]),
    ([["A", "A1"], ["A", "A1"]], ["A1 #1", "A1 #2"]),
    ([["X", "A1"], ["A1", "Z"]], ["X", "A1"]),
    ([["A", "B"], ["B", "C"]], ["A", "B"]),
    ([["A", "B"], ["A", "C"], ["B", "D"]], ["B", "C", "D"]),
])
def test_distinct_names(candidates, names):
    assert report.distinct_names(candidates) == names
