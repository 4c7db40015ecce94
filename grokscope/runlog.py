"""A run's own evaluation log: imported from third-party trainers, and checked against ``acc``.

:func:`import_log` reads a Hugging Face ``trainer_state.json`` (``log_history``), a Lightning
``metrics.csv``, any JSONL/CSV file with a ``step`` column, or the printed output of a training script
(``text``: a regular expression whose named groups name the values, :func:`text_rows`), and returns
records in grokscope's log vocabulary (``step, train_loss, train_acc, test_loss, test_acc``;
:data:`COLUMN_NAMES` lists the names recognised), which ``grokscope init`` writes to the run's
``log.jsonl``.

:func:`split_check` compares the ``acc`` probe's accuracy on the data it was given with the run's own
logged accuracy at the same steps: a difference beyond the tolerance means the data or the split is
not the one the run was evaluated on, and is reported loudly, naming both numbers.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

from grokscope.errors import GrokscopeError
from grokscope.engine.storefs import store_fs

# grokscope's name <- the names third-party trainers log it under (first match wins)
COLUMN_NAMES = {
    "train_loss": ("train_loss", "loss", "train_loss_epoch", "train/loss"),
    "train_acc": ("train_acc", "train_accuracy", "train_acc_epoch", "train/acc", "train/accuracy"),
    "test_loss": ("test_loss", "eval_loss", "val_loss", "valid_loss", "val_loss_epoch", "val/loss", "eval/loss"),
    "test_acc": ("test_acc", "test_accuracy", "eval_accuracy", "eval_acc", "val_acc", "val_accuracy",
                 "valid_acc", "val_acc_epoch", "val/acc", "eval/accuracy"),
}
FORMATS = ("hf", "lightning", "jsonl", "csv", "text")
DEFAULT_TOLERANCE = 0.01


class LogError(GrokscopeError, ValueError):
    """An evaluation log cannot be read; the message names the file and the key."""


def find_log(folder: Path) -> tuple[Path, str] | None:
    """``(path, format)`` of a third-party log in ``folder``: ``trainer_state.json`` there or in its
    last ``checkpoint-N`` (also under ``checkpoints/``; its ``log_history`` is the longest), else the one
    ``metrics.csv`` below it."""
    folder = Path(folder)
    if (folder / "trainer_state.json").is_file():
        return folder / "trainer_state.json", "hf"
    from grokscope.engine.checkpoints import parse_step

    states = [(parse_step(p.parent.name) or -1, p) for pattern in ("checkpoint-*/trainer_state.json",
                                                                    "checkpoints/checkpoint-*/trainer_state.json")
              for p in folder.glob(pattern)]
    if states:
        return max(states)[1], "hf"
    csvs = sorted(folder.rglob("metrics.csv"))
    if len(csvs) == 1:
        return csvs[0], "lightning"
    return None


def _number(v: Any) -> float | None:
    if v is None or v == "":
        return None
    try:
        x = float(v)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def text_rows(text: str, pattern: str, where: str) -> list[dict[str, Any]]:
    """One row per line of ``text`` that ``pattern`` matches (``re.search``): its named groups, e.g.
    ``step (?P<step>\\d+) .* test acc (?P<test_acc>[\\d.]+)`` for ``step 500 loss 0.1 test acc 0.93``.
    Group names are grokscope's (``step``, ``train_acc``, ``test_acc``, ``train_loss``, ``test_loss``)
    or the names :data:`COLUMN_NAMES` recognises. A value ending in ``%`` is divided by 100."""
    import re

    try:
        rx = re.compile(pattern)
    except re.error as e:
        raise LogError(f"{where}: --log-pattern is not a regular expression ({e})") from None
    if not rx.groupindex:
        raise LogError(f"{where}: --log-pattern has no named groups; name the values, e.g. "
                       "'step (?P<step>\\d+).*acc (?P<test_acc>[\\d.]+)'")
    rows = []
    for line in text.splitlines():
        m = rx.search(line)
        if m:
            row = {}
            for k, v in m.groupdict().items():
                if v is not None and v.endswith("%"):
                    x = _number(v[:-1])
                    v = None if x is None else x / 100
                row[k] = v
            rows.append(row)
    if not rows:
        raise LogError(f"{where}: no line matches --log-pattern {pattern!r}")
    return rows


def _rows(path: Path, fmt: str, pattern: str | None = None) -> list[dict[str, Any]]:
    from grokscope.jsonbounds import JSONBoundsError, loads, read_json

    try:
        if fmt == "text":
            if not pattern:
                raise LogError(f"{path}: a printed log needs --log-pattern (a regular expression with named "
                               "groups: step, train_acc, test_acc, ...)")
            return text_rows(path.read_text(errors="replace"), pattern, str(path))
        if fmt == "hf":
            doc = read_json(path)
            rows = doc.get("log_history") if isinstance(doc, dict) else None
            if not isinstance(rows, list):
                raise LogError(f"{path}: no 'log_history' list (is this a Hugging Face trainer_state.json?)")
            return [r for r in rows if isinstance(r, dict)]
        if fmt == "jsonl":
            out = []
            for i, line in enumerate(path.read_text().splitlines(), 1):
                if line.strip():
                    try:
                        out.append(loads(line, path))
                    except JSONBoundsError as e:
                        raise LogError(f"{e} (line {i})") from None
                    except ValueError as e:
                        raise LogError(f"{path}: line {i} is not JSON ({e})") from None
            return [r for r in out if isinstance(r, dict)]
        with open(path, newline="") as f:
            return list(csv.DictReader(f))
    except OSError as e:
        raise LogError(f"{path}: unreadable log ({e})") from None
    except LogError:
        raise
    except csv.Error as e:
        raise LogError(f"{path}: not a readable CSV log ({e})") from None
    except JSONBoundsError as e:
        raise LogError(str(e)) from None
    except ValueError as e:
        raise LogError(f"{path}: not valid JSON ({e})") from None


def import_log(path: Path, fmt: str | None = None, columns: dict[str, str] | None = None,
               step: str = "step", pattern: str | None = None) -> list[dict[str, Any]]:
    """The evaluation records of a third-party log, one per step, sorted by step.

    ``fmt`` is ``hf``, ``lightning``, ``jsonl``, ``csv`` or ``text`` (None: from the file name, ``text``
    when ``pattern`` is given: :func:`text_rows`); ``columns`` maps
    grokscope names to the file's (``{"test_acc": "val/acc"}``), overriding :data:`COLUMN_NAMES`;
    ``step`` names the step column. Rows of one step are merged (Lightning writes train and
    validation metrics on separate rows); Lightning's validation metrics are moved to the step of the
    weights they were computed on (:func:`_lightning_steps`). Raises :class:`LogError` naming the file and key.
    """
    path = Path(path)
    if fmt is None and pattern:
        fmt = "text"
    if fmt is None:
        fmt = ("hf" if path.name.endswith(".json") else "jsonl" if path.suffix == ".jsonl"
               else "lightning" if path.name == "metrics.csv" else "csv")
    if fmt not in FORMATS:
        raise LogError(f"{path}: unknown log format {fmt!r}; expected {', '.join(FORMATS)}")
    rows = _rows(path, fmt, pattern)
    if not rows:
        raise LogError(f"{path}: the log has no records")
    names = {k: ((columns or {})[k],) if k in (columns or {}) else v for k, v in COLUMN_NAMES.items()}
    for k, col in (columns or {}).items():
        if k not in COLUMN_NAMES:
            raise LogError(f"{path}: unknown log column {k!r}; grokscope's names are {', '.join(COLUMN_NAMES)}")
        if not any(col in r for r in rows):
            raise LogError(f"{path}: no column {col!r} (for {k})")
    if not any(step in r for r in rows):
        raise LogError(f"{path}: no {step!r} column (found {', '.join(sorted(rows[0]))}); name it with --log-step")
    if fmt == "lightning":
        rows = _lightning_steps(rows, step, {c for k in ("test_acc", "test_loss") for c in names[k]})
    merged: dict[int, dict[str, Any]] = {}
    for r in rows:
        s = _number(r.get(step))
        if s is None:
            continue
        rec = merged.setdefault(int(s), {"step": int(s)})
        for k, candidates in names.items():
            for c in candidates:
                v = _number(r.get(c))
                if v is not None:
                    rec.setdefault(k, v)
                    break
    out = [merged[s] for s in sorted(merged) if len(merged[s]) > 1]
    if not out:
        raise LogError(f"{path}: no records with a step and any of {', '.join(COLUMN_NAMES)} "
                       "(map the file's names with --log-columns test_acc=NAME,...)")
    return out


def _lightning_steps(rows: list[dict[str, Any]], step: str, val_columns: set[str]) -> list[dict[str, Any]]:
    """Lightning's ``metrics.csv`` rows with the validation metrics moved to the step of the weights
    they were computed on. During ``fit`` Lightning validates after a batch's optimiser step but logs
    the result before it counts that batch (``_TrainingEpochLoop.on_advance_end`` runs the validation
    loop, then increments ``_batches_that_stepped``, the logger's step), so a validation logged at
    ``step`` S saw the weights of ``global_step`` S + 1, which is the step in the name of the
    checkpoint ``ModelCheckpoint`` saves then. Training metrics keep their step."""
    out = []
    for r in rows:
        s = _number(r.get(step))
        val = {k: v for k, v in r.items() if k in val_columns and _number(v) is not None}
        if s is None or not val:
            out.append(r)
            continue
        rest = {k: v for k, v in r.items() if k not in val}
        out += [rest, {**val, step: s + 1}]
    return out


def write_log(run_dir: Path, records: list[dict[str, Any]]) -> Path:
    """Write ``records`` as the run's ``log.jsonl`` (atomically, replacing any)."""
    from grokscope.runs import LOG_JSONL, atomic_write_bytes

    path = Path(run_dir) / LOG_JSONL
    atomic_write_bytes(path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in records).encode())
    return path


