"""One writer at a time: the lock of an output, a lease renewed by a heartbeat.

A run holds ``<state folder>/lock``, created exclusively, whose body names a random
``token`` (and, for messages, the host and pid). The holder renews it every
``HEARTBEAT_EVERY`` seconds (the file's mtime), and everything that writes for the run checks,
before each block's data and done-marker and before the run finishes, that the lock still
carries its token: a run whose lock was taken over stops writing (:class:`LeaseLostError`).
When a lock is stale, so that ``resume``/``overwrite`` may take it over, is
:mod:`.staleness`'s to judge.

On S3 each step is one conditional request (``If-None-Match`` to create, ``If-Match`` on the
ETag read to take over, renew and remove: AWS S3, MinIO, moto), so two runs taking over one
stale lock cannot both get it, and a run never renews or removes a lock that is no longer the
one it wrote. Each renewal rewrites the body with a new ``beat``, so a lock renewed after a
taker read it is not taken over.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import posixpath
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from .._errors import DestinationLockedError, LeaseLostError, as_interrupt, interruption_behind
from .._locations import Location
from . import staleness
from .folders import RENAME_NOREPLACE, renameat2
from .staleness import (
    _owner,
    _s3_object,
    lock_is_live,
    locked_message,
    machine_id,
    read_lock,
)

try:  # POSIX: the takeover's mutual exclusion, and the flock a live holder keeps
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None

__all__ = ["DestinationLock", "Lease", "release_all"]

log = logging.getLogger(__name__)


_NO_FLOCK = {errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOLCK, errno.EINVAL}


def _refused(exc: BaseException) -> bool:
    """Whether S3 refused a conditional request: the object is not the one named, or gone."""
    if isinstance(exc, FileNotFoundError | FileExistsError):
        return True
    response = getattr(exc.__cause__, "response", None) or getattr(exc, "response", None) or {}
    return response.get("Error", {}).get("Code") in (
        "PreconditionFailed", "ConditionalRequestConflict", "NoSuchKey", "412", "409", "404"
    )  # fmt: skip


def _token_of(raw: bytes) -> str | None:
    try:
        info = json.loads(raw)
    except (ValueError, RecursionError):  # (nested 100000 deep: not ours)
        return None
    return info.get("token") if isinstance(info, dict) else None


#: The runs (their lock's token) whose tasks on a cluster may still write after the run
#: stopped (:mod:`fstack_dask._runs.fence`), and why: their lock is kept, not removed.
_WRITERS_LEFT: dict[str, str] = {}


@dataclass(frozen=True)
class Lease:
    """What a task needs to check that its run still holds the lock (picklable)."""

    lock: Location
    token: str
    what: str

    def keep_for_writers(self, why: str) -> None:
        """This stopped run's tasks may still write (``why``): its lock is kept when it is
        released (:meth:`DestinationLock.release`), live for ``LOCK_STALE_AFTER`` seconds."""
        _WRITERS_LEFT[self.token] = why

    def check(self) -> None:
        """Raise :class:`LeaseLostError` unless the lock still carries this run's token."""
        try:
            raw = self.lock.read_bytes()
        except (FileNotFoundError, NotADirectoryError):
            output = posixpath.dirname(posixpath.dirname(self.lock.path.rstrip("/")))
            if not self.lock.fs.exists(posixpath.join(output, "zarr.json")):
                # no run that takes a lock over removes or moves the output's metadata
                raise LeaseLostError(
                    f"{self.what}: the folder this run writes, {output!r}, is gone (moved or "
                    "removed by another program while this run wrote it); this run stopped "
                    "writing"
                ) from None
            raise LeaseLostError(
                f"{self.what}: this run's lock was taken over and is gone (another run judged "
                f"it stale after {staleness.LOCK_STALE_AFTER:g} s without a heartbeat: was this "
                "run suspended, or its host unreachable?); this run stopped writing"
            ) from None
        if _token_of(raw) != self.token:
            try:
                info = json.loads(raw)
            except (ValueError, RecursionError):
                info = {}
            raise LeaseLostError(
                f"{self.what} was taken over by {_owner(info)} after this run's lock went "
                f"{staleness.LOCK_STALE_AFTER:g} s without a heartbeat (suspended, or its host "
                "unreachable); this run stopped writing"
            )


