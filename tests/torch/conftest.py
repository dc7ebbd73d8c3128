"""One intra-op thread for the torch tests.

The models here are tiny: splitting their kernels over threads costs more than it saves, and on
a shared CPU the threads wait on each other (a scheduler test took 52 s with the default threads
next to other jobs, 9 s with one). One thread also makes results bit-identical between this
process and the worker processes the kill-and-resume tests start (they set one thread too), and
keeps forked children safe: a child forked after the parent ran an OpenMP team of several threads
deadlocks in its first parallel kernel (the team's threads do not exist in the child).
"""

from __future__ import annotations

import pytest
import torch

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _one_intra_op_thread():
    """Every test starts on one thread, whatever an earlier one (a study's configure) set."""
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(1)
