"""restore.py with ``restore.lambdas: auto`` / ``restore.nm: auto``: hyperparameters chosen without data."""
from __future__ import annotations

import json

import pytest
import yaml

from lbyl_pl.cli import restore
from lbyl_pl.config import ConfigError, load_config

TINY_AUTO = ["model.arch=resnet56", "restore.lambdas=auto", "restore.nm=auto", "restore.auto.n=4",
             "restore.auto.iterations=2", "restore.ratios=[0.3]", "data.synthetic.num_eval=8"]


def test_auto_tables_are_chosen_marked_and_written(tmp_path, capsys):
    out = tmp_path / "run"
    assert restore.main(["--config", "configs/synthetic_tiny.yaml", "--output-dir", str(out), *TINY_AUTO]) == 0
    table = (out / "table.md").read_text()
    assert "(auto)" in table and "no dataset was read to choose them" in table
    rows = {row["method"]: row for row in json.loads((out / "results.json").read_text())["rows"]}
    assert rows["lbyl"]["auto"] and rows["merge"]["auto"] and "auto" not in rows["prune"]
    selected = yaml.safe_load((out / "selected_hparams.yaml").read_text())["restore"]
    assert selected["lambdas"]["l2-norm"][0.3] == [rows["lbyl"]["lambda1"], rows["lbyl"]["lambda2"]]
    assert selected["nm"]["l2-norm"][0.3] == [rows["merge"]["threshold"], rows["merge"]["nm_lambda"]]
    # the chosen values are points of the methods' data-free grids
    from lbyl_pl.methods import get_method
    assert rows["lbyl"]["lambda2"] in get_method("lbyl").auto_grid["lambda2"]
    assert rows["merge"]["threshold"] in get_method("merge").auto_grid["threshold"]
    # repeating the run with the written values fixed gives the same table, without "(auto)"
    again = tmp_path / "again"
    assert restore.main(["--config", "configs/synthetic_tiny.yaml", "--config", str(out / "selected_hparams.yaml"),
                         "--output-dir", str(again), *[o for o in TINY_AUTO if "=auto" not in o]]) == 0
    rows_again = {r["method"]: r for r in json.loads((again / "results.json").read_text())["rows"]}
    for method in ("lbyl", "merge", "prune"):
        assert rows_again[method]["acc1"] == rows[method]["acc1"]


def test_auto_and_a_grid_together_are_refused(tmp_path):
    config = load_config(["configs/synthetic_tiny.yaml"], ["restore.lambdas=auto", "restore.grid.lambda2=[0.1,1.0]"])
    with pytest.raises(ConfigError, match="'auto' for lbyl .* and restore.grid searches it too"):
        restore.plan_sweep(config)


def test_auto_is_the_only_string_a_table_takes():
    with pytest.raises(ConfigError, match="restore.lambdas must be a mapping or 'auto', got 'automatic'"):
        load_config(["configs/synthetic_tiny.yaml"], ["restore.lambdas=automatic"])
