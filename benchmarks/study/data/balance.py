"""Class imbalance: the paper's two remedies (weighted sampling, Eq. 14 weights) as ONE correction.

The paper counters imbalance with a class-balanced sampler that guarantees "a representative
proportion of minority-class samples" per batch *and* the Eq. 14 loss weights
``w_i = N / (C * n_i)``. Each remedy alone already gives every class the same total weight in the
training objective; applying both multiplies the corrections (a class's weight becomes
proportional to ``1 / n_i``), which on long-tailed data trains classifiers that predict almost only
the rarest classes. Read together, the two remedies share one correction: the sampler draws class
``i`` with share ``q_i``, and Eq. 14 is computed on what the sampler delivers (``n_i / N`` replaced
by ``q_i``), ``w_i = 1 / (C * q_i)``, so that ``q_i * w_i = 1 / C`` for every class whatever the
sampler does. The default, ``tempered``, draws ``q_i ∝ sqrt(n_i)``: every batch holds minority
images (unlike natural shuffling) without equalising the classes, and the weights carry the rest.

Modes (:data:`BALANCE_MODES`), by the share of the training objective each class ends up with:

* ``tempered`` (default): sqrt-frequency sampler + Eq. 14 on the sampled shares -> ``1 / C``.
* ``sqrt``: the sqrt-frequency sampler alone, unweighted loss -> ``∝ sqrt(n_i)`` (half a
  correction: minority images in every batch, the classes not equalised).
* ``sampler``: class-balanced sampler, unweighted loss -> ``1 / C``.
* ``weights``: natural shuffled epochs, Eq. 14 weights -> ``1 / C``.
* ``both``: class-balanced sampler *and* Eq. 14 on the natural counts -> ``∝ 1 / n_i``
  (the corrections compound; kept to reproduce that reading).
* ``none``: natural shuffled epochs, unweighted loss -> ``n_i / N`` (no correction).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

BALANCE_MODES = ("tempered", "sqrt", "sampler", "weights", "both", "none")
# How the monitored validation loss averages its per-sample losses (see validation_loss).
VAL_LOSS_MODES = ("balanced", "plain")
DEFAULT_VAL_LOSS = "balanced"
DEFAULT_BALANCE = "tempered"
# q_i ∝ n_i ** TEMPERING in the tempered mode: 0 would equalise the classes, 1 keep them natural.
TEMPERING = 0.5


def _checked_labels(labels: np.ndarray, num_classes: int) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(
            f"labels must be a 1-D integer array, got shape {labels.shape} dtype {labels.dtype}"
        )
    if num_classes < 1:
        raise ValueError(f"num_classes must be at least 1, got {num_classes}")
    bad = labels[(labels < 0) | (labels >= num_classes)]
    if len(bad):
        raise ValueError(f"label {int(bad[0])} is out of range [0, {num_classes - 1}]")
    return labels


def class_weights(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Loss weights of Eq. 14, ``w_i = N / (C * n_i)``.

    ``N`` is the number of training labels and ``C`` is ``num_classes`` (all classes, present or
    not). A class with no training images gets weight 0: it contributes no loss terms anyway and
    an infinite weight would only poison mixed-precision arithmetic.

    Args:
        labels: Integer training labels in ``[0, num_classes)``.
        num_classes: Number of classes ``C``.

    Returns:
        float64 array ``(num_classes,)``.
    """
    labels = _checked_labels(labels, num_classes)
    counts = np.bincount(labels, minlength=num_classes).astype(float)
    return weights_for_shares(counts / len(labels), num_classes)


def weights_for_shares(shares: np.ndarray, num_classes: int) -> np.ndarray:
    """Eq. 14 on the class shares the loss sees: ``w_i = 1 / (C * q_i)``, 0 where ``q_i = 0``.

    With the natural shares ``q_i = n_i / N`` this is :func:`class_weights`; with a sampler's
    shares it is the correction the sampler left to do.
    """
    shares = np.asarray(shares, dtype=float)
    weights = np.zeros(num_classes)
    drawn = shares > 0
    weights[drawn] = 1.0 / (num_classes * shares[drawn])
    return weights


def sampling_shares(labels: np.ndarray, num_classes: int, tempering: float) -> np.ndarray:
    """Share of each class among the draws of a sampler with ``q_i ∝ n_i ** tempering``.

    Args:
        labels: Integer training labels in ``[0, num_classes)``.
        num_classes: Number of classes ``C``.
        tempering: 0 draws every present class equally (class-balanced), 1 keeps the natural
            frequencies; in between tempers them.

    Returns:
        float64 array ``(num_classes,)`` summing to 1; classes without images get 0.
    """
    if not 0.0 <= tempering <= 1.0:
        raise ValueError(f"tempering must lie in [0, 1], got {tempering!r}")
    labels = _checked_labels(labels, num_classes)
    counts = np.bincount(labels, minlength=num_classes).astype(float)
    strength = np.where(counts > 0, counts**tempering, 0.0)
    return strength / strength.sum()


