"""The immutable record of what the scheduler decided after one epoch."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any


@dataclass(frozen=True)
class Decision:
    """What a framework adapter must do after the epoch that was just validated.

    Adapters do not apply the fields themselves: [`carry_out()`][dynft_core.carry_out] calls their
    actions in the one order that is right: snapshot if ``improved``, make the
    ``newly_unfrozen`` groups trainable, multiply the learning rate by ``lr_factor``, load the
    best snapshot if ``restore_best``, end training if ``stop``.

    Attributes:
        epoch: 1-based index of the epoch just finished (for a decision of
            [`finish()`][dynft_core.UnfreezeScheduler.finish], the last epoch stepped).
        value: The monitored value passed to ``step`` as a ``float`` (may be
            NaN). Not compared by ``==``; ``reason`` carries it.
        improved: The value is a new best; the caller must snapshot the model now.
        num_unfrozen: Number of unfrozen backbone groups (``m``) after this step.
        newly_unfrozen: Group indices unfrozen by this step (empty if none),
            in ascending order.
        trainable_groups: Indices of the ``m`` deepest groups, ascending.
        lr_factor: Multiply the current learning rate by this now: ``1.0``, or
            ``1 - decay`` at an unfreeze.
        restore_best: Load the best snapshot now (at an unfreeze, after a non-finite value,
            and at the end of training, whenever a best value exists).
        stop: Training is over.
        reason: A short human sentence explaining the decision.
        diverged: The value was not finite: the weights (and optimizer state) of this epoch
            must not be trusted; a restore then also clears non-finite optimizer state.
        external_stop: The decision closes a run that something else ended
            ([`finish()`][dynft_core.UnfreezeScheduler.finish]); no epoch was counted for it.
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
    diverged: bool = False
    external_stop: bool = False

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
    def from_dict(cls, data: Mapping[str, Any]) -> Decision:
        """Inverse of ``to_dict()``; every field is type-checked.

        Raises:
            ValueError: ``data`` is not a mapping, lacks a field, has an unknown one, or a field
                has the wrong type (the message names it).
        """
        if not isinstance(data, Mapping):
            raise ValueError(f"a decision must be a dict, got {type(data).__name__}")
        expected = {f.name for f in fields(cls)}
        missing = sorted(expected - set(data))
        unknown = sorted(set(data) - expected)
        if missing or unknown:
            raise ValueError(f"decision fields missing {missing}, unknown {unknown}")
        value = data["value"]
        if value is not None and not _is_real(value):
            raise ValueError(f"decision field 'value' must be a number or null, got {value!r}")
        return cls(
            epoch=_integer(data, "epoch"),
            value=math.nan if value is None else float(value),
            improved=_boolean(data, "improved"),
            num_unfrozen=_integer(data, "num_unfrozen"),
            newly_unfrozen=_indices(data, "newly_unfrozen"),
            trainable_groups=_indices(data, "trainable_groups"),
            lr_factor=_real(data, "lr_factor"),
            restore_best=_boolean(data, "restore_best"),
            stop=_boolean(data, "stop"),
            reason=_text(data, "reason"),
            diverged=_boolean(data, "diverged"),
            external_stop=_boolean(data, "external_stop"),
        )


def _finite_or_none(value: float) -> float | None:
    return value if math.isfinite(value) else None


def _is_real(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _integer(data: Mapping[str, Any], key: str) -> int:
    value = data[key]
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError(f"decision field {key!r} must be an integer >= 0, got {value!r}")
    return value


def _boolean(data: Mapping[str, Any], key: str) -> bool:
    value = data[key]
    if not isinstance(value, bool):
        raise ValueError(f"decision field {key!r} must be true or false, got {value!r}")
    return value


def _real(data: Mapping[str, Any], key: str) -> float:
    value = data[key]
    if not _is_real(value) or not math.isfinite(value):
        raise ValueError(f"decision field {key!r} must be a finite number, got {value!r}")
    return float(value)


def _text(data: Mapping[str, Any], key: str) -> str:
    value = data[key]
    if not isinstance(value, str):
        raise ValueError(f"decision field {key!r} must be a string, got {value!r}")
    return value


def _indices(data: Mapping[str, Any], key: str) -> tuple[int, ...]:
    value = data[key]
    if not isinstance(value, (list, tuple)) or not all(
        isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in value
    ):
        raise ValueError(f"decision field {key!r} must be a list of group indices, got {value!r}")
    return tuple(value)
