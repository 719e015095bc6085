"""Coupled groups (residual streams, concatenations, grouped convs): discovery, selection, surgery, reload."""
import copy

import pytest
import torch
from torch import nn

from lbyl_pl import prune_and_restore
from lbyl_pl.checkpoints import load_restored, save_restored
from lbyl_pl.checks import check_units, zero_inputs
from lbyl_pl.discovery import discover
from lbyl_pl.selection import group_kept_count, select_group_kept
from lbyl_pl.surgery import GroupPlan, apply_plans
from pipeline_helpers import randomized


def conv_bn(c_in, c_out, k=3, stride=1, groups=1):
    return nn.Sequential(nn.Conv2d(c_in, c_out, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(c_out))


class Block(nn.Module):
    def __init__(self, c_in, c_out, stride=1):
        super().__init__()
        self.a = conv_bn(c_in, c_out, stride=stride)
        self.b = conv_bn(c_out, c_out)
        self.down = conv_bn(c_in, c_out, k=1, stride=stride) if stride != 1 or c_in != c_out else None

    def forward(self, x):
        y = self.b(torch.relu(self.a(x)))
        return torch.relu(y + (x if self.down is None else self.down(x)))


class ResNetTiny(nn.Module):
    """Two residual streams: the stem's (stem, block1.b), then block2's (block2.b, block2.down, block3.b)."""
    def __init__(self, width=8, classes=5):
        super().__init__()
        self.stem = conv_bn(3, width)
        self.block1 = Block(width, width)
        self.block2 = Block(width, 2 * width, stride=2)
        self.block3 = Block(2 * width, 2 * width)
        self.fc = nn.Linear(2 * width, classes)

    def forward(self, x):
        x = torch.relu(self.stem(x))
        x = self.block3(self.block2(self.block1(x)))
        return self.fc(x.mean(dim=(2, 3)))


class ConcatNet(nn.Module):
    """``a`` (4 ch) and ``b`` (6 ch) concatenated, read by ``c``; ``b`` is also read alone by ``d``."""
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 4, 3, padding=1)
        self.b = nn.Conv2d(3, 6, 3, padding=1)
        self.c = nn.Conv2d(10, 5, 3, padding=1)
        self.d = nn.Conv2d(6, 5, 1)
        self.fc = nn.Linear(5, 3)

    def forward(self, x):
        a, b = torch.relu(self.a(x)), torch.relu(self.b(x))
        y = self.c(torch.cat([a, b], dim=1)) + self.d(b)
        return self.fc(torch.relu(y).mean(dim=(2, 3)))


class GroupedNet(nn.Module):
    """``expand`` (8 ch) read by a grouped conv (groups 4: 2 channels per group), then a 1x1 projection."""
    def __init__(self):
        super().__init__()
        self.expand = conv_bn(3, 8, k=1)
        self.grouped = conv_bn(8, 8, groups=4)
        self.project = conv_bn(8, 6, k=1)
        self.fc = nn.Linear(6, 3)

    def forward(self, x):
        x = torch.relu(self.grouped(torch.relu(self.expand(x))))
        return self.fc(torch.relu(self.project(x)).mean(dim=(2, 3)))


X = torch.zeros(1, 3, 8, 8)


def groups_of(model):
    return {g.name: g for g in discover(model, X).groups}


def test_residual_streams_are_groups_with_every_producer_bn_and_reader():
    model = randomized(ResNetTiny())
    groups = groups_of(model)
    assert set(groups) == {"stem.0", "block2.b.0"}
    first, second = groups["stem.0"], groups["block2.b.0"]
    assert first.kind == "residual stream" and first.member_names("out") == ["stem.0", "block1.b.0"]
    assert first.member_names("bn") == ["stem.1", "block1.b.1"]
    assert set(first.member_names("in")) == {"block1.a.0", "block2.a.0", "block2.down.0"}
    assert set(second.member_names("out")) == {"block2.b.0", "block2.down.0", "block3.b.0"}
    assert set(second.member_names("in")) == {"block3.a.0", "fc"}
    # the default units are unchanged: groups only come with units="all"
    _, default = prune_and_restore(model, "prune", ratio=0.5, example_inputs=X)
    assert {u.name for u in default.units} == {"block1.a.0", "block2.a.0", "block3.a.0"}


