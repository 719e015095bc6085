"""Selection: which filters of a layer are kept (``docs/method.md`` §1).

A criterion maps a layer's *original* weight matrix ``W`` (one row per output filter, flattened over
inputs; for fully-connected layers the bias is appended to each row, §11) to the indices it keeps.
The returned indices are always sorted ascending: the kept order only permutes channels and LBYL's
solve is permutation-equivariant (§1, "Kept order does not change the function"), so a canonical
order makes specs and tests deterministic.

Selection runs on the CPU whatever the network's device: the scores of a layer's ``n`` filters are a small
computation, and ranking them where the published tables were computed keeps the kept sets (and so the
specs) the same on every device: a GPU's float32 reductions sum in another order and may flip a near-tie.
"""
from __future__ import annotations

import math

import torch

from .units import CoupledGroup, all_finite, consumer_columns, folded_producer

__all__ = ["CRITERIA", "DEFAULT_RATIO", "kept_count", "group_kept_count", "item_kept_count", "select_kept",
           "select_group_kept", "select_item_kept", "criterion_scores", "register_criterion"]

# The pruning ratio when none is given: prune_and_restore, RestoreCallback (and retarget) and the configs'
# restore.ratios / finetune.ratio all take it from here.
DEFAULT_RATIO = 0.5

# name -> score(weight, unit); filled by @register_criterion below, so it is complete once this module is
# imported (a method's own criterion, such as Intra-Fusion's IF-l1, is defined here too)
CRITERIA: dict = {}
COUNT_RULES = ("floor", "round")


def kept_count(n: int, ratio: float, rule: str = "floor") -> int:
    """Number of filters kept out of ``n`` at pruning ratio ``ratio``.

    Conv layers use Python ``int((1 - r) * n)`` (the reference's VGG/ResNet width tables);
    LeNet's fully-connected layers use ``round`` (§1, §11).
    """
    check_ratio(ratio)
    if rule == "floor":
        m = int((1.0 - ratio) * n)
    elif rule == "round":
        m = int(round((1.0 - ratio) * n))
    else:
        raise ValueError(f"unknown count rule {rule!r}; allowed: {', '.join(COUNT_RULES)}")
    if m < 1:
        raise ValueError(
            f"ratio={ratio} keeps {m} of {n} channels; at least one channel must remain "
            f"(use a ratio below {1 - 1 / n:.4f} for this layer)")
    return m


def check_ratio(ratio: float) -> None:
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not math.isfinite(ratio) \
            or not 0.0 <= ratio < 1.0:
        raise ValueError(f"ratio must be a number in [0, 1), got {ratio!r}")


def check_criterion(criterion: str) -> None:
    if criterion not in CRITERIA:
        raise ValueError(f"unknown criterion {criterion!r}; allowed: {', '.join(CRITERIA)}")


def _random1_digits(weight: torch.Tensor) -> torch.Tensor:
    # The reference prints each filter's float32 weight sum as a Python float and keeps the filters
    # whose *last printed character* is smallest: deterministic, but not bit-reproducible across
    # summation orders (§1). We sum in float32 as it does.
    sums = weight.to(torch.float32).sum(dim=1)
    digits = []
    for value in sums.tolist():  # tolist() gives the float32 value as a Python float
        last = repr(value)[-1]
        digits.append(int(last) if last.isdigit() else 0)
    return torch.tensor(digits, dtype=torch.float64)


def _flat(weight: torch.Tensor) -> torch.Tensor:
    # on the CPU: the reference's float32 norms, its float64 cdist (scipy) and its printed sums (random_1) are
    # CPU computations; the same kept set on every device (module docstring)
    return weight.detach().reshape(weight.shape[0], -1).cpu()


