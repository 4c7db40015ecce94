"""Checkpoint discovery: which runs live under a path, which checkpoints each run has, at which step.

A path may be

* one run folder: ``run.json`` + ``checkpoints/`` (a grokscope run, or a third-party folder after
  ``grokscope init``; a workspace's run.json names a checkpoint folder elsewhere, ``"checkpoints"``),
  or a folder of checkpoints without ``run.json`` (the model then comes from the command line);
* a folder of runs, searched recursively (a run's own sub-folders are not searched; ``*.zarr``,
  hidden folders and ``__pycache__`` are skipped);
* a folder of bare checkpoint files or Hugging Face style ``checkpoint-N/`` folders;
* a Hugging Face hub cache repository ``models--ORG--NAME/`` (``refs/``, ``snapshots/``, ``blobs/``),
  one checkpoint per revision named like ``step1000`` or ``checkpoint-500`` (:mod:`.hub_cache`), or a
  hub cache folder holding several.

Recognised checkpoints: ``*.safetensors``; sharded safetensors (``*.safetensors.index.json`` naming
its shards); ``*.pt``/``*.pth``/``*.bin`` state dicts; Lightning ``*.ckpt``; ``checkpoint-N/`` folders
holding ``model.safetensors`` (or its sharded index), ``pytorch_model.bin`` (or its index) or one
``*.safetensors`` file. Trainer side files (``optimizer.pt``, ``scheduler.pt``, ``rng_state.pth``,
``training_args.bin``, ...) are ignored.

Steps come from names (``step-500``, ``step_500``, ``step500``, ``global_step=500``,
``checkpoint-500``, ``ckpt_500``, ``iter_500``, ``epoch=3-step=1200``, ``model_500``, ``500``); a name
with an epoch but no step is not guessed. When the name has no step, the ``step`` entry of the
safetensors metadata is used. Aliases without a step (``last.ckpt``, ``best.pt``, ...) are placed at
their step or left out with a reason (:mod:`.aliases`, which reads those files); nothing else here
reads tensor data.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from grokscope import runs as runfmt
from grokscope.errors import GrokscopeError
from grokscope.sources import as_path

from .aliases import is_alias, resolve_alias
from .checkpoints import (CHECKPOINT_SUFFIXES, CKPT_PATTERN, INDEX_SUFFIXES, SKIP_DIRS, STEP_PATTERN, Checkpoint,
                          Problem, escaped, hf_weights_file, inside, is_checkpoint_file, link_escape, name_stem,
                          real_path, rel_label, sharded_checkpoint, single_checkpoint, weights_checkpoint,
                          with_step)

class DiscoveryError(GrokscopeError, ValueError):
    """The path cannot be searched for checkpoints (missing, not a folder, nothing found)."""


@dataclass
class Run:
    """A run found under the probed path.

    ``name`` is the store group name (the folder relative to the probed path, sanitised, unique);
    ``spec`` the parsed ``run.json`` (None when there is none); ``checkpoints`` those with a step,
    sorted by step; ``problems`` the files left out and why.
    """

    name: str
    path: Path
    rel: str
    checkpoint_dir: Path
    spec: dict[str, Any] | None = None
    spec_error: str | None = None
    checkpoints: list[Checkpoint] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)

    @property
    def steps(self) -> list[int]:
        return [c.step for c in self.checkpoints]  # type: ignore[misc]


def epochs_to_steps(checkpoints: list[Checkpoint], spec: dict[str, Any] | None) -> list[Checkpoint]:
    """``checkpoints`` with the numbers of their names read as epochs when ``spec`` (a run.json) says
    so (``steps_per_epoch``, written by ``grokscope init --steps-per-epoch``): step = epoch × it. A step
    read from a file's own metadata is left alone."""
    from dataclasses import replace

    from grokscope.runs import STEPS_PER_EPOCH_KEY

    n = (spec or {}).get(STEPS_PER_EPOCH_KEY) if isinstance(spec, dict) else None
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        return checkpoints
    return [replace(c, step=c.step * n, step_source="epoch") if c.step is not None and c.step_source == "name"
            else c for c in checkpoints]


