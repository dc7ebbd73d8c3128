"""dynft_torch: validation-driven dynamic fine-tuning for PyTorch loops, Lightning and DDP.

Every decision is taken by :class:`dynft_core.UnfreezeScheduler`; this package carries the
decisions out on a ``torch.nn.Module`` and its optimizer. The Lightning callback lives in
:mod:`dynft_torch.lightning` (imported on demand, Lightning is optional).
"""

from .feature_cache import FeatureCache
from .freezing import BatchNormFreezer, backbone_batchnorms
from .groups import BackboneGroup, resolve_groups
from .snapshot import WeightSnapshot
from .tuner import DynamicFineTuner

__all__ = [
    "BackboneGroup",
    "BatchNormFreezer",
    "DynamicFineTuner",
    "FeatureCache",
    "WeightSnapshot",
    "backbone_batchnorms",
    "resolve_groups",
]
