"""Where data lives: every path or URL resolved once, compared by place, deleted with care.

A user can name one folder in many ways: ``out.zarr``, ``./out.zarr/``, ``~/x/../out.zarr``,
``file:out.zarr``, ``file:///abs/out.zarr``, ``local://out.zarr``, through a symlink, or
through one of fsspec's wrappers: ``simplecache::file:///abs/out.zarr``,
``simplecache:///abs/out.zarr`` with ``target_protocol``, ``dir://out.zarr`` with a ``path``.
Every location given to fstack_dask goes through :func:`resolve` once, which returns a
:class:`Location`: the filesystem the data lives on and the canonical absolute path in it.
Every check ("is dst inside src?"), every write and every delete then uses that one result, so
two spellings of one place always compare equal and a check can never look at another place
than the write.

Wrappers are unwrapped by fsspec itself (:func:`fsspec.core.url_to_fs`, then the cache
filesystems' target and ``dir``'s prefix). A source on a remote filesystem is still read
through its cache wrappers (caching remote data is why one writes ``simplecache::s3://``); a
local one is read directly, and a destination is written directly. A filesystem we cannot see
through (``zip``, ``reference``, an unknown wrapper) is refused as a destination; as a source
it keeps its own protocol and path and is taken to overlap every place it may read (its archive
or reference file, the whole filesystem it reads through), so that no dst is judged apart from
it by accident.

Spellings we do not understand (an unknown URL scheme, ``foo:bar`` that is neither a path nor
a URL, a chained ``a::b`` URL fsspec cannot open or that goes through a filesystem we cannot see
through) are refused rather than guessed at; so are symlink loops and, as a destination, a
dangling symlink (the folder would be created elsewhere).

Deleting goes through :func:`remove_tree` alone, which re-checks, right before it removes
anything, that the caller's ownership test still passes and that the target is none of the
places that must never be removed (the filesystem root, the home and working folders and
their parents, and the protected locations the caller names, such as the source).
"""

from __future__ import annotations

import dataclasses
import errno
import os
import posixpath
import re
import shutil
import urllib.parse
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Location", "remove_tree", "resolve"]

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*):(.*)$", re.DOTALL)
_LOCAL_SCHEMES = ("file", "local")
_READ_ONLY_SCHEMES = ("http", "https")
# Options by which an fsspec filesystem reads through another one (a file, a filesystem).
_WRAPPER_OPTIONS = ("fs", "fo", "target_protocol", "target_options", "remote_protocol",
                    "remote_options")  # fmt: skip


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
        return other.path == self.path or other.path.startswith(base + "/")

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
        fs = fsspec.filesystem(self.protocol, **dict(self.storage_options))
        for protocol, options in reversed(self.via):
            fs = fsspec.filesystem(protocol, fs=fs, **dict(options))
        return fs

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
        """Names of the entries of a folder."""
        if self.is_local:
            return sorted(os.listdir(self.path))
        return sorted(posixpath.basename(p.rstrip("/")) for p in self.fs.ls(self.path, False))

    def read_bytes(self) -> bytes:
        if self.is_local:
            with open(self.path, "rb") as fh:
                return fh.read()
        return self.fs.cat_file(self.path)

    def zarr_store(self, *, read_only: bool) -> Any:
        """A zarr store rooted here (LocalStore, or FsspecStore on this filesystem)."""
        import fsspec
        import zarr.storage

        if self.is_local:
            return zarr.storage.LocalStore(self.path, read_only=read_only)
        fs = self.fs
        if not getattr(fs, "async_impl", False):
            from fsspec.implementations.asyn_wrapper import AsyncFileSystemWrapper

            fs = AsyncFileSystemWrapper(fs, asynchronous=True)  # as zarr wraps it
        elif not fs.asynchronous:  # an async instance, as zarr's own from_url makes (HTTP)
            fs = fsspec.filesystem(self.protocol, **{**self.storage_options, "asynchronous": True})
        return zarr.storage.FsspecStore(fs, read_only=read_only, path=self.path)


def _unknown_scheme(name: str, spec: str, scheme: str) -> ValueError:
    return ValueError(
        f"{name} {spec!r} starts with {scheme + ':'!r} but is neither a local path nor a URL "
        f"that fstack_dask understands; write './{spec}' for a local path, or a URL such as "
        f"'file:///abs/path', 's3://bucket/key' or 'memory://name'"
    )


