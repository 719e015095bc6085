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
        assert [(method, points) for _, _, method, points, _, _ in cells] == [
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


@pytest.fixture
def table_method():
    """A toy method with its own per-cell table (``restore.factors``): plain pruning, the kept channels scaled
    downstream by ``factor``. Declared here alone, as a new method's own file would declare it."""
    from lbyl_pl.methods.prune import Prune

    @register
    class ScaledPrune(Prune):
        name, title, summary = "scaled", "scaled", "prune, the kept channels scaled by factor downstream"
        hyperparameters = (Hyperparameter("factor", 1.0, "scale of the kept channels", float),)
        config_table = "factors"
        table_hparams = ("factor",)
        auto_grid = {"factor": (0.5, 1.0)}

        def restore_unit(self, unit, tensors, kept):
            return UnitRestoration(self.hparams["factor"] * super().restore_unit(unit, tensors, kept).delivery)

    yield ScaledPrune
    METHODS.pop("scaled")


def test_a_methods_config_table_is_declared_by_the_method_alone(table_method, one_unit_net):
    """config.py derives the per-cell tables, the free-form maps and the ``auto`` sections from the registry:
    a method with a ``config_table`` gets ``restore.<config_table>`` without touching config.py or restore.py."""
    from lbyl_pl.cli.restore import choose_without_data, is_auto
    from lbyl_pl.config import auto_sections, defaults, free_form

    assert defaults()["restore"]["factors"] == {} and ("restore", "factors") in free_form() & auto_sections()
    config = load_config([], ["restore.methods=[scaled, prune]", "restore.ratios=[0.3, 0.5]",
                              "restore.factors.l2-norm={0.5: [0.25]}", "restore.factors.default=[0.75]"])
    assert hyperparameters(config, "scaled", "l2-norm", 0.5) == {"factor": 0.25}  # per criterion and ratio
    assert hyperparameters(config, "scaled", "l2-norm", 0.3) == {"factor": 0.75}  # the table's default
    assert hyperparameters(config, "scaled", "l1-norm", 0.5) == {"factor": 0.75}
    cells = plan_sweep(config)
    assert [(ratio, method, points) for _, ratio, method, points, _, _ in cells] == [
        (0.3, "scaled", [{"factor": 0.75}]), (0.3, "prune", [{}]), (0.5, "scaled", [{"factor": 0.25}]),
        (0.5, "prune", [{}])]
    assert selected_hparams([{"method": "scaled", "criterion": "l2-norm", "ratio": 0.5, "factor": 0.25}]) == \
        {"restore": {"factors": {"l2-norm": {0.5: [0.25]}}}}
    model = one_unit_net()
    model.example_input_size = (1, 3, 6, 6)  # what the distillation of the data-free choice draws
    scaled, _ = prune_and_restore(model, "scaled", "l2-norm", 0.5, **hyperparameters(config, "scaled", "l2-norm", 0.5))
    pruned, _ = prune_and_restore(model, "prune", "l2-norm", 0.5)
    assert torch.allclose(scaled.consumer.weight, 0.25 * pruned.consumer.weight)

    # restore.factors: auto, as restore.lambdas: auto (the method has an auto_grid): chosen without data
    auto = load_config([], ["restore.methods=[scaled]", "restore.factors=auto", "restore.auto.n=4",
                            "restore.auto.iterations=2", "restore.ratios=[0.5]"])
    assert auto["restore"]["factors"] == "auto" and is_auto(auto, "scaled", "l2-norm", 0.5)
    assert [cell[4] for cell in plan_sweep(auto)] == [True]
    chosen = choose_without_data(auto, model, "scaled", "l2-norm", 0.5, {}, progress=False)
    assert chosen["factor"] in table_method.auto_grid["factor"]
    with pytest.raises(ConfigError, match="restore.factors must be a mapping or 'auto', got 'automatic'"):
        load_config([], ["restore.factors=automatic"])

    # without an auto_grid the table takes no "auto"
    table_method.auto_grid = {}
    try:
        assert ("restore", "factors") in free_form() and ("restore", "factors") not in auto_sections()
        with pytest.raises(ConfigError, match=r"restore.factors must be a mapping, got 'auto'"):
            load_config([], ["restore.factors=auto"])
    finally:
        table_method.auto_grid = {"factor": (0.5, 1.0)}


def test_a_config_table_goes_with_its_method(table_method):
    from lbyl_pl.config import DEFAULTS, defaults

    assert "factors" not in DEFAULTS["restore"]  # DEFAULTS: the methods registered when config was imported
    after = list(DEFAULTS["restore"]).index("solver") + 1
    assert list(defaults()["restore"]) == [*list(DEFAULTS["restore"])[:after], "factors",
                                           *list(DEFAULTS["restore"])[after:]]  # after solver, sorted with the others
    METHODS.pop("scaled")
    try:
        with pytest.raises(ConfigError, match=r"unknown config key 'restore.factors'"):
            load_config([], ["restore.factors.default=[0.5]"])
    finally:
        METHODS["scaled"] = table_method
    clash = type("Clash", (RestorationMethod,), {"name": "clash", "config_table": "lambdas"})
    register(clash)
    try:
        with pytest.raises(ConfigError, match=r"methods 'lbyl' and 'clash' both declare config_table 'lambdas'"):
            load_config([], [])
    finally:
        METHODS.pop("clash")