def register_criterion(name: str, needs_unit: bool = False, needs_inputs: bool = False):
    """Add ``score(weight, unit) -> (n,) float64`` to ``CRITERIA`` (larger means keep). ``weight`` is the
    producer's ``(n, d)`` matrix (``[w, b]`` rows for a Linear without BN); ``unit`` is the
    ``PrunableUnit``, or ``None`` when only a weight is at hand: a criterion that reads more than the
    filters (``needs_unit=True``) then raises ``ValueError``. A criterion that reads activations on inputs
    (``needs_inputs=True``) is called as ``score(weight, unit, energy)`` with ``energy`` the ``(n,)`` mean
    square of each channel as its consumers read it (``prune_and_restore`` measures it on distilled inputs)."""
    def add(score):
        if name in CRITERIA:
            raise ValueError(f"criterion {name!r} is registered already")
        score.needs_unit = needs_unit or needs_inputs
        score.needs_inputs = needs_inputs
        CRITERIA[name] = score
        return score
    return add


@register_criterion("l1-norm")
def l1_norm(weight, unit=None):
    return torch.linalg.vector_norm(_flat(weight).float(), ord=1, dim=1).double()  # float32, as the reference


@register_criterion("l2-norm")
def l2_norm(weight, unit=None):
    return torch.linalg.vector_norm(_flat(weight).float(), ord=2, dim=1).double()


@register_criterion("l2-GM")
def l2_geometric_median(weight, unit=None):
    from scipy.spatial.distance import cdist

    # float64 pairwise distances exactly as the reference computes them (scipy's cdist);
    # filters with the smallest total distance (nearest the geometric median) are pruned
    w64 = _flat(weight).double().numpy()
    return torch.from_numpy(abs(cdist(w64, w64, "euclidean")).sum(axis=0))


@register_criterion("random_1")
def random_1(weight, unit=None):
    return -_random1_digits(_flat(weight))


@register_criterion("random_2")
def random_2(weight, unit=None):  # keeps the last m filters
    return torch.arange(weight.shape[0], dtype=torch.float64)


@register_criterion("random_3")
def random_3(weight, unit=None):  # keeps the first m filters
    return -torch.arange(weight.shape[0], dtype=torch.float64)


@register_criterion("IF-l1", needs_unit=True)
def intra_fusion_importance(weight, unit=None):
    """Intra-Fusion's own importance (its spec §1.3, see ``lbyl_pl.methods.fusion``; p = 1): per channel, the mean over the unit's members of
    the L1 norm of its weights (the BN-folded producer filter, without the bias, and every consumer's
    input slice), divided by its mean over channels. Needs the unit, not only the filters."""
    if unit is None:
        raise ValueError("criterion 'IF-l1' reads the unit's BatchNorm and consumers: pass the PrunableUnit")
    folded, _ = folded_producer(unit, "paper")
    members = [folded, *consumer_columns(unit)]
    importance = torch.stack([m.abs().sum(dim=1) for m in members]).mean(dim=0)
    return importance / importance.mean().clamp_min(1e-300)


@register_criterion("output-energy", needs_inputs=True)
def output_energy(weight, unit=None, energy=None):
    """How much each channel contributes to its consumers' outputs on inputs (ThiNet's and ModHiFi's question,
    answered without the cross terms): the channel's mean square as the consumers read it, times the squared
    norm of the consumers' weights that read it. Needs the unit and the measured ``energy``."""
    if unit is None or energy is None:
        raise ValueError("criterion 'output-energy' reads activations on inputs: use prune_and_restore, which "
                         "measures them on inputs distilled from the network")
    columns = sum(c.pow(2).sum(dim=1) for c in consumer_columns(unit))
    return energy.double().cpu() * columns.cpu()


def criterion_scores(weight: torch.Tensor, criterion: str, unit=None, energy=None) -> torch.Tensor:
    """Per-filter score where *larger means keep* (random_2/3 are positional, see ``select_kept``)."""
    check_criterion(criterion)
    if getattr(CRITERIA[criterion], "needs_inputs", False):
        return CRITERIA[criterion](weight, unit, energy)
    return CRITERIA[criterion](weight, unit)


