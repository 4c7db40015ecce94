"""The files of a probe store, wherever it is: a local folder or an fsspec URL (``s3://bucket/p.zarr``).

:func:`store_fs` gives a :class:`StoreFS` with the few operations the writer (:mod:`.store`), the
lock (:mod:`.lock`) and the read view (:mod:`.store_view`) need besides zarr's own: whole-object
reads and writes, a create that fails when the object exists, deletes and listings, and the zarr
store over the same location. Keys are ``/``-separated and relative to the store's root (``""`` is
the root). Every write is whole: a reader sees the object before or after it, never half of it (a
local file is written aside and renamed over the old one; an object store's PUT is atomic).

A local folder imports no fsspec filesystem (and no s3fs); a URL's filesystem comes from
:func:`grokscope.locations.filesystem` (the storage options of the request, never stored).
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Any

from grokscope.locations import LocationError, filesystem, is_url, local_path


class StoreFS:
    """The files of one store (see the module docstring); :class:`LocalFS` or :class:`RemoteFS`."""

    remote = False
    location: str | Path

    def display(self, key: str = "") -> str:
        """The store's location joined with ``key``, as messages name it."""
        return str(self.location) if not key else f"{str(self.location).rstrip('/')}/{key}"

    def exists(self, key: str) -> bool:
        """Whether the object (file) ``key`` exists."""
        raise NotImplementedError

    def read(self, key: str) -> bytes | None:
        """The bytes of ``key``, or None when it does not exist."""
        raise NotImplementedError

    def write(self, key: str, data: bytes) -> None:
        """Write ``key`` whole (readers see the old object or the new one)."""
        raise NotImplementedError

    def write_many(self, objects: dict[str, bytes]) -> None:
        """Write every ``{key: bytes}`` whole, in any order (concurrently where the store can)."""
        for key, data in objects.items():
            self.write(key, data)

    def create(self, key: str, data: bytes) -> bool:
        """Write ``key`` only if it does not exist (atomically: of two racing creators one wins);
        False when it exists."""
        raise NotImplementedError

    def delete(self, key: str) -> None:
        """Remove the object ``key`` (nothing when it is absent)."""
        raise NotImplementedError

    def files(self, key: str = "") -> list[str]:
        """Every object under the folder ``key``, recursively, as keys (sorted)."""
        raise NotImplementedError

    def children(self, key: str = "") -> list[str]:
        """The names directly under the folder ``key`` (objects and sub-folders; sorted)."""
        raise NotImplementedError

    def is_folder(self, key: str) -> bool:
        """Whether anything is stored under the folder ``key``."""
        raise NotImplementedError

    def remove_folder(self, key: str) -> None:
        """Remove the folder ``key`` and everything under it."""
        raise NotImplementedError

    def zarr_store(self, read_only: bool = False) -> Any:
        """A zarr store over the root (``LocalStore`` or ``FsspecStore``)."""
        raise NotImplementedError


class LocalFS(StoreFS):
    """A store in a local folder."""

    def __init__(self, path: str | Path):
        self.location = self.root = local_path(path)

    def _p(self, key: str) -> Path:
        return self.root / key if key else self.root

    def exists(self, key: str) -> bool:
        return self._p(key).is_file()

    def read(self, key: str) -> bytes | None:
        try:
            return self._p(key).read_bytes()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            return None

    def write(self, key: str, data: bytes) -> None:
        p = self._p(key)
        p.parent.mkdir(parents=True, exist_ok=True)
        tmp = p.with_name(f"{p.name}.{uuid.uuid4().hex[:8]}.partial")
        tmp.write_bytes(data)
        os.replace(tmp, p)

    def create(self, key: str, data: bytes) -> bool:
        p = self._p(key)
        p.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        return True

    def delete(self, key: str) -> None:
        try:
            self._p(key).unlink()
        except FileNotFoundError:
            pass

    def files(self, key: str = "") -> list[str]:
        top = self._p(key)
        if not top.is_dir():
            return []
        return sorted(f.relative_to(self.root).as_posix() for f in top.rglob("*") if f.is_file())

    def children(self, key: str = "") -> list[str]:
        top = self._p(key)
        return sorted(c.name for c in top.iterdir()) if top.is_dir() else []

    def is_folder(self, key: str) -> bool:
        return self._p(key).is_dir()

    def remove_folder(self, key: str) -> None:
        import shutil

        shutil.rmtree(self._p(key), ignore_errors=True)

    def zarr_store(self, read_only: bool = False) -> Any:
        from zarr.storage import LocalStore

        return LocalStore(str(self.root), read_only=read_only)


