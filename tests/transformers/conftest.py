"""One intra-op thread for the tiny models: on a shared CPU more threads only wait on each
other, and the DDP workers (one thread each) then compute bit-identically to this process."""

from __future__ import annotations

import torch

torch.set_num_threads(1)
