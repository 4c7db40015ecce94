"""The checkpoint floor: what one checkpoint is (:class:`Checkpoint`), how its step is read from its
name or metadata, which files hold weights (single files, shards, Hugging Face folders), and the
confinement of every path followed to the folder the user named (:func:`inside`, :func:`link_escape`).
Discovery (:mod:`.discovery`), hub caches (:mod:`.hub_cache`) and loading (:mod:`.loading`) stand on it."""

from __future__ import annotations

import errno
import hashlib
import os
import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from grokscope import jsonbounds
from grokscope.sources import RemotePath, as_path


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

STEP_PATTERN = re.compile(r"(?:^|[^a-z])(?:global_)?step[s]?[=_-]?(\d+)", re.I)
CKPT_PATTERN = re.compile(r"(?:^|[^a-z])(?:checkpoint|ckpt|iter|iteration)[=_-]?(\d+)", re.I)
_EPOCH = re.compile(r"(?:^|[^a-z])epoch[=_-]?(\d+)", re.I)
_TRAILING = re.compile(r"(?:^|[_\-=.])(\d+)$")
_BARE = re.compile(r"^(\d+)$")


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
    # bytes of a remote checkpoint's files from the listing (a sharded one: the index first), else ()
    sizes: tuple[int, ...] = ()
    # the same files' ETags and sizes from the listing, hashed (:func:`listed_etag`), else ''
    etag: str = ""


@dataclass(frozen=True)
class Problem:
    """A file that discovery could not place (no step, duplicate step, unreadable header)."""

    path: str
    reason: str


# -- step parsing ---------------------------------------------------------------------------------

def name_stem(name: str) -> str:
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
    stem = name_stem(name)
    m = STEP_PATTERN.findall(stem)
    if m:
        return int(m[-1])
    m = CKPT_PATTERN.findall(stem)
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
    m = _EPOCH.findall(name_stem(name))
    return int(m[-1]) if m else None


def safetensors_header_bytes(path: Path | RemotePath) -> bytes:
    """The raw JSON header of a safetensors file: 8 bytes of length, then that many bytes (two range
    reads for a remote file). ``ValueError`` naming the file when it is truncated or not safetensors."""
    if isinstance(path, RemotePath):
        size = path.stat().st_size
        head = path.read_bytes(0, min(8, size))
    else:
        f = open(path, "rb")
        head = f.read(8)
    try:
        if len(head) != 8:
            raise ValueError(f"{path}: truncated safetensors file (no header)")
        (n,) = struct.unpack("<Q", head)
        if n > 100_000_000:
            raise ValueError(f"{path}: not a safetensors file (header length {n})")
        if isinstance(path, RemotePath):
            raw = path.read_bytes(8, min(8 + n, size)) if size > 8 else b""
        else:
            raw = f.read(n)
    finally:
        if not isinstance(path, RemotePath):
            f.close()
    if len(raw) != n:
        raise ValueError(f"{path}: truncated safetensors header ({len(raw)} of {n} bytes)")
    return raw


def safetensors_header(path: Path | RemotePath) -> dict[str, Any]:
    """The parsed safetensors header (``{tensor: {dtype, shape, data_offsets}, "__metadata__": ...}``),
    no tensor data read. ``ValueError`` naming the file when it is truncated or not JSON."""
    raw = safetensors_header_bytes(path)
    try:
        header = jsonbounds.loads(raw, path)
    except jsonbounds.JSONBoundsError:
        raise
    except ValueError as e:
        raise ValueError(f"{path}: safetensors header is not JSON: {e}") from e
    if not isinstance(header, dict):
        raise ValueError(f"{path}: safetensors header is not a JSON object")
    return header


def safetensors_metadata(path: Path | RemotePath) -> dict[str, str]:
    """The ``__metadata__`` of a safetensors file's header (no tensor data is read).

    Raises ``ValueError`` naming the file when the header is truncated or not JSON.
    """
    header = safetensors_header(path)
    meta = header.get("__metadata__") or {}
    if not isinstance(meta, dict):
        raise ValueError(f"{path}: safetensors __metadata__ is not a JSON object")
    return {str(k): str(v) for k, v in meta.items()}


# -- confinement: links in a third party's folder --------------------------------------------------

def real_path(p: Path | str | RemotePath) -> Path | RemotePath:
    """``p`` with every link followed (a remote path has none: itself)."""
    if not isinstance(p, Path):
        p = as_path(p)
    if isinstance(p, RemotePath):
        return p
    return Path(os.path.realpath(p))


def inside(p: Path | str, root: Path | str) -> bool:
    """Whether ``p``, every link on the way followed, is ``root`` (also resolved) or lies under it."""
    real, top = real_path(p), real_path(root)
    return real == top or top in real.parents


