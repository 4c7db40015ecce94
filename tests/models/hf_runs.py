"""Real Hugging Face ``Trainer`` runs for the tests: a tiny GPT-2 or BERT sequence classifier trained on
a small synthetic token task, with its data saved as ``data.npz`` (``x, y, train_idx, test_idx``) so
``--dataset file:data.npz`` gives grokscope exactly the Trainer's split."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

VOCAB, SEQ, CLASSES, N = 10, 6, 3, 360
PAD = VOCAB - 1  # never in the data


def token_task(seed: int = 0) -> dict[str, np.ndarray]:
    """``x (N, SEQ)`` int64 tokens in ``[0, PAD)``, ``y = x[:, -1] % CLASSES``, a 2:1 split."""
    rng = np.random.default_rng(seed)
    x = rng.integers(0, PAD, size=(N, SEQ)).astype(np.int64)
    y = ((x[:, 0] + x[:, -1]) % CLASSES).astype(np.int64)
    perm = rng.permutation(N)
    return {"x": x, "y": y, "train_idx": perm[: 2 * N // 3], "test_idx": perm[2 * N // 3:]}


def config(arch: str):
    """A tiny transformers config of ``arch`` (``gpt2`` or ``bert``) for ``CLASSES`` labels."""
    if arch == "gpt2":
        from transformers import GPT2Config

        return GPT2Config(vocab_size=VOCAB, n_positions=SEQ, n_embd=16, n_layer=1, n_head=2,
                          num_labels=CLASSES, pad_token_id=PAD, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    from transformers import BertConfig

    return BertConfig(vocab_size=VOCAB, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                      intermediate_size=32, max_position_embeddings=SEQ, num_labels=CLASSES, pad_token_id=PAD,
                      hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)


def train(folder: Path, arch: str, steps: int = 40, every: int = 10, seed: int = 0) -> list[dict]:
    """Train ``arch`` with ``transformers.Trainer`` into ``folder`` (``checkpoint-N/`` every ``every``
    steps, evaluation with accuracy at the same steps); returns the Trainer's eval records."""
    import torch
    from transformers import (AutoModelForSequenceClassification, Trainer, TrainingArguments,
                              set_seed)

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    d = token_task(seed)
    np.savez(folder / "data.npz", **d)
    rows = lambda idx: [{"input_ids": torch.from_numpy(d["x"][i]), "labels": int(d["y"][i])} for i in idx]  # noqa: E731
    set_seed(seed)
    model = AutoModelForSequenceClassification.from_config(config(arch))

    def accuracy(pred) -> dict[str, float]:
        return {"accuracy": float((np.argmax(pred.predictions, -1) == pred.label_ids).mean())}

    args = TrainingArguments(output_dir=str(folder), max_steps=steps, save_steps=every, eval_steps=every,
                             eval_strategy="steps", logging_steps=every, learning_rate=1e-2,
                             per_device_train_batch_size=32, per_device_eval_batch_size=256,
                             report_to=[], use_cpu=True, seed=seed, dataloader_num_workers=0,
                             disable_tqdm=True)
    trainer = Trainer(model=model, args=args, train_dataset=rows(d["train_idx"]),
                      eval_dataset=rows(d["test_idx"]), compute_metrics=accuracy)
    trainer.train()
    return [r for r in trainer.state.log_history if "eval_accuracy" in r]


if __name__ == "__main__":
    import sys

    print(json.dumps(train(Path(sys.argv[1]), sys.argv[2])))
