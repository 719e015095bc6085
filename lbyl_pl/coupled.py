"""Coupled groups: channels that several modules must lose together, read off Torch-Pruning's traced group.

Discovery (``lbyl_pl.discovery``) first tries to make a producer's channel group an LBYL/NM *unit* (one producer,
one BN). What it cannot, it hands here. A group is accepted when pruning its channels is exactly the same as the
layers that read them seeing zeros there, which holds when every member is one of

- a producer (Conv2d of any ``groups``, Linear) whose output rows are the channels ("out");
- a BatchNorm over them ("bn"), a one-to-one depthwise conv ("depthwise");
- a reader (Conv2d of any ``groups``, Linear) whose input columns hold them ("in"), at an offset in a
  concatenation or through ``r`` consecutive features after a flatten;
- an op that keeps channels apart: activations, pooling, reshapes, concatenation, and the element-wise add, product
  or division of two tensors channel by channel (a residual add, a squeeze-excitation gate).

Where each channel lands in each member comes from the tracer's index mapping (every index carries the root
channel it came from). A grouped conv among the members splits the channels into blocks (its groups), and every
block must keep the same number of channels: ``CoupledGroup.cells``. Everything else is skipped with its reason,
as for units. ``lbyl_pl.checks.check_units`` verifies the zero equivalence for groups too.
"""
from __future__ import annotations

from torch import nn

from .traced_ops import (ACTIVATIONS, COMBINE_OPS, GROUPED, MAPPING, NEUTRAL_OPS, NOT_CHANNELWISE, OTHER_NORM,
                         OTHER_NORMS, OUTPUT, REUSED, UNSUPPORTED, SkippedGroup, never_prunable, op_name)
from .units import BN_TYPES, CoupledGroup, GroupMember

__all__ = ["coupled_group"]


def _kind(producers: int, ops: set, concat: bool, grouped: bool) -> str:
    parts = []
    if producers > 1:
        parts.append("residual stream" if "AddBackward" in ops or "SubBackward" in ops else "coupled producers")
    if "MulBackward" in ops or "DivBackward" in ops:
        parts.append("gated (product)")
    if concat:
        parts.append("concatenation")
    if grouped:
        parts.append("grouped conv")
    return ", ".join(parts) or "single producer"