def stratified_epoch(
    labels: np.ndarray, shares: np.ndarray, num_samples: int, rng: np.random.Generator
) -> np.ndarray:
    """Indices of one sampled epoch in which every class keeps its share in every stretch.

    Class ``i`` gets ``m_i = num_samples * shares[i]`` draws (largest remainder, so the epoch's
    composition is exact). Within a class, images are drawn in shuffled rounds, so a minority
    image recurs evenly instead of at random and a majority class shows a fresh subset each
    epoch. Each class's draws are then evenly spaced through the epoch (one random offset per
    class): consecutive draws of class ``i`` lie at most ``num_samples / m_i + C - 1`` positions
    apart, so a class drawn at least once per ``B - C + 1`` images appears in every batch of
    ``B``. This is the paper's "representative proportion of minority-class samples" per batch.

    Args:
        labels: Integer labels of the training images.
        shares: Share of each class among the draws (from :func:`sampling_shares`).
        num_samples: Number of indices to draw (usually the training set size).
        rng: NumPy generator that makes the epoch reproducible.

    Returns:
        int64 array ``(num_samples,)`` of positions into ``labels``.
    """
    labels = _checked_labels(labels, len(shares))
    if num_samples < 0:
        raise ValueError(f"num_samples must be >= 0, got {num_samples}")
    counts = np.bincount(labels, minlength=len(shares))
    if np.any((np.asarray(shares) > 0) & (counts == 0)):
        raise ValueError("shares give draws to a class without images")
    exact = num_samples * np.asarray(shares, dtype=float)
    draws = np.floor(exact).astype(int)
    draws[np.argsort(draws - exact, kind="stable")[: num_samples - draws.sum()]] += 1
    chosen, position = [], []
    for label in np.flatnonzero(draws):
        members = np.flatnonzero(labels == label)
        rounds = -(-draws[label] // len(members))
        picks = np.concatenate([rng.permutation(members) for _ in range(rounds)])
        chosen.append(picks[: draws[label]])
        # the k-th draw of the class sits at (k + u) / m: evenly spaced, offset u per class
        position.append((np.arange(draws[label]) + rng.random()) / draws[label])
    if not chosen:
        return np.zeros(0, dtype=np.int64)
    order = np.argsort(np.concatenate(position), kind="stable")
    return np.concatenate(chosen)[order].astype(np.int64)


@dataclass(frozen=True)
class BalancePlan:
    """How one training split is sampled and weighted under a ``--balance`` mode.

    Args:
        mode: One of :data:`BALANCE_MODES`.
        shares: Class shares the sampler draws, or ``None`` for natural shuffled epochs.
        weights: float32 loss weight per class.
        natural: Class shares of the training split itself.
    """

    mode: str
    shares: np.ndarray | None
    weights: np.ndarray
    natural: np.ndarray

    @property
    def objective_shares(self) -> np.ndarray:
        """Share of the training objective each class carries (drawn share x weight, sum 1)."""
        drawn = self.natural if self.shares is None else self.shares
        carried = drawn * self.weights
        return carried / carried.sum()


def balance_plan(mode: str, labels: np.ndarray, num_classes: int) -> BalancePlan:
    """The sampler shares and loss weights of ``mode`` for these training labels.

    Raises:
        ValueError: ``mode`` is not one of :data:`BALANCE_MODES`.
    """
    if mode not in BALANCE_MODES:
        raise ValueError(f"balance must be one of {BALANCE_MODES}, got {mode!r}")
    labels = _checked_labels(labels, num_classes)
    natural = np.bincount(labels, minlength=num_classes) / len(labels)
    shares: np.ndarray | None = None
    weights = np.ones(num_classes)
    if mode in ("tempered", "sqrt"):
        shares = sampling_shares(labels, num_classes, TEMPERING)
    if mode == "tempered":
        weights = weights_for_shares(shares, num_classes)
    elif mode in ("sampler", "both"):
        shares = sampling_shares(labels, num_classes, 0.0)
    if mode in ("weights", "both"):
        weights = class_weights(labels, num_classes)
    return BalancePlan(mode, shares, weights.astype(np.float32), natural)


def minority_mask(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Which classes count as minority: fewer images than the mean per class, ``n_i < N / C``.

    This is exactly the set with an Eq. 14 weight above 1, so augmentation and loss weighting
    agree on which classes are under-represented. For Table 1 of the paper it selects
    Tuberculosis, Pleural Effusion, Pneumothorax, Pulmonary Edema and Atelectasis. A class absent
    from ``labels`` counts as minority (it has nothing to augment either way).

    Args:
        labels: Integer training labels in ``[0, num_classes)``.
        num_classes: Number of classes ``C``.

    Returns:
        bool array ``(num_classes,)``, indexed by class.
    """
    labels = _checked_labels(labels, num_classes)
    counts = np.bincount(labels, minlength=num_classes)
    return counts * num_classes < len(labels)


def validation_loss(losses: np.ndarray, labels: np.ndarray, num_classes: int, mode: str) -> float:
    """The validation loss every strategy monitors: per-sample losses averaged by ``mode``.

    ``"balanced"`` (default) weighs each sample by Eq. 14 on the split's own counts, which is the
    mean over the classes present of each class's mean loss: the objective the training loss is
    balanced to, measured on held-out data. ``"plain"`` is the unweighted mean; on a split where
    one class holds most images, it ranks a model that leans to that class best even when its
    balanced accuracy is below chance, so it picked collapsed models on the COVID set.

    Raises:
        ValueError: Unknown ``mode``, or ``losses`` and ``labels`` of different lengths.
    """
    if mode not in VAL_LOSS_MODES:
        raise ValueError(f"validation loss mode must be one of {VAL_LOSS_MODES}, got {mode!r}")
    losses = np.asarray(losses, dtype=np.float64)
    labels = _checked_labels(labels, num_classes)
    if losses.shape != labels.shape:
        raise ValueError(f"{losses.shape[0]} losses for {labels.shape[0]} labels")
    if mode == "plain":
        return float(losses.mean())
    weights = class_weights(labels, num_classes)[labels]
    return float(np.sum(weights * losses) / np.sum(weights))
