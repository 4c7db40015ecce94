"""A remote folder tree as the checkpoint floor sees a local one: one listing, read-only paths.

A :class:`Source` is an fsspec URL prefix (``s3://bucket/runs``) listed once, with sizes, by one
``fs.find(detail=True)``; a :class:`RemotePath` is a path inside it with the part of
:class:`pathlib.Path`'s interface that discovery, hub caches and run folders use (``/``, ``name``,
``parent``, ``iterdir``, ``is_file``, ``is_dir``, ``glob``, ``open("rb")``, ``read_text``, ``stat``,
...). The listing answers every question about the tree; only reads go to the server: small files
(run.json, logs, shard indexes, config.json) read whole, a safetensors header by two range reads.
Object storage has no links, so nothing in a source is a link and every path is its own real path.

The listing is a snapshot: a file written after it is not seen until the next :meth:`Source.list`
(``grokscope probe --follow`` lists again). ``Source.bytes_read`` and ``Source.reads`` count what
this process read through the source (the measurements of ``benchmarks/bench_remote.py``).
"""

from __future__ import annotations

import fnmatch
import io
import posixpath
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from grokscope.locations import LocationError, filesystem, is_url

_SOURCES: dict[str, "Source"] = {}  # root URL -> the source listed last, for path_of()
_LOCK = threading.Lock()
SMALL = 1 << 20  # a file read whole up to this size (run.json, logs, indexes) is kept per listing


@dataclass(frozen=True)
class Entry:
    """One listed object: its size in bytes, modification time (seconds, 0 when unknown) and the
    server's ``etag`` (a content hash for single-part S3 uploads; '' when the server gives none)."""

    size: int
    mtime: float
    etag: str


@dataclass(frozen=True)
class Stat:
    """What ``RemotePath.stat()`` gives (the fields of ``os.stat_result`` the floor uses)."""

    st_size: int
    st_mtime: float


class Source:
    """The tree under the fsspec URL ``url``, listed once (see the module docstring)."""

    def __init__(self, url: str, storage_options: dict[str, Any] | None = None):
        self.url = url.rstrip("/")
        self.storage_options = dict(storage_options or {})
        self.fs, self.root = filesystem(self.url, self.storage_options)
        self.root = self.root.rstrip("/")
        self.files: dict[str, Entry] = {}
        self.dirs: dict[str, list[str]] = {}
        self.reads = 0
        self.bytes_read = 0
        self.small: dict[str, bytes] = {}  # whole small files read since the listing
        self.list()

    def list(self) -> None:
        """(Re)list the tree: one ``find`` for the whole prefix."""
        try:
            found = self.fs.find(self.root, detail=True, withdirs=False)
        except FileNotFoundError:
            found = {}
        except OSError as e:
            raise LocationError(f"{self.url}: cannot list ({e})") from None
        files: dict[str, Entry] = {}
        for full, info in found.items():
            full = full.rstrip("/")
            if info.get("type") == "directory" or not full.startswith(self.root + "/"):
                continue
            rel = full[len(self.root) + 1:]
            mtime = info.get("LastModified") or info.get("mtime") or info.get("last_modified") or 0
            files[rel] = Entry(int(info.get("size") or 0), _seconds(mtime),
                               str(info.get("ETag") or info.get("etag") or "").strip('"'))
        self._index(files)

    def _index(self, files: dict[str, Entry]) -> None:
        """Take ``files`` (``{relative path: Entry}``) as the tree: its folders are their parents."""
        dirs: dict[str, set[str]] = {"": set()}
        for rel in files:
            parent, name = posixpath.split(rel)
            dirs.setdefault(parent, set()).add(name)
            while parent:  # every folder on the way is a folder of its parent
                up, here = posixpath.split(parent)
                dirs.setdefault(up, set()).add(here)
                dirs.setdefault(parent, set())
                parent = up
        self.files = files
        self.dirs = {k: sorted(v) for k, v in dirs.items()}
        self.small = {}
        with _LOCK:
            _SOURCES[self.url] = self

    def path(self, rel: str = "") -> "RemotePath":
        """The path ``rel`` (``a/b.safetensors``; '' for the root) of this source."""
        return RemotePath(self, rel.strip("/"))

    def full(self, rel: str) -> str:
        """The filesystem path (no scheme) of ``rel``, for ``self.fs``."""
        return f"{self.root}/{rel}" if rel else self.root

    def read(self, rel: str, start: int | None = None, end: int | None = None) -> bytes:
        """Bytes ``[start, end)`` of file ``rel`` (the whole file by default), from the server; a
        small file (up to :data:`SMALL` bytes) read whole is read once per listing."""
        whole = start is None and end is None
        if whole and rel in self.small:
            return self.small[rel]
        data = self.fetch(rel, start, end)
        self.reads += 1
        self.bytes_read += len(data)
        if whole and len(data) <= SMALL:
            self.small[rel] = data
        return data

    def fetch(self, rel: str, start: int | None, end: int | None) -> bytes:
        """Bytes ``[start, end)`` of file ``rel`` from the server (no memo, no counting)."""
        try:
            return self.fs.cat_file(self.full(rel), start=start, end=end)
        except FileNotFoundError:
            raise FileNotFoundError(f"{self.url}/{rel}: no such object (listed, then gone)") from None


