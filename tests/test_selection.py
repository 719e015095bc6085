"""Selection (docs/method.md §1): kept counts and every pruning criterion on hand-made weights."""
from __future__ import annotations

import pytest
import torch

from lbyl_pl import build_model
from lbyl_pl.selection import CRITERIA, criterion_scores, kept_count, select_kept

# the criteria computed from the filters alone (IF-l1 also reads the unit's BN and consumers)
FILTER_CRITERIA = [name for name, score in CRITERIA.items() if not score.needs_unit]
from lbyl_pl.prunable import prunable_units
from lbyl_pl.units import unit_tensors

# docs/method.md §1 table: m = int((1 - r) * n)
KEPT_TABLE = {
    0.1: {64: 57, 128: 115, 256: 230, 512: 460},
    0.2: {64: 51, 128: 102, 256: 204, 512: 409},
    0.3: {64: 44, 128: 89, 256: 179, 512: 358},
    0.4: {64: 38, 128: 76, 256: 153, 512: 307},
    0.5: {64: 32, 128: 64, 256: 128, 512: 256},
}


@pytest.mark.parametrize("ratio", sorted(KEPT_TABLE))
def test_kept_count_floor_matches_method_table(ratio):
    got = {n: kept_count(n, ratio) for n in (64, 128, 256, 512)}
    assert got == KEPT_TABLE[ratio]


def test_kept_count_vgg_cfg_r01():
    # the hard-coded reference cfg at r = 0.1 (docs/method.md §1)
    widths = [64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512]
    assert [kept_count(w, 0.1) for w in widths] == [57, 57, 115, 115, 230, 230, 230, 460, 460, 460,
                                                     460, 460, 460]


@pytest.mark.parametrize("ratio,expected", [(0.5, (150, 50)), (0.6, (120, 40)), (0.7, (90, 30)),
                                            (0.8, (60, 20))])
def test_kept_count_round_lenet(ratio, expected):
    assert (kept_count(300, ratio, "round"), kept_count(100, ratio, "round")) == expected


def test_kept_count_floor_and_round_differ_where_float_product_falls_short():
    # (1 - 0.9) * 100 = 9.999999999999998 in floating point: int() gives 9, round() gives 10
    assert kept_count(100, 0.9, "floor") == 9
    assert kept_count(100, 0.9, "round") == 10
    # 0.7 * 64 = 44.8: floor 44, round 45
    assert kept_count(64, 0.3, "floor") == 44
    assert kept_count(64, 0.3, "round") == 45


def test_kept_count_ratio_zero_keeps_all_and_unknown_rule_rejected():
    assert kept_count(17, 0.0) == 17
    assert kept_count(17, 0.0, "round") == 17
    with pytest.raises(ValueError, match="unknown count rule 'ceil'"):
        kept_count(10, 0.5, "ceil")


def test_lenet_units_use_round_rule():
    units = prunable_units(build_model("lenet300"))
    assert [u.count_rule for u in units] == ["round", "round"]
    vgg_units = prunable_units(build_model("vgg16_bn"))
    assert {u.count_rule for u in vgg_units} == {"floor"}


def test_l1_and_l2_differ_on_crafted_example():
    W = torch.tensor([[3.0, 0.0, 0.0, 0.0],    # l1 = 3, l2 = 3
                      [1.0, 1.0, 1.0, 1.0],    # l1 = 4, l2 = 2
                      [0.5, 0.5, 0.0, 0.0]])   # l1 = 1, l2 = 0.71
    assert select_kept(W, "l1-norm", 1) == [1]
    assert select_kept(W, "l2-norm", 1) == [0]
    assert select_kept(W, "l1-norm", 2) == [0, 1]
    assert select_kept(W, "l2-norm", 2) == [0, 1]
    assert torch.allclose(criterion_scores(W, "l1-norm"), torch.tensor([3.0, 4.0, 1.0], dtype=torch.float64))
    assert torch.allclose(criterion_scores(W, "l2-norm"),
                          torch.tensor([3.0, 2.0, 0.5 ** 0.5], dtype=torch.float64))


def test_norm_criteria_flatten_conv_filters():
    W = torch.zeros(3, 2, 3, 3)
    W[0, 0, 0, 0] = 5.0          # l1 5, l2 5
    W[1] = 0.5                   # l1 9, l2 2.12
    W[2, 1, 2, 2] = -4.0         # l1 4, l2 4
    assert select_kept(W, "l1-norm", 1) == [1]
    assert select_kept(W, "l2-norm", 1) == [0]
    assert select_kept(W, "l2-norm", 2) == [0, 2]


def test_l2_gm_prunes_filters_nearest_the_geometric_median():
    # points on a line at 3.5, 0, 10, 2, 1 (permuted so the answer is not positional);
    # total distances: 3.5 -> 14, 0 -> 16.5, 10 -> 33.5, 2 -> 12.5, 1 -> 13.5
    xs = torch.tensor([3.5, 0.0, 10.0, 2.0, 1.0])
    W = torch.stack([xs, torch.zeros(5)], dim=1)
    scores = criterion_scores(W, "l2-GM")
    assert torch.allclose(scores, torch.tensor([14.0, 16.5, 33.5, 12.5, 13.5], dtype=torch.float64))
    assert select_kept(W, "l2-GM", 4) == [0, 1, 2, 4]   # prunes 2.0 (index 3), nearest the median
    assert select_kept(W, "l2-GM", 3) == [0, 1, 2]      # then 1.0 (index 4)
    # l2-norm would prune the zero filter (index 1) instead
    assert select_kept(W, "l2-norm", 4) == [0, 2, 3, 4]


