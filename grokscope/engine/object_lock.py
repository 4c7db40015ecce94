"""One writer per store on object storage, where there is no ``flock``: a lock object made by a
conditional create, kept alive by a heartbeat.

``STORE/.grokscope.lock`` holds ``{"id", "pid", "host", "started", "time", "command", "heartbeat",
"stale_after"}`` of the driver writing the store. :meth:`ObjectStoreLock.acquire` creates it with a
conditional PUT (``If-None-Match: *``): of two drivers creating it at once exactly one succeeds,
and the other is refused (:class:`~.lock.StoreLocked`, one line naming the holder). While it holds
the lock, the driver rewrites the object every :data:`HEARTBEAT_S` seconds with a fresh
``heartbeat`` (seconds since the epoch). A lock is stale when its heartbeat is older than its
``stale_after`` (:data:`STALE_AFTER_S`; clocks of the hosts must agree to well within it), or at
once when its holder ran on this host (same host name and pid space) and its process is gone (a
killed driver). A stale lock is
taken over without deleting it (a delete then create would let a third driver slip in): the taker
first creates, conditionally, a claim object ``.grokscope.lock.took-<hash of the stale record>``;
of two drivers taking over the same stale record only one claim create wins, and the other is
refused, naming the winner. The winner checks the lock still holds that stale record and then
overwrites it with its own (the claim stays until it releases, so a late taker of the same record
is refused too). The holder checks on every heartbeat that the object is still its own; if another
driver took it over (this one stalled past ``stale_after``), :meth:`check` raises before the next
commit.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import sys
import threading
import time
import uuid
from typing import Any

from .lock import LOCK_NAME, StoreLocked, _start_time, describe, pid_alive
from .storefs import StoreFS
from .lock import StoreLock
from .storefs import store_fs
from grokscope.locations import is_url

HEARTBEAT_S = 10.0  # seconds between the holder's rewrites of the lock object
STALE_AFTER_S = 60.0  # a heartbeat older than this: the holder is gone (or stalled), the lock is taken over


def _parse(raw: bytes | None) -> dict[str, Any] | None:
    try:
        doc = json.loads(raw) if raw is not None else None
    except ValueError:
        return None
    return doc if isinstance(doc, dict) else None


def pid_space() -> str | None:
    """This process's pid space: the kernel's boot id and the pid namespace (Linux), or None. Two
    records with the same one name processes that this process can check by pid; the host name
    alone does not (containers may share a name and not their pids)."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            boot = f.read().strip()
        return f"{boot}/{os.readlink('/proc/self/ns/pid')}"
    except OSError:
        return None


def is_stale(holder: dict[str, Any] | None, now: float | None = None, stale_after: float = STALE_AFTER_S) -> bool:
    """Whether the lock record ``holder`` no longer holds: unreadable, its heartbeat older than its
    ``stale_after`` (default ``stale_after``), or its process, in this host's pid space, gone."""
    if not holder:
        return True
    now = time.time() if now is None else now
    try:
        age = now - float(holder["heartbeat"])
        limit = float(holder.get("stale_after", stale_after))
    except (KeyError, TypeError, ValueError):
        return True
    if age > limit:
        return True
    space = pid_space()
    if holder.get("host") == socket.gethostname() and space is not None and holder.get("pid_space") == space:
        try:
            pid = int(holder.get("pid", -1))
        except (TypeError, ValueError):
            return True
        return pid <= 0 or not pid_alive(pid, holder.get("started"))
    return False


