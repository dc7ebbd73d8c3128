"""dynft_torch.FeatureCache on tiny Hugging Face encoders: exact at every stage of a schedule."""

from __future__ import annotations

import pytest
import torch
import transformers
from dynft_torch import DynamicFineTuner, FeatureCache


@pytest.fixture(autouse=True)
def one_thread():
    """Many small forwards on a shared CPU run faster on one intra-op thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _vit():
    config = transformers.ViTConfig(
        image_size=32,
        patch_size=8,
        hidden_size=32,
        num_hidden_layers=3,
        num_attention_heads=2,
        intermediate_size=64,
        num_labels=3,
    )
    model = transformers.ViTForImageClassification(config)
    blocks = [[f"vit.layers.{i}"] for i in range(3)]
    return model, "vit", [["vit.embeddings"], *blocks, ["vit.layernorm"]], torch.randn(6, 3, 32, 32)


def _bert():
    config = transformers.BertConfig(
        vocab_size=50,
        hidden_size=16,
        num_hidden_layers=3,
        num_attention_heads=2,
        intermediate_size=32,
        num_labels=3,
        max_position_embeddings=32,
    )
    model = transformers.BertForSequenceClassification(config)
    blocks = [[f"bert.encoder.layer.{i}"] for i in range(3)]
    groups = [["bert.embeddings"], *blocks, ["bert.pooler"]]
    return model, "bert", groups, torch.randint(1, 50, (6, 10))


@pytest.mark.parametrize("build", [_vit, _bert], ids=["vit", "bert"])
def test_encoder_blocks_are_cut_exactly_at_every_stage(build):
    torch.manual_seed(0)
    model, backbone, groups, inputs = build()
    model.eval()
    tuner = DynamicFineTuner(
        model,
        torch.optim.SGD(model.parameters(), lr=0.1),
        backbone=backbone,
        groups=groups,
        patience=1,
        step=1,
        max_epochs=50,
    )
    data = [(inputs[:4], torch.zeros(4)), (inputs[4:], torch.ones(2))]
    cache = FeatureCache(tuner, data)
    cuts = []
    while True:
        with torch.no_grad():
            expected = torch.cat([model(x).logits for x, _ in data])
            for _ in range(2):
                served = torch.cat([cache.model(f).logits for f, _ in cache.batches()])
                assert torch.equal(served, expected), f"differs at cut {cache.cut}"
        cuts.append(cache.cut)
        if tuner.step(1.0).stop:
            break
    # the first value is a best (no unfreeze); then one group per step, deepest first
    deeper_first = [name for group in reversed(groups[:-1]) for name in group]
    assert cuts == [groups[-1][0], groups[-1][0], *deeper_first, None]
    assert cache.stats.builds == len(groups)
