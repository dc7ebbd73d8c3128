"""Fixtures of the PyTorch study tests."""

from __future__ import annotations

import pytest
from study_helpers import register_tiny_backbone


@pytest.fixture
def tiny_backbone() -> str:
    """The name of the tiny registered backbone (two convolutions with BatchNorm)."""
    return register_tiny_backbone()
