"""When a lock's holder may still be running: reading a lock, its kernel flock, its heartbeat.

A run's lock (:mod:`.lock`) is renewed every ``HEARTBEAT_EVERY`` seconds. When is a lock
*stale*, so that ``resume``/``overwrite`` may take it over?

* Written on this machine's kernel (the lock's ``boot_id`` is ours): the holder keeps an
  ``flock`` on the lock file for as long as it lives, and the kernel drops it when the process
  dies, whatever PID namespace or container it ran in. Stale at once when nobody holds it;
  live while somebody does (a suspended run too), however old its heartbeat.
* Written elsewhere (another host on a shared filesystem, an object store) or unreadable:
  live while its heartbeat is younger than ``LOCK_STALE_AFTER`` seconds. One that looks older,
  or is dated in the future, is watched for ``LOCK_STALE_AFTER`` seconds before it is judged
  stale: the
  file's time comes from its file server's or its writer's clock, not this machine's, and
  clocks that disagree must neither hand a live run's output to another run nor keep a dead
  run's output locked (an HPC run, 2026-12-05).

PIDs are never used to decide: two containers on one host can both be "pid 1".
"""

from __future__ import annotations

import errno
import json
import logging
import os
import socket
import threading
import time
from collections.abc import Mapping
from typing import Any

from .._env import LOCK_STALE_AFTER as LOCK_STALE_NAME
from .._env import LOCK_STALE_DEFAULT, seconds
from .._locations import Location

try:  # POSIX: the kernel's own record of a live holder
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None

__all__ = [
    "HEARTBEAT_EVERY", "LOCK_STALE_AFTER", "live_lock", "lock_is_live", "locked_message",
    "machine_id", "read_lock",
]  # fmt: skip

log = logging.getLogger(__name__)


def _seconds_from_env(name: str, default: float) -> float:
    """``name``'s seconds, else ``default``. A bad value is refused where a run is planned
    (``_env.check``); read here at the import, in every process, it was warned of instead,
    in each worker process once more with its source line."""
    try:
        value = seconds(name, default)
    except ValueError:  # (a process that plans no run: a worker's tasks never judge a lock)
        return default
    return min(value, threading.TIMEOUT_MAX)  # "inf": never


#: Seconds without a heartbeat before a lock written on another host is stale
#: (``FSTACK_DASK_LOCK_STALE_AFTER``; raise it for filesystems with slow metadata).
LOCK_STALE_AFTER = _seconds_from_env(LOCK_STALE_NAME, LOCK_STALE_DEFAULT)
HEARTBEAT_EVERY = LOCK_STALE_AFTER / 6


def machine_id() -> str:
    """What identifies this machine's running kernel: its boot id (all containers and PID
    namespaces of one host share it; another host, or a reboot, has another).

    ``FSTACK_DASK_LOCK_MACHINE`` overrides it (the tests use it to play two hosts)."""
    override = os.environ.get("FSTACK_DASK_LOCK_MACHINE")
    if override:
        return override
    try:
        with open("/proc/sys/kernel/random/boot_id") as fh:
            return fh.read().strip()
    except OSError:
        return f"host:{socket.gethostname()}"


def _held_by_someone(path: str) -> bool | None:
    """Whether a process holds the ``flock`` of the file at ``path`` (None: cannot tell)."""
    if fcntl is None:
        return None
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            return True
        return None  # the filesystem has no flock
    finally:
        os.close(fd)  # releases what we took
    return False


def _s3_object(lock: Location) -> tuple[Any, str, str] | None:
    """s3fs's filesystem, the bucket and the key where the lock is an S3 object (conditional
    requests make each step of the lock one request there); else None."""
    if lock.is_local or lock.via:
        return None
    fs = lock.fs
    if not callable(getattr(fs, "call_s3", None)):
        return None
    bucket, _, key = lock.path.lstrip("/").partition("/")
    return fs, bucket, key


def read_lock(lock: Location) -> dict[str, Any] | None:
    """The lock's content with its heartbeat (``mtime``), for a local lock whether a process
    holds it (``held``), and on S3 the ``etag`` its age was read with; None if there is no
    lock."""
    s3 = _s3_object(lock)
    etag = None
    try:
        if s3 is not None:  # the age and the ETag of one version, from one request
            fs, bucket, key = s3
            head = fs.call_s3("head_object", Bucket=bucket, Key=key)
            mtime, etag = head["LastModified"].timestamp(), head["ETag"]
            raw = lock.read_bytes()
        else:
            raw = lock.read_bytes()
            if lock.is_local:
                mtime = os.stat(lock.path).st_mtime
            else:
                mtime = lock.fs.modified(lock.path).timestamp()
    except (FileNotFoundError, NotADirectoryError):
        return None
    try:
        info = json.loads(raw)
        if not isinstance(info, dict) or "host" not in info:
            raise ValueError("not a lock of ours")
    except (ValueError, RecursionError):  # torn: only its age can tell
        info = {"host": None, "pid": None}
        if not _torn(raw):  # a user's file: never taken over (it was removed once stale)
            info["foreign"] = str(lock.url)
    info["mtime"] = mtime
    info["held"] = _held_by_someone(lock.path) if lock.is_local else None
    if etag is not None:
        info["etag"] = etag
    return info