def _seconds(value: Any) -> float:
    if hasattr(value, "timestamp"):
        return float(value.timestamp())
    try:
        return float(value)
    except (TypeError, ValueError):
        return 0.0


class RemotePath:
    """A file or folder of a :class:`Source`; ``str()`` is its URL. Read-only."""

    __slots__ = ("source", "rel")

    def __init__(self, source: Source, rel: str):
        self.source = source
        self.rel = rel

    # -- names --------------------------------------------------------------------------------
    def __str__(self) -> str:
        return f"{self.source.url}/{self.rel}" if self.rel else self.source.url

    def __repr__(self) -> str:
        return f"RemotePath({str(self)!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RemotePath) and str(self) == str(other)

    def __hash__(self) -> int:
        return hash(str(self))

    def __lt__(self, other: "RemotePath") -> bool:
        return str(self) < str(other)

    def __truediv__(self, part: str | Path) -> "RemotePath":
        rel = posixpath.normpath(posixpath.join(self.rel, str(part))) if self.rel else posixpath.normpath(str(part))
        if rel == ".":
            rel = ""
        if rel.startswith("../") or rel == ".." or str(part).startswith("/"):
            raise LocationError(f"{self}/{part}: leads outside {self.source.url}")
        return RemotePath(self.source, rel)

    def joinpath(self, *parts: str) -> "RemotePath":
        p = self
        for part in parts:
            p = p / part
        return p

    @property
    def name(self) -> str:
        return posixpath.basename(self.rel) if self.rel else posixpath.basename(self.source.root)

    @property
    def parent(self) -> "RemotePath":
        return RemotePath(self.source, posixpath.dirname(self.rel)) if self.rel else self

    @property
    def parents(self) -> list["RemotePath"]:
        out, p = [], self
        while p.rel:
            p = p.parent
            out.append(p)
        return out

    @property
    def suffix(self) -> str:
        return posixpath.splitext(self.name)[1]

    def as_posix(self) -> str:
        return str(self)

    def relative_to(self, base: "RemotePath") -> Path:
        """This path relative to ``base`` (a ``PurePosixPath``-like Path); ValueError when outside."""
        if not isinstance(base, RemotePath) or base.source.url != self.source.url:
            raise ValueError(f"{self} is not under {base}")
        if not base.rel:
            return Path(self.rel or ".")
        if self.rel == base.rel:
            return Path(".")
        if not self.rel.startswith(base.rel + "/"):
            raise ValueError(f"{self} is not under {base}")
        return Path(self.rel[len(base.rel) + 1:])

    def resolve(self) -> "RemotePath":
        return self

    absolute = resolve

    # -- the listing --------------------------------------------------------------------------
    def exists(self) -> bool:
        return self.is_file() or self.is_dir()

    def is_file(self) -> bool:
        return self.rel in self.source.files

    def is_dir(self) -> bool:
        return self.rel in self.source.dirs

    def is_symlink(self) -> bool:
        return False  # object storage has no links

    def iterdir(self) -> Iterator["RemotePath"]:
        if not self.is_dir():
            raise NotADirectoryError(f"{self}: not a folder")
        return iter([self / n for n in self.source.dirs[self.rel]])

    def glob(self, pattern: str) -> Iterator["RemotePath"]:
        """Direct children whose names match ``pattern`` (no ``/`` or ``**`` in it)."""
        if "/" in pattern:
            raise ValueError(f"RemotePath.glob: only a name pattern, got {pattern!r}")
        return iter([p for p in self.iterdir() if fnmatch.fnmatchcase(p.name, pattern)]
                    if self.is_dir() else [])

    def walk(self) -> Iterator[tuple["RemotePath", list[str], list[str]]]:
        """``os.walk`` of this folder: ``(folder, sub-folder names, file names)``, top down."""
        stack = [self]
        while stack:
            d = stack.pop(0)
            names = self.source.dirs.get(d.rel, [])
            subs = [n for n in names if (d / n).is_dir()]
            yield d, subs, [n for n in names if (d / n).is_file()]
            stack[:0] = [d / n for n in subs]

    def entry(self) -> Entry:
        try:
            return self.source.files[self.rel]
        except KeyError:
            raise FileNotFoundError(f"{self}: no such object") from None

    def stat(self) -> Stat:
        e = self.entry()
        return Stat(e.size, e.mtime)

    # -- reads ----------------------------------------------------------------------------------
    def read_bytes(self, start: int | None = None, end: int | None = None) -> bytes:
        self.entry()
        return self.source.read(self.rel, start, end)

    def read_text(self, encoding: str = "utf-8") -> str:
        return self.read_bytes().decode(encoding)

    def open(self, mode: str = "rb") -> io.BytesIO:
        """The whole file in memory (small files only: run.json, logs, indexes, config.json)."""
        if mode != "rb":
            raise PermissionError(f"{self}: read-only (mode {mode!r})")
        return io.BytesIO(self.read_bytes())