def checkpoints_in(folder: Path, run_dir: Path | None = None,
                   root: Path | None = None) -> tuple[list[Checkpoint], list[Problem]]:
    """The checkpoints directly in ``folder`` (files, sharded indexes, ``checkpoint-N/`` folders).

    Returns ``(checkpoints sorted by step, problems)``; checkpoints without a step and duplicates of a
    step already taken (kept: the first by name) are reported as problems, and so is a checkpoint
    whose file (or folder) is a link leading outside ``root`` (default ``run_dir``): it is never opened.
    """
    folder = as_path(folder)
    run_dir = as_path(run_dir) if run_dir is not None else folder
    root = as_path(root) if root is not None else run_dir
    found: list[tuple[Checkpoint, list[str]]] = []
    problems: list[Problem] = []
    entries = sorted(folder.iterdir(), key=lambda p: p.name)
    sharded_files: set[str] = set()
    for p in entries:
        if p.is_file() and p.name.endswith(INDEX_SUFFIXES) and not p.name.startswith("."):
            try:
                c = sharded_checkpoint(p, run_dir)
            except (OSError, ValueError) as e:
                problems.append(Problem(str(p), f"unreadable shard index: {e}"))
                continue
            sharded_files.update(c.files)
            found.append((c, [p.name]))
    for p in entries:
        if is_checkpoint_file(p) and str(p) not in sharded_files:
            found.append((single_checkpoint(p, run_dir), [p.name]))
        elif p.is_dir() and not p.name.startswith(".") and not p.name.endswith(".zarr"):
            w = hf_weights_file(p)
            if w is None:
                continue
            c = weights_checkpoint(w, run_dir, problems)
            if c is None:
                continue
            found.append((c, [p.name, w.name]))
    # a folder that is itself an HF checkpoint: its name carries the step
    if STEP_PATTERN.search(folder.name) or CKPT_PATTERN.search(folder.name):
        found = [(c, names + [folder.name]) for c, names in found]
    found = [(c, names) for c, names in found if not escaped(c, root, problems)]
    placed: dict[int, Checkpoint] = {}
    aliases: list[Checkpoint] = []
    for c, names in found:
        c2, why = with_step(c, names)
        if c2.step is None:
            if is_alias(name_stem(Path(c.path).name)):
                aliases.append(c)
                continue
            problems.append(Problem(c.path, why or "no step"))
            continue
        if c2.step in placed:
            problems.append(Problem(c.path, f"duplicate step {c2.step}: {placed[c2.step].label} is used"))
            continue
        placed[c2.step] = c2
    stepped = dict(placed)
    for c in aliases:  # last.ckpt, best.pt ...: at their own step, or left out saying why
        c2, why = resolve_alias(c, stepped)
        if c2 is not None and c2.step in placed:
            why, c2 = f"duplicate step {c2.step}: {placed[c2.step].label} is used", None
        if c2 is None:
            problems.append(Problem(c.path, why))
            continue
        placed[c2.step] = c2  # type: ignore[index]
    return [placed[s] for s in sorted(placed)], problems


def has_checkpoints(folder: Path) -> bool:
    """Whether ``folder`` directly holds checkpoint files, a shard index or ``checkpoint-N/`` folders."""
    try:
        entries = list(as_path(folder).iterdir())
    except OSError:
        return False
    for p in entries:
        if p.name.startswith("."):
            continue
        if is_checkpoint_file(p) or (p.is_file() and p.name.endswith(INDEX_SUFFIXES)):
            return True
        if p.is_dir() and not p.name.endswith(".zarr") and hf_weights_file(p) is not None:
            return True
    return False


# -- runs -----------------------------------------------------------------------------------------

_UNSAFE = re.compile(r"[^A-Za-z0-9._=+-]")


def sanitise_name(rel: str) -> str:
    """A Zarr/DataTree-safe group name for a run folder path (``a/b c`` → ``a__b_c``)."""
    parts = [_UNSAFE.sub("_", p) for p in rel.split("/") if p not in ("", ".")]
    name = "__".join(parts) or "run"
    if name.startswith(("_", ".")):
        name = "run" + name
    return name


