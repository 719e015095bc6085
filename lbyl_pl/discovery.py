"""Discovery: the prunable units of any ``nn.Module``, read off the graph Torch-Pruning traces.

Torch-Pruning's ``DependencyGraph`` traces one forward pass (autograd graph plus module hooks) and
returns, for every ``Conv2d`` / ``Linear`` root, the *group* of every module and op whose channels
must change with the root's output channels. A group is an LBYL/NM unit when it has exactly

- one producer: the root, a ``Conv2d`` with ``groups == 1`` or a ``Linear``;
- at most one BatchNorm over those channels, reading the producer's output directly;
- between it and the readers only channel-wise ops (activations, pooling, dropout, flatten) and
  optional passthrough depthwise convs (``groups == in == out channels``), each with at most one BN;
- one or more consumers: ``Conv2d`` with ``groups == 1`` or ``Linear`` (after a flatten a Linear reads
  each channel through several consecutive features; the mapping is checked on the traced graph).

A group that is not a unit but can still be pruned as a whole (channels coupled with other producers across a
residual add or a product, concatenated with other tensors, read or written by a grouped conv) is a *coupled
group* (``Discovery.groups``, built by ``lbyl_pl.coupled``): plain pruning and the refit take them with
``units="all"``. Everything else is skipped with a reason (``Discovery.skipped``): splits, channels that reach the
network output, other normalisations, ops that mix channels, modules called more than once. The units hold
module references of ``model``; their ``name`` is the producer's module path. Discovery never
modifies ``model`` (Torch-Pruning switches it to eval mode while tracing; the mode is restored).
"""
from __future__ import annotations

import time
import weakref
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from .example_inputs import _input_shape, example_inputs_of, input_rejection
from .coupled import coupled_group
from .traced_ops import (ACTIVATIONS, BN_PLACEMENT, CONCAT, COUPLED, GROUPED, MAPPING, NEUTRAL_OPS,
                         NOT_CHANNELWISE, OTHER_NORM, OTHER_NORMS, OUTPUT, RESHAPES, REUSED, UNSUPPORTED, SkippedGroup,
                         idx_of, never_prunable, op_name)
from .units import BN_TYPES, CoupledGroup, PrunableUnit

__all__ = ["Discovery", "SkippedGroup", "discover", "discover_units", "example_inputs_of"]

@dataclass
class Discovery:
    """What discovery found: units, skipped groups, and counts measured on the example inputs."""
    units: list[PrunableUnit]
    skipped: list[SkippedGroup]
    input_shape: tuple
    flops: int = 0                      # FLOPs of one forward pass on the example inputs
    module_out_numel: dict = field(default_factory=dict)  # conv/linear module name -> output elements
    trace_seconds: float = 0.0
    # Conv2d / Linear / BatchNorm module names in the order the forward pass first calls them (which may differ
    # from their order of definition); network-level stages visit layers in this order
    execution_order: list = field(default_factory=list)
    # channel groups that are not single-producer units but can be pruned (lbyl_pl.coupled): taken by
    # prune_and_restore(units="all"), never by default
    groups: list = field(default_factory=list)

    def skipped_by_reason(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for group in self.skipped:
            counts[group.reason] = counts.get(group.reason, 0) + 1
        return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))

    def format(self) -> str:
        lines = [f"{len(self.units)} unit(s), {len(self.skipped)} skipped group(s) "
                 f"(input {list(self.input_shape)}, traced in {self.trace_seconds:.2f} s)"]
        for unit in self.units:
            consumers = ", ".join(unit.consumer_names) if unit.consumer_names else "?"
            extra = f" via {', '.join(unit.passthrough_names)}" if unit.passthrough else ""
            acts = f"  [{', '.join(unit.activations)}]" if unit.activations else ""
            lines.append(f"  unit {unit.name} ({unit.n_channels} ch){extra} -> {consumers}{acts}")
        for group in self.groups:
            producers = ", ".join(group.member_names("out"))
            readers = group.member_names("in")
            lines.append(f"  group {group.name} ({group.n_channels} ch, {group.kind}): {producers} -> "
                         f"{', '.join(readers[:4])}{' ...' if len(readers) > 4 else ''}")
        for group in self.skipped:
            lines.append(f"  skip {group}")
        return "\n".join(lines)


