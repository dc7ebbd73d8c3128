"""Holding the frozen region of a model in inference mode while the tuner unfreezes groups.

Frozen means inference mode: every module that runs entirely inside the frozen region (see
:mod:`dynft_torch.frozen_region`) gets a forward pre-hook, like the BatchNorm ones, that puts it
in eval mode right before it runs, so dropout and stochastic depth are off there whatever
``model.train()`` did, in a cached pass as in a plain ``model(x)``. The hooks read the tuner's
``num_unfrozen`` on every call: as soon as groups are unfrozen, their modules are released (back
to the mode the model's own ``train()``/``eval()`` gives them) and train normally again.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence

from torch import nn
from torch.utils.hooks import RemovableHandle

from .frozen_prefix import module_modes
from .frozen_region import CutError, ForwardRecord, frozen_region
from .groups import BackboneGroup


class InferenceRegion:
    """Keeps the modules of the current frozen region in eval mode.

    Args:
        model: The network.
        record: A recorded forward of it.
        groups: The tuner's groups.
        num_frozen: Returns how many groups are frozen now.

    Raises:
        CutError: The frozen groups of now are not a prefix of the forward.
    """

    def __init__(
        self,
        model: nn.Module,
        record: ForwardRecord,
        groups: Sequence[BackboneGroup],
        num_frozen: Callable[[], int],
    ) -> None:
        self.model, self.record, self.groups, self.num_frozen = model, record, groups, num_frozen
        self.modules: frozenset[str] = frozenset()
        self._for = num_frozen()
        if self._for:
            self.modules = frozen_region(model, record, groups, self._for).inference_modules
        named = dict(model.named_modules())
        # The region only shrinks (groups are unfrozen, never frozen again): hooking the
        # modules of the first region covers every later one.
        self._handles: list[RemovableHandle] = [
            named[name].register_forward_pre_hook(self._hook(name)) for name in sorted(self.modules)
        ]

    def _hook(self, name: str) -> Callable[[nn.Module, object], None]:
        def hook(module: nn.Module, args: object) -> None:
            self.sync()
            if module.training and name in self.modules:
                module.training = False

        return hook

    def sync(self) -> None:
        """Follow the tuner: release the modules of groups unfrozen since the last call."""
        num_frozen = self.num_frozen()
        if num_frozen == self._for:
            return
        released = self.modules
        self.modules = frozenset()
        if num_frozen:
            with contextlib.suppress(CutError):  # the cache reports it when it plans its cut
                region = frozen_region(self.model, self.record, self.groups, num_frozen)
                self.modules = region.inference_modules
        freed = released - self.modules
        if freed:
            # A released module takes the mode the model's own train()/eval() gives it (a model
            # whose train() keeps its backbone in eval mode keeps it there), which the hooks
            # had overridden; every other module keeps its current mode.
            with module_modes(self.model, self.model.training):
                named = dict(self.model.named_modules())
                natural = {name: named[name].training for name in freed}
            for name, training in natural.items():
                named[name].training = training
        self._for = num_frozen

    def remove(self) -> None:
        """Stop holding the region in eval mode (the modules keep their current mode)."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self.modules = frozenset()
