"""The method registry: one place for names, titles, hyperparameters, defaults and checks."""
from __future__ import annotations

import pytest
import torch

from lbyl_pl import METHODS, RestoreCallback, prune_and_restore
from lbyl_pl.cli.restore import grid_points, hyperparameters, plan_sweep, selected_hparams
from lbyl_pl.config import ConfigError, load_config
from lbyl_pl.methods import describe_methods, get_method, make_method
from lbyl_pl.methods.base import Hyperparameter, RestorationMethod, UnitRestoration, register
from lbyl_pl.surgery import selection_matrix


@pytest.fixture
def half_method():
    """The README's toy method, registered for one test."""

    @register
    class HalfPrune(RestorationMethod):
        name, title, summary = "half", "half", "halves what the consumers read of the kept channels"
        hyperparameters = (Hyperparameter("factor", 0.5, "scale of the kept channels", float),)

        def restore_unit(self, unit, tensors, kept):
            return UnitRestoration(self.hparams["factor"] * selection_matrix(unit.n_channels, kept))

    yield HalfPrune
    METHODS.pop("half")


def test_a_registered_method_works_everywhere(half_method, one_unit_net):
    model = one_unit_net()
    halved, report = prune_and_restore(model, "half", "l2-norm", 0.5, factor=0.25)
    pruned, _ = prune_and_restore(model, "prune", "l2-norm", 0.5)
    assert report.method == "half" and report.hparams == {"factor": 0.25}
    assert torch.allclose(halved.consumer.weight, 0.25 * pruned.consumer.weight)
    assert RestoreCallback("half", factor=0.1).method.hparams == {"factor": 0.1}
    assert "half" in describe_methods() and "factor (default 0.5)" in describe_methods()


def test_registry_names_titles_and_defaults():
    assert list(METHODS) == ["prune", "merge", "lbyl", "fusion"]
    assert {name: cls.title for name, cls in METHODS.items()} == {"prune": "prune", "merge": "NM", "lbyl": "LBYL",
                                                                 "fusion": "IF"}
    assert get_method("lbyl").defaults() == {"lambda1": 1e-6, "lambda2": 1e-2, "solver": "shared"}
    assert get_method("merge").defaults() == {"threshold": None, "nm_lambda": 0.85}
    with pytest.raises(ValueError, match="unknown method 'ours'; allowed: prune, merge, lbyl, fusion"):
        get_method("ours")
    with pytest.raises(ValueError, match="a method needs a new, non-empty name"):
        register(type("Again", (RestorationMethod,), {"name": "lbyl"}))


def test_network_defaults_are_resolved_on_a_copy(one_unit_net):
    from lbyl_pl import build_model

    nm = make_method("merge")
    _, lenet_report = prune_and_restore(build_model("lenet300"), nm, "l2-norm", 0.5)
    _, conv_report = prune_and_restore(one_unit_net(), nm, "l2-norm", 0.5)
    assert lenet_report.hparams["threshold"] == 0.45 and conv_report.hparams["threshold"] == 0.1
    assert nm.hparams["threshold"] is None  # the object itself stays unbound
    with pytest.raises(ValueError, match="set them on the object"):
        prune_and_restore(one_unit_net(), nm, "l2-norm", 0.5, nm_lambda=0.5)


def test_cli_hyperparameters_come_from_each_methods_table():
    config = load_config([], ["restore.lambdas.l2-norm={0.5: [1.0e-5, 0.2]}", "restore.nm.default=[0.2, 0.7]",
                              "restore.hparams.fusion={producer: mean}", "restore.solver=batched"])
    assert hyperparameters(config, "lbyl", "l2-norm", 0.5) == {"lambda1": 1e-5, "lambda2": 0.2, "solver": "batched"}
    assert hyperparameters(config, "lbyl", "l2-norm", 0.3) == {"solver": "batched"}  # the method's defaults
    assert hyperparameters(config, "merge", "l1-norm", 0.3) == {"threshold": 0.2, "nm_lambda": 0.7}
    assert hyperparameters(config, "fusion", "l2-norm", 0.5) == {"producer": "mean"}
    assert hyperparameters(config, "prune", "l2-norm", 0.5) == {}
    grid = load_config([], ["restore.grid.lambda2=[0.1, 1.0]"])
    assert grid_points(grid, "lbyl", {"solver": "shared"}) == [
        {"solver": "shared", "lambda1": 1e-6, "lambda2": 0.1}, {"solver": "shared", "lambda1": 1e-6, "lambda2": 1.0}]
    assert grid_points(grid, "fusion", {}) == [{}]  # no per-cell hyperparameters, nothing to search
    rows = [{"method": "lbyl", "criterion": "l2-norm", "ratio": 0.5, "lambda1": 1e-5, "lambda2": 0.2},
            {"method": "merge", "criterion": "l2-norm", "ratio": 0.5, "threshold": 0.1, "nm_lambda": 0.85},
            {"method": "fusion", "criterion": "l2-norm", "ratio": 0.5}]
    assert selected_hparams(rows) == {"restore": {"lambdas": {"l2-norm": {0.5: [1e-5, 0.2]}},
                                                  "nm": {"l2-norm": {0.5: [0.1, 0.85]}}}}


def test_a_registered_methods_table_hyperparameter_is_a_grid_key(half_method):
    """restore.grid is not a fixed list of names: a method added to the registry is searchable at once, and
    a key no registered method owns is an error naming the allowed ones."""
    half_method.table_hparams = ("factor",)
    try:
        config = load_config([], ["restore.methods=[half, lbyl]", "restore.grid.factor=[0.25, 0.5]"])
        cells = plan_sweep(config)
        assert [(method, points) for _, _, method, points, _ in cells] == [
            ("half", [{"factor": 0.25}, {"factor": 0.5}]), ("lbyl", [{"solver": "shared"}])]
        with pytest.raises(ConfigError, match=r"unknown restore.grid key 'gamma'; allowed: factor, lambda1, "
                                              r"lambda2, nm_lambda, threshold"):
            plan_sweep(load_config([], ["restore.grid.gamma=[0.1]"]))
    finally:
        half_method.table_hparams = ()
    with pytest.raises(ConfigError, match=r"unknown restore.grid key 'factor'"):  # gone with the method's table
        plan_sweep(load_config([], ["restore.grid.factor=[0.1]"]))
    with pytest.raises(ConfigError, match=r"restore.grid.lambda2 must be a list of numbers .* got 0.1"):
        plan_sweep(load_config([], ["restore.grid.lambda2=0.1"]))
