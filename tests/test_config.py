"""Configuration: YAML files merged in order, ``key=value`` overrides, unknown keys and bad syntax named in the
error, the free-form per-criterion tables and their ratio lookup (``lbyl_pl.config``); the budget keys
(``restore.flops``, ``restore.units``, ``restore.budget``) checked before restore.py evaluates anything."""
from __future__ import annotations

import pytest

from lbyl_pl.config import DEFAULTS, ConfigError, apply_override, load_config, lookup_ratio


def test_files_merge_in_order_then_overrides(tmp_path):
    first = tmp_path / "a.yaml"
    second = tmp_path / "b.yaml"
    first.write_text("seed: 3\ndata: {name: synthetic, batch_size: 32}\n"
                     "optim: {lr: 0.5, weight_decay: 1e-4, milestones: [1, 2]}\n")
    second.write_text("data: {batch_size: 8}\noptim: {milestones: [5]}\n")
    config = load_config([first, second], ["optim.lr=1e-3", "restore.ratios=[0.1, 0.5]",
                                           "trainer.devices=2", "model.checkpoint=null", "data.root=/x/y"])
    assert config["seed"] == 3                       # from the first file, untouched by the second
    assert config["data"]["name"] == "synthetic"
    assert config["data"]["batch_size"] == 8         # the later file wins
    assert config["data"]["eval_batch_size"] == DEFAULTS["data"]["eval_batch_size"]  # defaults kept
    assert config["optim"]["milestones"] == [5]      # lists are replaced, not merged
    # exponents without a dot are floats (plain YAML 1.1 would read them as strings)
    assert config["optim"]["lr"] == pytest.approx(1e-3) and isinstance(config["optim"]["lr"], float)
    assert config["optim"]["weight_decay"] == pytest.approx(1e-4)
    assert isinstance(config["optim"]["weight_decay"], float)
    assert config["restore"]["ratios"] == [0.1, 0.5]  # values parsed as YAML
    assert config["trainer"]["devices"] == 2 and isinstance(config["trainer"]["devices"], int)
    assert config["model"]["checkpoint"] is None
    assert config["data"]["root"] == "/x/y"
    assert DEFAULTS["data"]["batch_size"] == 128     # DEFAULTS never mutated


def test_override_order_last_wins():
    config = load_config([], ["seed=1", "seed=2"])
    assert config["seed"] == 2
    apply_override(config, "data.synthetic.num_eval=5")  # in place, nested
    apply_override(config, "data.root=")  # an empty value is null
    assert config["data"]["synthetic"]["num_eval"] == 5 and config["data"]["synthetic"]["num_train"] == 64
    assert config["data"]["root"] is None


@pytest.mark.parametrize("override,key,allowed", [
    ("trainer.bogus=1", "trainer.bogus", "accelerator, channels_last"),
    ("bogus=1", "bogus", "data, finetune, model, optim"),
    ("data.synthetic.pixels=4", "data.synthetic.pixels", "channels, image_size, num_classes"),
])
def test_unknown_key_names_key_and_allowed(override, key, allowed):
    with pytest.raises(ConfigError) as err:
        load_config([], [override])
    message = str(err.value)
    assert repr(key) in message
    assert f"allowed here: {allowed}" in message