def test_random_2_keeps_last_and_random_3_keeps_first():
    W = torch.randn(7, 5)
    assert select_kept(W, "random_2", 3) == [4, 5, 6]
    assert select_kept(W, "random_3", 3) == [0, 1, 2]
    assert select_kept(W, "random_2", 7) == list(range(7))


def test_random_1_keeps_smallest_last_printed_digit():
    # float32 values print as: 0.3 -> 0.30000001192092896 (6), 0.6 -> 0.6000000238418579 (9),
    # 0.1 -> 0.10000000149011612 (2), 1.0 -> 1.0 (0), 0.7 -> 0.699999988079071 (1),
    # 0.2 -> 0.20000000298023224 (4)
    W = torch.tensor([[0.3], [0.6], [0.1], [1.0], [0.7], [0.2]])
    assert [repr(v)[-1] for v in W.sum(dim=1).tolist()] == ["6", "9", "2", "0", "1", "4"]
    assert select_kept(W, "random_1", 3) == [2, 3, 4]
    assert select_kept(W, "random_1", 4) == [2, 3, 4, 5]
    # a norm criterion would keep a different set
    assert select_kept(W, "l2-norm", 3) == [1, 3, 4]


def test_random_1_sums_each_filter():
    # filter sums 0.5 + 0.5 = 1.0 (digit 0) vs 0.3 (digit 6): the sum, not an element, is printed
    W = torch.tensor([[0.3, 0.0], [0.5, 0.5], [0.2, 0.5]])  # sums 0.3 (6), 1.0 (0), 0.7 (1)
    assert select_kept(W, "random_1", 2) == [1, 2]


def test_random_1_ties_go_to_lower_index():
    # digits 1, 1, 2, 2, 6
    W = torch.tensor([[0.7], [0.9], [1.3], [0.1], [0.3]])
    assert select_kept(W, "random_1", 2) == [0, 1]
    assert select_kept(W, "random_1", 3) == [0, 1, 2]


def test_output_is_sorted_ascending():
    norms = torch.tensor([1.0, 5.0, 3.0, 4.0, 2.0, 6.0])
    W = torch.diag(norms)
    for criterion in ("l1-norm", "l2-norm"):
        assert select_kept(W, criterion, 3) == [1, 3, 5]
    W_desc = torch.diag(torch.arange(8, 0, -1, dtype=torch.float32))  # largest first
    assert select_kept(W_desc, "l2-norm", 4) == [0, 1, 2, 3]
    W_asc = torch.diag(torch.arange(1, 9, dtype=torch.float32))       # largest last
    assert select_kept(W_asc, "l2-norm", 4) == [4, 5, 6, 7]


@pytest.mark.parametrize("criterion", FILTER_CRITERIA)
def test_ties_are_deterministic_and_lower_index_first(criterion):
    W = torch.ones(6, 4)  # every score ties (random_1: every sum is 4.0 -> digit 0)
    first = select_kept(W, criterion, 3)
    assert first == select_kept(W.clone(), criterion, 3)
    expected = {"random_2": [3, 4, 5]}.get(criterion, [0, 1, 2])
    assert first == expected


@pytest.mark.parametrize("criterion", FILTER_CRITERIA)
def test_every_criterion_returns_m_distinct_sorted_indices(criterion):
    W = torch.randn(20, 3, 3, 3)
    kept = select_kept(W, criterion, 13)
    assert len(kept) == 13 and len(set(kept)) == 13
    assert kept == sorted(kept) and 0 <= kept[0] and kept[-1] < 20


def test_select_kept_rejects_bad_n_keep():
    W = torch.randn(5, 3)
    with pytest.raises(ValueError, match=r"n_keep must be in \[1, 5\], got 0"):
        select_kept(W, "l2-norm", 0)
    with pytest.raises(ValueError, match=r"n_keep must be in \[1, 5\], got 6"):
        select_kept(W, "l2-norm", 6)


def test_fc_criterion_sees_weight_row_and_bias():
    # docs/method.md §11: FC criteria are computed on [w, b]; a neuron with tiny weights but a large bias
    # is kept by l2-norm.
    model = build_model("lenet300")
    unit = prunable_units(model)[1]  # ip2: 100 neurons x 300 inputs
    with torch.no_grad():
        unit.layer.weight.mul_(0.01)
        unit.layer.weight[7].zero_()
        unit.layer.bias.zero_()
        unit.layer.bias[7] = 100.0
    t = unit_tensors(unit)
    assert t.weight.shape == (100, 301)
    assert torch.equal(t.weight[:, -1], unit.layer.bias.detach().double())
    assert select_kept(t.weight, "l2-norm", 1) == [7]
    assert select_kept(unit.layer.weight.detach(), "l2-norm", 1) != [7]
