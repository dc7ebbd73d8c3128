"""Kill a checkpointing loop between epochs, between the writes of a save and during a write;
resuming from what is on disk ends with the weights and decisions of the uninterrupted run."""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from resume_loop import VALUES, build, resume, train
from tiny_models import state_copy

TESTS = Path(__file__).resolve().parent
KILL_EPOCH = 4  # 0-based: killed while saving epoch 5, the one after the first unfreeze


@pytest.fixture(scope="module")
def straight():
    objects = build()  # one thread, like the worker (tests/torch/conftest.py)
    train(objects, 0, len(VALUES))
    return state_copy(objects[0]), objects[3].scheduler.history


def worker(path: Path, point: str, *arguments: str) -> list[str]:
    return [sys.executable, str(TESTS / "kill_worker.py"), str(path), point, *arguments]


def resume_to_the_end(path: Path):
    objects, info = resume(path)
    train(objects, info["epoch"], len(VALUES))
    return info["epoch"], state_copy(objects[0]), objects[3].scheduler.history


def assert_same_run(resumed, straight) -> None:
    _, state, history = resumed
    expected_state, expected_history = straight
    assert history == expected_history
    for name, tensor in expected_state.items():
        assert torch.equal(state[name], tensor), name


@pytest.mark.parametrize(
    ("point", "resumes_after", "leaves_temporary"),
    [
        ("between-epochs", KILL_EPOCH + 1, False),
        ("mid-write", KILL_EPOCH, True),
        ("before-replace", KILL_EPOCH, True),
        ("after-replace", KILL_EPOCH + 1, False),
    ],
)
def test_a_run_killed_at_a_point_resumes_to_the_uninterrupted_run(
    tmp_path, straight, point, resumes_after, leaves_temporary
):
    path = tmp_path / "ckpt.pt"
    result = subprocess.run(
        worker(path, point, str(KILL_EPOCH)), capture_output=True, text=True, timeout=180
    )
    assert result.returncode == -signal.SIGKILL, result.stderr
    temporaries = [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    assert bool(temporaries) == leaves_temporary, temporaries
    resumed = resume_to_the_end(path)
    assert resumed[0] == resumes_after
    assert_same_run(resumed, straight)


def test_kills_at_random_moments_always_leave_a_checkpoint_that_resumes(tmp_path, straight):
    chance = random.Random(8)
    resumed_from = []
    for trial in range(3):
        folder = tmp_path / str(trial)
        folder.mkdir()
        path = folder / "ckpt.pt"
        child = subprocess.Popen(
            worker(path, "never", "0", "16"), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        deadline = time.monotonic() + 120
        while not path.exists() and child.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(chance.uniform(0.0, 1.0))
        child.kill()
        _, errors = child.communicate(timeout=60)
        assert child.returncode in (0, -signal.SIGKILL), errors
        resumed = resume_to_the_end(path)
        assert_same_run(resumed, straight)
        resumed_from.append(resumed[0])
    print("random kills resumed after epochs", resumed_from)
