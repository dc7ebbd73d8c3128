"""What the Hugging Face ``Trainer`` callback refuses, and which metric it monitors.

Each refusal is a ``Trainer`` setting under which dynft could not carry its decisions out
correctly; it is raised before training changes anything, naming the setting and what to use.
"""

from __future__ import annotations

import dataclasses
import math
import os
from typing import Any

from torch import nn

from dynft_core import FineTuneConfig

# Optimizers that update each parameter inside its backward hook: a frozen parameter is skipped
# there, but there is no optimizer step for dynft to observe, and no param groups to decay.
_HOOK_UPDATED_OPTIMIZERS = ("lomo", "adalomo")


def _enabled(variable: str) -> bool:
    return os.environ.get(variable, "false").lower() in ("1", "true", "yes")


def check_training_arguments(args: Any, config: FineTuneConfig) -> None:
    """Refuse ``TrainingArguments`` the callback cannot work under.

    Raises:
        ValueError: The message names the setting and what to use instead.
    """
    if args.eval_strategy == "no":
        raise ValueError(
            "DynamicFineTuningCallback decides after each evaluation, but eval_strategy='no' "
            "never evaluates: use eval_strategy='epoch' (a decision per epoch) or 'steps' (a "
            "decision per evaluation) and pass an eval_dataset"
        )
    if getattr(args, "deepspeed_plugin", None) is not None or _enabled("ACCELERATE_USE_DEEPSPEED"):
        raise ValueError(
            "DynamicFineTuningCallback does not support DeepSpeed: it shards the optimizer (and "
            "with ZeRO-3 the weights), so backbone groups cannot be frozen, decayed and rolled "
            "back in place; use DistributedDataParallel (torchrun or accelerate launch without "
            "a DeepSpeed config)"
        )
    if getattr(args, "fsdp", None) or _enabled("ACCELERATE_USE_FSDP"):
        raise ValueError(
            "DynamicFineTuningCallback does not support FSDP: its parameters are flattened "
            "shards that cannot be unfrozen group by group; use DistributedDataParallel"
        )
    optimizer = str(getattr(args.optim, "value", args.optim)).lower()
    if optimizer in _HOOK_UPDATED_OPTIMIZERS or optimizer.endswith("_layerwise"):
        raise ValueError(
            f"DynamicFineTuningCallback does not support optim={optimizer!r}: it updates the "
            "weights inside backward hooks, outside the optimizer step whose param groups "
            "dynft decays; use an optimizer such as 'adamw_torch'"
        )
    if args.auto_find_batch_size:
        raise ValueError(
            "DynamicFineTuningCallback does not support auto_find_batch_size=True: after an "
            "out-of-memory error Trainer restarts training with the backbone already frozen and "
            "a new optimizer; set per_device_train_batch_size yourself"
        )
    if args.world_size > 1:
        if args.ddp_static_graph:
            raise ValueError(
                "ddp_static_graph=True assumes the set of parameters that receive gradients "
                "never changes, but every unfreeze changes it; leave ddp_static_graph unset"
            )
        if args.ddp_find_unused_parameters is False:
            raise ValueError(
                "ddp_find_unused_parameters=False: DistributedDataParallel then expects a "
                "gradient for every parameter, but the frozen backbone groups get none (the "
                "second step fails). Pass ddp_find_unused_parameters=True"
            )
    if config.unfrozen_lr_ratio != 1.0 and args.save_strategy != "no":
        raise ValueError(
            f"unfrozen_lr_ratio={config.unfrozen_lr_ratio} puts the unfrozen groups into param "
            "groups of their own, so Trainer's checkpoints would hold an optimizer.pt with more "
            "param groups than the optimizer Trainer creates when it resumes, and Trainer loads "
            "it before any callback can re-create them: the checkpoints could not be resumed. "
            "Use unfrozen_lr_ratio=1.0 (Algorithm 1), or save_strategy='no'"
        )