def link_escape(p: Path | str, root: Path | str) -> str | None:
    """None when ``p`` (every link followed) stays inside ``root``; else why it is refused, to follow
    ``p`` in a line (``f"{p}: {why}"``): a link leading outside (its target named, a path, never the
    target's content), into a loop, or nowhere. Nothing is opened."""
    p = as_path(p)
    if isinstance(p, RemotePath):
        return None if inside(p, root) else f"outside {root}; refused (not opened)"
    try:
        real = Path(os.path.realpath(p, strict=True))
    except OSError as e:
        if e.errno == errno.ELOOP:
            return "a link loop; refused"
        return f"a link to {os.readlink(p) if p.is_symlink() else 'a missing file'}, which does not exist; refused"
    if inside(real, root):
        return None
    return f"a link to {real}, outside {root}; refused (not opened)"


def escaped(c: Checkpoint, root: Path, problems: list[Problem]) -> bool:
    """Whether a file of checkpoint ``c`` leads outside ``root`` (a problem is appended naming it)."""
    for f in (c.path, *c.files):
        why = link_escape(f, root)
        if why is not None:
            problems.append(Problem(str(f), why))
            return True
    return False


# -- one folder of checkpoints --------------------------------------------------------------------

def is_checkpoint_file(p: Path) -> bool:
    n = p.name
    return (p.is_file() and not n.startswith(".") and n.endswith(CHECKPOINT_SUFFIXES)
            and not SIDE_FILES.match(n))


def hf_weights_file(folder: Path) -> Path | None:
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


def weights_checkpoint(w: Path, root: Path, problems: list[Problem], where: str = "") -> Checkpoint | None:
    """The checkpoint of a weights file or shard index ``w`` (paths relative to ``root``); None, with a
    problem (``where`` prefixed, e.g. ``"revision main: "``) appended, when the shard index is unreadable."""
    try:
        return sharded_checkpoint(w, root) if w.name.endswith(INDEX_SUFFIXES) else single_checkpoint(w, root)
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


def sharded_checkpoint(index: Path, run_dir: Path) -> Checkpoint:
    doc = jsonbounds.read_json(index)
    wm = doc.get("weight_map") if isinstance(doc, dict) else None
    if not isinstance(wm, dict) or not wm:
        raise ValueError(f"{index}: no 'weight_map' in the index")
    files = tuple(str(index.parent / f) for f in shard_names(wm, index))
    kind = "safetensors" if index.name.endswith(".safetensors.index.json") else "torch"
    listed = [index, *(index.parent / f for f in shard_names(wm, index))]
    return Checkpoint(path=str(index), kind=kind, files=files, step=None,
                      label=rel_label(index, run_dir), sharded=True,
                      sizes=listed_sizes(listed), etag=listed_etag(listed))


def single_checkpoint(path: Path, run_dir: Path) -> Checkpoint:
    kind = "safetensors" if path.name.endswith(".safetensors") else "torch"
    return Checkpoint(path=str(path), kind=kind, files=(str(path),), step=None, label=rel_label(path, run_dir),
                      sizes=listed_sizes([path]), etag=listed_etag([path]))


def _listed(paths: list[Any]) -> list[Any] | None:
    """The source listing's entries of remote files (size, ETag); None for local files or when one is
    missing."""
    if not all(isinstance(p, RemotePath) and p.is_file() for p in paths):
        return None
    return [p.entry() for p in paths]


def listed_sizes(paths: list[Any]) -> tuple[int, ...]:
    """The listed sizes of remote files (free: the source's listing has them); () for local files or
    when one is missing."""
    entries = _listed(paths)
    return () if entries is None else tuple(e.size for e in entries)


def listed_etag(paths: list[Any]) -> str:
    """A hash of remote files' ETags and sizes as the source listed them (free, like the sizes): the
    same while the files are unchanged, since a server's ETag changes with an object's content (S3:
    the MD5 of the bytes or of the parts; the hub: the LFS sha256 or git blob id). '' for local files,
    or when the server gave one of them no ETag."""
    entries = _listed(paths)
    if entries is None or not all(e.etag for e in entries):
        return ""
    h = hashlib.sha256()
    for e in entries:
        h.update(f"{e.etag}:{e.size}\n".encode())
    return h.hexdigest()


def rel_label(p: Path, base: Path) -> str:
    try:
        return p.relative_to(base).as_posix()
    except ValueError:
        return p.as_posix()


def with_step(c: Checkpoint, names: list[str]) -> tuple[Checkpoint, str | None]:
    """``c`` with its step from the first of ``names`` that has one, else from safetensors metadata."""
    for n in names:
        s = parse_step(n)
        if s is not None:
            return with_fields(c, step=s, step_source="name"), None
    if c.kind == "safetensors" and not c.sharded:
        try:
            meta = safetensors_metadata(as_path(c.path))
        except (OSError, ValueError) as e:
            return c, f"no step in its name and unreadable header: {e}"
        if "step" in meta:
            try:
                return with_fields(c, step=int(meta["step"]), step_source="metadata"), None
            except ValueError:
                return c, f"metadata step {meta['step']!r} is not an integer"
    return c, "no step in its name or metadata; skipped"


def with_fields(c: Checkpoint, **kw: Any) -> Checkpoint:
    from dataclasses import replace
    return replace(c, **kw)