def coupled_group(tp, graph, group, names: dict, calls: dict) -> CoupledGroup | SkippedGroup:
    """The coupled group that ``group`` (the tracer's pruning group of a root producer's every output channel)
    describes, or the reason it cannot be pruned."""
    root = group[0].dep.target.module
    name = names.get(root, type(root).__name__)

    def skip(reason, detail=""):
        return SkippedGroup(name, reason, detail)

    n = root.weight.shape[0]
    positions: dict[tuple, list[set]] = {}  # (module, role) -> per channel, its indices in the module
    bn_after: dict[nn.Module, nn.Module] = {}  # a conv or linear -> the BN that reads its output directly
    ops, concat = set(), False
    for item in group:
        node, handler = item.dep.target, item.dep.handler
        module = node.module
        if isinstance(module, tp.ops._ConcatOp):
            concat = True
            continue
        refused = never_prunable(tp, module)
        if refused is not None:
            return skip(*refused)
        if isinstance(module, tp.ops._ReshapeOp):
            continue  # a flatten: the index mapping below says which features each channel became
        if isinstance(module, tp.ops._ElementWiseOp):
            op = op_name(node.grad_fn)
            if op not in ACTIVATIONS and op not in NEUTRAL_OPS and op not in COMBINE_OPS:
                return skip(NOT_CHANNELWISE, op)
            ops.add(op)
            continue
        if isinstance(module, OTHER_NORMS):
            return skip(OTHER_NORM, f"{type(module).__name__} {names.get(module, '')}".strip())
        if isinstance(module, BN_TYPES):
            role = "bn"
            sources = [i.module for i in node.inputs if isinstance(i.module, (nn.Conv2d, nn.Linear))]
            if len(sources) == 1 and len(node.inputs) == 1:  # a BN reading one producer's output directly
                bn_after[sources[0]] = module
        elif isinstance(module, (nn.Conv2d, nn.Linear)):
            if graph.is_out_channel_pruning_fn(handler):
                role = "depthwise" if node.type == tp.ops.OPTYPE.DEPTHWISE_CONV else "out"
            elif graph.is_in_channel_pruning_fn(handler):
                if node.type == tp.ops.OPTYPE.DEPTHWISE_CONV:
                    role = "depthwise"
                else:
                    role = "in"
            else:  # pragma: no cover - every Conv2d/Linear handler prunes one of the two axes
                return skip(UNSUPPORTED, f"{names.get(module, '?')}: {handler}")
        else:
            return skip(UNSUPPORTED, f"{type(module).__name__} {names.get(module, '')}".strip())
        root_idxs = getattr(item, "root_idxs", None)
        if root_idxs is None or len(root_idxs) != len(item.idxs) or any(r is None for r in root_idxs):
            return skip(MAPPING, f"the tracer gives no channel mapping for {names.get(module, '?')}")
        slots = positions.setdefault((module, role), [set() for _ in range(n)])
        for idx, r in zip(item.idxs, root_idxs):
            slots[int(r)].add(int(getattr(idx, "idx", idx)))

    reused = [names.get(m, "?") for m, _ in positions if calls.get(m, 1) > 1]
    if reused:
        return skip(REUSED, f"{', '.join(reused[:3])} called more than once in a forward pass")
    if not any(role == "in" for _, role in positions):
        return skip(OUTPUT, "no Conv2d or Linear reads its channels")

    members, block_ids, grouped = [], [], False
    for (module, role), slots in positions.items():
        mname = names.get(module, "?")
        width = len(slots[0])
        if any(len(s) != width for s in slots) or width == 0:
            return skip(MAPPING, f"{mname} does not read every channel through the same number of indices")
        flat = [i for s in slots for i in s]
        if len(set(flat)) != len(flat):
            return skip(MAPPING, f"{mname} reads two channels at one index")
        if role == "depthwise" and not (module.in_channels == module.out_channels == module.groups):
            return skip(GROUPED, f"{mname} is not a one-to-one depthwise conv")
        groups = getattr(module, "groups", 1) if role in ("in", "out") else 1
        if groups > 1:
            grouped = True
            size = (module.in_channels if role == "in" else module.out_channels) // groups
            blocks = [{i // size for i in s} for s in slots]
            if any(len(b) != 1 for b in blocks):
                return skip(GROUPED, f"{mname}: a channel spans two of its groups")
            ids = [b.pop() for b in blocks]
            counts = {b: ids.count(b) for b in set(ids)}
            if any(c != size for c in counts.values()):
                return skip(GROUPED, f"{mname} (groups={groups}) mixes these channels with others in one group")
            block_ids.append(ids)
        ordered = tuple(tuple(sorted(s)) for s in slots)
        members.append(GroupMember(module, mname, role, ordered))

    cells: tuple[int, ...] = ()
    if block_ids:
        keys = list(zip(*block_ids))  # per channel: its block under every grouped member
        index = {k: i for i, k in enumerate(dict.fromkeys(keys))}
        cells = tuple(index[k] for k in keys)
        sizes = {cells.count(c) for c in set(cells)}
        if len(sizes) != 1:
            return skip(GROUPED, "its grouped convs split the channels into blocks of different sizes")
        if sizes.pop() < 2:
            return skip(GROUPED, "one channel per group: no equal count below the full one")
    order = {m: i for i, m in enumerate(names)}
    members.sort(key=lambda m: (m.module is not root, ("out", "depthwise", "bn", "in").index(m.role),
                                order.get(m.module, 0)))
    producers = sum(1 for m in members if m.role == "out")
    outs = {m.module for m in members if m.role == "out"}
    bn_of = tuple((names[p], names[b]) for p, b in bn_after.items() if p in outs and (b, "bn") in positions)
    return CoupledGroup(name, n, tuple(members), _kind(producers, ops, concat, grouped), cells, bn_of=bn_of)
