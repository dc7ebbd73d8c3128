"""Recording the instances of a class that the code under test builds internally."""

from __future__ import annotations

import pytest


def record_instances(monkeypatch: pytest.MonkeyPatch, module: object, name: str) -> list:
    """Replace class ``module.name`` by a subclass that appends every new instance to the list
    returned, so a test can inspect the objects (an adapter's callback, its optimizer) that the
    code under test creates and keeps to itself."""
    instances: list = []
    original = getattr(module, name)

    class Recorded(original):  # type: ignore[misc, valid-type]
        def __init__(self, *args: object, **kwargs: object) -> None:
            super().__init__(*args, **kwargs)
            instances.append(self)

    monkeypatch.setattr(module, name, Recorded)
    return instances