def resolve(
    spec: Any,
    *,
    name: str,
    storage_options: Mapping[str, Any] | None = None,
    writable: bool = False,
) -> Location:
    """Resolve a path or URL into a :class:`Location`, once.

    Parameters
    ----------
    spec : str, os.PathLike or Location
        A local path (relative, with ``~``, ``..``, symlinks, trailing slashes), a local URL
        (``file:``, ``file://``, ``local:``, ``local://``), an fsspec URL (``s3://...``,
        ``https://...``) or a chained or wrapper URL fsspec understands
        (``simplecache::s3://...``, ``dir://...``).
    name : str
        The parameter's name, for messages (``"src"``, ``"dst"``).
    storage_options : mapping, optional
        fsspec options; only for URLs.
    writable : bool
        The location will be written: read-only protocols (HTTP), filesystems fstack_dask
        cannot see through and dangling symlinks are refused.

    Returns
    -------
    Location
        The place the data lives: a wrapper or chained URL resolves to the place of the
        filesystem it wraps (a local ``Location`` for local data).

    Raises
    ------
    TypeError
        If ``spec`` is not a str or os.PathLike.
    ValueError
        If ``spec`` is empty, uses a scheme we do not understand, is a chained URL fsspec
        cannot open or one through a filesystem we cannot see through, is a symlink loop, or
        where ``writable`` is read-only, a dangling symlink, or a filesystem we cannot see
        through; or if ``storage_options`` are given for a local path.

    Examples
    --------
    >>> import os
    >>> a = resolve("out.zarr", name="dst")
    >>> b = resolve(f"file://{os.getcwd()}/x/../out.zarr/", name="dst")
    >>> c = resolve(f"simplecache::file://{os.getcwd()}/out.zarr", name="dst")
    >>> a == b == c, a.path == os.path.join(os.path.realpath(os.getcwd()), "out.zarr")
    (True, True)
    """
    if isinstance(spec, Location):
        return spec
    is_pathlike = isinstance(spec, os.PathLike)
    if is_pathlike:
        spec = os.fspath(spec)
    if isinstance(spec, bytes) or not isinstance(spec, str):
        raise TypeError(
            f"{name} must be a local path (str or os.PathLike) or a URL, got {type(spec).__name__}"
        )
    if not spec.strip():
        raise ValueError(f"{name} must be a non-empty path or URL, got {spec!r}")
    if "\x00" in spec:
        raise ValueError(f"{name} {spec!r} contains a NUL character")
    options = dict(storage_options or {})

    match = None if is_pathlike else _SCHEME.match(spec)
    if match is None:
        return _local(spec, spec, name, options, writable)
    scheme, rest = match.group(1).lower(), match.group(2)
    if "::" in spec:
        return _unwrap(spec, name, options, writable)
    if scheme in _LOCAL_SCHEMES:
        path = rest[2:] if rest.startswith("//") else rest
        return _local(spec, path, name, options, writable)
    if not rest.startswith("//"):
        raise _unknown_scheme(name, spec, scheme)
    return _remote(spec, scheme, name, options, writable)


def _local(spec: str, path: str, name: str, options: Mapping[str, Any], writable: bool) -> Location:
    if options:
        raise ValueError(
            f"storage_options only apply to URLs such as 's3://...', but {name} {spec!r} is a "
            f"local path"
        )
    if not path:
        raise ValueError(f"{name} {spec!r} names no path")
    expanded = os.path.expanduser(path)
    # realpath, not abspath: 'link/..' must mean the parent of the link's target, as the OS
    # would take it, and symlinked spellings must compare equal.
    canonical = os.path.realpath(expanded)
    try:
        os.stat(canonical)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise ValueError(
                f"{name} {spec!r} is a symlink loop: {canonical!r} never leads to a file or "
                f"folder; remove the link or choose another {name}"
            ) from None
        if writable and exc.errno == errno.ENOENT and _ends_in_symlink(expanded):
            # Writing would create the link's target, somewhere the user did not name.
            raise ValueError(
                f"{name} {spec!r} is a dangling symlink to {canonical!r}, which does not "
                f"exist; fstack_dask does not create a folder through a symlink: create "
                f"{canonical!r} first, or give it as {name}"
            ) from None
    return Location(spec, "file", canonical, {})


def _ends_in_symlink(path: str) -> bool:
    """Whether the last component of ``path``, where the OS finds it, is a symlink."""
    head, tail = os.path.split(path.rstrip("/"))
    if tail in ("", ".", ".."):
        return False
    return os.path.islink(os.path.join(os.path.realpath(head or "."), tail))