class ObjectStoreLock:
    """The lock of a store on object storage (see the module docstring); the interface of
    :class:`~.lock.StoreLock`: ``acquire()``, ``release()``, ``took_over``, and :meth:`check`."""

    locked_error = StoreLocked

    def __init__(self, fs: StoreFS, heartbeat: float = HEARTBEAT_S, stale_after: float = STALE_AFTER_S):
        self.fs, self.heartbeat, self.stale_after = fs, heartbeat, stale_after
        self.store = fs.display()
        self.path = fs.display(LOCK_NAME)
        self.took_over: dict[str, Any] | None = None
        self.lost: dict[str, Any] | None = None
        self._me: dict[str, Any] | None = None
        self._claim: str | None = None  # the claim object of a stale lock this driver took over
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _record(self) -> dict[str, Any]:
        assert self._me is not None
        return {**self._me, "heartbeat": time.time()}

    def _held_message(self, holder: dict[str, Any] | None) -> str:
        return (f"store {self.store} is being written by {describe(holder)}; one probe run per store "
                f"at a time (wait for it, or use another --out). The lock is {self.path}.")

    def acquire(self) -> "ObjectStoreLock":
        """Take the lock or raise :class:`StoreLocked` naming the live holder (see the module docstring)."""
        self._me = {"id": uuid.uuid4().hex, "pid": os.getpid(), "host": socket.gethostname(),
                    "started": _start_time(os.getpid()), "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
                    "command": " ".join(os.path.basename(a) if i == 0 else a for i, a in enumerate(sys.argv))[:300],
                    "stale_after": self.stale_after, "pid_space": pid_space()}
        holder: dict[str, Any] | None = None
        for attempt in range(5):
            if attempt:
                time.sleep(0.2 * attempt)
            if self.fs.create(LOCK_NAME, json.dumps(self._record()).encode()):
                self._start()
                return self
            raw = self.fs.read(LOCK_NAME)
            if raw is None:
                continue  # released meanwhile: create again
            holder = _parse(raw)
            if not is_stale(holder, stale_after=self.stale_after):
                raise self.locked_error(self._held_message(holder))
            claim = f"{LOCK_NAME}.took-{hashlib.sha256(raw).hexdigest()[:16]}"
            if not self.fs.create(claim, json.dumps(self._record()).encode()):
                holder = _parse(self.fs.read(claim)) or holder  # another driver is taking it over
                continue  # the next round reads (and names) the winner
            if self.fs.read(LOCK_NAME) != raw:
                self.fs.delete(claim)
                continue  # refreshed or released meanwhile: judge it again
            self.fs.write(LOCK_NAME, json.dumps(self._record()).encode())
            self.took_over, self._claim = holder or {}, claim
            self._start()
            return self
        raise self.locked_error(self._held_message(holder))

    def _start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._beat, name="grokscope-lock-heartbeat", daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        assert self._me is not None
        while not self._stop.wait(self.heartbeat):
            try:
                now = _parse(self.fs.read(LOCK_NAME))
                if not now or now.get("id") != self._me["id"]:
                    self.lost = now or {}
                    return
                self.fs.write(LOCK_NAME, json.dumps(self._record()).encode())
            except Exception:  # noqa: BLE001 - a network blip: the next beat tries again
                continue

    def check(self) -> None:
        """Raise :class:`StoreLocked` when another driver took the lock over (this one stalled past
        ``stale_after``): nothing more may be written."""
        if self.lost is not None:
            raise self.locked_error(f"store {self.store}: this run lost its lock to {describe(self.lost)} "
                                    f"(no heartbeat for over {self.stale_after:.0f} s); nothing more is written "
                                    "by this run")

    def release(self) -> None:
        """Stop the heartbeat and delete the lock object if it is still this driver's."""
        if self._thread is None:
            return
        self._stop.set()
        self._thread.join(timeout=30)
        self._thread = None
        try:
            now = _parse(self.fs.read(LOCK_NAME))
            if now and self._me and now.get("id") == self._me["id"]:
                self.fs.delete(LOCK_NAME)
            if self._claim:
                self.fs.delete(self._claim)
                self._claim = None
        except OSError:
            pass

    def __enter__(self) -> "ObjectStoreLock":
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()


def store_lock(location: Any, storage_options: dict[str, Any] | None = None) -> Any:
    """The lock of the store at ``location``: :class:`~.lock.StoreLock` (``flock``) for a local
    folder, :class:`ObjectStoreLock` for an fsspec URL."""


    if is_url(location):
        return ObjectStoreLock(store_fs(location, storage_options))
    return StoreLock(location)