class RemoteFS(StoreFS):
    """A store at an fsspec URL (object storage: no rename, so every commit point is one PUT)."""

    remote = True

    def __init__(self, url: str, storage_options: dict[str, Any] | None = None):
        self.location = url.rstrip("/")
        self.options = dict(storage_options or {})
        self.fs, self.root = filesystem(self.location, self.options)
        self.root = self.root.rstrip("/")

    def _p(self, key: str) -> str:
        return f"{self.root}/{key}" if key else self.root

    def check_reachable(self) -> None:
        """Raise :class:`LocationError` (one line naming the URL) when the store's bucket cannot be
        reached: it does not exist, the credentials are refused, the server does not answer."""
        bucket = self.root.split("/", 1)[0]
        try:
            self.fs.info(bucket)  # one request (S3: HEAD bucket), whatever the bucket holds
        except FileNotFoundError:
            raise LocationError(f"{self.location}: the bucket {bucket!r} does not exist (create it first, "
                                "or check the URL and AWS_ENDPOINT_URL)") from None
        except PermissionError as e:
            raise LocationError(f"{self.location}: access refused ({_first(e)}); check the credentials "
                                "(AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE or --storage-options)"
                                ) from None
        except Exception as e:  # noqa: BLE001 - botocore/aiohttp raise many types for one cause
            raise LocationError(f"{self.location}: cannot reach the store ({type(e).__name__}: {_first(e)})"
                                ) from None

    def exists(self, key: str) -> bool:
        return bool(self.fs.isfile(self._p(key)))

    def read(self, key: str) -> bytes | None:
        try:
            return self.fs.cat_file(self._p(key))
        except (FileNotFoundError, IsADirectoryError):
            return None

    def write(self, key: str, data: bytes) -> None:
        self.fs.pipe_file(self._p(key), data)

    def write_many(self, objects: dict[str, bytes]) -> None:
        if objects:
            self.fs.pipe({self._p(k): v for k, v in objects.items()})  # s3fs: concurrent PUTs

    def create(self, key: str, data: bytes) -> bool:
        try:
            self.fs.pipe_file(self._p(key), data, mode="create")  # If-None-Match: * (412 if it exists)
        except FileExistsError:
            return False
        return True

    def delete(self, key: str) -> None:
        try:
            self.fs.rm_file(self._p(key))
        except FileNotFoundError:
            pass

    def files(self, key: str = "") -> list[str]:
        top = self._p(key)
        try:
            found = self.fs.find(top)
        except FileNotFoundError:
            return []
        cut = len(self.root) + 1
        return sorted(f[cut:] for f in found if f.startswith(top + "/"))

    def children(self, key: str = "") -> list[str]:
        try:
            found = self.fs.ls(self._p(key), detail=False)
        except FileNotFoundError:
            return []
        return sorted({f.rstrip("/").rsplit("/", 1)[-1] for f in found})

    def is_folder(self, key: str) -> bool:
        top = self._p(key)
        try:
            found = self.fs.ls(top, detail=False)
        except (FileNotFoundError, NotADirectoryError):
            return False
        return any(f.rstrip("/") != top for f in found)  # an object's own key lists as itself

    def remove_folder(self, key: str) -> None:
        for f in self.files(key):
            self.delete(f)

    def zarr_store(self, read_only: bool = False) -> Any:
        from zarr.storage import FsspecStore

        options = dict(self.options)
        if {"s3", "s3a", "gs", "gcs"} & set(_protocols(self.fs)):
            options.setdefault("use_listings_cache", False)  # every listing the server's
        return FsspecStore.from_url(self.location, storage_options=options, read_only=read_only)


def _protocols(fs: Any) -> tuple[str, ...]:
    p = fs.protocol
    return (p,) if isinstance(p, str) else tuple(p)


def _first(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:200] if text else type(e).__name__


def store_fs(location: str | Path, storage_options: dict[str, Any] | None = None) -> StoreFS:
    """The :class:`StoreFS` of the store at ``location`` (a local path or an fsspec URL)."""
    if is_url(location):
        return RemoteFS(str(location), storage_options)
    return LocalFS(location)


def absolute(location: str | Path) -> str | Path:
    """``location`` made absolute when it is a local path (workers may run elsewhere); a URL as is."""
    return str(location).rstrip("/") if is_url(location) else Path(local_path(location)).absolute()
