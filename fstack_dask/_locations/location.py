"""A resolved place: the filesystem data lives on and its canonical path there."""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import os
import posixpath
import stat
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

_BUCKET_PROTOCOLS = frozenset({"s3", "s3a", "gs", "gcs", "abfs", "abfss", "az"})


@dataclass(frozen=True, eq=False)
class Location:
    """A resolved place: a filesystem and a canonical absolute path in it.

    Attributes
    ----------
    spec : str
        The location as the user gave it, for messages.
    protocol : str
        ``"file"`` for the local filesystem, else the fsspec protocol (``"s3"``, ...) of the
        filesystem the data lives on (never a wrapper's that fstack_dask can see through).
    path : str
        Canonical path: for local data the absolute path with symlinks, ``~``, ``..`` and
        repeated or trailing slashes resolved; for HTTP the whole URL (as fsspec's HTTP
        filesystem takes it) with its path normalised; for other filesystems fsspec's path,
        normalised the same way.
    storage_options : dict
        fsspec options of that filesystem (empty for local paths).
    via : tuple of (str, dict)
        Cache wrappers a source is read through, outermost first: their protocol and own
        options (``simplecache::s3://...``). Not part of the place's identity.
    reads_from : tuple of Location
        For a source on a filesystem fstack_dask cannot see through (``zip``,
        ``reference``): the places it may read, a ``Location`` with an empty path standing
        for a whole filesystem. It overlaps whatever overlaps one of them.
    """

    spec: str
    protocol: str
    path: str
    storage_options: Mapping[str, Any] = field(default_factory=dict)
    via: tuple[tuple[str, Mapping[str, Any]], ...] = ()
    reads_from: tuple[Location, ...] = ()
    # an HTTP(S) URL's query string, sent as it is with every request (.query); not part of
    # the place's identity, nor of path or spec (a token: a credential)
    query: str = field(default="", repr=False, compare=False)
    # The filesystems made for this place, shared with the places made from it (child,
    # sibling): one instance a thread even where fsspec caches none. With skip_instance_cache
    # every access made a botocore session, 0.3-0.7 s, about 2.6 a block (a 64-block run on
    # S3: 224 s). Not pickled: a worker makes its own.
    _filesystems: dict[tuple[int, int], Any] = field(
        default_factory=dict, repr=False, compare=False
    )

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_filesystems": {}}

    # -- identity --------------------------------------------------------------------

    @property
    def is_local(self) -> bool:
        return self.protocol == "file"

    @property
    def local(self) -> str | None:
        """The local path, or None for a remote location."""
        return self.path if self.is_local else None

    def _family(self) -> tuple[Any, ...]:
        # Two remote locations are the same store only with the same protocol and options.
        if self.is_local:
            return ("file",)
        return (self.protocol, repr(sorted(self.storage_options.items())))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Location):
            return NotImplemented
        return self._family() == other._family() and self.path == other.path

    def __hash__(self) -> int:
        return hash((self._family(), self.path))

    def contains(self, other: Location) -> bool:
        """Whether ``other`` is this location or lies inside it (or may: see ``reads_from``).

        Storage options are not compared: they say how a place is reached (credentials, a
        cache), rarely which place it is, and a false "apart" could let a run delete its source.
        """
        if any(place.contains(other) for place in self.reads_from):
            return True
        if any(self.contains(place) for place in other.reads_from):
            return True
        if self.protocol != other.protocol:
            return False
        if not self.path:  # a whole filesystem
            return True
        base = self.path.rstrip("/")
        if other.path == self.path or other.path.startswith(base + "/"):
            return True
        return self.is_local and _within_as_the_os_sees_it(self.path, other.path)

    def overlaps(self, other: Location) -> bool:
        return self.contains(other) or other.contains(self)

    @property
    def url(self) -> str:
        """A URL fsspec and zarr understand (a plain path for local data)."""
        if self.is_local or self.protocol == "http":  # HTTP paths are whole URLs
            return self.path
        return f"{self.protocol}://{self.path.lstrip('/')}"

    @property
    def name(self) -> str:
        return posixpath.basename(self.path.rstrip("/"))

    def child(self, *names: str) -> Location:
        path = posixpath.join(self.path, *names)
        spec = posixpath.join(self.spec, *names)  # messages name what is meant
        return dataclasses.replace(self, spec=spec, path=path)

    def sibling(self, name: str) -> Location:
        parent = posixpath.dirname(self.spec.rstrip("/")) or "."
        return dataclasses.replace(self, spec=parent, path=self.parent_path()).child(name)

    def parent_path(self) -> str:
        return posixpath.dirname(self.path.rstrip("/")) or "/"

    def is_bucket_root(self) -> bool:
        """Whether this location is a whole bucket (``s3://bucket``, ``s3://bucket/``)."""
        if self.protocol not in _BUCKET_PROTOCOLS:
            return False
        return not self.path.lstrip("/").partition("/")[2].strip("/")

    def missing_bucket(self) -> str | None:
        """This location's bucket, on an object store that has buckets, when it does not
        exist; else None. (s3fs creates the bucket a write names, so a mistyped one would be
        created: a sixth adversarial run.)"""
        if self.protocol not in _BUCKET_PROTOCOLS:
            return None
        bucket, _, key = self.path.lstrip("/").partition("/")
        try:
            if self.fs.exists(bucket):
                return None
            # s3fs's probes need rights on the bucket itself, which credentials for a prefix
            # lack (it says False then): a listing under dst's own prefix tells
            probe = getattr(self.fs, "call_s3", None)
            if probe is not None:
                probe("list_objects_v2", Bucket=bucket, Prefix=key, MaxKeys=1)
                return None
        except FileNotFoundError:  # NoSuchBucket
            return bucket
        except Exception:  # cannot tell: the writes will say
            return None
        return bucket

    def __repr__(self) -> str:
        return f"Location({self.url!r})"

    # -- access ----------------------------------------------------------------------

    @property
    def fs(self) -> Any:
        """The fsspec filesystem, inside the cache wrappers of ``via`` (created lazily;
        fsspec caches instances)."""
        import fsspec

        if self.is_local:
            return fsspec.filesystem("file")
        key = (os.getpid(), threading.get_ident())  # as fsspec keeps its instances apart
        fs = self._filesystems.get(key)
        if fs is None:
            fs = self._filesystem()
            for protocol, options in reversed(self.via):
                fs = fsspec.filesystem(protocol, fs=fs, **dict(options))
            self._filesystems[key] = fs
        return fs

    def _filesystem(self, **options: Any) -> Any:
        """The filesystem the data lives on (without ``via``'s wrappers)."""
        import fsspec

        options = {**self.storage_options, **options}
        if self.query:
            from .query import QueryHTTPFileSystem

            return QueryHTTPFileSystem(query=self.query, **options)
        return fsspec.filesystem(self.protocol, **options)

    def exists(self) -> bool:
        if self.is_local:
            return os.path.lexists(self.path)
        return bool(self.fs.exists(self.path))

    def isdir(self) -> bool:
        if self.is_local:
            return os.path.isdir(self.path)
        return bool(self.fs.isdir(self.path))

    def isfile(self) -> bool:
        if self.is_local:
            return os.path.isfile(self.path)
        return bool(self.fs.isfile(self.path))

    def listdir(self) -> list[str]:
        """Names of the entries of a folder (on an object store, not the folder's own marker,
        the empty ``out.zarr/`` key the AWS console makes for a folder: s3fs lists it as an
        entry named like the folder, and a console-made dst was refused as holding
        ``'out.zarr'``)."""
        if self.is_local:
            return sorted(os.listdir(self.path))
        own = self.path.rstrip("/")
        listed = (p.rstrip("/") for p in self.fs.ls(self.path, False))
        return sorted(posixpath.basename(p) for p in listed if p != own)

    def read_bytes(self, *, first: int | None = None) -> bytes:
        """The file's bytes (its ``first`` bytes only, where given).

        Raises
        ------
        ValueError
            Where a local path is not a regular file: a named pipe's read never returned and
            /dev/zero's never ended (a dst's ``zarr.json`` or lock so made hung ``--overwrite``
            and ``info``: an adversarial run on names, 2026-12-06); a socket cannot be opened
            at all (``--overwrite`` stopped with "[Errno 6] No such device or address").
        """
        if self.is_local:
            # O_NONBLOCK: opening a named pipe with no writer would wait for one
            try:
                fd = os.open(self.path, os.O_RDONLY | os.O_NONBLOCK)
            except OSError as exc:  # a socket ("No such device or address"), a device so
                if exc.errno not in (errno.ENXIO, errno.ENODEV):
                    raise
                try:
                    kind = _kind(os.stat(self.path).st_mode)
                except OSError:
                    kind = "not a file"
                raise ValueError(f"{self.spec!r} is {kind}, not a regular file") from None
            try:
                st = os.fstat(fd)
                if stat.S_ISDIR(st.st_mode):  # as open() says of a folder
                    raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), self.path)
                if not stat.S_ISREG(st.st_mode):
                    raise ValueError(f"{self.spec!r} is {_kind(st.st_mode)}, not a regular file")
                if first is not None:
                    return os.read(fd, first)
                return _read_all(fd, st.st_size)
            finally:
                os.close(fd)
        if first is not None:
            return self.fs.cat_file(self.path, start=0, end=first)
        return self.fs.cat_file(self.path)

    def zarr_store(self, *, read_only: bool) -> Any:
        """A zarr store rooted here (LocalStore, or FsspecStore on this filesystem)."""
        import zarr.storage

        if self.is_local:
            return zarr.storage.LocalStore(self.path, read_only=read_only)
        fs = self.fs
        if not getattr(fs, "async_impl", False):
            from fsspec.implementations.asyn_wrapper import AsyncFileSystemWrapper

            fs = AsyncFileSystemWrapper(fs, asynchronous=True)  # as zarr wraps it
        elif not fs.asynchronous:  # an async instance, as zarr's own from_url makes (HTTP)
            fs = self._filesystem(asynchronous=True)
        if self.protocol == "http" and read_only:  # a chunk served no more is no fill value
            from .http_store import ListedHTTPStore

            return ListedHTTPStore(fs, read_only=read_only, path=self.path)
        return zarr.storage.FsspecStore(fs, read_only=read_only, path=self.path)


