"""The callback's state inside Trainer's ``checkpoint-N`` folders, and checks of what Trainer
restored.

Trainer writes ``checkpoint-N`` (weights, ``optimizer.pt``, ``scheduler.pt``,
``trainer_state.json``) and then calls ``on_save``; the callback adds ``dynft_state.pt``
there, written atomically: the tuner's state (scheduler, snapshot of the best evaluation) plus
what it needs to check a resume against:

* ``global_step`` and the number of decisions, compared with ``trainer_state.json`` (whose
  ``log_history`` holds one entry per decision);
* the options, compared with the resuming callback's;
* the learning rates of every param group and of the LR scheduler: they carry the cumulative
  decay, and Trainer restores them from ``optimizer.pt``/``scheduler.pt`` (not at all with
  ``save_only_model=True``);
* an exact fingerprint of every tensor of ``model.state_dict()`` as Trainer saved it. Trainer
  loads a checkpoint with ``strict=False``; transformers 5 saves ViT, DeiT and Swin under
  renamed keys that its resume and ``load_best_model_at_end`` do not convert back
  (huggingface/transformers#43701), so their blocks silently keep other weights. Comparing the
  fingerprints turns that into an error.

Not Trainer's ``ExportableState``: that mechanism (off by default) rebuilds callbacks from
JSON constructor arguments, which cannot carry modules or tensors, and replaces the user's
instance.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dynft_core import FineTuneConfig, check_resume_point

from .checkpoint import atomic_torch_save
from .distributed import weights_fingerprint

STATE_FILE = "dynft_state.pt"
STATE_FORMAT = "dynft_torch.transformers.DynamicFineTuningCallback"
STATE_VERSION = 1
_KEYS = (
    "format",
    "version",
    "global_step",
    "decisions",
    "config",
    "tuner",
    "learning_rates",
    "fingerprints",
)
# The key of the callback's entries in Trainer's log_history (one per decision).
DECISION_KEY = "dynft_decision"
ISSUE_43701 = "https://github.com/huggingface/transformers/issues/43701"


def checkpoint_folder(output_dir: str, global_step: int) -> Path:
    """Where Trainer writes the checkpoint of ``global_step``."""
    return Path(output_dir) / f"checkpoint-{global_step}"


def tensor_fingerprints(model: nn.Module) -> dict[str, int]:
    """An exact checksum of every tensor in ``model.state_dict()``, by name."""
    return {
        name: int(weights_fingerprint([tensor]))
        for name, tensor in model.state_dict().items()
        if isinstance(tensor, torch.Tensor)
    }


def learning_rates(optimizer: torch.optim.Optimizer, lr_scheduler: object) -> dict[str, Any]:
    """The rates of each param group and the scheduler's ``base_lrs`` (if it keeps any)."""
    base_lrs = getattr(lr_scheduler, "base_lrs", None)
    return {
        "param_groups": [float(group["lr"]) for group in optimizer.param_groups],
        "base_lrs": [] if base_lrs is None else [float(rate) for rate in base_lrs],
    }


def save_state(
    folder: Path,
    *,
    global_step: int,
    config: FineTuneConfig,
    tuner_state: Mapping[str, Any],
    decisions: int,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    lr_scheduler: object,
) -> Path:
    """Write ``folder/dynft_state.pt`` atomically (``folder`` is Trainer's checkpoint)."""
    payload = {
        "format": STATE_FORMAT,
        "version": STATE_VERSION,
        "global_step": global_step,
        "decisions": decisions,
        "config": config.to_dict(),
        "tuner": dict(tuner_state),
        "learning_rates": learning_rates(optimizer, lr_scheduler),
        "fingerprints": tensor_fingerprints(model),
    }
    return atomic_torch_save(payload, folder / STATE_FILE)


RESUME_REMEDY = (
    "Resume from an earlier checkpoint; for a checkpoint outside output_dir pass "
    "DynamicFineTuningCallback(resume_from='path/to/checkpoint-N')"
)


