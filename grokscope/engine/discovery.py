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

import errno
import os
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from grokscope import jsonbounds
from grokscope import runs as runfmt
from grokscope.errors import GrokscopeError

from .aliases import is_alias, resolve_alias

CHECKPOINT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin", ".ckpt")
INDEX_SUFFIXES = (".safetensors.index.json", ".bin.index.json")
# files that trainers save next to the weights and that are not model state dicts
SIDE_FILES = re.compile(
    r"^(optimizer|optim|scheduler|lr_scheduler|scaler|rng_state(_\d+)?|training_args|trainer_state"
    r"|training_state|last_state|ema_state)\.(pt|pth|bin|ckpt|json)$", re.I)
# HF weight files inside a checkpoint-N/ folder, in order of preference
HF_WEIGHTS = ("model.safetensors.index.json", "model.safetensors", "pytorch_model.bin.index.json",
              "pytorch_model.bin")
SKIP_DIRS = {"__pycache__", "node_modules", "state", "wandb", "lightning_logs_tmp"}

_STEP = re.compile(r"(?:^|[^a-z])(?:global_)?step[s]?[=_-]?(\d+)", re.I)
_CKPT = re.compile(r"(?:^|[^a-z])(?:checkpoint|ckpt|iter|iteration)[=_-]?(\d+)", re.I)
_EPOCH = re.compile(r"(?:^|[^a-z])epoch[=_-]?(\d+)", re.I)
_TRAILING = re.compile(r"(?:^|[_\-=.])(\d+)$")
_BARE = re.compile(r"^(\d+)$")


class DiscoveryError(GrokscopeError, ValueError):
    """The path cannot be searched for checkpoints (missing, not a folder, nothing found)."""


@dataclass(frozen=True)
class Checkpoint:
    """One checkpoint: where its weights are and at which step.

    ``path`` is the file (or the index file of a sharded checkpoint); ``files`` every file holding its
    tensors; ``kind`` is ``"safetensors"`` or ``"torch"`` (pickle, read with ``weights_only=True``),
    with ``sharded`` for index-based checkpoints; ``label`` is the path relative to the run folder.
    """

    path: str
    kind: str
    files: tuple[str, ...]
    step: int | None
    label: str
    sharded: bool = False
    step_source: str = ""  # "name" | "metadata" | "global_step" (an alias, :mod:`.aliases`) | ""


@dataclass(frozen=True)
class Problem:
    """A file that discovery could not place (no step, duplicate step, unreadable header)."""

    path: str
    reason: str


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


# -- step parsing ---------------------------------------------------------------------------------

def _stem(name: str) -> str:
    for suf in INDEX_SUFFIXES + CHECKPOINT_SUFFIXES:
        if name.endswith(suf):
            return name[: -len(suf)]
    return name


def parse_step(name: str) -> int | None:
    """The training step named by a checkpoint file or folder name, or None.

    ``step-500``, ``step_500``, ``step500``, ``global_step=500``, ``epoch=3-step=1200.ckpt`` (1200),
    ``checkpoint-500``, ``ckpt_500``, ``iter_500``, ``model_500.pt``, ``500.pt``. A name whose only
    number is an epoch (``epoch=3.ckpt``) gives None.
    """
    stem = _stem(name)
    m = _STEP.findall(stem)
    if m:
        return int(m[-1])
    m = _CKPT.findall(stem)
    if m:
        return int(m[-1])
    if _BARE.match(stem):
        return int(stem)
    t = _TRAILING.search(stem)
    if t:
        e = _EPOCH.search(stem)
        if e and e.end() == len(stem):
            return None
        return int(t.group(1))
    return None


def parse_epoch(name: str) -> int | None:
    """The epoch in a name such as ``epoch=3-step=1200.ckpt``, or None."""
    m = _EPOCH.findall(_stem(name))
    return int(m[-1]) if m else None


