"""Where the frozen part of a PyTorch forward ends, read off one recorded forward pass.

A model's ``forward`` is arbitrary Python, so the order in which its modules run is taken from
an actual call: forward hooks on every module record when each call starts and ends. The frozen
groups form a prefix of the forward when every module owning a frozen parameter has finished
before the first module owning a trainable one starts. Everything that runs entirely before the
last frozen module finishes is the *frozen region*: it runs in inference mode, and the cut is
placed at the end of one of its outermost calls (the deepest that passes the checks of
:mod:`dynft_torch.frozen_prefix`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from .groups import BackboneGroup


class CutError(ValueError):
    """The model cannot be cut between its frozen and its trainable part."""


@dataclass(frozen=True)
class ModuleCall:
    """One call of a module during the recorded forward.

    Attributes:
        name: The module's name in ``model.named_modules()`` (``""`` for the model).
        start: Event counter when the call started.
        end: Event counter when it returned.
        parent: Index of the enclosing call, ``None`` for the model's own call.
        output: ``(shape, dtype)`` when the call returned one tensor, else ``None``.
    """

    name: str
    start: int
    end: int
    parent: int | None
    output: tuple[torch.Size, torch.dtype] | None


@dataclass(frozen=True)
class ForwardRecord:
    """Every module call of one forward pass, in the order the calls started.

    Attributes:
        calls: The calls; ``calls[i].parent`` indexes this tuple.
        batch_size: Batch size of the recorded input.
    """

    calls: tuple[ModuleCall, ...]
    batch_size: int

    def count(self, name: str) -> int:
        """How many times module ``name`` was called."""
        return sum(call.name == name for call in self.calls)


def record_forward(model: nn.Module, inputs: torch.Tensor) -> tuple[ForwardRecord, object]:
    """Run ``model(inputs)`` once with every module call recorded.

    Returns:
        The record and the model's output.
    """
    calls: list[list[object]] = []
    open_calls: list[int] = []
    counter = [0]

    def tick() -> int:
        counter[0] += 1
        return counter[0]

    def before(name: str):  # type: ignore[no-untyped-def]
        def hook(module: nn.Module, args: object) -> None:
            parent = open_calls[-1] if open_calls else None
            calls.append([name, tick(), -1, parent, None])
            open_calls.append(len(calls) - 1)

        return hook

    def after(module: nn.Module, args: object, output: object) -> None:
        call = calls[open_calls.pop()]
        call[2] = tick()
        if isinstance(output, torch.Tensor):
            call[4] = (output.shape, output.dtype)

    handles = []
    for name, module in model.named_modules():
        handles.append(module.register_forward_pre_hook(before(name)))
        handles.append(module.register_forward_hook(after))
    try:
        output = model(inputs)
    finally:
        for handle in handles:
            handle.remove()
    record = ForwardRecord(
        tuple(ModuleCall(*call) for call in calls),  # type: ignore[arg-type]
        int(inputs.shape[0]),
    )
    return record, output


@dataclass(frozen=True)
class FrozenRegion:
    """The part of the forward that the first ``num_frozen`` groups make a fixed function.

    Attributes:
        num_frozen: Frozen groups (the shallowest ones).
        end: Event counter at which the region ends.
        inference_modules: Modules all of whose calls lie in the region: they run in
            inference mode (dropout and stochastic depth off), cached or not.
        outermost: Indices (into the record's calls) of the outermost calls of the region, in
            the order they ran.
        candidates: Indices (into the record's calls) of the possible cuts, deepest first: the
            outermost calls of the region that return one tensor and whose module runs once,
            and, inside an outermost call returning something else, its own calls likewise.
    """

    num_frozen: int
    end: int
    inference_modules: frozenset[str]
    outermost: tuple[int, ...]
    candidates: tuple[int, ...]


def _direct_parameter_names(model: nn.Module, frozen: set[str]) -> dict[str, list[str]]:
    """Module name -> names of the parameters it owns itself, as far as they tell its timing.

    A module that owns parameters itself and also holds trainable modules (a ViT's
    ``cls_token``/``pos_embed`` on the model) uses them somewhere in its own code, at an unknown
    time. Frozen ones are constants wherever they are used, so they are left out; a trainable
    one makes the whole call count as trainable from its start.
    """
    owners = {}
    for name, module in model.named_modules():
        names = [pname for pname, _ in module.named_parameters(prefix=name, recurse=False)]
        if any(pname not in frozen for pname, _ in module.named_parameters(prefix=name)):
            names = [pname for pname in names if pname not in frozen]
        owners[name] = names
    return owners


def frozen_region(
    model: nn.Module,
    record: ForwardRecord,
    groups: Sequence[BackboneGroup],
    num_frozen: int,
) -> FrozenRegion:
    """The frozen region of ``record`` when the first ``num_frozen`` groups are frozen.

    Raises:
        CutError: A module of a frozen group runs after a trainable module has started (the
            frozen groups are not a prefix of the forward), or no frozen module runs at all.
    """
    frozen = {name for group in groups[:num_frozen] for name in group.parameter_names}
    owners = _direct_parameter_names(model, frozen)
    first_trainable: ModuleCall | None = None
    last_frozen: ModuleCall | None = None
    for call in record.calls:
        names = owners.get(call.name, [])
        if not names:
            continue
        if all(name in frozen for name in names):
            if last_frozen is None or call.end > last_frozen.end:
                last_frozen = call
        elif first_trainable is None or call.start < first_trainable.start:
            first_trainable = call
    if last_frozen is None:
        raise CutError(
            f"no module of the {num_frozen} frozen groups runs in the model's forward; "
            "the groups must be modules that forward() calls"
        )
    if first_trainable is not None and first_trainable.start < last_frozen.end:
        raise CutError(
            f"the frozen groups are not a prefix of the forward: {first_trainable.name!r} "
            f"(trainable) starts before {last_frozen.name!r} (frozen) has finished, so no "
            "single cut separates them (parallel branches, or groups not in forward order)"
        )
    limit = first_trainable.start if first_trainable is not None else record.calls[0].end

    def inside(index: int | None) -> bool:
        return index is not None and record.calls[index].end < limit

    # The region ends with the outermost call around the last frozen module.
    index = record.calls.index(last_frozen)
    while inside(record.calls[index].parent):
        parent = record.calls[index].parent
        assert parent is not None
        index = parent
    end = record.calls[index].end
    in_region = [call.end <= end for call in record.calls]
    all_inside: dict[str, bool] = {}
    for call, flag in zip(record.calls, in_region, strict=True):
        all_inside[call.name] = all_inside.get(call.name, True) and flag
    outermost = [
        i for i, call in enumerate(record.calls) if in_region[i] and not inside(call.parent)
    ]
    children: dict[int, list[int]] = {}
    for i, call in enumerate(record.calls):
        if call.parent is not None:
            children.setdefault(call.parent, []).append(i)

    def cuts_within(index: int) -> list[int]:
        # A call returning one tensor is a cut; inside one that does not (a Hugging Face
        # encoder returns a ModelOutput), its own calls are, deepest first.
        call = record.calls[index]
        if call.output is not None and record.count(call.name) == 1:
            return [index]
        return [cut for child in reversed(children.get(index, [])) for cut in cuts_within(child)]

    candidates = [cut for index in reversed(outermost) for cut in cuts_within(index)]
    return FrozenRegion(
        num_frozen=num_frozen,
        end=end,
        inference_modules=frozenset(name for name, flag in all_inside.items() if flag),
        outermost=tuple(outermost),
        candidates=tuple(candidates),
    )
