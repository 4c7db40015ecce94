"""The run format — the contract between training and analysis.

A run is a folder::

    run.json                              {"format": 1, "model": {...}, "dataset": {...}, "train": {...}}
                                          (+ "checkpoints": "/abs/folder" when they live elsewhere)
    checkpoints/step-00001234.safetensors state dict; metadata carries "step" and provenance
    log.jsonl                             one JSON object per evaluation (step, train/test loss & acc)
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from grokscope.version import __version__
from grokscope.errors import GrokscopeError
from grokscope.locations import is_url
from grokscope.sources import as_path

RUN_FORMAT = 1
RUN_JSON = "run.json"
LOG_JSONL = "log.jsonl"
CHECKPOINT_DIR = "checkpoints"
CHECKPOINTS_KEY = "checkpoints"  # run.json: the checkpoint folder, when it lives elsewhere
# run.json: the numbers in the checkpoint names count epochs of this many steps (grokscope init
# --steps-per-epoch); discovery gives each checkpoint step = number × this
STEPS_PER_EPOCH_KEY = "steps_per_epoch"


class RunError(GrokscopeError, ValueError):
    """A run folder or its run.json is missing or malformed."""


def user_umask() -> int:
    """The process's umask, read without changing it where the system shows it (Linux
    ``/proc/self/status``), else set and restored at once."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: Path, payload: bytes) -> None:
    """Write ``payload`` to ``path`` via a temporary file in the same folder and an atomic rename.
    The file gets the mode a plain ``open(path, "w")`` gives (0666 less the user's umask), not the
    temporary file's 0600, so a colleague reads a shared run as they read its checkpoints."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~user_umask())
        with os.fdopen(fd, "wb") as f:
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_run_json(run_dir: Path, model: dict, dataset: dict, train: dict | None = None,
                   checkpoints: Path | None = None, steps_per_epoch: int | None = None) -> Path:
    """Write ``run.json`` (atomically) and return its path. ``checkpoints``: the folder of the run's
    checkpoints when it is not ``run_dir/checkpoints`` or ``run_dir`` (a workspace kept apart from a
    third party's folder, ``grokscope init --workspace``), stored absolute; ``steps_per_epoch``: the
    numbers in the checkpoint names are epochs of that many steps."""
    doc = {"format": RUN_FORMAT, "grokscope": __version__, "model": model,
           "dataset": dataset, "train": train or {}}
    if checkpoints is not None:
        text = str(checkpoints)  # a folder at a URL (init --workspace of a remote series) stays one
        doc[CHECKPOINTS_KEY] = text if is_url(text) else str(Path(checkpoints).absolute())
    if steps_per_epoch is not None:
        doc[STEPS_PER_EPOCH_KEY] = int(steps_per_epoch)
    path = Path(run_dir) / RUN_JSON
    atomic_write_bytes(path, (json.dumps(doc, indent=2, sort_keys=True) + "\n").encode())
    return path


def read_json_object(path: Path, error: type[Exception]) -> dict[str, Any]:
    """The JSON object in the file ``path``; ``error`` names the file when it is unreadable, not JSON
    or not an object."""
    from grokscope.jsonbounds import JSONBoundsError, read_json

    try:
        doc = read_json(path)
    except JSONBoundsError as e:
        raise error(str(e)) from None
    except (OSError, ValueError) as e:
        raise error(f"{path}: not valid JSON: {e}") from e
    if not isinstance(doc, dict):
        raise error(f"{path}: expected a JSON object")
    return doc


def read_run_json(run_dir: Path) -> dict[str, Any]:
    """Read and validate ``run.json``; :class:`RunError` names the file and what is wrong."""

    path = as_path(run_dir) / RUN_JSON
    if not path.is_file():
        raise RunError(f"{path}: no run.json (write one with `grokscope init`)")
    doc = read_json_object(path, RunError)
    if doc.get("format") != RUN_FORMAT:
        raise RunError(f"{path}: unsupported run format {doc.get('format')!r} (expected {RUN_FORMAT})")
    for key in ("model", "dataset"):
        if not isinstance(doc.get(key), dict):
            raise RunError(f"{path}: missing or malformed {key!r} section")
    model = doc["model"]
    if not (model.get("arch") or model.get("factory")):
        raise RunError(f"{path}: 'model' needs 'arch' (a built-in name) or 'factory' ('pkg.module:fn')")
    if not doc["dataset"].get("name"):
        raise RunError(f"{path}: 'dataset' needs a 'name'")
    doc.setdefault("train", {})
    return doc


def checkpoint_dir(run_dir: Path) -> Path:
    """The folder holding a run's checkpoints: run.json's ``"checkpoints"`` (a workspace's run.json
    names the third party's folder; relative to ``run_dir`` if not absolute), else
    ``run_dir/checkpoints`` when it exists, else ``run_dir``. A malformed run.json gives the default
    (reading it reports the problem)."""
    from grokscope.jsonbounds import read_json


    run_dir = as_path(run_dir)
    try:
        doc = read_json(run_dir / RUN_JSON)
    except (OSError, ValueError):
        doc = None
    if isinstance(doc, dict) and isinstance(doc.get(CHECKPOINTS_KEY), str) and doc[CHECKPOINTS_KEY]:
        named = doc[CHECKPOINTS_KEY]
        return as_path(named) if is_url(named) else run_dir / named  # a URL: that remote folder
    ck = run_dir / CHECKPOINT_DIR
    return ck if ck.is_dir() else run_dir


def checkpoint_path(run_dir: Path, step: int) -> Path:
    """``run_dir/checkpoints/step-%08d.safetensors``."""
    return Path(run_dir) / CHECKPOINT_DIR / f"step-{step:08d}.safetensors"


def save_checkpoint(path: Path, state_dict: dict[str, torch.Tensor], step: int,
                    metadata: dict[str, str] | None = None) -> Path:
    """Save a state dict as safetensors with ``step`` in its metadata, atomically.

    Tensors are made contiguous and de-aliased (safetensors refuses shared storage).
    """
    from safetensors.torch import save

    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in state_dict.items()}
    meta = {"step": str(int(step)), "format": "grokscope", "grokscope": __version__}
    meta.update({k: str(v) for k, v in (metadata or {}).items()})
    atomic_write_bytes(Path(path), canonical_safetensors(save(tensors, metadata=meta)))
    return Path(path)


def canonical_safetensors(payload: bytes) -> bytes:
    """``payload`` (a safetensors file) with its JSON header re-serialised with sorted keys.

    safetensors writes the ``__metadata__`` map in a random (hash) order, so two saves of the same
    tensors and metadata differ in bytes; a canonical header makes equal checkpoints equal files.
    The tensor data and offsets are unchanged; the header is space-padded to a multiple of 8.
    """
    n = int.from_bytes(payload[:8], "little")
    header = json.loads(payload[8:8 + n])
    text = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return len(text).to_bytes(8, "little") + text + payload[8 + n:]


def list_checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    """``[(step, path)]`` of a grokscope run's own checkpoints, sorted by step."""
    out = []
    for p in (Path(run_dir) / CHECKPOINT_DIR).glob("step-*.safetensors"):
        try:
            out.append((int(p.stem.split("-", 1)[1]), p))
        except ValueError:
            continue
    return sorted(out)


def append_log(run_dir: Path, record: dict[str, Any]) -> None:
    """Append one JSON line to ``log.jsonl`` (flushed, so a killed trainer keeps what it logged)."""
    with open(Path(run_dir) / LOG_JSONL, "a") as f:
        f.write(json.dumps(record, sort_keys=True) + "\n")
        f.flush()


def read_log(run_dir: Path) -> list[dict[str, Any]]:
    """Every complete record of ``log.jsonl`` (a torn last line from a kill is skipped, and so is a
    line nested too deep to read, :mod:`grokscope.jsonbounds`)."""
    from grokscope.jsonbounds import loads


    path = as_path(run_dir) / LOG_JSONL
    if not path.exists():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(loads(line, path))
        except ValueError:
            continue
    return records
