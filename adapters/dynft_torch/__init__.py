"""dynft_torch: validation-driven dynamic fine-tuning for PyTorch loops, Lightning and DDP.

Every decision is taken by [`dynft_core.UnfreezeScheduler`][dynft_core.UnfreezeScheduler] and
carried out by [`dynft_core.carry_out`][dynft_core.carry_out]; this package implements the
actions on a ``torch.nn.Module`` and its optimizer. The Lightning callback lives in
``dynft_torch.lightning`` (imported on demand, Lightning is optional).
"""

from .checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from .distributed import rewrap_ddp
from .feature_cache import FeatureCache
from .freezing import BatchNormFreezer, backbone_batchnorms
from .groups import BackboneGroup, resolve_groups
from .lr_schedulers import SUPPORTED_LR_SCHEDULERS, register_lr_scheduler
from .snapshot import WeightSnapshot
from .tuner import DynamicFineTuner

__all__ = [
    "SUPPORTED_LR_SCHEDULERS",
    "BackboneGroup",
    "BatchNormFreezer",
    "CheckpointError",
    "DynamicFineTuner",
    "FeatureCache",
    "WeightSnapshot",
    "backbone_batchnorms",
    "load_checkpoint",
    "register_lr_scheduler",
    "resolve_groups",
    "rewrap_ddp",
    "save_checkpoint",
]