class DestinationLock:
    """A lock file, an ``flock`` on it for this process's lifetime, and a heartbeat thread.

    Taken with an exclusive create (locally: written aside and flock'ed, then hard-linked
    into place, so it is never seen half-written nor without its flock; on FAT, which has no
    hard links, renamed without replacing: :func:`_publish`). A stale lock is taken
    over; locally the check and the takeover happen under ``flock`` on the lock's folder, so
    two runs cannot both take over.
    """

    def __init__(self, lock: Location, what: str):
        self.lock, self.what = lock, what
        self.token = uuid.uuid4().hex
        self._fields = {
            "host": socket.gethostname(),
            "machine": machine_id(),
            "pid": os.getpid(),  # for messages only
            "started": time.time(),
            "token": self.token,
        }
        self.body = json.dumps(self._fields).encode()
        self._etag: str | None = None  # on S3: the ETag of the version this run last wrote
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._fd: int | None = None  # holds the flock while this run lives
        self._beaten = 0.0  # when the lock was last taken or refreshed (monotonic)
        self.held = False
        self.lost = False

    @property
    def lease(self) -> Lease:
        return Lease(self.lock, self.token, self.what)

    def acquire(self) -> None:
        folder = Location(self.lock.spec, self.lock.protocol, self.lock.parent_path(),
                          self.lock.storage_options)  # fmt: skip
        try:
            with self._guard(folder):
                for _ in range(2):
                    if self._create():
                        self.held = True
                        break
                    info = read_lock(self.lock)
                    if info is not None and lock_is_live(info, self.lock):
                        raise DestinationLockedError(locked_message(self.what, info))
                    if info is not None:
                        log.info(
                            "taking over the stale lock of %s (%s)", _owner(info), self.what
                        )  # fmt: skip
                    if self._take_over(info):
                        self.held = True
                        break
                else:
                    raise DestinationLockedError(f"could not take the lock of {self.what}")
            self._beaten = time.monotonic()
            self._thread = threading.Thread(target=self._beat, name="fstack-dask-lock",
                                            daemon=True)  # fmt: skip
            self._thread.start()
        except BaseException:
            # Ctrl-C after the lock was made (in a kernel, or a service): released here, not
            # left held by a process that lives on and refuses every later run into dst as
            # "being written by" itself (a helper's run, 2026-12-05)
            if self.held:
                self.release()
            raise

    @contextlib.contextmanager
    def _guard(self, folder: Location) -> Iterator[None]:
        if not folder.is_local or fcntl is None:
            yield
            return
        fd = os.open(folder.path, os.O_RDONLY)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
            except OSError as exc:
                if exc.errno not in _NO_FLOCK:
                    raise
                # A filesystem without flock (Lustre mounted -o noflock): the exclusive create
                # still decides, and a run whose lock another took over stops at its lease check.
            yield
        finally:
            os.close(fd)  # releases the flock

    def _put(self, **condition: str) -> None:
        """Write this run's body, with a new beat, to the S3 lock if ``condition`` holds
        (raises if it does not), and keep the new version's ETag."""
        fs, bucket, key = _s3_object(self.lock)  # type: ignore[misc]
        body = json.dumps({**self._fields, "beat": time.time()}).encode()
        try:
            out = fs.call_s3("put_object", Bucket=bucket, Key=key, Body=body, **condition)
        finally:
            fs.invalidate_cache(self.lock.path)
        self._etag = out["ETag"]

    def _take_over(self, info: dict[str, Any] | None) -> bool:
        """Replace the stale lock ``info`` was read from; True if this run holds it now."""
        if _s3_object(self.lock) is None:
            with contextlib.suppress(FileNotFoundError):
                self.lock.fs.rm_file(self.lock.path)
            return False  # the next exclusive create decides
        if info is None or "etag" not in info:
            return False
        try:  # only the version judged stale: a run that took it over or renewed it since wins
            self._put(IfMatch=info["etag"])
        except OSError as exc:
            if _refused(exc):
                return False
            raise
        return True

    def _create(self) -> bool:
        """Exclusively create the lock file with our body; False if one exists."""
        if _s3_object(self.lock) is not None:
            try:
                self._put(IfNoneMatch="*")
            except OSError as exc:
                if _refused(exc):
                    return False
                raise
            return True
        if not self.lock.is_local:
            try:
                with self.lock.fs.open(self.lock.path, "xb") as fh:
                    fh.write(self.body)
            except FileExistsError:
                return False
            return True
        aside = f"{self.lock.path}.{uuid.uuid4().hex}.tmp"
        fd = None
        try:
            fd = os.open(aside, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o666)  # as the umask says
            os.write(fd, self.body)
            os.fsync(fd)
            _hold(fd)  # before the lock is visible: never seen unheld
            fd = _publish(aside, self.lock.path, fd, self.body)
            # ours from here, released with the lock whatever lands next: a Ctrl-C as the aside
            # name went (below) left the flock held by the process, every later run into dst
            # refused as "being written by" itself until a restart
            self._fd, self.held, fd = fd, True, None
        except FileExistsError:
            if fd is not None:
                os.close(fd)
            return False
        except BaseException:
            if fd is not None:
                os.close(fd)
            raise
        finally:
            # the lock is taken or refused: a name left (EIO) goes with our state folder
            with contextlib.suppress(OSError):
                os.unlink(aside)
        return True

    def _still_mine(self) -> bool | None:
        """Whether the lock carries this run's token; None where it could not be read."""
        try:
            return _token_of(self.lock.read_bytes()) == self.token
        except (FileNotFoundError, NotADirectoryError):
            return False
        except Exception:
            return None

    def mine(self) -> bool:
        return self._still_mine() is True

    @property
    def writers_left(self) -> str | None:
        """Why this run's tasks may still write after it stopped, where they may: its lock is
        then kept (:meth:`Lease.keep_for_writers`)."""
        return _WRITERS_LEFT.get(self.token)

    def keep_for_writers(self, why: str) -> None:
        self.lease.keep_for_writers(why)

    def check(self) -> None:
        """Raise :class:`LeaseLostError` unless this run still holds the lock."""
        self.lease.check()

    def _beat(self) -> None:
        while not self._stop.wait(staleness.HEARTBEAT_EVERY):
            with contextlib.suppress(Exception):
                # On an object store the check below and the rewrite are not one step: a run
                # stalled past the stale age (a suspended process) may have been taken over
                # meanwhile, and never rewrites then (it overwrote the lock of the run that took
                # over: a seventh adversarial run). Locally it touches its own inode only.
                waited = time.monotonic() - self._beaten
                stalled = not self.lock.is_local and waited >= staleness.LOCK_STALE_AFTER
                ours = self._still_mine()
                if ours is None:  # a failed read (a network error) says nothing: the next beat
                    continue  # asks again (it stopped the heartbeat for good: a review)
                if stalled or not ours:  # never refresh a lock someone else holds now
                    self.lost = True
                    return
                if self._etag is not None:  # only the version this run wrote last
                    try:
                        self._put(IfMatch=self._etag)
                    except OSError as exc:
                        if _refused(exc):
                            self.lost = True
                            return
                        raise
                elif self._fd is not None:
                    os.utime(self._fd)  # our own inode, never a successor's
                elif self.lock.is_local:
                    os.utime(self.lock.path)
                else:  # rewritten: s3fs cannot touch an existing object (it raised here, and
                    # the lock of every S3 run went stale after 60 s: a sixth adversarial run)
                    self.lock.fs.pipe_file(self.lock.path, self.body)
                self._beaten = time.monotonic()

    def stop_heartbeat(self) -> None:
        self._stop.set()
        if self._thread is not None:
            if self._thread.ident is not None:  # started
                self._thread.join()
            self._thread = None

    def release(self) -> None:
        """Remove the lock file (if it is still this run's) and drop the flock. An interruption
        (Ctrl-C, a SIGTERM, or one wrapped: :func:`~fstack_dask._errors.interruption_behind`)
        landing meanwhile cuts no step short: each is done once more, then it is raised."""
        stopped: BaseException | None = None
        try:
            for step in (self.stop_heartbeat, self._remove):
                for _ in range(2):  # (once more where an interruption cut it short)
                    try:
                        step()
                        break
                    except BaseException as exc:
                        if interruption_behind(exc) is None:
                            raise
                        stopped = stopped or exc
        finally:  # the flock goes, also when the file could not (EIO: held till the process ended)
            self.held, self._etag, fd, self._fd = False, None, self._fd, None
            if fd is not None:
                os.close(fd)
        if stopped is not None:
            raise stopped

    def _remove(self) -> None:
        if not (self.held and self.mine()):
            return
        why = _WRITERS_LEFT.pop(self.token, None)
        if why is not None:
            self._keep(why)
            return
        s3 = _s3_object(self.lock)
        if s3 is not None and self._etag is not None:
            fs, bucket, key = s3
            try:  # not a lock another run wrote after the check above
                fs.call_s3("delete_object", Bucket=bucket, Key=key, IfMatch=self._etag)
            except OSError as exc:
                if not _refused(exc):
                    raise
            finally:
                fs.invalidate_cache(self.lock.path)
        else:
            with contextlib.suppress(FileNotFoundError):
                self.lock.fs.rm_file(self.lock.path)

    def _keep(self, why: str) -> None:
        """Leave the lock in place, saying that the stopped run's tasks may still write
        (``why``): a later run sees it live until it is ``LOCK_STALE_AFTER`` seconds old, by
        its age alone (:func:`.staleness.lock_is_live`), whoever holds its flock."""
        self._fields = {**self._fields, "writers": why, "stopped": time.time()}
        body = json.dumps(self._fields).encode()
        if self._etag is not None:
            self._put(IfMatch=self._etag)
        elif self._fd is not None:  # our own inode, never a successor's
            os.ftruncate(self._fd, 0)
            os.pwrite(self._fd, body, 0)
            os.fsync(self._fd)
        else:
            self.lock.fs.pipe_file(self.lock.path, body)

    def moved_to(self, lock: Location) -> None:
        """The lock file now lives at ``lock`` (its folder was renamed)."""
        self.lock = lock
        if self._etag is not None:  # a copy: its ETag need not be the original's (SSE-KMS)
            info = read_lock(lock)
            self._etag = info.get("etag") if info is not None else None


