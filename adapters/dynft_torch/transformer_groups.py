"""Default groups (``groups="auto"``) of Hugging Face ``transformers`` models and timm models.

Hugging Face models are split by their structure, the same rule for every family:

* The *base model* (``model.base_model``: ``model.vit``, ``model.bert`` ...) is the backbone.
  Everything of the task model outside it (``classifier``, ``score``, ``pre_classifier``,
  ``cls_classifier`` ...) is the head and stays trainable, and so does a ``pooler`` of the base
  model that owns parameters: BERT's pooler (dense + tanh on the first token) exists only to feed
  the sequence classifier and is fine-tuned with it.
* The *block list* is the ``nn.ModuleList`` of the base model (not inside another
  ``ModuleList``) holding the most parameters, at least four times as many as any other such
  list (``encoder.layer`` in BERT, ``layers`` in ViT/DeiT, ``encoder.layers`` in Swin,
  ``encoder.stages`` in ConvNeXt/ResNet). Each entry is one group, except a *stage*: an entry
  with exactly one direct child that is a list of same-type composite blocks (Swin's ``blocks``,
  ConvNeXt's and ResNet's ``layers``) gives one group per block, and the stage's other children
  go with the block next to them in registration order (ConvNeXt's ``downsampling_layer`` with
  the stage's first block, Swin's ``downsample`` patch merging with its last).
* Along the path from the base model down to the block list, the children registered before
  the path (``embeddings``, ``embedder``) and parameters owned directly by a module on the path
  form the shallowest group; the children registered after it (the final ``layernorm``) join the
  deepest block.

A Hugging Face model whose block list cannot be found this way (no ``ModuleList``, or several
of comparable size as in encoder-decoder and two-tower models) is refused with an error asking
for explicit groups; so is an auto split of a module that merely *contains* a Hugging Face
model, where the head cannot be told apart.

timm models (also inside ``transformers``' ``TimmWrapper`` models) use timm's own fine
``group_matcher`` (``dynft_torch.auto_groups.timm_parameter_groups``); a final group made
only of normalization layers (ViT's ``fc_norm``, ConvNeXt's ``head.norm``) joins the deepest
block.

Tied weights (an LM head's decoder sharing the word embeddings) are one parameter: it belongs
to the embeddings group, so the tied decoder is frozen and unfrozen with it.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from torch import nn

from .auto_groups import _join, _owns_parameters, _submodule, timm_parameter_groups

# (module names, parameter names) of one group, the form resolve_groups validates.
ParameterGroup = tuple[tuple[str, ...], list[str]]


def pretrained_model_groups(root: nn.Module, root_name: str) -> list[ParameterGroup] | None:
    """Groups of a Hugging Face or timm model, or ``None`` for any other module.

    Args:
        root: The backbone module (or the whole model).
        root_name: Its name inside the model (``""`` for the model itself).

    Returns:
        Per group, shallowest first: the modules that lie wholly inside it (for labels and
        BatchNorm lookup) and the names, in the whole model, of its parameters. Head
        parameters are in no group.

    Raises:
        ValueError: ``root`` is a Hugging Face model whose encoder blocks cannot be found, or
            a module that contains a Hugging Face model without being one.
    """
    pretrained_class = _hugging_face_model_class()
    if pretrained_class is not None and isinstance(root, pretrained_class):
        base = root.base_model
        assert isinstance(base, nn.Module)
        base_name = next(
            _join(root_name, name) if name else root_name
            for name, module in root.named_modules()
            if module is base
        )
        timm_groups = _timm_groups(base, base_name)
        if timm_groups is not None:
            return timm_groups
        return _with_covering_modules(base, base_name, _hugging_face_groups(base, base_name))
    timm_groups = _timm_groups(root, root_name)
    if timm_groups is not None:
        return timm_groups
    if pretrained_class is not None:
        _refuse_nested_model(root, root_name, pretrained_class)
    return None


def _hugging_face_model_class() -> type | None:
    # A model can only be a transformers model if transformers is already imported; looking
    # it up in sys.modules keeps the (slow) import out of every other run.
    transformers = sys.modules.get("transformers")
    return None if transformers is None else transformers.PreTrainedModel


def _refuse_nested_model(root: nn.Module, root_name: str, pretrained_class: type) -> None:
    for name, module in root.named_modules():
        if name and isinstance(module, pretrained_class):
            full = _join(root_name, name)
            raise ValueError(
                f"{type(root).__name__} contains the Hugging Face model "
                f"{type(module).__name__} at {full!r}: pass backbone={full!r} so that "
                "groups='auto' splits that model and leaves the rest trainable as the head, "
                "or pass groups= explicitly"
            )


def _timm_groups(root: nn.Module, root_name: str) -> list[ParameterGroup] | None:
    groups = timm_parameter_groups(root, root_name)
    if groups is None:
        return None
    if len(groups) > 1 and _only_normalization(root, root_name, groups[-1]):
        groups[-2].extend(groups.pop())
    return _with_covering_modules(root, root_name, groups)


def _only_normalization(root: nn.Module, root_name: str, parameter_names: list[str]) -> bool:
    # Libraries define their own norm classes (timm's LayerNorm2d and RmsNorm, transformers'
    # ConvNextLayerNorm) without a common base class; their names say what they are.
    return all(
        "Norm" in type(_submodule(root, root_name, name.rpartition(".")[0])).__name__
        for name in parameter_names
    )


def _unknown_architecture(base: nn.Module, reason: str) -> ValueError:
    model_type = getattr(getattr(base, "config", None), "model_type", "?")
    return ValueError(
        f"groups='auto' cannot split the Hugging Face model {type(base).__name__} "
        f"(model_type {model_type!r}) into blocks: {reason}. Pass groups= explicitly: a list "
        "of modules or module names ordered from the input to the head, e.g. "
        "[model.bert.embeddings, *model.bert.encoder.layer]"
    )


def _block_list_name(base: nn.Module) -> str:
    """Name, inside ``base``, of the ``ModuleList`` of encoder blocks or stages."""
    candidates: dict[str, int] = {}
    lists: list[str] = []
    for name, module in base.named_modules():
        if not isinstance(module, nn.ModuleList):
            continue
        if any(name.startswith(outer + ".") for outer in lists):
            continue
        lists.append(name)
        size = sum(p.numel() for p in module.parameters())
        if size:
            candidates[name] = size
    if not candidates:
        raise _unknown_architecture(base, "it has no ModuleList of blocks")
    largest = max(candidates, key=candidates.__getitem__)
    # A second list of comparable size means two towers (encoder and decoder, text and
    # vision): no single input-to-head order of blocks exists.
    rivals = [
        n for n, size in candidates.items() if n != largest and 4 * size >= candidates[largest]
    ]
    if rivals:
        raise _unknown_architecture(
            base, f"it has several block lists of comparable size ({sorted([largest, *rivals])})"
        )
    return largest


def _hugging_face_groups(base: nn.Module, base_name: str) -> list[list[str]]:
    names = _canonical_names(base, base_name)
    blocks_path = _block_list_name(base)
    shallow: list[str] = []
    deep: list[str] = []
    container = base
    for depth, step in enumerate(blocks_path.split(".")):
        shallow += [names[id(p)] for p in container.parameters(recurse=False)]
        after_path = False
        deep_here: list[str] = []
        for child_name, child in container.named_children():
            if child_name == step:
                after_path = True
            elif _owns_parameters(child) and not (depth == 0 and child_name == "pooler"):
                side = deep_here if after_path else shallow
                side.extend(names[id(p)] for p in child.parameters())
        # The modules after the path run after the blocks, innermost level first.
        deep = deep_here + deep
        container = getattr(container, step)
    groups = _block_groups(container, names)
    if not groups:
        raise _unknown_architecture(base, f"its block list {blocks_path!r} owns no parameters")
    if shallow:
        groups.insert(0, shallow)
    groups[-1] += deep
    return groups


def _canonical_names(root: nn.Module, root_name: str) -> dict[int, str]:
    """Parameter id -> its name in ``named_parameters()`` (a tied parameter has one name)."""
    return {id(p): name for name, p in root.named_parameters(prefix=root_name)}


def _block_groups(block_list: nn.Module, names: dict[int, str]) -> list[list[str]]:
    groups: list[list[str]] = []
    for entry in block_list.children():
        if not _owns_parameters(entry):
            continue
        inner_name = _inner_block_list_name(entry)
        if inner_name is None:
            groups.append([names[id(p)] for p in entry.parameters()])
            continue
        stage_groups = [
            [names[id(p)] for p in block.parameters()]
            for block in getattr(entry, inner_name).children()
            if _owns_parameters(block)
        ]
        before = [names[id(p)] for p in entry.parameters(recurse=False)]
        after: list[str] = []
        passed = False
        for child_name, child in entry.named_children():
            if child_name == inner_name:
                passed = True
            else:
                (after if passed else before).extend(names[id(p)] for p in child.parameters())
        stage_groups[0][:0] = before
        stage_groups[-1] += after
        groups += stage_groups
    return groups


def _inner_block_list_name(stage: nn.Module) -> str | None:
    """The one direct child of ``stage`` that lists same-type composite blocks, if any."""
    found = [
        name
        for name, child in stage.named_children()
        if isinstance(child, (nn.ModuleList, nn.Sequential)) and _lists_blocks(child)
    ]
    return found[0] if len(found) == 1 else None


def _lists_blocks(container: nn.Module) -> bool:
    entries = list(container.children())
    return (
        bool(entries)
        and _owns_parameters(container)
        and len({type(entry) for entry in entries}) == 1
        and all(any(True for _ in entry.children()) for entry in entries)
    )


def _with_covering_modules(
    root: nn.Module, root_name: str, groups: Sequence[list[str]]
) -> list[ParameterGroup]:
    names = _canonical_names(root, root_name)
    return [
        (tuple(_covering_modules(root, root_name, set(group), names)), group) for group in groups
    ]


def _covering_modules(
    module: nn.Module, name: str, group: set[str], names: dict[int, str]
) -> list[str]:
    """The outermost submodules of ``module`` whose parameters all lie in ``group``.

    ``module`` itself is never listed: its own parameters (a CLS token) have no module that
    holds only them, and listing the root would claim every BatchNorm below it.
    """
    covering: list[str] = []
    for child_name, child in module.named_children():
        inside = [names[id(p)] in group for p in child.parameters()]
        if not any(inside):
            continue
        full = _join(name, child_name)
        if all(inside):
            covering.append(full)
        else:
            covering += _covering_modules(child, full, group, names)
    return covering