def safetensors_metadata(path: Path) -> dict[str, str]:
    """The ``__metadata__`` of a safetensors file's header (no tensor data is read).

    Raises ``ValueError`` naming the file when the header is truncated or not JSON.
    """
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) != 8:
            raise ValueError(f"{path}: truncated safetensors file (no header)")
        (n,) = struct.unpack("<Q", head)
        if n > 100_000_000:
            raise ValueError(f"{path}: not a safetensors file (header length {n})")
        raw = f.read(n)
    if len(raw) != n:
        raise ValueError(f"{path}: truncated safetensors header ({len(raw)} of {n} bytes)")
    try:
        header = jsonbounds.loads(raw, path)
    except jsonbounds.JSONBoundsError:
        raise
    except ValueError as e:
        raise ValueError(f"{path}: safetensors header is not JSON: {e}") from e
    if not isinstance(header, dict):
        raise ValueError(f"{path}: safetensors header is not a JSON object")
    meta = header.get("__metadata__") or {}
    if not isinstance(meta, dict):
        raise ValueError(f"{path}: safetensors __metadata__ is not a JSON object")
    return {str(k): str(v) for k, v in meta.items()}


# -- confinement: links in a third party's folder --------------------------------------------------

def _real(p: Path | str) -> Path:
    return Path(os.path.realpath(p))


def inside(p: Path | str, root: Path | str) -> bool:
    """Whether ``p``, every link on the way followed, is ``root`` (also resolved) or lies under it."""
    real, top = _real(p), _real(root)
    return real == top or top in real.parents


def link_escape(p: Path | str, root: Path | str) -> str | None:
    """None when ``p`` (every link followed) stays inside ``root``; else why it is refused, to follow
    ``p`` in a line (``f"{p}: {why}"``): a link leading outside (its target named, a path, never the
    target's content), into a loop, or nowhere. Nothing is opened."""
    p = Path(p)
    try:
        real = Path(os.path.realpath(p, strict=True))
    except OSError as e:
        if e.errno == errno.ELOOP:
            return "a link loop; refused"
        return f"a link to {os.readlink(p) if p.is_symlink() else 'a missing file'}, which does not exist; refused"
    if inside(real, root):
        return None
    return f"a link to {real}, outside {root}; refused (not opened)"


def _escaped(c: Checkpoint, root: Path, problems: list[Problem]) -> bool:
    """Whether a file of checkpoint ``c`` leads outside ``root`` (a problem is appended naming it)."""
    for f in (c.path, *c.files):
        why = link_escape(f, root)
        if why is not None:
            problems.append(Problem(str(f), why))
            return True
    return False


# -- one folder of checkpoints --------------------------------------------------------------------

def _is_ckpt_file(p: Path) -> bool:
    n = p.name
    return (p.is_file() and not n.startswith(".") and n.endswith(CHECKPOINT_SUFFIXES)
            and not SIDE_FILES.match(n))


def _hf_weights(folder: Path) -> Path | None:
    """The weight file of an HF-style checkpoint folder (see ``HF_WEIGHTS``), or None."""
    for name in HF_WEIGHTS:
        if (folder / name).is_file():
            return folder / name
    st = sorted(p for p in folder.glob("*.safetensors") if not p.name.startswith("."))
    if len(st) == 1:
        return st[0]
    idx = sorted(folder.glob("*.safetensors.index.json"))
    if len(idx) == 1:
        return idx[0]
    return None


def _weights_checkpoint(w: Path, root: Path, problems: list[Problem], where: str = "") -> Checkpoint | None:
    """The checkpoint of a weights file or shard index ``w`` (paths relative to ``root``); None, with a
    problem (``where`` prefixed, e.g. ``"revision main: "``) appended, when the shard index is unreadable."""
    try:
        return _sharded(w, root) if w.name.endswith(INDEX_SUFFIXES) else _single(w, root)
    except (OSError, ValueError) as e:
        problems.append(Problem(str(w), f"{where}unreadable shard index: {e}"))
        return None


def shard_names(weight_map: Any, index: Path) -> list[str]:
    """The shard files a shard index's ``weight_map`` names, sorted: plain file names beside the index
    (a name with a folder in it, ``..`` or an absolute path would lead elsewhere: ``ValueError``)."""
    if not isinstance(weight_map, dict):
        raise ValueError(f"{index}: 'weight_map' is not a JSON object")
    names = set(weight_map.values())
    bad = sorted(repr(n)[:80] for n in names if not isinstance(n, str) or not n or n in (".", "..")
                 or "/" in n or "\\" in n or "\0" in n)
    if bad:
        raise ValueError(f"{index}: shard names must be file names beside the index, found {', '.join(bad[:3])}")
    return sorted(names)


