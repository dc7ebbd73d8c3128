"""One rank of a 2-process DDP (gloo, CPU) Trainer run, started by torchrun.

Trains BERT with the callback (monitoring the evaluation loss, which Trainer gathers over the
ranks) with a checkpoint per epoch, resumes a second Trainer from checkpoint-4, and builds
Trainers with the DDP settings the callback refuses. Writes ``rank<r>.pt`` into the folder given.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from dynft_torch.transformers import DynamicFineTuningCallback
from trainer_runs import make_trainer, weights

OPTIONS = {"patience": 1, "step": 1, "decay": 0.5, "min_delta": 1e9}  # unfreeze at every plateau


def run(folder: Path, resume: bool) -> dict:
    trainer, callback, before = make_trainer(
        "bert",
        folder,
        callback=DynamicFineTuningCallback(**OPTIONS),
        ddp_backend="gloo",
        save_strategy="epoch",
        num_train_epochs=5,
    )
    initial = weights(trainer.model)
    trainer.train(resume_from_checkpoint=resume or None)
    group_names = [set(g.parameter_names) for g in callback.tuner.groups]
    return {
        "wrapper": type(trainer.model_wrapped).__name__,
        "decisions": [d.to_dict() for d in callback.decisions],
        "final": weights(trainer.model),
        "initial": initial,
        "evaluated": before.evaluated,
        "frozen_with_state": {
            step: [i for i, names in enumerate(group_names) if names & with_state]
            for step, with_state in before.with_state.items()
        },
        "groups": [sorted(names) for names in group_names],
    }


def refusal(**overrides) -> str | None:
    try:
        make_trainer("bert", Path(sys.argv[1]) / "refused", **overrides)
    except ValueError as err:
        return str(err)
    return None


def main() -> None:
    torch.set_num_threads(1)
    out = Path(sys.argv[1])
    rank = int(os.environ["RANK"])
    straight = run(out / "straight", resume=False)
    dist.barrier()
    if rank == 0:  # a fresh output_dir holding the straight run's first checkpoint
        (out / "resumed").mkdir()
        os.replace(out / "straight" / "checkpoint-2", out / "resumed" / "checkpoint-2")
    dist.barrier()
    resumed = run(out / "resumed", resume=True)
    result = {
        "straight": straight,
        "resumed": resumed,
        "refused_find_unused": refusal(ddp_backend="gloo", ddp_find_unused_parameters=False),
        "refused_static_graph": refusal(ddp_backend="gloo", ddp_static_graph=True),
    }
    torch.save(result, out / f"rank{rank}.pt")


if __name__ == "__main__":
    main()
