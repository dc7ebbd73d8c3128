"""The Trainer callback under DDP: 2 CPU processes (gloo) started by torchrun."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.skipif(
    not torch.distributed.is_available(), reason="torch.distributed is not available"
)
HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]


def changed_groups_of(result: dict, step: int) -> list[int]:
    """Groups whose weights at the evaluation of ``step`` differ from the initial ones."""
    evaluated, initial = result["evaluated"][step], result["initial"]
    return [
        index
        for index, names in enumerate(result["groups"])
        if any(not torch.equal(evaluated[n], initial[n]) for n in names)
    ]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp")
    path = os.pathsep.join([str(ROOT), str(ROOT / "adapters"), str(HERE)])
    env = {**os.environ, "PYTHONPATH": path + os.pathsep + os.environ.get("PYTHONPATH", "")}
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        f"--master_port={free_port()}",
        str(HERE / "trainer_ddp_worker.py"),
        str(out),
    ]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-6000:]
    return [torch.load(out / f"rank{r}.pt", weights_only=True) for r in range(2)]


def test_every_rank_takes_the_same_decisions(ranks):
    first, second = (rank["straight"] for rank in ranks)
    assert first["wrapper"] == "DistributedDataParallel"
    assert first["decisions"] == second["decisions"]
    unfrozen = [tuple(d["newly_unfrozen"]) for d in first["decisions"]]
    assert unfrozen == [(), (2,), (1,), (0,), ()] and first["decisions"][-1]["stop"]


def test_replicas_stay_identical_and_frozen_groups_untouched(ranks):
    first, second = (rank["straight"] for rank in ranks)
    for name, tensor in first["final"].items():
        assert torch.equal(tensor, second["final"][name]), name
    for step in first["evaluated"]:
        for name, tensor in first["evaluated"][step].items():
            assert torch.equal(tensor, second["evaluated"][step][name]), (step, name)
    # 2 steps per epoch: group 2 trains from step 4, group 1 from 6, group 0 from 8
    assert changed_groups_of(first, 4) == [] and changed_groups_of(first, 6) == [2]
    assert first["frozen_with_state"][4] == [] and first["frozen_with_state"][6] == [2]


def test_resume_under_ddp_is_identical(ranks):
    for rank in ranks:
        assert rank["resumed"]["decisions"] == rank["straight"]["decisions"]
        for name, tensor in rank["straight"]["final"].items():
            assert torch.equal(tensor, rank["resumed"]["final"][name]), name


def test_ddp_settings_that_cannot_work_are_refused(ranks):
    for rank in ranks:
        assert "ddp_find_unused_parameters=False" in rank["refused_find_unused"]
        assert "ddp_static_graph=True" in rank["refused_static_graph"]