def test_pruning_a_group_equals_zeroing_its_channels_at_every_reader():
    model = randomized(ResNetTiny())
    x = torch.randn(4, 3, 8, 8)
    for group in discover(model, X).groups:
        kept = [0, 3, 5] if group.n_channels == 8 else [1, 2, 7, 8, 15]
        dropped = [c for c in range(group.n_channels) if c not in kept]
        zeroed = copy.deepcopy(model)
        with torch.no_grad():
            for member in group.members:
                if member.role == "in":
                    zero_inputs(zeroed.get_submodule(member.name), [i for c in dropped for i in member.positions[c]])
            pruned = apply_plans(model, [GroupPlan(group, kept)])
            torch.testing.assert_close(pruned(x), zeroed(x), rtol=1e-5, atol=1e-6)
        for member in group.producers:
            assert pruned.get_submodule(member.name).out_channels == len(kept)
    checks = check_units(model, x, units="all")
    assert len(checks) == 5 and all(c.ok for c in checks), [str(c) for c in checks]


def test_concatenation_kept_indices_land_at_their_offsets():
    model = ConcatNet().eval()
    group = groups_of(model)["b"]
    c = next(m for m in group.members if m.name == "c")
    assert c.role == "in" and c.positions == tuple((4 + i,) for i in range(6))  # after a's 4 channels
    pruned = apply_plans(model, [GroupPlan(group, [0, 2, 5])])
    torch.testing.assert_close(pruned.c.weight, model.c.weight[:, [0, 1, 2, 3, 4, 6, 9]])
    torch.testing.assert_close(pruned.d.weight, model.d.weight[:, [0, 2, 5]])
    torch.testing.assert_close(pruned.b.weight, model.b.weight[[0, 2, 5]])
    assert pruned.a.out_channels == 4 and pruned.c.in_channels == 7
    x = torch.randn(2, 3, 8, 8)
    zeroed = copy.deepcopy(model)
    with torch.no_grad():
        zeroed.c.weight[:, [5, 7, 8]] = 0.0
        zeroed.d.weight[:, [1, 3, 4]] = 0.0
        torch.testing.assert_close(pruned(x), zeroed(x))


def test_two_groups_concatenated_lose_the_union_in_original_coordinates():
    model = ConcatNet().eval()
    groups = groups_of(model)
    assert groups["a"].kind == "concatenation" and groups["a"].member_names("in") == ["c"]
    pruned = apply_plans(model, [GroupPlan(groups["b"], [1, 4]), GroupPlan(groups["a"], [0, 3])])
    torch.testing.assert_close(pruned.c.weight, model.c.weight[:, [0, 3, 5, 8]])


def test_grouped_conv_keeps_equal_counts_per_group():
    model = randomized(GroupedNet())
    groups = groups_of(model)
    expand = groups["expand.0"]
    assert expand.n_cells == 4 and expand.cells == (0, 0, 1, 1, 2, 2, 3, 3)
    kept = select_group_kept(expand, "l1-norm", group_kept_count(expand, 0.5))
    assert len(kept) == 4 and sorted({expand.cells[i] for i in kept}) == [0, 1, 2, 3]
    pruned = apply_plans(model, [GroupPlan(expand, kept)])
    assert pruned.grouped[0].groups == 4 and pruned.grouped[0].in_channels == 4
    assert pruned.grouped[0].weight.shape == (8, 1, 3, 3)
    for g in range(4):  # output rows of group g read the one input channel group g kept
        column = kept[g] - 2 * g
        rows = slice(2 * g, 2 * g + 2)
        torch.testing.assert_close(pruned.grouped[0].weight[rows, 0], model.grouped[0].weight[rows, column])
    checks = check_units(model, torch.randn(2, 3, 8, 8), units="all")
    assert checks and all(c.ok for c in checks), [str(c) for c in checks]
    with pytest.raises(ValueError, match="every group must keep the same number of channels"):
        apply_plans(model, [GroupPlan(expand, [0, 1, 2])])
    with pytest.raises(ValueError, match=r"multiple of 4 channel\(s\)"):
        select_group_kept(expand, "l1-norm", 3)


def test_units_all_prunes_groups_and_algebraic_methods_name_the_group():
    model = randomized(ResNetTiny())
    restored, report = prune_and_restore(model, "prune", "l1-norm", 0.5, units="all", example_inputs=X)
    assert {u.name for u in report.units} >= {"stem.0", "block2.b.0", "block1.a.0"}
    assert restored.block1.b[0].out_channels == 4 and restored.block3.b[0].out_channels == 8
    assert restored(torch.randn(2, 3, 8, 8)).shape == (2, 5)
    for method in ("lbyl", "merge"):
        with pytest.raises(ValueError, match=rf"method '{method}' restores single-producer units only.*'stem.0'.*"
                                             r"Methods that prune groups: prune, fusion"):
            prune_and_restore(model, method, "l1-norm", 0.5, units="all", example_inputs=X)
    with pytest.raises(ValueError, match="criterion 'IF-l1' scores single-producer units only"):
        prune_and_restore(model, "prune", "IF-l1", 0.5, units="all", example_inputs=X)


