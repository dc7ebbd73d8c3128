"""dynft_keras: dynamic fine-tuning inside a plain Keras 3 ``model.fit``.

Every decision comes from :class:`dynft_core.UnfreezeScheduler`; this package
only applies them to a Keras model, on the TensorFlow, torch and JAX backends.
"""

from .callback import DynamicFineTuning
from .feature_cache import FeatureCache
from .groups import resolve_groups
from .optimizer import ScaledSchedule
from .snapshot import WeightSnapshot, changeable_variables

__all__ = [
    "DynamicFineTuning",
    "FeatureCache",
    "ScaledSchedule",
    "WeightSnapshot",
    "changeable_variables",
    "resolve_groups",
]