#: How every lock of ours begins, in every version (``json.dumps`` of its fields).
_LOCK_START = b'{"host": '


def _torn(raw: bytes) -> bool:
    """Whether ``raw`` may be one of our locks cut short: empty, or its start, or NULs where a
    crash left blocks unwritten (a run of an older version killed while it wrote it, or a
    full disk)."""
    body = raw.strip(b"\0")
    return _LOCK_START.startswith(body) or body.startswith(_LOCK_START)


def lock_is_live(info: Mapping[str, Any], lock: Location | None = None) -> bool:
    """Whether the lock's holder may still be running (see the module docstring).

    A heartbeat is dated by the clock of whoever stamped the file (a file server, another
    node), not by this machine's: with ``lock`` given, a lock that looks stale or is dated in
    the future is watched (:func:`_heartbeat_moves`) before it is judged stale, so that clocks
    that disagree neither make a live run's lock look stale nor keep a dead one's live."""
    if info.get("foreign"):  # no run's: none will release it, and it is no one's to remove
        return True
    age = time.time() - float(info.get("mtime", 0.0))
    local = info.get("machine") == machine_id() and info.get("held") is not None
    if info.get("writers") and local:
        # a stopped run whose tasks may still write kept it: its age alone (its flock goes
        # with that run's release), dated by this machine's clock
        return -HEARTBEAT_EVERY <= age < LOCK_STALE_AFTER
    if local:
        return bool(info["held"])  # this kernel shows a live holder's flock
    if -HEARTBEAT_EVERY <= age < LOCK_STALE_AFTER:
        return True
    if lock is None:
        return age < LOCK_STALE_AFTER
    return _heartbeat_moves(lock, info, age)


def _heartbeat_moves(lock: Location, info: Mapping[str, Any], age: float) -> bool:
    """Whether the lock's heartbeat changes (or the lock is replaced) within
    ``LOCK_STALE_AFTER`` seconds of watching: its holder renews it every ``HEARTBEAT_EVERY``
    seconds whatever the clocks say, and a holder stalled for less than the stale age (a
    pause, a slow metadata server) keeps its lock as it would with clocks that agree (a
    shorter watch took a lock dated ahead from a holder paused for 3 s of its 6: a review,
    2026-12-05)."""
    seen = (info.get("mtime"), info.get("etag"))
    if (lock.path, *seen) in _WATCHED_STALE:  # this process watched this very heartbeat
        return False
    window = LOCK_STALE_AFTER
    log.info(
        "the lock of %s has a heartbeat %s by this machine's clock; watching it for %.0f s "
        "before judging it stale (clocks may disagree)",
        _owner(info), f"{age:.0f} s old" if age >= 0 else f"dated {-age:.0f} s ahead", window,
    )  # fmt: skip
    deadline = time.monotonic() + window
    while time.monotonic() < deadline:
        time.sleep(min(HEARTBEAT_EVERY / 4, max(deadline - time.monotonic(), 0.0)))
        now = read_lock(lock)
        if now is None:
            return False  # gone: released
        if (now.get("mtime"), now.get("etag")) != seen:
            return True
    _WATCHED_STALE.add((lock.path, *seen))
    return False


_WATCHED_STALE: set[tuple[Any, ...]] = set()


def _owner(info: Mapping[str, Any]) -> str:
    if not info.get("host"):
        return "another run (unreadable lock)"
    return f"pid {info.get('pid')} on {info.get('host')}"


def locked_message(what: str, info: Mapping[str, Any]) -> str:
    if info.get("foreign"):  # (it said "being written by another run (unreadable lock) ...
        # wait for it to finish", then took the file over as a stale lock and removed it)
        return (
            f"{what} has a lock file {info['foreign']!r} that fstack_dask did not write (a "
            f"lock of ours is JSON beginning {_LOCK_START.decode()}...); no run holds it, and "
            "none will remove it: move it out of the output's state folder (it is yours?) or "
            "remove it, then rerun"
        )
    if info.get("writers"):
        at = time.strftime("%H:%M:%S", time.localtime(float(info.get("mtime", 0.0))
                                                       + LOCK_STALE_AFTER))  # fmt: skip
        return (
            f"{what} was being written by a run of {_owner(info)} that was stopped while its "
            f"tasks on a cluster could still write ({info['writers']}), so it kept its lock; "
            f"a run into it may go on once that lock is {LOCK_STALE_AFTER:g} s old (at {at}), "
            "when it is taken over as stale"
        )
    torn = "" if info.get("host") else (
        " (empty or cut short: left by a run killed while it wrote it, or by a full disk, it "
        "is taken over then by a rerun with --resume or --overwrite)"
    )  # fmt: skip
    return (
        f"{what} is being written by {_owner(info)}; a second run into the same dst is refused "
        f"(wait for it to finish; a lock without heartbeat for {LOCK_STALE_AFTER:g} s is "
        f"stale{torn})"
    )


def live_lock(lock: Location) -> dict[str, Any] | None:
    """The lock's content if a live run holds it, else None."""
    info = read_lock(lock)
    return info if info is not None and lock_is_live(info, lock) else None