def test_refit_after_pruning_a_stream_runs_and_lowers_the_output_error():
    model = randomized(ResNetTiny())
    inputs = torch.randn(48, 3, 8, 8)
    _, plain = prune_and_restore(model, "prune", "l1-norm", 0.5, units="all", example_inputs=X, refit=True,
                                 refit_inputs=inputs)
    assert plain.refit.output_kl_after < plain.refit.output_kl_before
    assert {layer.name for layer in plain.refit.layers} >= {"block1.a.0", "fc"}


def test_save_and_reload_a_pruned_residual_stream_onto_a_fresh_model(tmp_path):
    model = randomized(ResNetTiny())
    restored, _ = prune_and_restore(model, "prune", "l2-norm", 0.5, units="all", example_inputs=X)
    path = tmp_path / "pruned.pt"
    save_restored(restored, path)
    fresh = ResNetTiny()  # unpruned, other weights
    reloaded = load_restored(path, fresh, example_inputs=X)
    x = torch.randn(3, 3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(reloaded.eval()(x), restored.eval()(x))
    assert reloaded.block2.down[0].out_channels == restored.block2.down[0].out_channels == 8


def test_a_group_whose_members_disagree_in_size_is_refused_before_anything_is_written():
    from dataclasses import replace

    model = randomized(ResNetTiny())
    group = groups_of(model)["stem.0"]
    bn = next(m for m in group.members if m.name == "block1.b.1")
    short = replace(group, members=tuple(replace(m, positions=m.positions[:5]) if m is bn else m
                                         for m in group.members))
    with pytest.raises(ValueError, match=r"member 'block1.b.1' \(bn\) has 8 channels .* positions for 5 group "
                                         r"channels .* allowed: positions for all 8 channels"):
        apply_plans(model, [GroupPlan(short, [0, 1])])
    wide = replace(group, members=tuple(replace(m, positions=tuple((i + 4,) for i in range(8))) if m is bn else m
                                        for m in group.members))
    with pytest.raises(ValueError, match=r"reaching index 11; allowed: .* each below 8"):
        apply_plans(model, [GroupPlan(wide, [0, 1])])
    assert model.stem[0].out_channels == 8  # the model is untouched


def test_intra_fusion_on_a_stream_is_exact_when_pruned_channels_duplicate_kept_ones():
    """Channels 4-7 of the first residual stream copy channels 0-3 in every producer (conv rows and BN) and every
    reader: the transport plan sends each onto its twin, and fusing (producer rows averaged, the readers' columns
    summed) is the same function."""
    model = randomized(ResNetTiny())
    twins = [4, 5, 6, 7], [0, 1, 2, 3]
    with torch.no_grad():
        for conv, bn in ((model.stem[0], model.stem[1]), (model.block1.b[0], model.block1.b[1])):
            conv.weight[twins[0]] = conv.weight[twins[1]]
            for t in (bn.weight, bn.bias, bn.running_mean, bn.running_var):
                t[twins[0]] = t[twins[1]]
        for reader in (model.block1.a[0], model.block2.a[0], model.block2.down[0]):
            reader.weight[:, twins[0]] = reader.weight[:, twins[1]]
    x = torch.randn(4, 3, 8, 8)
    kept = {"stem.0": twins[1]}
    restored, _ = prune_and_restore(model, "fusion", "l2-norm", units=["stem.0"], example_inputs=X, kept=kept,
                                    variant="exact", producer="mean")
    assert restored.stem[0].out_channels == restored.block1.b[0].out_channels == restored.block2.a[0].in_channels == 4
    with torch.no_grad():
        torch.testing.assert_close(restored(x), model(x), rtol=1e-5, atol=1e-5)
    plain, _ = prune_and_restore(model, "prune", "l2-norm", units=["stem.0"], example_inputs=X, kept=kept)
    with torch.no_grad():
        assert (plain(x) - model(x)).abs().max() > 1e-3  # plain pruning loses the twins' contribution


def test_intra_fusion_on_groups_runs_and_refuses_grouped_convs_with_the_reason():
    model = randomized(ResNetTiny())
    restored, report = prune_and_restore(model, "fusion", "l2-norm", 0.5, units="all", example_inputs=X)
    assert restored(torch.randn(2, 3, 8, 8)).shape == (2, 5)
    assert restored.block2.down[1].running_var.shape == (8,)  # every producer's BN holds its fused bias
    with pytest.raises(ValueError, match=r"Intra-Fusion on group 'expand.0' .*grouped conv.*method='prune'"):
        prune_and_restore(randomized(GroupedNet()), "fusion", "l2-norm", 0.5, units="all", example_inputs=X)
