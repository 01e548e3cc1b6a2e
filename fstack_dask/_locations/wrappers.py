"""fsspec's chained and wrapper URLs, unwrapped by fsspec itself to the place they reach.

``simplecache::file:///abs/out.zarr``, ``simplecache:///abs`` with ``target_protocol``,
``dir://`` with a ``path``: :func:`fsspec.core.url_to_fs`, then the cache filesystems'
target and ``dir``'s prefix. A remote source is still read through its cache wrappers; a
filesystem we cannot see through (``zip``, ``reference``, an unknown wrapper) is refused as a
destination and, as a source, overlaps every place it may read.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any

from .location import Location
from .places import (
    _SCHEME,
    _first,
    _http,
    _local,
    _one_line,
    _place,
    _read_only,
    _redacted,
)

#: A URL whose authority holds a user name (and password): ``ftp://alice:pw@host/``.
# (a password may hold '/', as half of AWS secret keys do: s3://KEY:abc/def@bucket/x was
# read as the bucket 'KEY:abc', botocore's line printing it; not a port and a path with '@')
_USERINFO = re.compile(
    r"([A-Za-z][A-Za-z0-9+.\-]*)://(?:[^/?#\s@]*@|[^/?#\s@:]*:(?!\d*(?:[/?#]|$))[^\s]*@)"
)

# Options by which an fsspec filesystem reads through another one (a file, a filesystem).
_WRAPPER_OPTIONS = ("fs", "fo", "target_protocol", "target_options", "remote_protocol",
                    "remote_options")  # fmt: skip


def _is_wrapper(cls: type, options: Mapping[str, Any]) -> bool:
    """Whether a filesystem reads through another one (a cache, a prefix, an archive)."""
    from fsspec.archive import AbstractArchiveFileSystem
    from fsspec.implementations.chained import ChainedFileSystem
    from fsspec.implementations.reference import ReferenceFileSystem

    wrappers = (ChainedFileSystem, AbstractArchiveFileSystem, ReferenceFileSystem)
    return issubclass(cls, wrappers) or any(key in options for key in _WRAPPER_OPTIONS)


def refuse_userinfo(spec: str, name: str) -> None:
    """Refuse a user name or password in a URL other than HTTP(S)'s, which fstack_dask does
    not read (s3://KEY:SECRET@bucket/x: botocore's "Invalid bucket name" line printed the
    secret, exit 1; ftp:// and webhdfs:// failed "missing ... 'host'")."""
    for part in spec.split("::"):
        held = _USERINFO.match(part)
        if held is not None and held[1].lower() not in ("http", "https", "memory"):
            option = "dst_storage_options" if name == "dst" else "storage_options"
            raise ValueError(
                f"{name} {_redacted(spec)!r}: a user name or password in a {held[1]}:// URL is "
                f"not read; give the credentials in {option} (its filesystem's own names)"
            )


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
    refuse_userinfo(spec, name)
    if "::" in spec:
        options = _to_the_data(_links(spec, name), classes, options)
    try:
        fs, path = fsspec.core.url_to_fs(_lowered(spec), **options)
    except Exception as exc:  # fsspec's classes raise what they like on bad URLs and options
        keys = f" (storage_options {sorted(options)})" if options else ""  # values: secrets
        raise ValueError(
            f"{name} {spec!r} cannot be opened by fsspec{keys}: {_one_line(exc)}"
        ) from None
    return _located(spec, name, fs, path, writable)


def _to_the_data(links: list[str], classes: list[type], options: Mapping[str, Any]) -> dict:
    """A chained URL's flat options, where only caches wrap the filesystem that holds the
    data, given to that filesystem, save those a cache takes itself: fsspec gives them to the
    outermost link, and ``simplecache::s3://`` with an endpoint or credentials reached AWS
    without them (a source "did not exist", a dst "could not be reached").
    Options keyed by a link's protocol, fsspec's own way, are passed on as they are."""
    import inspect

    from fsspec.implementations.cached import CachingFileSystem

    wrappers = classes[:-1]
    if not all(issubclass(c, CachingFileSystem) for c in wrappers) or set(links) & set(options):
        return dict(options)
    # each class's own and those it passes on (simplecache's __init__ names none: its
    # cache_storage went to the data's filesystem, the cache kept in a temporary folder)
    inits = [k.__init__ for c in wrappers for k in c.__mro__ if "__init__" in vars(k)]
    own = {p for f in inits for p in inspect.signature(f).parameters} - {"args", "kwargs"}
    flat = {k: v for k, v in options.items() if k not in own}
    if not flat:
        return dict(options)
    return {**{k: v for k, v in options.items() if k in own}, links[-1]: flat}


def _lowered(spec: str) -> str:
    """``spec`` with each link's protocol in lower case, as :func:`_links` read it: fsspec
    knows only lower-case ones, and took 'SIMPLECACHE::s3://b/x' for the local file
    './SIMPLECACHE'."""
    parts = spec.split("::")
    for i, part in enumerate(parts):
        match = _SCHEME.match(part)
        if match is not None and match.group(2).startswith("//"):
            parts[i] = match.group(1).lower() + part[len(match.group(1)) :]
        elif i < len(parts) - 1:
            parts[i] = part.lower()
    return "::".join(parts)


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
        return _http(spec, path, name, inner, via)
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
