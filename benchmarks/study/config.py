"""The settings of one study (:class:`StudyConfig`) and the error a bad setting raises."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from benchmarks.study.data.balance import DEFAULT_BALANCE, DEFAULT_VAL_LOSS


class StudyConfigError(ValueError):
    """A study setting is invalid (the message names the value and what is allowed)."""


def positive_number(text: str) -> float | None:
    """``text`` as a finite number > 0 (a rate, a ratio), or ``None`` when it is not one."""
    try:
        value = float(text)
    except ValueError:
        return None
    return value if 0 < value < float("inf") else None


# The fine-tuning strategies the study compares (see benchmarks.study.runners.strategies), in
# report order: the three fixed-depth baselines around the paper's, the staged ones last.
STRATEGIES = ("linear_probe", "full", "traditional", "two_stage", "dynamic", "dynamic_tuned")
# What a study runs unless told otherwise: dynamic_tuned only differs from dynamic at an
# unfrozen-group rate ratio other than 1, which a sweep or --unfrozen-lr-ratio chooses.
DEFAULT_STRATEGIES = STRATEGIES[:-1]


@dataclass(frozen=True)
class StudyConfig:
    """Every setting of one study; a preset fills it, CLI flags override fields.

    Args:
        framework: ``"torch"`` or ``"keras"``. Defaults to ``"torch"``.
        data: Data source for ``benchmarks.study.data.sources.load_dataset``. Defaults to
            ``"phantom"``.
        backbones: Backbone names. Defaults to ``("efficientnet_lite0",)``.
        strategies: Any subset of :data:`STRATEGIES`. Defaults to
            :data:`DEFAULT_STRATEGIES` (all but ``dynamic_tuned``).
        image_size: Square input size in pixels; ``None`` means each backbone's
            native size. Defaults to 64.
        epochs: Epoch budget ``n`` shared by every strategy. Defaults to 12.
        seeds: One run per seed (seed fixes split, sampling and init). Defaults to ``(0,)``.
        weights: ``"imagenet"``, ``"none"`` or a weights file path. Defaults to ``"imagenet"``.
        batch_size: Mini-batch size of every strategy. Defaults to 32.
        lr: Initial learning rate of Adam of every strategy not in ``strategy_lr``. Defaults
            to 1e-3, at which the zero head converges within a few epochs, so that the staged
            strategies reach a plateau and unfreeze inside the quick preset's 12 epochs.
        strategy_lr: Per-strategy overrides of ``lr``, e.g. ``{"full": 1e-4}``: all layers
            trained from the first step want a lower rate than a zero head, as the unfrozen
            stage of ``two_stage`` gets. A swept ``lr`` replaces them. Defaults to none.
        patience: ``p``: the plateau patience of the staged strategies and the early-stopping
            patience of the fixed-depth ones. Defaults to 2.
        step: ``k``: groups unfrozen per plateau (dynamic). Defaults to 3.
        decay: Learning-rate decay per unfreeze (dynamic). Defaults to 0.1.
        unfrozen_lr_ratio: Rate of the unfrozen backbone groups relative to the head's
            (``FineTuneConfig.unfrozen_lr_ratio``), for ``two_stage`` and ``dynamic_tuned``;
            ``dynamic`` is Algorithm 1 and always runs at 1. Defaults to 1.0.
        top_n: Per-backbone overrides of the traditional top-n. Defaults to none.
        phantom_images: Number of phantom images (``data="phantom"`` only). Defaults to 600.
        phantom_size: Side of the generated phantom images. Defaults to 96.
        balance: Class-imbalance handling, one of
            ``benchmarks.study.data.balance.BALANCE_MODES``. Defaults to ``"tempered"``: a
            sqrt-frequency sampler with Eq. 14 computed on the sampled shares, one correction.
        val_loss: How the monitored validation loss (plateaus, best weights, early stopping, the
            sweep) averages, one of ``benchmarks.study.data.balance.VAL_LOSS_MODES``. Defaults
            to ``"balanced"``: Eq. 14 on the validation split's counts, each class counting
            alike; ``"plain"`` is the unweighted mean.
        drop_classes: Class names whose images are left out before the split (a class too
            small to learn or to measure; reported). Defaults to none.
        sweep: Settings swept per strategy on the validation split before the runs, e.g.
            ``{"lr": (1e-4, 3e-4, 1e-3)}`` (see ``benchmarks.study.sweep``); empty (the
            default) runs every strategy with the values above.
        threads: Intra-op CPU threads of the framework; ``None`` keeps its
            default. Defaults to 1: on a shared 2-core CPU one thread trained
            EfficientNet-Lite0 3-6x faster than two (spinning threads contend).
        feature_cache: ``"auto"`` (default): the frozen part of the backbone is computed once
            per trainable set and served to the validation pass and the un-augmented training
            samples (see ``benchmarks.study.runners.feature_cache_runs``); ``"off"``: every
            forward runs in full.
        feature_cache_max_gb: Memory limit of a run's feature caches together, in GiB;
            ``None`` (default): half of the memory available when the run starts. Over it,
            the frozen part is recomputed (one warning).
    """

    framework: str = "torch"
    data: str = "phantom"
    backbones: tuple[str, ...] = ("efficientnet_lite0",)
    strategies: tuple[str, ...] = DEFAULT_STRATEGIES
    image_size: int | None = 64
    epochs: int = 12
    seeds: tuple[int, ...] = (0,)
    weights: str = "imagenet"
    batch_size: int = 32
    lr: float = 1e-3
    strategy_lr: dict[str, float] = field(default_factory=dict)
    patience: int = 2
    step: int = 3
    decay: float = 0.1
    unfrozen_lr_ratio: float = 1.0
    top_n: dict[str, int] = field(default_factory=dict)
    phantom_images: int = 600
    phantom_size: int = 96
    balance: str = DEFAULT_BALANCE
    val_loss: str = DEFAULT_VAL_LOSS
    drop_classes: tuple[str, ...] = ()
    sweep: dict[str, tuple[float, ...]] = field(default_factory=dict)
    threads: int | None = 1
    feature_cache: str = "auto"
    feature_cache_max_gb: float | None = None

    def for_strategy(self, strategy: str) -> StudyConfig:
        """These settings as ``strategy`` runs them: ``lr`` is its ``strategy_lr`` if it has one."""
        if strategy not in self.strategy_lr:
            return self
        return replace(self, lr=self.strategy_lr[strategy])

    def top_n_for(self, backbone: str, default: int, available: int, layers_of: str) -> int:
        """The traditional top-n for ``backbone``: the override if given, else ``default``.

        Args:
            backbone: Backbone name.
            default: The backbone's Table 3 default.
            available: Layers the built backbone has (the most that can be unfrozen).
            layers_of: What a layer is, for the message, e.g. ``"weight layers of"``.

        Raises:
            StudyConfigError: The top-n exceeds ``available``.
        """
        top_n = self.top_n.get(backbone, default)
        if top_n > available:
            raise StudyConfigError(
                f"--top-n {backbone}={top_n} exceeds the {available} {layers_of} {backbone}; "
                f"use at most {available}"
            )
        return top_n
