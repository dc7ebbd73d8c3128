"""One intra-op thread for the torch tests.

The models here are tiny: splitting their kernels over threads costs more than it saves, and on
a shared CPU the threads wait on each other (a scheduler test took 52 s with the default threads
next to other jobs, 9 s with one). One thread also makes results bit-identical between this
process and the worker processes the kill-and-resume tests start (they set one thread too).
"""

from __future__ import annotations

import torch

torch.set_num_threads(1)