def select_kept(weight: torch.Tensor, criterion: str, n_keep: int, unit=None, energy=None) -> list[int]:
    """Indices (ascending) of the ``n_keep`` filters that ``criterion`` keeps.

    ``weight`` is ``(n, ...)``; rows are flattened. Ties are broken towards the lower index
    (stable sort) so every process and every run agrees.
    """
    n = weight.shape[0]
    if not 1 <= n_keep <= n:
        raise ValueError(f"n_keep must be in [1, {n}], got {n_keep}")
    if not all_finite(weight):
        raise ValueError("weights contain NaN or Inf; cannot rank filters")
    scores = criterion_scores(weight, criterion, unit, energy).cpu()  # IF-l1 scores where the unit's weights are
    order = torch.sort(-scores, stable=True).indices  # descending score, lower index first on ties
    return sorted(order[:n_keep].tolist())


def group_kept_count(group, ratio: float) -> int:
    """Channels a coupled group keeps at ``ratio``: ``kept_count``, rounded down to the same number in every block
    of its grouped convs (at least one per block)."""
    cells = group.n_cells
    m = kept_count(group.n_channels, ratio, group.count_rule)
    return max(1, m // cells) * cells


def group_scores(group, criterion: str) -> torch.Tensor:
    """A criterion's group form: each producer's rows scored, normalised by the mean magnitude of its scores (so
    that every producer counts alike, whatever its fan-in), averaged over the producers (Torch-Pruning reduces
    importance over a group the same way). Criteria that read more than the filters score single units only."""
    check_criterion(criterion)
    score = CRITERIA[criterion]
    if score.needs_unit:
        allowed = [name for name, c in CRITERIA.items() if not c.needs_unit]
        raise ValueError(f"criterion {criterion!r} scores single-producer units only; coupled group {group.name!r} "
                         f"({group.kind}) needs one of {', '.join(allowed)}")
    total = torch.zeros(group.n_channels, dtype=torch.float64)
    for member in group.producers:
        rows = [p[0] for p in member.positions]
        weight = member.module.weight.detach()[torch.as_tensor(rows, device=member.module.weight.device)]
        if not all_finite(weight):
            raise ValueError(f"{member.name} has NaN or Inf weights; cannot rank the channels of {group.name!r}")
        values = score(weight.reshape(len(rows), -1), None).double().cpu()
        total += values / values.abs().mean().clamp_min(1e-300)
    return total / max(1, len(group.producers))


def select_group_kept(group, criterion: str, n_keep: int) -> list[int]:
    """Kept channels (ascending) of a coupled group: the best ``n_keep / blocks`` of every block by the group score
    (ties towards the lower index)."""
    cells = group.cells or (0,) * group.n_channels
    blocks = group.n_cells
    if not 1 <= n_keep <= group.n_channels or n_keep % blocks:
        raise ValueError(f"group {group.name!r} keeps a multiple of {blocks} channel(s) in [1, {group.n_channels}] "
                         f"(one count per block of its grouped convs), got {n_keep}")
    scores = group_scores(group, criterion)
    order = torch.sort(-scores, stable=True).indices.tolist()
    per_block, taken = n_keep // blocks, {}
    kept = []
    for i in order:
        if taken.get(cells[i], 0) < per_block:
            taken[cells[i]] = taken.get(cells[i], 0) + 1
            kept.append(i)
    return sorted(kept)


def item_kept_count(item, ratio: float) -> int:
    """Channels a unit (its count rule) or a coupled group (the same number per block) keeps at ``ratio``."""
    if isinstance(item, CoupledGroup):
        return group_kept_count(item, ratio)
    return kept_count(item.n_channels, ratio, item.count_rule)


def select_item_kept(item, criterion: str, ratio: float, weight: torch.Tensor | None = None,
                     energy: torch.Tensor | None = None) -> list[int]:
    """Kept channels of a unit or a coupled group at ``ratio``. ``weight``: a unit's ``(n, d)`` producer matrix
    (``lbyl_pl.units.unit_tensors``; unused for a group, which scores its producers itself); ``energy``: for criteria
    that read inputs."""
    if isinstance(item, CoupledGroup):
        return select_group_kept(item, criterion, group_kept_count(item, ratio))
    return select_kept(weight, criterion, kept_count(item.n_channels, ratio, item.count_rule), item, energy)