def load_state(path: Path, remedy: str) -> dict[str, Any]:
    """Read a ``dynft_state.pt``.

    Raises:
        FileNotFoundError: No such file (the message ends with ``remedy``).
        ValueError: The file is not one written by the callback, of this version.
    """
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} does not exist: {path.parent.name} was written without "
            "DynamicFineTuningCallback, or the run was killed between Trainer's save and the "
            f"callback's. {remedy}"
        )
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # a truncated or foreign file: torch raises many kinds
        raise ValueError(f"{path}: cannot be read ({type(err).__name__}: {err})") from err
    if (
        not isinstance(payload, dict)
        or payload.get("format") != STATE_FORMAT
        or payload.get("version") != STATE_VERSION
        or set(payload) != set(_KEYS)
    ):
        raise ValueError(
            f"{path}: is not a {STATE_FORMAT} state of version {STATE_VERSION} with keys "
            f"{list(_KEYS)}"
        )
    return payload


def logged_decisions(log_history: list[dict[str, Any]]) -> int:
    """Decisions recorded in Trainer's ``log_history`` (the last entry's number)."""
    numbers = [entry[DECISION_KEY] for entry in log_history if DECISION_KEY in entry]
    return int(numbers[-1]) if numbers else 0


def _differing(saved: Mapping[str, int], current: Mapping[str, int]) -> list[str]:
    return sorted(
        name for name in saved.keys() | current.keys() if saved.get(name) != current.get(name)
    )


def check_weights(
    saved: Mapping[str, int], model: nn.Module, folder: Path, what: str, remedy: str
) -> None:
    """Raise unless ``model`` holds exactly the tensors whose fingerprints were saved.

    Raises:
        RuntimeError: Naming the tensors that differ and the known cause.
    """
    differing = _differing(saved, tensor_fingerprints(model))
    if differing:
        raise RuntimeError(
            f"{what} did not restore {len(differing)} of the {len(saved)} tensors saved in "
            f"{folder} ({', '.join(differing[:3])}{' ...' if len(differing) > 3 else ''}): the "
            "model now mixes the checkpoint's weights with others. Trainer loads checkpoints "
            "with strict=False, and transformers 5 saves ViT, DeiT and Swin under renamed keys "
            f"that it does not convert back when it loads them ({ISSUE_43701}). {remedy}"
        )


def check_resumed(
    saved: Mapping[str, Any],
    path: Path,
    *,
    state: Any,
    config: FineTuneConfig,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    lr_scheduler: object,
) -> None:
    """Check a loaded ``dynft_state.pt`` against what Trainer restored; changes nothing.

    Raises:
        ValueError: Another step or other options.
        dynft_core.ResumeMismatchError: ``trainer_state.json`` records another number of
            decisions.
        RuntimeError: Trainer did not restore the learning rates or the weights.
    """
    folder = path.parent
    if saved["global_step"] != state.global_step:
        raise ValueError(
            f"{path} was written at step {saved['global_step']} but Trainer resumes at step "
            f"{state.global_step}; pass resume_from= the checkpoint Trainer resumes from"
        )
    check_resume_point(
        saved["decisions"],
        logged_decisions(state.log_history),
        f"the trainer_state.json Trainer resumed in {folder}",
        f"Resume from a checkpoint whose {STATE_FILE} was written by the same run.",
    )
    mine = config.to_dict()
    theirs = saved["config"] if isinstance(saved["config"], Mapping) else {}
    changed = [f"{k}={theirs.get(k)!r}, now {v!r}" for k, v in mine.items() if theirs.get(k) != v]
    if changed:
        raise ValueError(
            f"{path} was saved with other options ({'; '.join(changed)}); resume with the "
            "options of the saved run"
        )
    if saved["learning_rates"] != learning_rates(optimizer, lr_scheduler):
        raise RuntimeError(
            f"the learning rates Trainer restored differ from those saved in {folder} (they "
            "carry dynft's decay): Trainer did not load its optimizer.pt and scheduler.pt "
            "(save_only_model=True writes neither). Resume from a full checkpoint"
        )
    check_weights(
        saved["fingerprints"],
        model,
        folder,
        "Trainer's resume",
        "Build the model from the checkpoint before resuming (ModelClass.from_pretrained("
        f"'{folder}')), which converts the keys, then train(resume_from_checkpoint=...)",
    )
