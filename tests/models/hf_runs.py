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
                          num_labels=CLASSES, pad_token_id=PAD, bos_token_id=PAD, eos_token_id=PAD,
                          resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    from transformers import BertConfig

    return BertConfig(vocab_size=VOCAB, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                      intermediate_size=32, max_position_embeddings=SEQ, num_labels=CLASSES, pad_token_id=PAD,
                      hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)


def trainer_run(folder: Path, model_config, x_train, y_train, x_test, y_test, steps: int = 40,
                every: int = 10, seed: int = 0) -> list[dict]:
    """Train a ``...ForSequenceClassification`` of ``model_config`` with ``transformers.Trainer`` into
    ``folder`` (``checkpoint-N/`` every ``every`` steps, evaluation on the test split with accuracy at
    the same steps); returns the Trainer's eval records (``step``, ``eval_accuracy``, ...)."""
    import torch
    from transformers import AutoModelForSequenceClassification, Trainer, TrainingArguments, set_seed

    rows = lambda x, y: [{"input_ids": torch.as_tensor(a), "labels": int(b)} for a, b in zip(x, y)]  # noqa: E731
    set_seed(seed)
    model = AutoModelForSequenceClassification.from_config(model_config)

    def accuracy(pred) -> dict[str, float]:
        return {"accuracy": float((np.argmax(pred.predictions, -1) == pred.label_ids).mean())}

    args = TrainingArguments(output_dir=str(folder), max_steps=steps, save_steps=every, eval_steps=every,
                             eval_strategy="steps", logging_steps=every, learning_rate=1e-2,
                             per_device_train_batch_size=32, per_device_eval_batch_size=256,
                             report_to=[], use_cpu=True, seed=seed, dataloader_num_workers=0,
                             disable_tqdm=True)
    trainer = Trainer(model=model, args=args, train_dataset=rows(x_train, y_train),
                      eval_dataset=rows(x_test, y_test), compute_metrics=accuracy)
    trainer.train()
    return [r for r in trainer.state.log_history if "eval_accuracy" in r]


def train_tokens(folder: Path, arch: str, **kw) -> list[dict]:
    """:func:`trainer_run` of ``arch`` (``gpt2`` | ``bert``) on :func:`token_task`, saved as
    ``folder/data.npz`` for ``--dataset file:data.npz``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    d = token_task()
    np.savez(folder / "data.npz", **d)
    tr, te = d["train_idx"], d["test_idx"]
    return trainer_run(folder, config(arch), d["x"][tr], d["y"][tr], d["x"][te], d["y"][te], **kw)


def train_modular(folder: Path, p: int = 7, **kw) -> list[dict]:
    """:func:`trainer_run` of :func:`modular_config` on grokscope's ``modular`` split (``p``, seed 0)."""
    from grokscope.datasets import load_dataset

    data = load_dataset({"name": "modular", "kwargs": {"p": p}, "seed": 0})
    return trainer_run(Path(folder), modular_config(p), data.x_train, data.y_train, data.x_test,
                       data.y_test, **kw)


def modular_config(p: int = 7):
    """A tiny GPT-2 sequence classifier for ``modular`` (tokens ``a, b, =`` with ``=`` = p, and a pad
    token p + 1 that never occurs, so the classifier pools the last position)."""
    from transformers import GPT2Config

    return GPT2Config(vocab_size=p + 2, n_positions=3, n_embd=16, n_layer=1, n_head=2, num_labels=p,
                      pad_token_id=p + 1, bos_token_id=p, eos_token_id=p, resid_pdrop=0.0, embd_pdrop=0.0,
                      attn_pdrop=0.0, architectures=["GPT2ForSequenceClassification"])


def _sha(data: bytes, algo: str = "sha256") -> str:
    import hashlib

    return hashlib.new(algo, data).hexdigest()


def hub_cache(root: Path, repo: str, revisions: dict[str, dict], aliases: dict[str, str] | None = None) -> Path:
    """Write a hub cache repository ``root/models--ORG--NAME`` as ``huggingface_hub`` lays it out: a
    blob per distinct file content (sha256 names), ``snapshots/<commit>/`` entries that are relative
    symlinks into ``blobs/``, and ``refs/<revision>`` files holding the commit hash. ``revisions``:
    ``{name: {"config": PretrainedConfig, "state": state dict}}``; ``aliases``: ``{ref: revision}``
    (``{"main": "step2000"}``) naming the same commit. Returns the repository folder."""
    from safetensors.torch import save

    folder = Path(root) / ("models--" + repo.replace("/", "--"))
    for sub in ("blobs", "refs", "snapshots"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    commits = {}
    for name, rev in revisions.items():
        commit = _sha(f"{repo}@{name}".encode(), "sha1")
        commits[name] = commit
        files = {"config.json": rev["config"].to_json_string().encode(),
                 "model.safetensors": save({k: v.contiguous() for k, v in rev["state"].items()},
                                           metadata={"format": "pt"})}
        snap = folder / "snapshots" / commit
        snap.mkdir(parents=True)
        for fname, data in files.items():
            blob = folder / "blobs" / _sha(data)
            if not blob.exists():
                blob.write_bytes(data)
            (snap / fname).symlink_to(Path("..") / ".." / "blobs" / blob.name)
        (folder / "refs" / name).write_text(commit)
    for ref, target in (aliases or {}).items():
        (folder / "refs" / ref).write_text(commits[target])
    return folder


if __name__ == "__main__":
    import sys

    print(json.dumps(train_tokens(Path(sys.argv[1]), sys.argv[2])))
