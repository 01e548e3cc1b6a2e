"""The source's fingerprint kept with an output, by which a resume tells what changed: its
data files' sizes, times and inodes (``source-files.npz``), the digest of the samples each
block read (in its done-marker), and the differences of two identities of a source."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import numpy as np

__all__ = [
    "changed_files",
    "files_digest",
    "identity_differences",
    "input_digest",
    "input_unchanged",
    "settled_files",
    "source_files",
    "versions_digest",
]

_STAT_FIELDS = ("sizes", "stamps", "ctimes", "inodes")


def source_files(entries: Iterable[tuple]) -> dict[str, np.ndarray]:
    """The (name, size, mtime, ctime, inode) list of a source's data files, as compact
    arrays."""
    rows = list(entries)
    out = {"names": np.array([r[0] for r in rows], dtype=str)}
    for k, key in enumerate(_STAT_FIELDS, start=1):
        # wrapped into 64 bits, as C would: a time past 2262 in ns (a clock's or an NTFS
        # volume's mistake) or an inode of 2**63 or more stopped every run with a bare
        # "OverflowError: Python int too large to convert to C long" (an adversarial run)
        out[key] = np.array([(r[k] + 2**63) % 2**64 - 2**63 for r in rows], dtype=np.int64)
    return out


#: The coarsest timestamp granularity a data file's times may have (FAT's 2 s; Lustre, HFS+
#: and ext3 stamp whole seconds), assumed where every time listed is a whole second; and a
#: kernel tick's (1-10 ms; exFAT's 10 ms) where not.
COARSE_NS, FINE_NS = 2_000_000_000, 20_000_000


def settled_files(listing: Callable[[], Iterable[tuple]]) -> dict[str, np.ndarray]:
    """:func:`source_files` of ``listing()``, listed again, once, where a file changed within
    its filesystem's timestamp granularity of the listing: a rewrite of such a file after the
    listing (same size, in place) could get the very times listed, and neither the end-of-run
    check nor a resume would see it (git's "racily clean" files). After the wait any rewrite
    gets later times. The wait is at most one granule (2 s where the times are whole seconds,
    else 20 ms), measured on this machine's clock: a file server's clock behind it by more
    than a granule is not covered."""
    before = time.time_ns()  # before any file is listed: each was listed after it
    files = source_files(listing())
    # a change time where the file has one (no user call sets it); a remote object's
    # modification time where no version tells its rewrites (the inode column)
    stamps = np.where(files["ctimes"] != 0, files["ctimes"],
                      np.where(files["inodes"] == 0, files["stamps"], 0))  # fmt: skip
    stamps = stamps[stamps != 0]
    if stamps.size == 0:
        return files
    granule = COARSE_NS if bool(np.all(stamps % 1_000_000_000 == 0)) else FINE_NS
    wait = min(int(stamps.max()) + granule - before, granule)  # dated ahead: one granule
    if wait <= 0:
        return files
    time.sleep(wait / 1e9)
    return source_files(listing())


def files_digest(files: Mapping[str, np.ndarray]) -> str:
    """sha256 of a source's data files' names, sizes and modification times: kept with a
    complete output, whose state folder (the list itself) is gone, so that a later resume can
    tell the files were rewritten since."""
    h = hashlib.sha256()
    for key in ("names", "sizes", "stamps"):
        h.update(key.encode())
        h.update("\0".join(map(str, files[key].tolist())).encode("utf-8", "surrogateescape"))
    return h.hexdigest()


def versions_digest(files: Mapping[str, np.ndarray]) -> str | None:
    """sha256 of an object store's data files' names and versions (the ETag or generation
    its listing gives, in the inode's column), kept with a complete output beside
    :func:`files_digest`: S3 dates objects to the second, and a chunk rewritten at its size
    within that second left the digest as it was (a review, 2026-12-06). None where the
    listing gave no versions."""
    if "inodes" not in files or not files["inodes"].any():
        return None
    h = hashlib.sha256()
    for key in ("names", "inodes"):
        h.update(key.encode())
        h.update("\0".join(map(str, files[key].tolist())).encode("utf-8", "surrogateescape"))
    return h.hexdigest()


def changed_files(old: Mapping[str, np.ndarray], new: Mapping[str, np.ndarray]) -> list[str]:
    """Names of data files added, removed, or with another size, modification or change
    time or inode (the last two only where both lists have them: older records lack them;
    and only where both are known, not 0: an object store's inode column holds the object's
    version, which records written before 2026-12-06 lack)."""
    keys = [k for k in _STAT_FIELDS if k in old and k in new]
    known = [k in ("ctimes", "inodes") for k in keys]

    def table(files: Mapping[str, np.ndarray]) -> dict[str, tuple[int, ...]]:
        stats = zip(*(files[k].tolist() for k in keys), strict=True)
        return dict(zip(files["names"].tolist(), stats, strict=True))

    def same(a: tuple[int, ...] | None, b: tuple[int, ...]) -> bool:
        return a is not None and all(
            x == y or (zero_unknown and 0 in (x, y))
            for x, y, zero_unknown in zip(a, b, known, strict=True)
        )

    before, after = table(old), table(new)
    changed = [n for n, v in after.items() if not same(before.get(n), v)]
    changed += [n for n in before if n not in after]
    return sorted(changed)


#: The done-markers' digest: xxHash's XXH3 (128 bits). A marker names it before its hex
#: digest; one with a bare hex digest (written before 2026-12) holds a sha256.
DIGEST = "xxh3-128"


def input_digest(samples: np.ndarray, algorithm: str = DIGEST) -> str:
    """A digest of a block's input samples (with their shape and dtype): what its done-marker
    vouches for, so that a resume can tell whether the source under it changed.

    XXH3 rather than sha256: it guards against accidental change, not an adversary (who could
    rewrite the marker as easily), and it hashes at about 15 GB/s on one core against
    sha256's 1.5 GB/s (with SHA instructions): every block of every run pays it, and sha256
    cost a third as much as decoding the samples from Zstd (benchmarks/RESULTS.md, "The
    host's share of a block").
    """
    head = f"{samples.dtype.str}{samples.shape}".encode()
    data = np.ascontiguousarray(samples)
    if algorithm == "sha256":
        h = hashlib.sha256(head)
        h.update(data)
        return h.hexdigest()
    if algorithm != DIGEST:
        raise ValueError(f"algorithm must be {DIGEST!r} or 'sha256', got {algorithm!r}")
    import xxhash

    h = xxhash.xxh3_128(head)
    h.update(data)
    return f"{DIGEST}:{h.hexdigest()}"


def input_unchanged(recorded: str, samples: np.ndarray) -> bool:
    """Whether ``samples`` have the digest a done-marker recorded (with the marker's own
    algorithm: a bare hex digest is an older marker's sha256)."""
    algorithm = recorded.split(":", 1)[0] if ":" in recorded else "sha256"
    if algorithm not in (DIGEST, "sha256"):
        return False  # a marker from a later version: not vouched for here
    return input_digest(samples, algorithm) == recorded


def _last_name(location: Any) -> str | None:
    """The last name of a location (``src.ome.zarr`` of ``/lustre/p/src.ome.zarr``)."""
    return str(location).rstrip("/").rsplit("/", 1)[-1] if location else None


def _is_local_path(location: Any) -> bool:
    return isinstance(location, str) and location.startswith("/")


def identity_differences(stored: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """What differs between two source identities, as phrases for a message.

    The same metadata under the same name at another location (the same files through another
    mount) is the same source: each data file is still compared (size, times, inode) and the blocks
    that read one that differs are computed again."""
    out = []
    content = stored.get("metadata_content_sha256")
    moved = (
        content is not None
        and content == current.get("metadata_content_sha256")
        and _last_name(stored.get("location")) == _last_name(current.get("location"))
        # only a local store's chunk files carry what tells them apart (change time and inode,
        # mtimes in ns): on an object store, two stores of one name written in the same second
        # were resumed into one output (a review, 2026-12-05)
        and _is_local_path(stored.get("location"))
        and _is_local_path(current.get("location"))
    )
    for key, what in (
        ("location", "location"),
        ("kind", "format"),
        ("shape", "shape"),
        ("dtype", "dtype"),
        ("axes", "axes"),
        ("unit_shape", "chunking"),
        ("level", "level"),
        ("metadata_sha256", "metadata"),
        ("content", "content"),
    ):
        if key == "unit_shape" and stored.get("kind") not in ("zarr", "ome-zarr"):
            # how another format's reader cuts it is ours to choose, not the data's: a file
            # read by region since 2026-12-05 resumes what was begun reading it by pages
            continue
        if key in ("location", "metadata_sha256") and moved:
            continue
        if (
            key == "metadata_sha256"
            and content is not None
            and (content == current.get("metadata_content_sha256"))
        ):  # the same files at another location, said above: "its metadata changed" of a
            continue  # byte-identical copy sent the user looking for an edit
        if key == "content" and stored.get(key) == current.get("content_with_times", ()):
            continue  # a record begun before 2026-12-06, its token with the files' times
        if stored.get(key) != current.get(key):
            if key in ("metadata_sha256", "content"):
                out.append(f"its {what} changed")
            else:
                out.append(f"its {what} was {stored.get(key)!r} and is now {current.get(key)!r}")
    return out