def check_model(model: nn.Module, args: Any) -> None:
    """Refuse models whose trainability or DDP wrapping the callback cannot manage.

    Raises:
        ValueError: A PEFT model, or activation checkpointing under DDP without
            ``ddp_find_unused_parameters=True``.
    """
    if getattr(model, "_hf_peft_config_loaded", False) or hasattr(model, "peft_config"):
        raise ValueError(
            "DynamicFineTuningCallback does not support PEFT models: the adapters decide which "
            "parameters train, and unfreezing backbone groups would train the base weights the "
            "adapters are meant to leave alone"
        )
    # transformers 5.0 has only the older name (deprecated in later releases)
    model_checkpointing = (
        model.is_activation_checkpointing
        if hasattr(model, "is_activation_checkpointing")
        else getattr(model, "is_gradient_checkpointing", False)
    )
    checkpointing = (
        model_checkpointing
        or getattr(args, "activation_checkpointing", None)
        or getattr(args, "gradient_checkpointing", None)
    )
    if args.world_size > 1 and args.ddp_find_unused_parameters is None and checkpointing:
        raise ValueError(
            "with activation checkpointing Trainer builds DistributedDataParallel with "
            "find_unused_parameters=False, which fails on the frozen backbone groups (they get "
            "no gradient); pass ddp_find_unused_parameters=True, with non-reentrant "
            "checkpointing (activation_checkpointing_kwargs={'use_reentrant': False})"
        )


def _trainer_metric(args: Any) -> tuple[str, str]:
    """Trainer's own choice: ``metric_for_best_model`` with ``greater_is_better``, else the loss."""
    metric = args.metric_for_best_model
    if metric is None:
        return "eval_loss", "min"
    if not metric.startswith("eval_"):
        metric = f"eval_{metric}"
    return metric, "max" if args.greater_is_better else "min"


def resolve_monitor(
    config: FineTuneConfig, explicit_monitor: bool, explicit_mode: bool, args: Any
) -> FineTuneConfig:
    """``config`` with the monitored metric and its direction for this ``Trainer``.

    An explicit ``monitor`` (prefixed with ``eval_`` as Trainer does) and ``mode`` win; otherwise
    Trainer's ``metric_for_best_model`` / ``greater_is_better`` (``eval_loss``, lower is better,
    when it is unset). With ``restore_best_weights=False`` and ``load_best_model_at_end`` the two
    must agree, since Trainer's reload then decides the final model.

    Raises:
        ValueError: The combination above with another metric, direction or ``min_delta > 0``.
    """
    trainer_monitor, trainer_mode = _trainer_metric(args)
    if explicit_monitor:
        monitor = config.monitor if config.monitor.startswith("eval_") else f"eval_{config.monitor}"
        resolved = dataclasses.replace(config, monitor=monitor)
    else:
        monitor = trainer_monitor
        mode = config.mode if explicit_mode else trainer_mode
        resolved = dataclasses.replace(config, monitor=monitor, mode=mode)
    if not config.restore_best_weights and args.load_best_model_at_end:
        same = (monitor, resolved.direction) == (trainer_monitor, trainer_mode)
        if not same or config.min_delta > 0:
            raise ValueError(
                "restore_best_weights=False with load_best_model_at_end=True lets Trainer's "
                f"reload of its best checkpoint ({trainer_monitor}, {trainer_mode}) decide the "
                f"final model, but dynft monitors {monitor} ({resolved.direction}, min_delta="
                f"{config.min_delta}): an evaluation Trainer counts as its best can be one where "
                "dynft rolled the weights back, and that checkpoint holds the rolled-back "
                "weights. Keep restore_best_weights=True (dynft restores its own best), or "
                "monitor metric_for_best_model with min_delta=0"
            )
    return resolved


def planned_evaluations(args: Any, state: Any) -> int:
    """How many evaluations the run can have at most (the budget ``max_epochs`` counts in)."""
    if args.eval_strategy == "epoch":
        return int(math.ceil(state.num_train_epochs))
    return int(math.ceil(state.max_steps / state.eval_steps))