def _first(protocol: str | tuple[str, ...]) -> str:
    return protocol if isinstance(protocol, str) else protocol[0]


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _is_wrapper(cls: type, options: Mapping[str, Any]) -> bool:
    """Whether a filesystem reads through another one (a cache, a prefix, an archive)."""
    from fsspec.archive import AbstractArchiveFileSystem
    from fsspec.implementations.chained import ChainedFileSystem
    from fsspec.implementations.reference import ReferenceFileSystem

    wrappers = (ChainedFileSystem, AbstractArchiveFileSystem, ReferenceFileSystem)
    return issubclass(cls, wrappers) or any(key in options for key in _WRAPPER_OPTIONS)


def _remote(
    spec: str, scheme: str, name: str, options: Mapping[str, Any], writable: bool
) -> Location:
    import fsspec

    if writable and scheme in _READ_ONLY_SCHEMES:
        raise _read_only(name, spec)
    try:
        cls = fsspec.get_filesystem_class(scheme)
    except (ValueError, ImportError) as exc:
        known = f" ({exc})" if isinstance(exc, ImportError) else ""
        raise ValueError(
            f"{name} {spec!r} uses the protocol {scheme!r}, which fsspec does not know or "
            f"cannot load{known}; expected a local path or a URL such as s3://bucket/key"
        ) from None
    if _is_wrapper(cls, options):
        return _unwrap(spec, name, options, writable)
    protocol = _first(cls.protocol)
    if protocol == "http":
        return Location(spec, protocol, _http_url(spec, spec, name), dict(options))
    return _place(spec, protocol, str(cls._strip_protocol(spec)), name, options, writable)


def _read_only(name: str, spec: str) -> ValueError:
    return ValueError(
        f"{name} {spec!r} is an HTTP URL, which is read-only; write to a local path or an "
        f"object store such as s3://bucket/key"
    )


def _http_url(spec: str, url: str, name: str) -> str:
    """The whole URL, as fsspec's HTTP filesystem takes paths, with its path normalised."""
    parts = urllib.parse.urlsplit(url)
    if not parts.netloc:
        raise ValueError(f"{name} {spec!r} names no host")
    path = posixpath.normpath("/" + parts.path.lstrip("/")) if parts.path.strip("/") else ""
    # the fragment never reaches the server
    return urllib.parse.urlunsplit((parts.scheme.lower(), parts.netloc, path, parts.query, ""))


def _place(
    spec: str,
    protocol: str,
    path: str,
    name: str,
    options: Mapping[str, Any],
    writable: bool,
    **extra: Any,
) -> Location:
    """A path on a non-HTTP fsspec filesystem, normalised."""
    if protocol in _LOCAL_SCHEMES:  # e.g. 'file' registered under another name
        return _local(spec, path, name, options, writable)
    rooted = path.startswith("/")
    path = posixpath.normpath(path) if path else path
    if path in (".", "") or (not rooted and path.startswith("..")):
        raise ValueError(f"{name} {spec!r} names no place inside its store")
    if not rooted:
        path = path.lstrip("/")
    return Location(spec, protocol, path, dict(options), **extra)


def _links(spec: str, name: str) -> list[str]:
    """The protocols a URL goes through, outermost first, each one fsspec knows (fsspec
    itself takes an unknown one-letter link for a drive letter, and ``a::b`` for a path)."""
    import fsspec

    parts = spec.split("::")
    protocols = []
    for i, part in enumerate(parts):
        match = _SCHEME.match(part)
        last = i == len(parts) - 1
        if match is not None and match.group(2).startswith("//"):
            protocol = match.group(1).lower()
        elif match is None and last and len(parts) > 1:
            protocol = "file"  # a local path at the end: simplecache::/abs/path
        elif re.fullmatch(r"[A-Za-z][A-Za-z0-9+.\-]*", part) and not last:
            protocol = part.lower()
        else:
            protocol = ""
        if protocol not in fsspec.available_protocols():
            raise ValueError(
                f"{name} {spec!r} is a chained URL whose link {part!r} names no protocol "
                "fsspec knows; expected links such as 'simplecache::s3://bucket/key'"
            )
        protocols.append(protocol)
    return protocols


def _hidden_by(classes: list[type], options: Mapping[str, Any]) -> str | None:
    """The first filesystem among ``classes`` (and, for a wrapper URL, the targets its
    options name) that hides where its data lives, or None."""
    import fsspec
    from fsspec.implementations.cached import CachingFileSystem
    from fsspec.implementations.dirfs import DirFileSystem

    seethrough = (CachingFileSystem, DirFileSystem)
    seen = list(classes)
    while len(classes) == 1 and issubclass(seen[-1], seethrough):  # its target: in options
        inner, target = options.get("fs"), options.get("target_protocol")
        if inner is not None:
            seen.append(type(inner))
            break
        if not target:
            break
        try:
            seen.append(fsspec.get_filesystem_class(target))
        except (ValueError, ImportError):
            break  # url_to_fs says what is wrong
        options = options.get("target_options") or {}
    for cls in seen:
        if not issubclass(cls, seethrough) and _is_wrapper(cls, {}):
            return _first(cls.protocol)
    return None


