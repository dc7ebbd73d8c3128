"""dynft_keras: dynamic fine-tuning inside a plain Keras 3 ``model.fit``.

Every decision comes from ``dynft_core``; this package only carries them out on a
Keras model, on the TensorFlow, torch and JAX backends.
"""

from .backbone import Backbone, as_backbone
from .callback import DynamicFineTuning
from .feature_cache import FeatureCache
from .groups import resolve_groups
from .optimizer import FineTuningOptimizer
from .rates import GroupRate
from .snapshot import WeightSnapshot, changeable_variables

__all__ = [
    "Backbone",
    "DynamicFineTuning",
    "FeatureCache",
    "FineTuningOptimizer",
    "GroupRate",
    "WeightSnapshot",
    "as_backbone",
    "changeable_variables",
    "resolve_groups",
]
