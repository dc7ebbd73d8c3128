"""dynft_torch.FeatureCache on tiny Hugging Face and timm models with groups="auto"."""

from __future__ import annotations

import pytest
import torch
from dynft_torch import DynamicFineTuner, FeatureCache
from tiny_transformers import BUILDERS, build, logits, make_batch


@pytest.fixture(autouse=True)
def one_thread():
    """Many small forwards on a shared CPU run faster on one intra-op thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def class_scores(output) -> torch.Tensor:
    return output if isinstance(output, torch.Tensor) else output.logits


@pytest.mark.parametrize("family", sorted(BUILDERS))
def test_every_stage_of_a_schedule_is_served_exactly(family):
    model = build(family).eval()
    tuner = DynamicFineTuner(
        model,
        torch.optim.SGD(model.parameters(), lr=0.1),
        groups="auto",
        patience=1,
        step=1,
        max_epochs=100,
    )
    inputs, labels = make_batch(family, 6)
    data = [(inputs[:4], labels[:4]), (inputs[4:], labels[4:])]
    cache = FeatureCache(tuner, data)
    cuts = []
    while True:
        with torch.no_grad():
            expected = torch.cat([logits(model, x) for x, _ in data])
            for _ in range(2):  # built, then served
                served = torch.cat([class_scores(cache.model(f)) for f, _ in cache.batches()])
                assert torch.equal(served, expected), f"differs at cut {cache.cut}"
        cuts.append(cache.cut)
        if tuner.step(1.0).stop:
            break
    # one cut per stage with something frozen (the first value is a best: no unfreeze)
    assert len(cuts) == len(tuner.groups) + 2 and cuts[-1] is None
    assert None not in cuts[:-1]
    assert cache.stats.builds == len(tuner.groups)
