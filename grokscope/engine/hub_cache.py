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

The cache is someone else's folder, so everything followed in it stays inside the repository folder:
a ref must hold a commit name (a ref holding ``../../elsewhere`` is left out without echoing it), a
ref, snapshot or weight file that is a link leading outside the repository (or into a loop) is left
out with a line naming the link and its target, and nothing outside is opened or parsed.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from grokscope.sources import RemotePath, as_path

from .checkpoints import (Checkpoint, Problem, escaped, hf_weights_file, link_escape, parse_step, rel_label,
                          weights_checkpoint, with_fields)

# what a ref file holds: a commit name (40 hex digits for the hub; no folder, no "..")
_COMMIT = re.compile(rb"[0-9A-Za-z][0-9A-Za-z_-]{0,127}")

REPO_PREFIXES = ("models--",)


def is_hub_repo(folder: Path) -> bool:
    """Whether ``folder`` is a hub cache repository (``models--*`` with ``refs/`` and ``snapshots/``)."""
    folder = as_path(folder)
    return (folder.name.startswith(REPO_PREFIXES) and (folder / "refs").is_dir()
            and (folder / "snapshots").is_dir())


def revisions(repo: Path, problems: list[Problem] | None = None) -> dict[str, str]:
    """``{revision name: commit hash}`` of the files under ``repo/refs`` (``pr/1`` for nested refs).

    A ref that is a link leading outside ``repo``, or whose content is not a commit name, is left out
    (with a problem appended to ``problems``, which never quotes what the file holds); links to folders
    are not followed."""
    out: dict[str, str] = {}
    problems = problems if problems is not None else []
    repo = as_path(repo)
    refs = repo / "refs"
    walk = refs.walk() if isinstance(refs, RemotePath) else os.walk(refs)
    for top, dirs, files in walk:  # links to folders are listed in dirs, never entered
        here = as_path(top)
        for d in sorted(dirs):
            if (here / d).is_symlink():
                problems.append(Problem(str(here / d), link_escape(here / d, repo)
                                        or "a link to a folder in refs/; not followed"))
        dirs[:] = sorted(d for d in dirs if not (here / d).is_symlink() and not d.startswith("."))
        for name in sorted(files):
            p = here / name
            if name.startswith("."):
                continue
            why = link_escape(p, repo)
            if why is not None:
                problems.append(Problem(str(p), why))
                continue
            try:
                with p.open("rb") as fh:
                    raw = fh.read(257).strip()
            except OSError as e:
                problems.append(Problem(str(p), f"unreadable ref ({e.strerror or e})"))
                continue
            rev = p.relative_to(refs).as_posix()
            if not _COMMIT.fullmatch(raw):
                problems.append(Problem(str(p), f"revision {rev}: the ref does not hold a commit name; skipped"))
                continue
            out[rev] = raw.decode()
    return out


def blob_of(path: str | Path) -> str:
    """The real file behind a snapshot entry (its blob), as a path string (a remote path: itself,
    object storage has no links)."""
    return str(path) if isinstance(path, RemotePath) else os.path.realpath(path)


def hub_checkpoints(repo: Path) -> tuple[list[Checkpoint], list[Problem]]:
    """The checkpoints of hub cache repository ``repo``, one per stepped revision, sorted by step, and
    the refs and snapshots left out (see the module docstring)."""
    repo = as_path(repo)
    problems: list[Problem] = []
    refs = revisions(repo, problems)
    found: dict[int, tuple[str, Checkpoint]] = {}
    unstepped: list[tuple[str, str]] = []
    by_commit: dict[str, list[str]] = {}
    for name, commit in refs.items():
        by_commit.setdefault(commit, []).append(name)
        step = parse_step(name.rsplit("/", 1)[-1])
        if step is None:
            unstepped.append((name, commit))
            continue
        snap = repo / "snapshots" / commit
        why = link_escape(snap, repo) if snap.is_symlink() else None
        if why is not None:
            problems.append(Problem(str(snap), f"revision {name}: {why}"))
            continue
        if not snap.is_dir():
            problems.append(Problem(str(repo / "refs" / name), f"revision {name} names commit {commit[:12]}, "
                                                               "which has no snapshot here (not downloaded)"))
            continue
        w = hf_weights_file(snap)
        if w is None:
            problems.append(Problem(str(snap), f"revision {name}: no model weights in its snapshot"))
            continue
        why = link_escape(w, repo)
        if why is not None:
            problems.append(Problem(str(w), f"revision {name}: {why}"))
            continue
        c = weights_checkpoint(w, repo, problems, f"revision {name}: ")
        if c is None or escaped(c, repo, problems):
            continue
        c = with_fields(c, step=step, step_source="name", label=f"{name}: {rel_label(w, repo)}")
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
        if snap.is_dir() and snap.name not in named and hf_weights_file(snap) is not None:
            problems.append(Problem(str(snap), "snapshot that no revision in refs/ names (no step); skipped"))
    return [found[s][1] for s in sorted(found)], problems
