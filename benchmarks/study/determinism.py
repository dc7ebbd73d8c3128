"""What makes a study repeatable, and what the report says about it.

The same command on the same machine gives the same numbers: every source of randomness is
seeded from the run's seed, and the frameworks are told to use deterministic kernels with a fixed
number of threads. The runners apply the framework part (``configure``) once per process and
:func:`seed_everything` before every run; this module states the guarantee and its limits.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np

DETERMINISTIC = (
    "the patient-level split (seeded by the run's seed; the official split of a MedMNIST file "
    "is fixed)",
    "the phantom images (generator seed 0)",
    "the initial weights of the head and of a randomly initialised backbone (framework RNG "
    "seeded with the run's seed before the model is built)",
    "the sampler's epochs and the minority augmentation (a NumPy Generator per run, seeded "
    "with the run's seed)",
    "the arithmetic: deterministic framework kernels (see 'framework') with a fixed thread count",
    "every run on its own: it reseeds everything, so it does not depend on the runs before it",
)
NOT_DETERMINISTIC = (
    "wall times and load times (they depend on the machine's load)",
    "results on another machine, CPU type, thread count (--threads) or library version: "
    "floating-point reductions may be ordered differently",
    "with --threads unset the framework picks its thread count from the machine",
    "on a GPU, torch kernels without a deterministic implementation only warn "
    "(torch.use_deterministic_algorithms(warn_only=True))",
)


def seed_everything(seed: int) -> None:
    """Seed Python's and NumPy's global generators (third-party code may draw from them)."""
    random.seed(seed)
    np.random.seed(seed)


def statement(framework_settings: dict[str, Any]) -> dict[str, Any]:
    """The determinism section of ``results.json``: what is and is not repeatable.

    Args:
        framework_settings: What the runner's ``configure`` applied (kernels, threads, device).
    """
    return {
        "deterministic": list(DETERMINISTIC),
        "not_deterministic": list(NOT_DETERMINISTIC),
        "framework": framework_settings,
    }
