"""One writer at a time: the lock file of an output, its heartbeat, and when it is stale.

A run holds ``<state folder>/lock`` (host, pid, the pid's start time), created exclusively,
and a heartbeat thread touches it every ``HEARTBEAT_EVERY`` seconds. A lock is *stale*, and
may be taken over, when

* it was written on this host and its pid no longer exists, or the pid now belongs to
  another process (its start time in ``/proc/PID/stat`` differs from the recorded one);
* it was written on another host (a shared filesystem), or cannot be read, and its
  heartbeat (the file's mtime) is older than ``LOCK_STALE_AFTER`` seconds.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator, Mapping
from typing import Any

from ._locations import Location

try:  # POSIX: serialises the takeover of a stale lock between processes on one host
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None

__all__ = ["DestinationLock", "DestinationLockedError", "LOCK_STALE_AFTER", "live_lock"]

log = logging.getLogger(__name__)

LOCK_STALE_AFTER = 60.0  # seconds without a heartbeat before another host's lock is stale
HEARTBEAT_EVERY = 10.0


class DestinationLockedError(RuntimeError):
    """Another live run is writing the same destination."""


def _pid_start(pid: int) -> str | None:
    # The start time tells a recycled pid apart from the lock's owner (Linux).
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def read_lock(lock: Location) -> dict[str, Any] | None:
    """The lock's content with its heartbeat (``mtime``), or None if there is no lock."""
    try:
        raw = lock.read_bytes()
        if lock.is_local:
            mtime = os.stat(lock.path).st_mtime
        else:
            mtime = lock.fs.modified(lock.path).timestamp()
    except (FileNotFoundError, NotADirectoryError):
        return None
    try:
        info = json.loads(raw)
        if not isinstance(info, dict):
            raise ValueError("not a JSON object")
    except ValueError:  # torn or not ours: only its age can tell
        info = {"host": None, "pid": None}
    info["mtime"] = mtime
    return info


def lock_is_live(info: Mapping[str, Any]) -> bool:
    """Whether the lock's owner may still be running (see the module docstring)."""
    if info.get("host") == socket.gethostname():
        try:
            pid = int(info.get("pid", -1))
        except (TypeError, ValueError):
            pid = -1
        if pid <= 0:
            return False
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            pass  # exists, owned by another user
        current, recorded = _pid_start(pid), info.get("pid_start")
        return recorded is None or current is None or current == recorded
    return time.time() - float(info.get("mtime", 0.0)) < LOCK_STALE_AFTER


def locked_message(what: str, info: Mapping[str, Any]) -> str:
    owner = (
        f"pid {info.get('pid')} on {info.get('host')}"
        if info.get("host")
        else "another run (unreadable lock)"
    )
    return (
        f"{what} is being written by {owner}; a second run into the same dst is refused "
        f"(wait for it to finish; a lock without heartbeat for {LOCK_STALE_AFTER:g} s is stale)"
    )


def live_lock(lock: Location) -> dict[str, Any] | None:
    """The lock's content if a live run holds it, else None."""
    info = read_lock(lock)
    return info if info is not None and lock_is_live(info) else None


class DestinationLock:
    """A lock file refreshed by a heartbeat thread.

    Taken with an exclusive create (locally: written aside, then hard-linked into place, so
    it is never seen half-written). A stale lock is taken over; locally the check and the
    takeover happen under ``flock`` on the lock's folder, so two runs cannot both take over.
    """

    def __init__(self, lock: Location, what: str):
        self.lock, self.what = lock, what
        self.body = json.dumps(
            {
                "host": socket.gethostname(),
                "pid": os.getpid(),
                "pid_start": _pid_start(os.getpid()),
                "started": time.time(),
                "token": uuid.uuid4().hex,
            }
        ).encode()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.held = False

    def acquire(self) -> None:
        folder = Location(self.lock.spec, self.lock.protocol, self.lock.parent_path(),
                          self.lock.storage_options)  # fmt: skip
        folder.fs.makedirs(folder.path, exist_ok=True)
        with self._guard(folder):
            for _ in range(2):
                if self._create():
                    break
                info = read_lock(self.lock)
                if info is not None and lock_is_live(info):
                    raise DestinationLockedError(locked_message(self.what, info))
                if info is not None:
                    log.info(
                        "taking over the stale lock of pid %s on %s (%s)",
                        info.get("pid"), info.get("host"), self.what,
                    )  # fmt: skip
                with contextlib.suppress(FileNotFoundError):
                    self.lock.fs.rm_file(self.lock.path)
            else:
                raise DestinationLockedError(f"could not take the lock of {self.what}")
        self.held = True
        self._thread = threading.Thread(target=self._beat, name="fstack-dask-lock", daemon=True)
        self._thread.start()

    @contextlib.contextmanager
    def _guard(self, folder: Location) -> Iterator[None]:
        if not folder.is_local or fcntl is None:
            yield
            return
        fd = os.open(folder.path, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # releases the flock

    def _create(self) -> bool:
        """Exclusively create the lock file with our body; False if one exists."""
        if not self.lock.is_local:
            try:
                with self.lock.fs.open(self.lock.path, "xb") as fh:
                    fh.write(self.body)
            except FileExistsError:
                return False
            return True
        aside = f"{self.lock.path}.{os.getpid()}.{uuid.uuid4().hex}"
        try:
            with open(aside, "wb") as fh:
                fh.write(self.body)
                fh.flush()
                os.fsync(fh.fileno())
            os.link(aside, self.lock.path)  # atomic, and fails if the lock exists
        except FileExistsError:
            return False
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(aside)
        return True

    def mine(self) -> bool:
        try:
            return self.lock.read_bytes() == self.body
        except Exception:
            return False

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_EVERY):
            with contextlib.suppress(Exception):
                if self.mine():  # never refresh a lock someone else holds now
                    if self.lock.is_local:
                        os.utime(self.lock.path)
                    else:
                        self.lock.fs.touch(self.lock.path, truncate=False)

    def stop_heartbeat(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def release(self) -> None:
        self.stop_heartbeat()
        if self.held and self.mine():
            with contextlib.suppress(FileNotFoundError):
                self.lock.fs.rm_file(self.lock.path)
        self.held = False

    def moved_to(self, lock: Location) -> None:
        """The lock file now lives at ``lock`` (its folder was renamed)."""
        self.lock = lock