def _sharded(index: Path, run_dir: Path) -> Checkpoint:
    doc = jsonbounds.read_json(index)
    wm = doc.get("weight_map") if isinstance(doc, dict) else None
    if not isinstance(wm, dict) or not wm:
        raise ValueError(f"{index}: no 'weight_map' in the index")
    files = tuple(str(index.parent / f) for f in shard_names(wm, index))
    kind = "safetensors" if index.name.endswith(".safetensors.index.json") else "torch"
    return Checkpoint(path=str(index), kind=kind, files=files, step=None,
                      label=_rel(index, run_dir), sharded=True)


def _single(path: Path, run_dir: Path) -> Checkpoint:
    kind = "safetensors" if path.name.endswith(".safetensors") else "torch"
    return Checkpoint(path=str(path), kind=kind, files=(str(path),), step=None, label=_rel(path, run_dir))


def _rel(p: Path, base: Path) -> str:
    try:
        return p.relative_to(base).as_posix()
    except ValueError:
        return p.as_posix()


def _with_step(c: Checkpoint, names: list[str]) -> tuple[Checkpoint, str | None]:
    """``c`` with its step from the first of ``names`` that has one, else from safetensors metadata."""
    for n in names:
        s = parse_step(n)
        if s is not None:
            return _replace(c, step=s, step_source="name"), None
    if c.kind == "safetensors" and not c.sharded:
        try:
            meta = safetensors_metadata(Path(c.path))
        except (OSError, ValueError) as e:
            return c, f"no step in its name and unreadable header: {e}"
        if "step" in meta:
            try:
                return _replace(c, step=int(meta["step"]), step_source="metadata"), None
            except ValueError:
                return c, f"metadata step {meta['step']!r} is not an integer"
    return c, "no step in its name or metadata; skipped"


def _replace(c: Checkpoint, **kw: Any) -> Checkpoint:
    from dataclasses import replace
    return replace(c, **kw)


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
    folder = Path(folder)
    run_dir = Path(run_dir) if run_dir is not None else folder
    root = Path(root) if root is not None else run_dir
    found: list[tuple[Checkpoint, list[str]]] = []
    problems: list[Problem] = []
    entries = sorted(folder.iterdir(), key=lambda p: p.name)
    sharded_files: set[str] = set()
    for p in entries:
        if p.is_file() and p.name.endswith(INDEX_SUFFIXES) and not p.name.startswith("."):
            try:
                c = _sharded(p, run_dir)
            except (OSError, ValueError) as e:
                problems.append(Problem(str(p), f"unreadable shard index: {e}"))
                continue
            sharded_files.update(c.files)
            found.append((c, [p.name]))
    for p in entries:
        if _is_ckpt_file(p) and str(p) not in sharded_files:
            found.append((_single(p, run_dir), [p.name]))
        elif p.is_dir() and not p.name.startswith(".") and not p.name.endswith(".zarr"):
            w = _hf_weights(p)
            if w is None:
                continue
            c = _weights_checkpoint(w, run_dir, problems)
            if c is None:
                continue
            found.append((c, [p.name, w.name]))
    # a folder that is itself an HF checkpoint: its name carries the step
    if _STEP.search(folder.name) or _CKPT.search(folder.name):
        found = [(c, names + [folder.name]) for c, names in found]
    found = [(c, names) for c, names in found if not _escaped(c, root, problems)]
    placed: dict[int, Checkpoint] = {}
    aliases: list[Checkpoint] = []
    for c, names in found:
        c2, why = _with_step(c, names)
        if c2.step is None:
            if is_alias(_stem(Path(c.path).name)):
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
        entries = list(Path(folder).iterdir())
    except OSError:
        return False
    for p in entries:
        if p.name.startswith("."):
            continue
        if _is_ckpt_file(p) or (p.is_file() and p.name.endswith(INDEX_SUFFIXES)):
            return True
        if p.is_dir() and not p.name.endswith(".zarr") and _hf_weights(p) is not None:
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
            seen.add(_real(d))
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
        if why is None and _real(link) in seen:
            why = f"a link to {_real(link)}, a folder already searched (a loop or a second name); skipped"
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
    root = Path(path)
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
        rel = _rel(_real(d), base) if d != root else "."
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
        confine = base if (inside(ck, base) or not named) else _real(ck)
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