def split_check(acc: Any, log: list[dict[str, Any]], run: str, tolerance: float = DEFAULT_TOLERANCE
                ) -> list[str]:
    """Loud lines, one per split, where the ``acc`` probe's accuracy (``acc``: its Dataset, dims
    ``step, split``) differs from the run's own logged ``train_acc``/``test_acc`` at the same step by
    more than ``tolerance``; [] when they agree or nothing can be compared."""
    import numpy as np

    logged = {int(r["step"]): r for r in log if "step" in r}
    done = acc["done"].values.astype(bool) if "done" in acc else np.ones(acc.sizes["step"], bool)
    lines = []
    for split in ("train", "test"):
        key = f"{split}_acc"
        if "split" not in acc.coords or split not in [str(v) for v in acc["split"].values]:
            continue
        ours = acc["accuracy"].sel(split=split).values
        pairs = [(int(s), float(ours[i]), float(logged[int(s)][key]))
                 for i, s in enumerate(acc["step"].values)
                 if done[i] and int(s) in logged and _number(logged[int(s)].get(key)) is not None
                 and math.isfinite(float(ours[i]))]
        bad = [p for p in pairs if abs(p[1] - p[2]) > tolerance]
        if bad:
            s, a, b = max(bad, key=lambda p: abs(p[1] - p[2]))
            lines.append(f"SPLIT CHECK FAILED for run {run}: at step {s} acc on the given {split} data is "
                         f"{a:.4f} but the run's own log says {key} {b:.4f} (differs by {abs(a - b):.4f} > "
                         f"tolerance {tolerance}; {len(bad)} of {len(pairs)} logged steps differ): the data "
                         f"or the split given is not the one the run was evaluated on")
    return lines


def store_split_checks(store: Path | str, tolerance: float = DEFAULT_TOLERANCE, runs: list[str] | None = None,
                       storage_options: dict[str, Any] | None = None) -> dict[str, list[str]]:
    """``{run group: split_check lines}`` for every run of ``store`` (a folder or an fsspec URL) with
    an ``acc`` group and a ``log.jsonl`` in its run folder (the folder recorded in the store)."""
    import zarr

    from grokscope.engine.store_view import DamagedStore, load_group
    from grokscope.runs import read_log

    out: dict[str, list[str]] = {}
    fs = store_fs(store, storage_options)
    root = zarr.open_group(store=fs.zarr_store(read_only=True), mode="r")
    for name, group in root.groups():
        if runs is not None and name not in runs:
            continue
        if "acc" not in dict(group.groups()):
            continue
        folder = group.attrs.get("path")
        log = read_log(Path(folder)) if folder else []
        if not log:
            continue
        try:
            acc = load_group(fs, name, "acc")
        except DamagedStore as e:
            out[name] = [f"split check of run {name} not done: {e}"]
            continue
        out[name] = split_check(acc, log, name, tolerance)
    return out
