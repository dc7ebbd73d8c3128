"""Where the cached features of :class:`~dynft_torch.feature_cache.FeatureCache` are kept.

Host memory by default (pinned when the model is on an accelerator, so that copies back run
asynchronously), optionally in a lower precision, optionally in a memory-mapped file. The
accelerator is used only when asked for and when the policy finds that the whole set fits
(:meth:`dynft_core.feature_cache.FeatureCachePolicy.fits_on_accelerator`).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch

STORAGES = ("host", "auto")


def free_accelerator_bytes(device: torch.device) -> int:
    """Free memory of ``device`` (0 for the CPU)."""
    return int(torch.cuda.mem_get_info(device)[0]) if device.type == "cuda" else 0


def tensor_bytes(value: object) -> int:
    """Bytes held by the tensors in ``value`` (a tensor or a tuple of items)."""
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, (tuple, list)):
        return sum(tensor_bytes(item) for item in value)
    return 0


class FeatureStore:
    """Batches of features (and the other items of each batch), in the order they came.

    Args:
        dtype: Storage dtype (``None`` keeps the features' own).
        directory: Folder for a memory-mapped file holding the features (deleted by
            :meth:`clear`); ``None`` keeps them in memory.
        device: Where in-memory features live (the CPU or the model's accelerator).
        pin: Pin in-memory CPU copies (for asynchronous copies to an accelerator).
    """

    def __init__(
        self,
        dtype: torch.dtype | None,
        directory: Path | None,
        device: torch.device,
        pin: bool,
    ) -> None:
        self.dtype = dtype
        self.directory = directory
        self.device = device
        self.pin = pin and device.type == "cpu" and directory is None
        self.features: list[torch.Tensor] = []
        self.others: list[tuple[object, ...]] = []
        self.nbytes = 0
        self._file: Path | None = None
        self._handle: object | None = None
        self._shapes: list[tuple[torch.Size, torch.dtype]] = []

    def __len__(self) -> int:
        return len(self.others)

    def append(self, features: torch.Tensor, others: tuple[object, ...]) -> None:
        """Keep a copy of one batch: features in the storage dtype, other tensors on the CPU."""
        # Copies made under torch.inference_mode() would be inference tensors, which a later
        # training pass could not use.
        with torch.inference_mode(False):
            self._append(features, others)

    def _append(self, features: torch.Tensor, others: tuple[object, ...]) -> None:
        dtype = self.dtype or features.dtype
        kept_others = tuple(
            item.detach().to("cpu", copy=True) if isinstance(item, torch.Tensor) else item
            for item in others
        )
        self.others.append(kept_others)
        self.nbytes += tensor_bytes(kept_others) + features.numel() * dtype.itemsize
        if self.directory is not None:
            self._write(features.detach().to("cpu", dtype=dtype).contiguous())
            return
        if self.pin:
            copy = torch.empty(features.shape, dtype=dtype, pin_memory=True)
            copy.copy_(features.detach())
        else:
            copy = features.detach().to(self.device, dtype=dtype, copy=True)
        self.features.append(copy)

    def _write(self, features: torch.Tensor) -> None:
        if self._handle is None:
            descriptor, name = tempfile.mkstemp(suffix=".features", dir=self.directory)
            self._file = Path(name)
            self._handle = os.fdopen(descriptor, "wb")
        self._handle.write(features.reshape(-1).view(torch.uint8).numpy().tobytes())  # type: ignore[attr-defined]
        self._shapes.append((features.shape, features.dtype))

    def finish(self) -> None:
        """All batches are in: map the file (if any) for reading."""
        if self._handle is None:
            return
        self._handle.close()  # type: ignore[attr-defined]
        self._handle = None
        assert self._file is not None
        dtype = self._shapes[0][1]
        total = sum(shape.numel() for shape, _ in self._shapes)
        flat = torch.from_file(str(self._file), shared=False, size=total, dtype=dtype)
        offset = 0
        for shape, _ in self._shapes:
            self.features.append(flat[offset : offset + shape.numel()].view(shape))
            offset += shape.numel()

    def clear(self) -> None:
        """Drop every batch (and delete the memory-mapped file)."""
        if self._handle is not None:
            self._handle.close()  # type: ignore[attr-defined]
            self._handle = None
        self.features, self.others, self._shapes = [], [], []
        self.nbytes = 0
        if self._file is not None:
            self._file.unlink(missing_ok=True)
            self._file = None
