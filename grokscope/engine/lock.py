"""One writer per folder: a lock file inside the folder that names its holder.

The probe engine locks its store (:class:`StoreLock`, one probe run per store) and the trainer its run
folder (:class:`RunLock`, one trainer per run folder); readers (probing a run that is training, opening
a store that is being written) take no lock. ``FOLDER/.grokscope.lock`` holds ``{"pid", "host",
"started", "time", "command"}`` of the process writing the folder. The lock itself is an exclusive
``flock`` on that file, which the kernel drops when the holder dies however it dies (SIGKILL
included), so a lock left by a dead process is stale and is taken over;
where ``flock`` is not available (some network filesystems) the holder's pid is checked instead
(same host: is that process still alive with the same start time). A live holder makes
:meth:`FolderLock.acquire` raise :class:`FolderLocked` (:class:`StoreLocked` for a store) naming it in one
line. :func:`live_holder` tells a reader whether a folder is being written now. A store on object
storage has no ``flock``: :mod:`.object_lock` locks it (:func:`.object_lock.store_lock` picks).
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any

from grokscope.errors import GrokscopeError

LOCK_NAME = ".grokscope.lock"


class FolderLocked(GrokscopeError, RuntimeError):
    """Another live process holds the folder's lock."""


class StoreLocked(FolderLocked):
    """Another live process holds the store's lock."""


class RunLocked(FolderLocked):
    """Another live process (a trainer) holds the run folder's lock."""


def _start_time(pid: int) -> str | None:
    """The start time of ``pid`` in clock ticks since boot (Linux ``/proc``), or None."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def pid_alive(pid: int, started: str | None = None) -> bool:
    """Whether process ``pid`` exists on this host (and, if given, started at ``started``)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    if started is not None:
        now = _start_time(pid)
        if now is not None and now != started:
            return False  # the pid was reused by another process
    return True


def read_holder(path: Path) -> dict[str, Any] | None:
    """The holder record in a lock file, or None when it is empty/unreadable."""
    try:
        text = Path(path).read_text()
    except OSError:
        return None
    from grokscope.jsonbounds import loads

    try:
        doc = loads(text, path)
    except ValueError:
        return None
    return doc if isinstance(doc, dict) else None


def describe(holder: dict[str, Any] | None) -> str:
    """``pid N on HOST (since TIME; COMMAND)``: the holder record in words."""
    if not holder:
        return "an unknown process"
    return (f"pid {holder.get('pid')} on {holder.get('host')} (since {holder.get('time', '?')}; "
            f"{' '.join(str(holder.get('command', '')).split())})")


def live_holder(folder: Path) -> dict[str, Any] | None:
    """The holder record of ``folder``'s lock when its process is alive, else None.

    Takes no lock (a reader's check): the file exists only while a writer holds it or after a writer
    died; a holder on another host cannot be checked and counts as alive.
    """
    holder = read_holder(Path(folder) / LOCK_NAME)
    if not holder:
        return None
    if holder.get("host") != socket.gethostname():
        return holder
    try:
        pid = int(holder.get("pid", -1))
    except (TypeError, ValueError):
        return None
    return holder if pid > 0 and pid_alive(pid, holder.get("started")) else None


class FolderLock:
    """The lock of one folder; use as a context manager or call acquire()/release().

    ``took_over`` is the record of a stale holder replaced by :meth:`acquire`, else None. Subclasses
    say what the folder is (:meth:`_held_message`, :attr:`locked_error`).
    """

    locked_error: type[FolderLocked] = FolderLocked

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.path = self.folder / LOCK_NAME
        self._fd: int | None = None
        self.took_over: dict[str, Any] | None = None

    def acquire(self) -> "StoreLock":
        import fcntl

        self.folder.mkdir(parents=True, exist_ok=True)
        me = {"pid": os.getpid(), "host": socket.gethostname(), "started": _start_time(os.getpid()),
              "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
              "command": " ".join(os.path.basename(a) if i == 0 else a
                                  for i, a in enumerate(sys.argv))[:300]}
        for _ in range(20):
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                flocked = True
            except BlockingIOError:
                os.close(fd)
                raise self.locked_error(self._held_message(read_holder(self.path))) from None
            except OSError:
                flocked = False  # no flock on this filesystem: fall back to the pid check
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if not same:  # the file was removed/replaced while we opened it: retry
                os.close(fd)
                continue
            holder = read_holder(self.path)
            if holder and holder.get("pid") != os.getpid():
                if not flocked:
                    local = holder.get("host") == me["host"]
                    if not local or pid_alive(int(holder.get("pid", -1)), holder.get("started")):
                        os.close(fd)
                        raise self.locked_error(self._held_message(holder))
                self.took_over = holder
            payload = json.dumps(me).encode()
            os.ftruncate(fd, 0)
            os.pwrite(fd, payload, 0)
            os.fsync(fd)
            self._fd = fd
            return self
        raise self.locked_error(f"{self.path}: could not take the lock (the file keeps changing)")

    def check(self) -> None:
        """Nothing: a held ``flock`` cannot be taken over (the object-storage lock's can:
        :meth:`.object_lock.ObjectStoreLock.check`)."""

    def _held_message(self, holder: dict[str, Any] | None) -> str:
        return f"{self.folder} is being written by {describe(holder)}. The lock is {self.path}."

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            if read_holder(self.path) and read_holder(self.path).get("pid") == os.getpid():  # type: ignore[union-attr]
                os.unlink(self.path)
        except OSError:
            pass
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> "StoreLock":
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()


class StoreLock(FolderLock):
    """The lock of a probe store: one probe run per store at a time."""

    locked_error = StoreLocked

    def __init__(self, store: Path):
        super().__init__(store)
        self.store = self.folder

    def _held_message(self, holder: dict[str, Any] | None) -> str:
        return (f"store {self.store} is being written by {describe(holder)}; one probe run per store "
                f"at a time (wait for it, or use another --out). The lock is {self.path}.")


class RunLock(FolderLock):
    """The lock of a run folder: one trainer per run folder at a time."""

    locked_error = RunLocked

    def _held_message(self, holder: dict[str, Any] | None) -> str:
        return (f"run folder {self.folder} is being trained by {describe(holder)}; one trainer per run "
                f"folder at a time (wait for it to finish, then --resume; or train into another --out). "
                f"The lock is {self.path}.")