def _search(root: Path, skipped: list[Problem]) -> list[tuple[Path, Path]]:
    """``(run folder, checkpoint folder)`` of every run under ``root``: first every real folder, then
    the folders reached through links, each searched once. A link leading outside ``root`` or into a
    loop, or naming a folder already searched, is appended to ``skipped`` and not followed."""
    from .hub_cache import is_hub_repo

    found: list[tuple[Path, Path]] = []
    seen: set[Path] = set()
    links: list[Path] = []

    def search(top: Path) -> None:  # without recursion: a folder tree may be deeper than Python's stack
        stack = [top]
        while stack:
            d = stack.pop()
            seen.add(real_path(d))
            if is_hub_repo(d):
                found.append((d, d))
                continue
            if (d / runfmt.RUN_JSON).is_file():
                found.append((d, runfmt.checkpoint_dir(d)))
                continue
            if has_checkpoints(d):
                found.append((d, d))
                continue
            ck = d / runfmt.CHECKPOINT_DIR
            if ck.is_dir() and has_checkpoints(ck):
                found.append((d, ck))
                continue
            try:
                subs = sorted(p for p in d.iterdir() if p.is_dir())
            except OSError:
                continue
            subs = [s for s in subs if not (s.name.startswith(".") or s.name in SKIP_DIRS or s.name.endswith(".zarr"))]
            links.extend(s for s in subs if s.is_symlink())
            stack.extend(reversed([s for s in subs if not s.is_symlink()]))

    search(root)
    while links:
        link = links.pop(0)
        why = link_escape(link, root)
        if why is None and real_path(link) in seen:
            why = f"a link to {real_path(link)}, a folder already searched (a loop or a second name); skipped"
        if why is not None:
            skipped.append(Problem(str(link), why))
            continue
        search(link)
    return found


def find_runs(path: Path, skipped: list[Problem] | None = None) -> list[Run]:
    """Every run under ``path`` (see the module docstring), sorted by relative path.

    Links are followed only while they stay inside ``path``: a folder reached through a link that
    leads outside it, into a loop or to a folder already searched is left out, and so is a checkpoint
    file or folder that is such a link (each named with its target in ``skipped`` or the run's
    ``problems``; nothing outside is opened). Raises :class:`DiscoveryError` when ``path`` is not a
    folder or holds no checkpoints at all.
    """
    root = as_path(path)
    if not root.exists():
        raise DiscoveryError(f"{root}: no such file or folder")
    if not root.is_dir():
        raise DiscoveryError(f"{root}: expected a folder (a run, a folder of runs or of checkpoints)")
    from .hub_cache import hub_checkpoints, is_hub_repo

    skipped = skipped if skipped is not None else []
    found = _search(root, skipped)
    if not found:
        also = f"; {skipped[0].path}: {skipped[0].reason}" if skipped else ""
        raise DiscoveryError(f"{root}: no checkpoints found (looked for run.json, checkpoints/, "
                             f"{', '.join(CHECKPOINT_SUFFIXES)} files, checkpoint-N/ folders and hub "
                             f"cache models--*/ folders){also}")
    out: list[Run] = []
    used: set[str] = set()
    base = root.resolve()
    for d, ck in found:
        rel = rel_label(real_path(d), base) if d != root else "."
        name = sanitise_name(rel if rel != "." else base.name)
        unique, i = name, 2
        while unique in used:
            unique, i = f"{name}-{i}", i + 1
        used.add(unique)
        run = Run(name=unique, path=d, rel=rel, checkpoint_dir=ck)
        if (d / runfmt.RUN_JSON).is_file():
            try:
                run.spec = runfmt.read_run_json(d)
            except runfmt.RunError as e:
                run.spec_error = str(e)
        # a run.json may name a checkpoint folder elsewhere (a workspace, `init --workspace`): that
        # folder is then the one followed links must stay in; a checkpoints/ link may not leave the path
        named = ck not in (d, d / runfmt.CHECKPOINT_DIR)
        confine = base if (inside(ck, base) or not named) else real_path(ck)
        why = link_escape(ck, confine) if ck.exists() else None
        if why is not None:
            run.problems.append(Problem(str(ck), why))
        elif is_hub_repo(ck):
            run.checkpoints, run.problems = hub_checkpoints(ck)
        elif ck.is_dir():
            run.checkpoints, run.problems = checkpoints_in(ck, d, confine)
            run.checkpoints = epochs_to_steps(run.checkpoints, run.spec)
        elif run.spec is not None and ck != d:
            run.problems.append(Problem(str(ck), f"the checkpoint folder named by {d / runfmt.RUN_JSON} "
                                                 "does not exist"))
        out.append(run)
    return out
