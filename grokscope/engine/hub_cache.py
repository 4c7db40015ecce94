"""Hugging Face hub cache folders as checkpoint series.

``huggingface_hub`` keeps each downloaded repository as ``models--ORG--NAME/``::

    refs/main, refs/step1000, refs/checkpoint-500   one line each: the commit hash a revision names
    snapshots/<commit>/config.json                   symlinks into blobs/ (files of that commit)
    snapshots/<commit>/model.safetensors
    blobs/<hash>                                     the file contents, stored once

Revisions named like ``step1000`` (Pythia's training checkpoints are branches of one repository) or
``checkpoint-500`` are a series: :func:`hub_checkpoints` gives one checkpoint per such ref, its step
parsed from the revision name, its weights those of the ref's snapshot (found as in a
``checkpoint-N/`` folder). A ref without a step (``main``) is left out with a line saying which
stepped revision it repeats, if any; a snapshot no ref names has no revision name and is left out too.
Two revisions whose weights are the same blob stay in the series (they are different steps);
``grokscope scan`` reports them as duplicate weights, naming the shared blob. Nothing is downloaded.
"""

from __future__ import annotations

import os
from pathlib import Path

from .discovery import Checkpoint, Problem, _hf_weights, _rel, _replace, _weights_checkpoint, parse_step

REPO_PREFIXES = ("models--",)


def is_hub_repo(folder: Path) -> bool:
    """Whether ``folder`` is a hub cache repository (``models--*`` with ``refs/`` and ``snapshots/``)."""
    folder = Path(folder)
    return (folder.name.startswith(REPO_PREFIXES) and (folder / "refs").is_dir()
            and (folder / "snapshots").is_dir())


def revisions(repo: Path) -> dict[str, str]:
    """``{revision name: commit hash}`` of the files under ``repo/refs`` (``pr/1`` for nested refs)."""
    out: dict[str, str] = {}
    refs = Path(repo) / "refs"
    for p in sorted(refs.rglob("*")):
        if p.is_file() and not p.name.startswith("."):
            try:
                out[p.relative_to(refs).as_posix()] = p.read_text().strip()
            except OSError:
                continue
    return out


def blob_of(path: str | Path) -> str:
    """The real file behind a snapshot entry (its blob), as a path string."""
    return os.path.realpath(path)


def hub_checkpoints(repo: Path) -> tuple[list[Checkpoint], list[Problem]]:
    """The checkpoints of hub cache repository ``repo``, one per stepped revision, sorted by step, and
    the refs and snapshots left out (see the module docstring)."""
    repo = Path(repo)
    refs = revisions(repo)
    found: dict[int, tuple[str, Checkpoint]] = {}
    problems: list[Problem] = []
    unstepped: list[tuple[str, str]] = []
    by_commit: dict[str, list[str]] = {}
    for name, commit in refs.items():
        by_commit.setdefault(commit, []).append(name)
        step = parse_step(name.rsplit("/", 1)[-1])
        if step is None:
            unstepped.append((name, commit))
            continue
        snap = repo / "snapshots" / commit
        if not snap.is_dir():
            problems.append(Problem(str(repo / "refs" / name), f"revision {name} names commit {commit[:12]}, "
                                                               "which has no snapshot here (not downloaded)"))
            continue
        w = _hf_weights(snap)
        if w is None:
            problems.append(Problem(str(snap), f"revision {name}: no model weights in its snapshot"))
            continue
        c = _weights_checkpoint(w, repo, problems, f"revision {name}: ")
        if c is None:
            continue
        c = _replace(c, step=step, step_source="name", label=f"{name}: {_rel(w, repo)}")
        if step in found:
            problems.append(Problem(str(w), f"revision {name}: duplicate step {step}: revision "
                                            f"{found[step][0]} is used"))
            continue
        found[step] = (name, c)
    stepped = {c: [n for n in names if parse_step(n.rsplit("/", 1)[-1]) is not None]
               for c, names in by_commit.items()}
    for name, commit in unstepped:
        same = stepped.get(commit) or []
        why = (f"repeats revision {', '.join(same)}" if same else
               f"commit {commit[:12]}, no step in the name")
        problems.append(Problem(str(repo / "refs" / name), f"revision {name} ({why}); skipped"))
    named = set(refs.values())
    for snap in sorted((repo / "snapshots").iterdir()):
        if snap.is_dir() and snap.name not in named and _hf_weights(snap) is not None:
            problems.append(Problem(str(snap), "snapshot that no revision in refs/ names (no step); skipped"))
    return [found[s][1] for s in sorted(found)], problems