def _hold(fd: int) -> None:
    if fcntl is not None:
        with contextlib.suppress(OSError):
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)


def _publish(aside: str, path: str, fd: int, body: bytes) -> int:
    """Give the written lock file ``aside`` (open as ``fd``) its name atomically, failing
    with FileExistsError where a lock exists; returns the descriptor of the lock. Where the
    filesystem has no hard links (FAT and exFAT: the USB drives and SD cards of microscopes;
    every run there failed with "Operation not permitted", an adversarial run, 2026-12-06),
    a rename that does not replace; where it lacks that too (some FUSE filesystems), the
    lock is created exclusively and written in place: read torn meanwhile, its age says it
    is live."""
    try:
        os.link(aside, path)
        return fd
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.ENOSYS):
            raise
    if renameat2(aside, path, RENAME_NOREPLACE):
        return fd
    new = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        _hold(new)
        os.write(new, body)
        os.fsync(new)
    except BaseException:
        os.close(new)
        with contextlib.suppress(OSError):
            os.unlink(path)
        raise
    os.close(fd)  # (the caller closes it where this raised)
    return new


def release_all(locks: Iterable[DestinationLock],
                then: Callable[[DestinationLock], None] | None = None) -> None:  # fmt: skip
    """Release each of ``locks`` (then ``then(lock)``), whatever arrives meanwhile, and raise
    the first failure or interruption once all are released: a Ctrl-C landing in one's release
    left the later ones held, their flock with them, and every later run of the process (a
    notebook's) into dst was refused as "being written by" itself."""
    stopped: BaseException | None = None
    for lock in list(locks):
        try:
            try:
                lock.release()
            finally:
                if then is not None:
                    then(lock)
        except BaseException as exc:
            stopped = stopped or exc
    if stopped is not None:
        raise as_interrupt(stopped)
