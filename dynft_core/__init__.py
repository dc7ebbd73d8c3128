"""dynft_core: the framework-free decision logic of validation-driven dynamic fine-tuning.

Every decision of Algorithm 1 (Huynh & Truong) is taken here; the framework
adapters (``dynft_keras``, ``dynft_torch``) only carry them out.
"""

from .decision import Decision
from .plateau import PlateauMonitor
from .scheduler import UnfreezeScheduler

__all__ = ["Decision", "PlateauMonitor", "UnfreezeScheduler"]
__version__ = "0.1.0"