def _unwrap(spec: str, name: str, options: Mapping[str, Any], writable: bool) -> Location:
    """A chained or wrapper URL: the place fsspec itself reaches through the wrappers."""
    import fsspec
    from fsspec.implementations.dirfs import DirFileSystem

    try:
        classes = [fsspec.get_filesystem_class(p) for p in _links(spec, name)]
    except ImportError as exc:  # a protocol whose package is not installed
        raise ValueError(
            f"{name} {spec!r} needs a package fsspec cannot load ({_one_line(exc)})"
        ) from None
    if len(classes) == 1 and issubclass(classes[0], DirFileSystem):
        if not (options.get("path") or options.get("fo")):
            raise ValueError(
                f"{name} {spec!r} is a dir:// URL without its folder; pass storage_options "
                "such as {'path': '/abs/folder', 'target_protocol': 'file'}, or give the path "
                "itself"
            )
    hidden = _hidden_by(classes, options) if writable else None
    if hidden is not None:  # refused before fsspec opens it: opening an archive to write
        raise _hides(name, spec, hidden)  # would already change it
    try:
        fs, path = fsspec.core.url_to_fs(spec, **options)
    except Exception as exc:  # fsspec's classes raise what they like on bad URLs and options
        keys = f" (storage_options {sorted(options)})" if options else ""  # values: secrets
        raise ValueError(
            f"{name} {spec!r} cannot be opened by fsspec{keys}: {_one_line(exc)}"
        ) from None
    return _located(spec, name, fs, path, writable)


def _hides(name: str, spec: str, protocol: str) -> ValueError:
    return ValueError(
        f"{name} {spec!r} goes through fsspec's {protocol!r} filesystem, which hides where its "
        "data lives; write to a local path or a URL such as s3://bucket/key"
    )


def _peel(fs: Any, path: str) -> tuple[Any, str, tuple[tuple[str, dict[str, Any]], ...]]:
    """Follow the cache and ``dir`` wrappers down to the filesystem that holds the data."""
    from fsspec.implementations.cached import CachingFileSystem
    from fsspec.implementations.dirfs import DirFileSystem

    via = []
    while isinstance(fs, (CachingFileSystem, DirFileSystem)):
        if isinstance(fs, DirFileSystem):
            path = fs._join(path)  # the folder prefix, as dir's own methods add it
        else:
            own = {k: v for k, v in fs.storage_options.items() if k not in _WRAPPER_OPTIONS}
            via.append((_first(type(fs).protocol), own))
        fs = fs.fs
        path = fs._strip_protocol(path)
    return fs, path, tuple(via)


def _located(spec: str, name: str, fs: Any, path: str, writable: bool) -> Location:
    """The :class:`Location` of ``path`` on the filesystem ``fs`` (an instance)."""
    from fsspec.implementations.local import LocalFileSystem

    try:
        fs, path, via = _peel(fs, path)
    except Exception as exc:  # e.g. dir's path escaping its folder
        raise ValueError(f"{name} {spec!r} cannot be located: {_one_line(exc)}") from None
    if isinstance(fs, LocalFileSystem):
        # Read local files directly: a cache would only copy them.
        return _local(spec, path, name, {}, writable)
    protocol = _first(fs.protocol)
    inner = dict(fs.storage_options)
    via = () if writable else via  # a destination is written directly
    if protocol == "http":
        if writable:
            raise _read_only(name, spec)
        return Location(spec, protocol, _http_url(spec, path, name), inner, via)
    if not _is_wrapper(type(fs), inner):
        return _place(spec, protocol, path, name, inner, writable, via=via)
    if writable:
        raise _hides(name, spec, protocol)
    if "::" in spec:
        raise ValueError(
            f"{name} {spec!r} goes through fsspec's {protocol!r} filesystem, which hides where "
            "its data lives; fstack_dask reads such a source only from its own URL with "
            "storage_options, not from a chained URL"
        )
    # Kept as it is, but overlapping every place it may read (see the module docstring).
    return _place(spec, protocol, path, name, inner, False, via=via, reads_from=_behind(fs))


