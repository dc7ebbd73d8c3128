"""The two examples of docs/transformers.md, with tiny models built from their configs instead
of the pretrained checkpoints, and a tokenizer built from a small vocabulary file."""

from __future__ import annotations

import numpy as np
import torch
import transformers
from dynft_torch.transformers import DynamicFineTuningCallback
from tiny_transformers import VIT
from torch.utils.data import Dataset
from trainer_runs import Examples, Recorder, same_weights, weights

WORDS = ["good", "great", "fine", "bad", "awful", "poor", "movie", "plot", "very", "the"]


def compute_metrics(prediction):
    predicted = prediction.predictions.argmax(-1)
    return {"accuracy": float(np.mean(predicted == prediction.label_ids))}


def test_image_classification_example(tmp_path):
    model = transformers.ViTForImageClassification(transformers.ViTConfig(num_labels=3, **VIT))
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path / "vit-dynft"),
        num_train_epochs=6,
        learning_rate=1e-2,
        per_device_train_batch_size=8,
        eval_strategy="epoch",
        save_strategy="epoch",
        save_total_limit=3,
        metric_for_best_model="accuracy",
        remove_unused_columns=False,
        report_to=[],
        use_cpu=True,
        disable_tqdm=True,
    )
    recorder = Recorder()
    callback = DynamicFineTuningCallback(patience=1, step=2, decay=0.1)
    trainer = transformers.Trainer(
        model=model,
        args=args,
        train_dataset=Examples("vit", 32, seed=1),
        eval_dataset=Examples("vit", 16, seed=2),
        compute_metrics=compute_metrics,
        callbacks=[recorder, callback],
    )
    trainer.train()
    trainer.save_model(str(tmp_path / "vit-dynft" / "best"))
    assert callback.tuner.config.monitor == "eval_accuracy"
    assert callback.tuner.config.direction == "max"
    assert "vit.embeddings" in callback.tuner.group_table()
    best = callback.tuner.scheduler.best_epoch
    assert same_weights(weights(trainer.model), recorder.evaluated[4 * best])
    saved = transformers.ViTForImageClassification.from_pretrained(tmp_path / "vit-dynft" / "best")
    assert same_weights(weights(saved), weights(trainer.model))
    assert len(list((tmp_path / "vit-dynft").glob("checkpoint-*/dynft_state.pt"))) == 3


class Reviews(Dataset):
    """Tokenized sentences of 2 to 7 words, positive when the first word is."""

    def __init__(self, tokenizer, n: int, seed: int) -> None:
        generator = np.random.default_rng(seed)
        self.items = []
        for _ in range(n):
            words = list(generator.choice(WORDS, size=generator.integers(2, 8)))
            encoded = tokenizer(" ".join(words))
            self.items.append({**encoded, "labels": int(words[0] in WORDS[:3])})

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict:
        return self.items[index]


def test_text_classification_example(tmp_path):
    vocabulary = tmp_path / "vocab.txt"
    vocabulary.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]))
    tokenizer = transformers.BertTokenizer(str(vocabulary))
    torch.manual_seed(0)
    config = transformers.BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        num_labels=2,
    )
    model = transformers.BertForSequenceClassification(config)

    def make_args(folder):
        return transformers.TrainingArguments(
            output_dir=str(folder),
            max_steps=20,
            learning_rate=1e-2,
            warmup_steps=2,
            weight_decay=0.01,
            per_device_train_batch_size=8,
            eval_strategy="steps",
            eval_steps=4,
            save_strategy="steps",
            save_steps=4,
            report_to=[],
            use_cpu=True,
            disable_tqdm=True,
        )

    train, evaluation = Reviews(tokenizer, 32, seed=1), Reviews(tokenizer, 16, seed=2)
    recorder = Recorder()
    callback = DynamicFineTuningCallback(patience=1, step=1, decay=0.2)
    trainer = transformers.Trainer(
        model=model,
        args=make_args(tmp_path / "bert-dynft"),
        train_dataset=train,
        eval_dataset=evaluation,
        data_collator=transformers.DataCollatorWithPadding(tokenizer),
        callbacks=[recorder, callback],
    )
    trainer.train()
    assert callback.tuner.config.monitor == "eval_loss"
    assert sorted(recorder.evaluated) == [4, 8, 12, 16, 20]  # a decision per evaluation
    losses = [e["eval_loss"] for e in trainer.state.log_history if "eval_loss" in e]
    assert [d.value for d in callback.decisions if not d.external_stop] == losses
    best = 4 * callback.tuner.scheduler.best_epoch
    assert same_weights(weights(trainer.model), recorder.evaluated[best])

    # an interrupted run resumes with resume_from_checkpoint=True
    resumed_folder = tmp_path / "resumed"
    resumed_folder.mkdir()
    (tmp_path / "bert-dynft" / "checkpoint-8").rename(resumed_folder / "checkpoint-8")
    torch.manual_seed(0)
    resumed = DynamicFineTuningCallback(patience=1, step=1, decay=0.2)
    trainer = transformers.Trainer(
        model=transformers.BertForSequenceClassification(config),
        args=make_args(resumed_folder),
        train_dataset=train,
        eval_dataset=evaluation,
        data_collator=transformers.DataCollatorWithPadding(tokenizer),
        callbacks=[resumed],
    )
    trainer.train(resume_from_checkpoint=True)
    assert [d.to_dict() for d in resumed.decisions] == [d.to_dict() for d in callback.decisions]
    assert same_weights(weights(trainer.model), recorder.evaluated[best])
