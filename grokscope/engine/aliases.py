"""Checkpoint aliases: ``last.ckpt``, ``best.pt``, ``model_best.pth``, ``latest.safetensors`` ...

Trainers save, next to the stepped checkpoints, a copy (or a link) of the latest or the best one under
a name without a step (Lightning's ``ModelCheckpoint(save_last=True)`` writes ``last.ckpt``). Such a
file is placed at its step or left out, with a reason, by :func:`resolve_alias`:

* a symbolic link to a stepped checkpoint is that checkpoint: left out;
* a ``global_step`` inside (Lightning, read with ``torch.load(weights_only=True)``): the alias is at
  that step; left out when a stepped file already has it, kept at that step otherwise;
* otherwise the alias's weights are compared (content hash, :func:`.hashing.state_dict_hash`) with
  those of the stepped checkpoints, newest first: equal weights mean that step, left out;
  weights equal to none of them cannot be placed: left out.

Only aliases are read here (the stepped checkpoints too, for the content comparison when an alias
has no ``global_step``); results are cached per file size and modification time, so a folder searched
again and again (``probe --follow``) is read once.
"""

from __future__ import annotations

import os
import re
from dataclasses import replace
from pathlib import Path
from typing import Any
from grokscope.locations import is_url

ALIAS = re.compile(r"^(?:.*[-_.])?(last|best|latest|final)(?:[-_.]?v?\d+)?$", re.I)
_CACHE: dict[tuple[str, str, int, int], Any] = {}


def is_alias(stem: str) -> bool:
    """Whether a checkpoint name without its suffix (``last``, ``last-v1``, ``model_best``) is an alias."""
    return bool(ALIAS.match(stem))


def _key(path: str) -> tuple[str, int, int]:
    st = os.stat(path)
    return (str(Path(path).resolve()), st.st_size, st.st_mtime_ns)


def _cached(path: str, what: str, make):
    key = (what, *_key(path))
    if key not in _CACHE:
        _CACHE[key] = make()
    return _CACHE[key]


def _global_step(path: str) -> int | None:
    """The ``global_step`` of a pickled (Lightning) checkpoint, or None."""
    from .loading import _torch_load

    def read() -> int | None:
        obj = _torch_load(Path(path))
        step = obj.get("global_step") if isinstance(obj, dict) else None
        return int(step) if isinstance(step, int) and not isinstance(step, bool) and step >= 0 else None

    return _cached(path, "global_step", read)


def _hash(c: Any) -> str:
    from .hashing import state_dict_hash
    from .loading import read_state_dict

    return _cached(c.path, "hash", lambda: state_dict_hash(read_state_dict(c)))


def resolve_alias(c: Any, placed: dict[int, Any]) -> tuple[Any | None, str]:
    """``(checkpoint with its step, "")`` when the alias ``c`` (a :class:`.checkpoints.Checkpoint`) is
    a step no stepped file has, else ``(None, why it is left out)``. ``placed`` maps steps to the
    stepped checkpoints of the same folder. Never raises: an unreadable alias is left out, saying so."""

    from .loading import CheckpointError

    if is_url(c.path):  # resolving it would download it, and the stepped checkpoints to compare
        return None, (f"{c.path.rsplit('/', 1)[-1]}: an alias (no step in its name) in a remote series; "
                      "not opened (resolving it would download the series); skipped")
    name = Path(c.path).name
    target = Path(c.path).resolve()
    if Path(c.path).is_symlink():
        for s, other in placed.items():
            if Path(other.path).resolve() == target:
                return None, f"{name} is a link to {other.label} (step {s}); skipped, an alias"
    try:
        step = _global_step(c.path) if c.kind == "torch" and not c.sharded else None
        if step is not None:
            if step in placed:
                return None, (f"{name} is global_step {step} (inside it), the step of {placed[step].label}; "
                              "skipped, an alias")
            return replace(c, step=step, step_source="global_step"), ""
        mine = _hash(c)
        for s in sorted(placed, reverse=True):
            try:
                if _hash(placed[s]) == mine:
                    return None, f"{name} holds the same weights as {placed[s].label} (step {s}); skipped, an alias"
            except (CheckpointError, OSError):
                continue
    except (CheckpointError, OSError) as e:
        return None, f"{name}: an alias (no step in its name) that cannot be read: {e}"
    return None, (f"{name}: an alias with no step in its name, no global_step inside, and weights equal to "
                  "none of the stepped checkpoints; skipped")
