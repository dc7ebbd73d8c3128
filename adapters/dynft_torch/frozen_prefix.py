"""Running a PyTorch model in two halves at a cut: the frozen prefix, then the trainable rest.

The model's own ``forward`` runs both halves, so whatever it does after the cut (pooling,
flattening, the head) stays exactly as written:

* :meth:`FrozenPrefix.features` runs the forward until the module at the cut returns, and stops
  there (a forward hook raises a private ``BaseException``, which ``except Exception`` in user
  code cannot swallow);
* :meth:`FrozenPrefix.rest` runs the forward with the module at the cut returning the given
  features and every module call that finished before it (called by the model itself or by a
  call around the cut) returning a placeholder of the recorded shape. Only functional code
  between those calls runs, on placeholders.

Whether this equals the full forward is checked, not assumed (:func:`find_cut`): on a probe batch,
in eval mode, the rest of the prefix's features must reproduce the full output bit for bit while
every placeholder and the model input are NaN. A skip connection or parallel branch across the
cut reads a placeholder and turns the output into NaN, so it is found and the next shallower cut
is tried.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import torch
from torch import nn
from torch.utils._pytree import tree_leaves

from .frozen_region import CutError, ForwardRecord, FrozenRegion, ModuleCall

# Each try costs one partial and one stubbed forward on the probe batch.
MAX_CUT_TRIES = 16


class _CutReached(BaseException):
    def __init__(self, output: torch.Tensor) -> None:
        super().__init__()
        self.output = output


@contextlib.contextmanager
def _forwards_replaced(replacements: Mapping[nn.Module, Callable[..., Any]]) -> Iterator[None]:
    saved = {module: module.__dict__.get("forward") for module in replacements}
    try:
        for module, forward in replacements.items():
            module.__dict__["forward"] = forward
        yield
    finally:
        for module, previous in saved.items():
            if previous is None:
                module.__dict__.pop("forward", None)
            else:
                module.__dict__["forward"] = previous


def _returning(value: torch.Tensor) -> Callable[..., torch.Tensor]:
    def forward(*args: object, **kwargs: object) -> torch.Tensor:
        return value

    return forward


class FrozenPrefix:
    """The model cut after one module call of its frozen region.

    Args:
        model: The network (the module whose ``forward`` the record was taken of).
        record: The recorded forward.
        region: The frozen region of the record.
        cut: Index of the call after which the model is cut (one of ``region.candidates``).
        inputs: A batch of model inputs of the recorded kind (their shape and dtype are used
            for the placeholder input of :meth:`rest`).
    """

    def __init__(
        self,
        model: nn.Module,
        record: ForwardRecord,
        region: FrozenRegion,
        cut: int,
        inputs: torch.Tensor,
    ) -> None:
        self.model = model
        self.record = record
        self.region = region
        call = record.calls[cut]
        assert call.output is not None  # candidates return one tensor
        self.cut_name = call.name
        self.feature_shape = tuple(call.output[0][1:])
        self.feature_dtype = call.output[1]
        self._modules = dict(model.named_modules())
        self._cut_module = self._modules[call.name]
        self._input_shape = tuple(inputs.shape[1:])
        self._input_dtype = inputs.dtype
        self._placeholders = self._placeholder_calls(call)
        self._buffers: dict[int, tuple[torch.Tensor, dict[str, torch.Tensor]]] = {}
        # Set by find_cut: the rest changed the features in place, so it gets a copy.
        self.copies_features = False

    def _placeholder_calls(self, cut: ModuleCall) -> dict[str, ModuleCall]:
        """The calls replaced in :meth:`rest`: those that finished before the cut started and
        whose caller is the model or a call around the cut (so nothing above them is skipped)."""
        calls = self.record.calls
        around = set()
        parent = cut.parent
        while parent is not None:
            around.add(parent)
            parent = calls[parent].parent
        chosen: dict[str, ModuleCall] = {}
        for call in calls:
            if (
                call.end < cut.start
                and (call.parent is None or call.parent in around)
                and call.output is not None
                and call.output[0][:1] == (self.record.batch_size,)
                and self.record.count(call.name) == 1
            ):
                chosen[call.name] = call
        return chosen

    def features(self, inputs: torch.Tensor) -> torch.Tensor:
        """The output of the module at the cut for ``inputs`` (the forward stops there).

        Raises:
            CutError: The forward returned without calling the module at the cut.
        """

        def stop(module: nn.Module, args: object, output: torch.Tensor) -> None:
            raise _CutReached(output)

        handle = self._cut_module.register_forward_hook(stop)
        try:
            self.model(inputs)
        except _CutReached as reached:
            return reached.output
        finally:
            handle.remove()
        raise CutError(f"the forward returned without calling {self.cut_name!r}, the cut")

    def _placeholders_for(
        self, batch: int, device: torch.device, poisoned: bool
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        # The placeholder input and outputs are views of one buffer per dtype, reused from
        # batch to batch: their values are never read after the cut (find_cut checks that with
        # NaN-filled, fresh ones).
        if not poisoned and batch in self._buffers:
            return self._buffers[batch]
        shapes = {"": ((batch, *self._input_shape), self._input_dtype)}
        for name, call in self._placeholders.items():
            assert call.output is not None
            shapes[name] = ((batch, *call.output[0][1:]), call.output[1])
        views = {}
        for dtype in {dtype for _, dtype in shapes.values()}:
            sizes = [torch.Size(shape).numel() for shape, kind in shapes.values() if kind == dtype]
            flat = torch.empty(max(sizes), dtype=dtype, device=device)
            if poisoned:
                flat.fill_(float("nan") if dtype.is_floating_point else 0)
            for name, (shape, kind) in shapes.items():
                if kind == dtype:
                    views[name] = flat[: torch.Size(shape).numel()].view(shape)
        placeholders = (views.pop(""), views)
        if not poisoned:
            # a pass alternates between full batches and its smaller last one
            if len(self._buffers) >= 2:
                self._buffers.pop(next(iter(self._buffers)))
            self._buffers[batch] = placeholders
        return placeholders

    def rest(self, features: torch.Tensor, poisoned: bool = False) -> Any:
        """The model's output computed from the features at the cut.

        Args:
            features: Output of the module at the cut, batch first.
            poisoned: Fill the placeholders with NaN (used by the checks).
        """
        if self.copies_features:
            features = features.clone()
        dummy, outputs = self._placeholders_for(int(features.shape[0]), features.device, poisoned)
        replacements = {self._modules[name]: _returning(value) for name, value in outputs.items()}
        replacements[self._cut_module] = _returning(features)
        with _forwards_replaced(replacements):
            return self.model(dummy)


def outputs_equal(first: object, second: object) -> bool:
    """Whether two model outputs hold bit-identical tensors (and equal other leaves)."""
    left, right = tree_leaves(first), tree_leaves(second)
    if len(left) != len(right):
        return False
    for a, b in zip(left, right, strict=True):
        if isinstance(a, torch.Tensor) != isinstance(b, torch.Tensor):
            return False
        if isinstance(a, torch.Tensor):
            if a.shape != b.shape or a.dtype != b.dtype or not torch.equal(a, b):
                return False
        elif a != b:
            return False
    return True


def _has_nan(output: object) -> bool:
    return any(
        isinstance(leaf, torch.Tensor) and leaf.is_floating_point() and bool(leaf.isnan().any())
        for leaf in tree_leaves(output)
    )


def _why_not(prefix: FrozenPrefix, inputs: torch.Tensor, expected: object) -> str | None:
    features = prefix.features(inputs)
    kept = features.clone()
    try:
        rest = prefix.rest(features, poisoned=True)
    except Exception as error:  # the part after the cut cannot run without what came before
        return (
            f"the part after {prefix.cut_name!r} fails without the real values computed before "
            f"it ({type(error).__name__}: {error})"
        )
    prefix.copies_features = not torch.equal(features, kept)
    if outputs_equal(rest, expected):
        return None
    if _has_nan(rest):
        return (
            f"the part after {prefix.cut_name!r} reads a value computed before it other than "
            "that module's output (a skip connection or parallel branch across the cut)"
        )
    return (
        f"the output computed from the features at {prefix.cut_name!r} differs from the full "
        "forward (the part after the cut depends on something else computed before it, or the "
        "model is not deterministic in eval mode)"
    )


def find_cut(
    model: nn.Module,
    record: ForwardRecord,
    region: FrozenRegion,
    inputs: torch.Tensor,
    expected: object,
) -> FrozenPrefix:
    """The deepest cut of ``region`` whose two halves reproduce the full forward.

    Call in eval mode under ``torch.no_grad()``.

    Args:
        model: The network.
        record: The recorded forward of ``model(inputs)``.
        region: Its frozen region.
        inputs: The probe batch.
        expected: ``model(inputs)`` in eval mode.

    Raises:
        CutError: No candidate passes (the message gives the reason for the deepest one), or
            the probe output is not finite.
    """
    if _has_nan(expected):
        raise CutError("the model's output on the probe batch holds NaN; cannot check the cut")
    reasons = []
    for cut in region.candidates[:MAX_CUT_TRIES]:
        prefix = FrozenPrefix(model, record, region, cut, inputs)
        reason = _why_not(prefix, inputs, expected)
        if reason is None:
            return prefix
        reasons.append(reason)
    deepest = reasons[0] if reasons else "no module of the frozen region returns one tensor"
    raise CutError(
        f"the model cannot be cut below its trainable part with {region.num_frozen} frozen "
        f"groups: {deepest}. Supported are backbones whose groups run as a chain (nn.Sequential "
        "features, ResNet-style stages, EfficientNet-Lite blocks, timm/Hugging Face block lists "
        "with groups='auto'); use the model without the cache otherwise"
    )


@contextlib.contextmanager
def module_modes(model: nn.Module, training: bool) -> Iterator[None]:
    """``model.train(training)`` for the block, then every module's own mode back."""
    saved = {module: module.training for module in model.modules()}
    model.train(training)
    try:
        yield
    finally:
        for module, flag in saved.items():
            module.training = flag


def plan_cut(
    model: nn.Module, record: ForwardRecord, region: FrozenRegion, probe: torch.Tensor
) -> FrozenPrefix:
    """:func:`find_cut` on ``probe``, then a check that the prefix does not depend on the mode.

    The frozen region must already be held in inference mode (its modules in eval mode during
    training-mode forwards), as :class:`~dynft_torch.inference_region.InferenceRegion` does.

    Raises:
        CutError: No valid cut, or the prefix gives other features in training mode (something
            random or mode-dependent runs outside the modules of the region).
    """
    with torch.no_grad():
        with module_modes(model, False):
            plan = find_cut(model, record, region, probe, model(probe))
            features = plan.features(probe)
        with module_modes(model, True):
            for _ in range(2):
                if not torch.equal(plan.features(probe), features):
                    raise CutError(
                        f"the frozen part up to {plan.cut_name!r} gives other features in "
                        "training mode than in eval mode: something random or mode-dependent "
                        "runs outside its modules (functional dropout, a random transform); "
                        "the cache would change what it computes"
                    )
    return plan