def _kind(mode: int) -> str:
    kinds = ((stat.S_ISFIFO, "a named pipe"), (stat.S_ISCHR, "a character device"),
             (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))  # fmt: skip
    return next((name for test, name in kinds if test(mode)), "not a file")


def _read_all(fd: int, size: int) -> bytes:
    """A regular file's bytes, in one read where its size holds: each run's lease checks read
    the lock twice a block, and ``open().read()`` took ten system calls a read where four do
    (open, fstat, read, close), on NFS as many round trips where not cached."""
    data = os.read(fd, size + 1)  # all of it, and one byte more shows that it has not grown
    if len(data) == size > 0:  # (a file of /proc says 0 and holds more)
        return data  # a read that stopped at the size fstat gave: the file's end
    parts = [data]
    while chunk := os.read(fd, 1 << 20):  # grown since the fstat, or a read cut short
        parts.append(chunk)
    return b"".join(parts)


def _within_as_the_os_sees_it(outer: str, inner: str) -> bool:
    """Whether local ``inner``, or a folder above it, is the file or folder ``outer`` by its
    device and inode: the same place under another name, which canonical paths cannot show
    (a bind mount, as Apptainer and Docker give host folders; a fifth adversarial run,
    2026-12-05, fused into a source reached so)."""
    try:
        st = os.stat(outer)
    except OSError:  # not there (yet): nothing can lie inside it
        return False
    identity = (st.st_dev, st.st_ino)
    path = inner
    while True:
        with contextlib.suppress(OSError):
            here = os.stat(path)
            if (here.st_dev, here.st_ino) == identity or _one_entry(outer, path):
                return True
        parent = os.path.dirname(path)
        if parent == path:
            return False
        path = parent


def _one_entry(a: str, b: str) -> bool:
    """Whether existing local ``a`` and ``b``, named alike but for their case, are one entry
    of one folder of a case-insensitive filesystem that gives each spelling its own inode
    (exFAT or FAT through FUSE: ``fuse Src.zarr src.zarr/out.zarr`` wrote into its source).
    Not where the folder lists both names: two entries of a case-sensitive one."""
    name_a, name_b = os.path.basename(a), os.path.basename(b)
    if name_a == name_b or name_a.casefold() != name_b.casefold():
        return False
    folder_a, folder_b = os.path.dirname(a), os.path.dirname(b)
    try:
        if not (os.path.samefile(folder_a, folder_b) or _one_entry(folder_a, folder_b)):
            return False
        names = os.listdir(folder_a)
    except OSError:
        return False
    return not (name_a in names and name_b in names)