def _signature(model: nn.Module, example_inputs) -> tuple:
    """What discovery depends on: the module tree, parameter shapes and the input shapes (not values)."""
    modules = tuple((name, type(m).__name__, getattr(m, "groups", None)) for name, m in model.named_modules())
    params = tuple((name, tuple(p.shape)) for name, p in model.named_parameters())
    return modules, params, _input_shape(example_inputs)


_CACHE: "weakref.WeakKeyDictionary[nn.Module, tuple]" = weakref.WeakKeyDictionary()


def discover(model: nn.Module, example_inputs=None, *, cache: bool = True) -> Discovery:
    """Trace ``model`` on ``example_inputs`` and classify every Conv2d/Linear channel group.

    ``example_inputs`` is a tensor (or a tuple of the forward's positional inputs); only its shape
    matters. Raises ``ValueError`` when the tracer rejects the model or no unit is found.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    example_inputs = example_inputs_of(model, example_inputs)
    key = _signature(model, example_inputs)
    if cache and model in _CACHE and _CACHE[model][0] == key:
        return _CACHE[model][1]
    found = _discover(model, example_inputs)
    if not found.units and not found.groups:
        reasons = ", ".join(f"{n} {r}" for r, n in found.skipped_by_reason().items()) or "no Conv2d/Linear"
        raise ValueError(f"{type(model).__name__} has no prunable unit (groups skipped: {reasons}); "
                         "see lbyl_pl.discover(model, example_inputs).format() for each group's reason")
    if cache:
        _CACHE[model] = (key, found)
    return found


def discover_units(model: nn.Module, example_inputs=None) -> list[PrunableUnit]:
    """The prunable units of ``model`` (see ``discover`` for the rules and the skipped groups)."""
    return discover(model, example_inputs).units


def _tp_version() -> str:
    """The installed Torch-Pruning release (its ``__version__`` says 1.6.0 in release 1.6.1)."""
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version("torch-pruning")
    except PackageNotFoundError:  # pragma: no cover
        return "?"


def _trace(model: nn.Module, example_inputs):
    """Build the dependency graph; also count FLOPs and record conv/linear output sizes and calls
    (one forward pass for all three)."""
    try:
        import torch_pruning as tp
    except ImportError as err:  # pragma: no cover - a declared dependency
        raise ImportError("unit discovery needs Torch-Pruning: pip install torch-pruning") from err
    calls: dict[nn.Module, int] = {}
    out_numel: dict[nn.Module, int] = {}

    def record(module, args, output):
        calls[module] = calls.get(module, 0) + 1
        if isinstance(output, torch.Tensor):
            out_numel[module] = output.numel()

    hooks = [m.register_forward_hook(record) for m in model.modules()
             if isinstance(m, (nn.Conv2d, nn.Linear, *BN_TYPES))]
    was_training = {m: m.training for m in model.modules()}
    # A bare tensor would first be tried as model(*tensor), i.e. unbatched: pass a tuple.
    inputs = (example_inputs,) if isinstance(example_inputs, torch.Tensor) else tuple(example_inputs)
    failure = None
    try:
        # Tracing needs autograd; Lightning evaluates under inference_mode / no_grad.
        with torch.inference_mode(False), torch.enable_grad(), FlopCounterMode(display=False) as flops:
            graph = tp.DependencyGraph().build_dependency(model, example_inputs=inputs, verbose=False)
    except (AssertionError, RuntimeError, TypeError, ValueError, ZeroDivisionError, KeyError, IndexError,
            AttributeError, NotImplementedError) as err:
        failure = err
    finally:
        for hook in hooks:
            hook.remove()
        for module, mode in was_training.items():
            module.training = mode
    if failure is not None:
        message = (f"the tracer (Torch-Pruning {_tp_version()}) cannot handle {type(model).__name__}: "
                   f"{type(failure).__name__}: {' '.join(str(failure).split())[:200]}")
        rejection = input_rejection(model, inputs)  # blame the tracer only for an input the model accepts
        if rejection is None:
            raise ValueError(message) from failure
        shape, expects, error = rejection
        message = "" if expects else f"; {message}"  # a wrong channel count says all there is to say
        raise ValueError(f"example input of shape {shape} does not fit {type(model).__name__}: "
                         f"{expects or 'its own forward fails on it'} ({error}){message}") from failure
    return tp, graph, int(flops.get_total_flops()), calls, out_numel


def _discover(model: nn.Module, example_inputs) -> Discovery:
    started = time.perf_counter()
    tp, graph, flops, calls, out_numel = _trace(model, example_inputs)
    names = {m: n for n, m in model.named_modules()}
    order = {m: i for i, m in enumerate(names)}
    units, groups, skipped, coupled_with = [], [], [], {}
    member_of: dict[nn.Module, str] = {}  # a producer already taken into a coupled group -> that group's name
    # One group per candidate producer (every traced Conv2d/Linear), built with the producer as its
    # root: get_all_groups would fold e.g. an expansion conv into its depthwise conv's group.
    for module in names:
        if not isinstance(module, (nn.Conv2d, nn.Linear)) or module not in graph.module2node:
            continue
        if module in member_of:  # a co-producer of a coupled group found from another root
            continue
        depthwise = isinstance(module, nn.Conv2d) and module.groups == module.out_channels and module.groups > 1
        if depthwise:  # carried by the unit or group of the conv that feeds it, never a root of its own
            skipped.append(SkippedGroup(names[module], GROUPED, "depthwise"))
            continue
        prune_out = tp.prune_conv_out_channels if isinstance(module, nn.Conv2d) else tp.prune_linear_out_channels
        try:  # traced once per root, read by both the unit rules and the coupled-group rules
            group = graph.get_pruning_group(module, prune_out, list(range(module.weight.shape[0])))
        except Exception as err:  # the tracer's own index mapping failed on this group
            skipped.append(SkippedGroup(names[module], UNSUPPORTED, f"tracer: {type(err).__name__}: {err}"[:160]))
            continue
        if not (isinstance(module, nn.Conv2d) and module.groups != 1):
            result = _classify(tp, graph, group, names, order, calls)
            if isinstance(result, PrunableUnit):
                units.append(result)
                continue
        if module in coupled_with:  # a co-producer of a group that could not be pruned
            skipped.append(SkippedGroup(names[module], COUPLED, coupled_with[module]))
            continue
        # not a unit: a coupled group (residual stream, concatenation, grouped conv), or skipped with the reason
        found = coupled_group(tp, graph, group, names, calls)
        if isinstance(found, CoupledGroup):
            groups.append(found)
            for member in found.producers:
                member_of[member.module] = found.name
            continue
        skipped.append(found)  # why the channels cannot be pruned even as a group
        for item in group:
            other = item.dep.target.module
            if other is not module and isinstance(other, (nn.Conv2d, nn.Linear)) and \
                    graph.is_out_channel_pruning_fn(item.dep.handler):
                coupled_with[other] = f"with {names[module]} ..."
    # depthwise convs carried by a unit or a group are part of it, not skipped groups of their own
    carried = {id(m) for u in units for m in u.passthrough} | \
        {id(m.module) for g in groups for m in g.members if m.role == "depthwise"}
    skipped = [g for g in skipped if not (g.reason == GROUPED and id(model.get_submodule(g.name)) in carried)]
    numel = {names[m]: v for m, v in out_numel.items() if isinstance(m, (nn.Conv2d, nn.Linear)) and m in names}
    return Discovery(units, skipped, _input_shape(example_inputs), flops, numel,
                     time.perf_counter() - started, [names[m] for m in calls if m in names], groups)


def _classify(tp, graph, group, names, order, calls):
    root_node = group[0].dep.target
    root = root_node.module
    name = names.get(root, type(root).__name__)

    def skip(reason, detail=""):
        return SkippedGroup(name, reason, detail)

    n = root.weight.shape[0]
    bn_nodes, depthwise, consumers, producers, op_names = [], [], [], [], []
    seen = set()
    for item in group:
        node = item.dep.target
        module = node.module
        if node in seen:
            continue
        seen.add(node)
        if module is root:
            continue
        if isinstance(module, tp.ops._ConcatOp):
            return skip(CONCAT, "its channels are concatenated with other tensors")
        refused = never_prunable(tp, module)
        if refused is not None:
            return skip(*refused)
        if isinstance(module, BN_TYPES):
            bn_nodes.append(node)
        elif isinstance(module, nn.Conv2d) and node.type == tp.ops.OPTYPE.DEPTHWISE_CONV:
            depthwise.append(node)
        elif isinstance(module, (nn.Conv2d, nn.Linear)):
            if graph.is_out_channel_pruning_fn(item.dep.handler):
                producers.append(names.get(module, "?"))
            elif isinstance(module, nn.Conv2d) and module.groups != 1:
                return skip(GROUPED, f"read by {names.get(module, '?')} (groups={module.groups})")
            else:
                consumers.append((module, item.idxs))
        elif isinstance(module, tp.ops._ElementWiseOp):
            op_names.append(op_name(node.grad_fn))
        elif isinstance(module, tp.ops._ReshapeOp):
            op_names.append("Flatten")
        elif isinstance(module, OTHER_NORMS):
            return skip(OTHER_NORM, f"{type(module).__name__} {names.get(module, '')}".strip())
        else:
            return skip(UNSUPPORTED, f"{type(module).__name__} {names.get(module, '')}".strip())
    if producers:
        how = "a product (e.g. squeeze-excitation)" if "MulBackward" in op_names else \
            "a residual add" if "AddBackward" in op_names else "an element-wise op"
        return skip(COUPLED, f"with {', '.join(producers[:3])}{' ...' if len(producers) > 3 else ''} across {how}")
    if not consumers:
        return skip(OUTPUT, "no Conv2d or Linear reads its channels")
    activations = []
    for op in op_names:
        if op in ACTIVATIONS:
            activations.append(ACTIVATIONS[op])
        elif op not in NEUTRAL_OPS and op != "Flatten":
            return skip(NOT_CHANNELWISE, op)
    involved = [root, *(c for c, _ in consumers), *(b.module for b in bn_nodes), *(d.module for d in depthwise)]
    reused = [names.get(m, "?") for m in involved if calls.get(m, 1) > 1]
    if reused:
        return skip(REUSED, f"{', '.join(reused[:3])} called more than once in a forward pass")

    # BatchNorms: one directly after the producer, at most one directly after each depthwise conv.
    def bn_after(node):
        after = [b for b in bn_nodes if node in b.inputs]
        return after[0] if len(after) == 1 else None

    bn_node = bn_after(root_node)
    if bn_node is not None and len(root_node.outputs) != 1:
        return skip(BN_PLACEMENT, "the producer's output is also read before its BatchNorm")
    passthrough, placed = [], {bn_node} - {None}
    for node in depthwise:
        dw = node.module
        if not (dw.in_channels == dw.out_channels == dw.groups == n):
            return skip(GROUPED, f"{names.get(dw, '?')} is not a one-to-one depthwise conv")
        passthrough.append(dw)
        after = bn_after(node)
        if after is not None:
            passthrough.append(after.module)
            placed.add(after)
    stray = [names.get(b.module, "?") for b in bn_nodes if b not in placed]
    if stray:
        return skip(BN_PLACEMENT, f"{', '.join(stray)} does not read a conv's output directly")

    # Each consumer must read channel c through features [c*r, (c+1)*r) (r = 1 for convs).
    features = []
    for module, idxs in consumers:
        width = module.weight.shape[1]
        if width % n or len(idxs) != width or (isinstance(module, nn.Conv2d) and width != n):
            return skip(MAPPING, f"{names.get(module, '?')} reads {len(idxs)} of {width} inputs for {n} channels")
        features.append(width // n)
    # Only a reshape can move channels among the whitelisted ops (a permute, transpose or index op is
    # "not channel-wise" above): without one, every consumer reads channel c at input c.
    reshaped = any(op in RESHAPES for op in op_names) or any(r != 1 for r in features)
    if n > 1 and reshaped:
        probe = sorted({1, n - 1})  # two channels, or channel 1 alone when n = 2 (0 then follows)
        prune_out = tp.prune_conv_out_channels if isinstance(root, nn.Conv2d) else tp.prune_linear_out_channels
        probe_group = graph.get_pruning_group(root, prune_out, probe)
        got = {item.dep.target.module: sorted(idx_of(i) for i in item.idxs) for item in probe_group
               if graph.is_in_channel_pruning_fn(item.dep.handler)}
        for (module, _), r in zip(consumers, features):
            expected = [c * r + j for c in probe for j in range(r)]
            if got.get(module) != expected:
                return skip(MAPPING, f"{names.get(module, '?')} does not read the channels in order")

    consumers_sorted = sorted(zip(consumers, features), key=lambda cf: order[cf[0][0]])
    return PrunableUnit(
        root, bn_node.module if bn_node is not None else None,
        tuple(c for (c, _), _ in consumers_sorted), tuple(passthrough), name=name,
        features_per_channel=tuple(r for _, r in consumers_sorted),
        activations=tuple(dict.fromkeys(activations)),
        consumer_names=tuple(names[c] for (c, _), _ in consumers_sorted),
        passthrough_names=tuple(names[m] for m in passthrough))
