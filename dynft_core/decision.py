"""The immutable record of what the scheduler decided after one epoch."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any


@dataclass(frozen=True)
class Decision:
    """What a framework adapter must do after the epoch that was just validated.

    Adapters apply the fields in this order: snapshot if ``improved``, make the
    ``newly_unfrozen`` groups trainable, multiply the learning rate by
    ``lr_factor``, load the best snapshot if ``restore_best``, end training if
    ``stop``.

    Attributes:
        epoch: 1-based index of the epoch just finished.
        value: The monitored value passed to ``step`` as a ``float`` (may be
            NaN). Not compared by ``==``; ``reason`` carries it.
        improved: The value is a new best; the caller must snapshot the model now.
        num_unfrozen: Number of unfrozen backbone groups (``m``) after this step.
        newly_unfrozen: Group indices unfrozen by this step (empty if none),
            in ascending order.
        trainable_groups: Indices of the ``m`` deepest groups, ascending.
        lr_factor: Multiply the current learning rate by this now: ``1.0``, or
            ``1 - decay`` at an unfreeze.
        restore_best: Load the best snapshot now (at an unfreeze and at stop,
            whenever a best value exists).
        stop: Training is over.
        reason: A short human sentence explaining the decision.
    """

    epoch: int
    value: float = field(compare=False)
    improved: bool
    num_unfrozen: int
    newly_unfrozen: tuple[int, ...]
    trainable_groups: tuple[int, ...]
    lr_factor: float
    restore_best: bool
    stop: bool
    reason: str

    @property
    def unfroze(self) -> bool:
        """Whether this step unfroze at least one group."""
        return bool(self.newly_unfrozen)

    def to_dict(self) -> dict[str, Any]:
        """JSON-plain form (tuples become lists, NaN/inf become ``None``)."""
        # dataclasses.asdict deep-copies every field; that made state_dict() cost ~20 µs per epoch
        data = {f.name: getattr(self, f.name) for f in fields(self)}
        data["newly_unfrozen"] = list(self.newly_unfrozen)
        data["trainable_groups"] = list(self.trainable_groups)
        data["value"] = _finite_or_none(self.value)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Decision:
        """Inverse of ``to_dict()``."""
        value = data["value"]
        return cls(
            epoch=int(data["epoch"]),
            value=float("nan") if value is None else float(value),
            improved=bool(data["improved"]),
            num_unfrozen=int(data["num_unfrozen"]),
            newly_unfrozen=tuple(int(i) for i in data["newly_unfrozen"]),
            trainable_groups=tuple(int(i) for i in data["trainable_groups"]),
            lr_factor=float(data["lr_factor"]),
            restore_best=bool(data["restore_best"]),
            stop=bool(data["stop"]),
            reason=str(data["reason"]),
        )


def _finite_or_none(value: float) -> float | None:
    return value if value == value and value not in (float("inf"), float("-inf")) else None