def test_unknown_key_in_file(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("optim: {lr: 0.1, momentun: 0.9}\n")
    with pytest.raises(ConfigError, match=r"unknown config key 'optim.momentun'; allowed here: .*momentum"):
        load_config([path])


def test_section_must_be_mapping():
    with pytest.raises(ConfigError, match="config section trainer must be a mapping"):
        load_config([], ["trainer=3"])


@pytest.mark.parametrize("override", ["trainer.devices", "=3", "trainer..devices=2", "trainer.devices=[1,"])
def test_bad_override_syntax(override):
    with pytest.raises(ConfigError, match="override"):
        load_config([], [override])


def test_invalid_yaml_and_missing_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("trainer: {devices: [1,\n")
    with pytest.raises(ConfigError, match="is not valid YAML"):
        load_config([bad])
    with pytest.raises(ConfigError, match="not found"):
        load_config([tmp_path / "missing.yaml"])


def test_free_form_lambda_maps(tmp_path):
    path = tmp_path / "l.yaml"
    path.write_text("restore:\n  lambdas:\n    l2-norm: {0.5: [1.0e-5, 0.02], default: [0.0, 0.1]}\n"
                    "    default: [1.0e-6, 1.0e-2]\n  nm: {l1-norm: {0.3: [0.2, 0.7]}}\n")
    later = tmp_path / "m.yaml"
    later.write_text("restore: {nm: {default: [0.1, 0.85]}}\n")
    config = load_config([path, later], ["restore.lambdas.random_1={0.7: [1, 2]}",
                                         "restore.lambdas.l2-norm={0.5: [2.0e-5, 0.03]}"])
    lambdas = config["restore"]["lambdas"]
    # any key is accepted inside these maps, and they merge entry by entry (an override naming one
    # criterion must not silently drop the other criteria's tables)
    assert lambdas == {"l2-norm": {0.5: [2e-5, 0.03], "default": [0.0, 0.1]},
                       "default": [1e-6, 1e-2], "random_1": {0.7: [1, 2]}}
    assert config["restore"]["nm"] == {"l1-norm": {0.3: [0.2, 0.7]}, "default": [0.1, 0.85]}
    assert DEFAULTS["restore"]["lambdas"] == {} and DEFAULTS["restore"]["nm"] == {}
    with pytest.raises(ConfigError, match="restore.lambdas must be a mapping or 'auto', got 3"):
        load_config([], ["restore.lambdas=3"])


def test_lookup_ratio_fallbacks():
    table = {"l2-norm": {0.5: [1, 2], "0.3": [3, 4], "default": [5, 6]},
             "l1-norm": {0.5: [7, 8]},
             "default": [9, 10]}
    assert lookup_ratio(table, "l2-norm", 0.5, "restore.lambdas") == [1, 2]
    assert lookup_ratio(table, "l2-norm", 0.3, "restore.lambdas") == [3, 4]  # string keys too
    assert lookup_ratio(table, "l2-norm", 0.5 + 1e-12, "restore.lambdas") == [1, 2]  # float tolerance
    assert lookup_ratio(table, "l2-norm", 0.7, "restore.lambdas") == [5, 6]  # criterion default
    assert lookup_ratio(table, "l1-norm", 0.7, "restore.lambdas") == [9, 10]  # global default
    assert lookup_ratio(table, "l2-GM", 0.5, "restore.lambdas") == [9, 10]
    assert lookup_ratio({"l1-norm": {0.5: [7, 8]}}, "l1-norm", 0.1, "restore.lambdas") is None
    assert lookup_ratio({}, "l1-norm", 0.1, "restore.lambdas") is None
    with pytest.raises(ConfigError, match=r"restore.nm.l2-norm must map ratios to values, got \[1, 2\]"):
        lookup_ratio({"l2-norm": [1, 2]}, "l2-norm", 0.5, "restore.nm")
    # a budget's cell has no one ratio: the defaults only
    assert lookup_ratio(table, "l2-norm", None, "restore.lambdas") == [5, 6]
    assert lookup_ratio(table, "l1-norm", None, "restore.lambdas") == [9, 10]


# -- restore.flops / restore.units / restore.budget --------------------------------------------------

def test_budget_keys_default_to_none_and_budget_is_a_name_map():
    from lbyl_pl.cli.restore import FlopsTarget, plan_sweep

    r = DEFAULTS["restore"]
    assert r["flops"] == [] and r["units"] is None and r["budget"] == {}
    assert list(r)[list(r).index("ratios") + 1] == "flops"  # beside restore.ratios
    config = load_config([], ["restore.budget.inputs=4", "restore.budget={ratios: [0.5]}", "restore.flops=[0.5, 1]",
                              "restore.units=all", "restore.methods=[prune]"])
    assert config["restore"]["budget"] == {"inputs": 4, "ratios": [0.5]}  # merged, as refit_options
    cells = plan_sweep(config)
    assert [(ratio, method) for _, ratio, method, _, _, _ in cells] == [
        (0.5, "prune"), (FlopsTarget(0.5), "prune"), (FlopsTarget(1.0), "prune")]
    assert str(FlopsTarget(0.5)) == "flops 0.5"
    # no ratio is needed where restore.flops gives the rows
    cells = plan_sweep(load_config([], ["restore.ratios=[]", "restore.flops=[0.25]", "restore.methods=[lbyl]"]))
    assert [(ratio, method) for _, ratio, method, _, _, _ in cells] == [(FlopsTarget(0.25), "lbyl")]


@pytest.mark.parametrize("overrides,message", [
    (["restore.flops=[1.5]"], "restore.flops: flops must be the fraction of the original flops to keep, a number in "
                              "(0, 1]; got 1.5"),
    (["restore.flops=[0.5, 0]"], "got 0"), (["restore.flops=[-0.2]"], "got -0.2"),
    (["restore.flops=[.nan]"], "got nan"), (["restore.flops=[true]"], "got True"),
    (["restore.flops=[half]"], "got 'half'"), (["restore.flops=[null]"], "got None"),
    (["restore.flops=0.5"], "restore.flops must be a list of the fractions of the original FLOPs to keep"),
    (["restore.flops=[0.5, 0.5]"], "restore.flops lists 0.5 twice"),
    (["restore.flops=[0.5]", "restore.budget.steps=0.1"], "restore.budget: unknown budget option(s) ['steps']"),
    (["restore.budget.inputs=0"], "restore.budget: budget option inputs must be a positive integer, got 0"),
    (["restore.units=some"], "restore.units must be null (the default units), 'all'"),
    (["restore.units=[]"], "restore.units must be null"),
    (["restore.units=all"], "restore.units=all prunes the coupled groups (residual streams, concatenations, grouped "
                            "convs), which method(s) lbyl, merge cannot restore; methods that prune groups: prune"),
    (["restore.ratios=[]"], "restore.ratios must be a non-empty list"),  # as before, without restore.flops
    (["restore.flops=[0.5]", "restore.lambdas=auto"], "restore.lambdas is 'auto' for lbyl (l2-norm) and "
                                                      "restore.flops asks for flops 0.5"),
])
def test_bad_budget_keys_are_named_before_any_work(overrides, message):
    from lbyl_pl.cli.restore import plan_sweep

    with pytest.raises(ConfigError) as err:
        plan_sweep(load_config([], overrides))
    assert message in str(err.value)


def test_a_budgets_rows_take_the_tables_defaults():
    from lbyl_pl.cli.restore import FlopsTarget, plan_sweep

    config = load_config([], ["restore.flops=[0.5]", "restore.ratios=[0.3]", "restore.methods=[lbyl]",
                              "restore.lambdas={l2-norm: {0.3: [1.0e-5, 0.5], default: [1.0e-4, 0.2]}}"])
    points = {ratio: points for _, ratio, _, points, _, _ in plan_sweep(config)}
    assert points[0.3] == [{"lambda1": 1e-5, "lambda2": 0.5, "solver": "shared"}]
    assert points[FlopsTarget(0.5)] == [{"lambda1": 1e-4, "lambda2": 0.2, "solver": "shared"}]
