"""dynft_core: the framework-free decision logic of validation-driven dynamic fine-tuning.

Every decision of Algorithm 1 (Huynh & Truong) is taken here, and
[`carry_out()`][dynft_core.carry_out] fixes the order in which an adapter carries it out; the
framework adapters (``dynft_keras``, ``dynft_torch``) only implement the
[`FineTuningActions`][dynft_core.FineTuningActions].
"""

from .config import FineTuneConfig
from .decision import Decision
from .plateau import PlateauMonitor, resolve_mode
from .protocol import FineTuningActions, ResumeMismatchError, carry_out, check_resume_point
from .scheduler import UnfreezeScheduler

__all__ = [
    "Decision",
    "FineTuneConfig",
    "FineTuningActions",
    "PlateauMonitor",
    "ResumeMismatchError",
    "UnfreezeScheduler",
    "carry_out",
    "check_resume_point",
    "resolve_mode",
]
__version__ = "0.2.0"