def as_path(location: "str | Path | RemotePath", storage_options: dict[str, Any] | None = None,
            fresh: bool = False) -> "Path | RemotePath":
    """``location`` as what the floor walks: a :class:`RemotePath` unchanged, a URL as the
    :class:`RemotePath` of the source listed for it (a new :class:`Source`, listed now, when none
    covers it or ``fresh``: what a command does with the location it was given), anything else as a
    local :class:`Path` (no fsspec import)."""
    if isinstance(location, RemotePath):
        return location
    if not is_url(location):
        return Path(str(location)[len("file://"):] if str(location).startswith("file://") else location)
    url = str(location).rstrip("/")
    if fresh:
        return open_source(url, storage_options).path()
    with _LOCK:
        for root, src in sorted(_SOURCES.items(), key=lambda kv: -len(kv[0])):
            if url == root or url.startswith(root + "/"):
                return src.path(url[len(root) + 1:] if url != root else "")
    return open_source(url, storage_options).path()


def source_of(location: Any) -> Source | None:
    """The source a path or URL belongs to (None for a local path)."""
    if isinstance(location, RemotePath):
        return location.source
    if is_url(location):
        p = as_path(location)
        return p.source if isinstance(p, RemotePath) else None
    return None


# -- hub revisions ------------------------------------------------------------------------------------

_HUB_REPO = re.compile(r"^hf://(?:models/)?([^/@]+/[^/@]+)$")
_HUB_FILE = re.compile(r"^hf://([^/@]+/[^/@]+)/models--[^/]+/snapshots/([0-9a-fA-F]{7,64})/(.+)$")


def open_source(url: str, storage_options: dict[str, Any] | None = None) -> Source:
    """The source of ``url``, listed now: :class:`HubRevisions` for a bare hub repository
    (``hf://ORG/NAME``), else :class:`Source`."""
    if _HUB_REPO.match(url.rstrip("/")):
        return HubRevisions(url, storage_options)
    return Source(url, storage_options)


def real_url(url: str) -> str:
    """The URL a file of the source is read from: a file of :class:`HubRevisions`' tree
    (``hf://ORG/NAME/models--ORG--NAME/snapshots/<commit>/model.safetensors``) is the hub's
    ``hf://ORG/NAME@<commit>/model.safetensors``; any other URL is itself. A pure function of the URL,
    so a worker needs no listing to fetch."""
    m = _HUB_FILE.match(url)
    return f"hf://{m.group(1)}@{m.group(2)}/{m.group(3)}" if m else url


class HubRevisions(Source):
    """A model repository on the Hugging Face hub (``hf://ORG/NAME``) as a hub cache repository
    ``models--ORG--NAME/`` (:mod:`grokscope.engine.hub_cache`): ``refs/<branch>`` holding each
    branch's commit, ``snapshots/<commit>/`` its files with their sizes. Listed with
    ``huggingface_hub``'s API (one call for the refs, one file-tree call per branch); files are read
    through ``huggingface_hub``'s filesystem at their commit (:func:`real_url`). Needs the network:
    documented, not tested. ``storage_options``: ``token``, ``endpoint``."""

    def list(self) -> None:
        from huggingface_hub import HfApi

        repo = self.root
        api = HfApi(token=self.storage_options.get("token"), endpoint=self.storage_options.get("endpoint"))
        folder = "models--" + repo.replace("/", "--")
        files: dict[str, Entry] = {}
        small: dict[str, bytes] = {}
        try:
            refs = api.list_repo_refs(repo)
            for branch in refs.branches:
                commit = branch.target_commit
                ref = f"{folder}/refs/{branch.name}"
                files[ref] = Entry(len(commit), 0.0, "")
                small[ref] = commit.encode()
                for item in api.list_repo_tree(repo, revision=commit, recursive=True):
                    size = getattr(item, "size", None)
                    if size is None:  # a folder
                        continue
                    lfs = getattr(item, "lfs", None)
                    etag = (getattr(lfs, "sha256", None) if lfs else None) or getattr(item, "blob_id", "") or ""
                    files[f"{folder}/snapshots/{commit}/{item.path}"] = Entry(int(size), 0.0, str(etag))
        except Exception as e:  # noqa: BLE001 - the hub's errors (not found, gated, offline): one line
            raise LocationError(f"{self.url}: cannot list the repository's revisions ({type(e).__name__}: "
                                f"{str(e).splitlines()[0] if str(e) else ''})") from None
        self._index(files)
        self.small = small

    def fetch(self, rel: str, start: int | None, end: int | None) -> bytes:
        """Bytes of ``rel`` fetched at its commit (:func:`real_url`)."""
        target = real_url(f"{self.url}/{rel}")
        try:
            return self.fs.cat_file(target[len("hf://"):], start=start, end=end)
        except FileNotFoundError:
            raise FileNotFoundError(f"{target}: no such file (listed, then gone)") from None