def _behind(fs: Any) -> tuple[Location, ...]:
    """The places a filesystem we cannot see through may read: the file its ``fo`` names
    (an archive, a reference file), else the whole filesystems it reads through."""
    import fsspec
    from fsspec.implementations.reference import ReferenceFileSystem

    options = fs.storage_options
    places: list[Location] = []
    target = options.get("target_protocol")
    fo = options.get("fo")
    if isinstance(fo, (str, os.PathLike)):
        kw = dict(options.get("target_options") or {})
        if target:
            kw["protocol"] = target  # as fsspec.open(fo, protocol=target_protocol)
        try:
            fo_fs, fo_path = fsspec.core.url_to_fs(os.fspath(fo), **kw)
            places.append(_located(os.fspath(fo), "src", fo_fs, fo_path, False))
        except (ValueError, ImportError, OSError):
            pass
    protocols = [] if places else [target or "file"]
    remote = options.get("remote_protocol")
    if remote is None and isinstance(fs, ReferenceFileSystem):
        remote = "file"  # references without a remote_protocol may name local files
    protocols += [remote] + list(getattr(fs, "fss", None) or ())
    inner = getattr(fs, "fs", None)
    if isinstance(inner, fsspec.AbstractFileSystem):
        protocols.append(_first(inner.protocol))
    for protocol in dict.fromkeys(p for p in protocols if isinstance(p, str)):
        try:
            canonical = _first(fsspec.get_filesystem_class(protocol).protocol)
        except (ValueError, ImportError):
            canonical = protocol
        places.append(Location(f"{protocol}://", canonical, "", {}))  # the whole filesystem
    return tuple(places)


# ----------------------------------------------------------------------------- deleting


def _never_removed() -> list[Location]:
    """The filesystem root, the home and working folders: never removed, nor their parents."""
    places = ["/", os.path.expanduser("~"), os.getcwd()]
    return [Location(p, "file", os.path.realpath(p), {}) for p in places]


def remove_tree(
    location: Location,
    *,
    owned: Callable[[Location], str | None],
    protect: Iterable[Location] = (),
    only: Iterable[str] | None = None,
    keep_folder: bool = False,
) -> list[str]:
    """Delete ``location`` (or only its entries named in ``only``), after checking again.

    The one way fstack_dask deletes anything. Right before removing, ``owned(location)``
    must return None (it returns the reason otherwise: this is what makes the removal of
    something that is not ours impossible even if it changed since the caller looked), and
    the location must neither be, nor contain, nor lie inside... the filesystem root, the home
    or working folder (nor contain them), nor any ``protect`` location.

    Parameters
    ----------
    location : Location
        The folder to remove.
    owned : callable
        Ownership test, ``owned(location) -> None`` if it may be removed, else a reason.
    protect : iterable of Location
        Places that must survive (the source): refused if ``location`` overlaps any.
    only : iterable of str, optional
        Remove only these entries of the folder, then the folder itself if it is left empty
        (unless ``keep_folder``); entries not named are kept (files a user put there).
    keep_folder : bool
        With ``only``: keep the folder even when it is left empty (it was there before).

    Returns
    -------
    list of str
        The entries that were kept (not ours); empty if the whole folder went.

    Raises
    ------
    PermissionError
        If a check fails; nothing is removed then.
    """
    for place in _never_removed():
        if location.contains(place):
            raise PermissionError(
                f"refusing to delete {location.spec!r}: it is or contains {place.path!r}"
            )
    for place in protect:
        if location.overlaps(place):
            raise PermissionError(
                f"refusing to delete {location.spec!r}: it overlaps {place.spec!r}, which must "
                "be kept"
            )
    reason = owned(location)
    if reason is not None:
        raise PermissionError(f"refusing to delete {location.spec!r}: {reason}")
    if not location.exists():
        return []
    fs = location.fs
    if only is None:
        if location.is_local and os.path.isdir(location.path) and not os.path.islink(location.path):
            shutil.rmtree(location.path)
        elif location.is_local:  # a file (e.g. an output's zarr.json) or a symlink
            os.unlink(location.path)
        else:
            fs.rm(location.path, recursive=True)
        return []
    wanted = set(only)
    kept = []
    for entry in location.listdir():
        if entry not in wanted:
            kept.append(entry)
            continue
        target = location.child(entry)
        if target.is_local:
            if os.path.isdir(target.path) and not os.path.islink(target.path):
                shutil.rmtree(target.path)
            else:
                os.unlink(target.path)
        else:
            fs.rm(target.path, recursive=True)
    if not kept and not keep_folder:
        if location.is_local:
            os.rmdir(location.path)
        elif fs.exists(location.path):
            fs.rm(location.path, recursive=True)
    return kept
