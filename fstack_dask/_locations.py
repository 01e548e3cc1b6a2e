"""Where data lives: every path or URL resolved once, compared by place, deleted with care.

A user can name one folder in many ways: ``out.zarr``, ``./out.zarr/``, ``~/x/../out.zarr``,
``file:out.zarr``, ``file:///abs/out.zarr``, ``local://out.zarr``, or through a symlink. Every
location given to fstack_dask goes through :func:`resolve` once, which returns a
:class:`Location`: the filesystem and the canonical absolute path. Every check ("is dst inside
src?"), every write and every delete then uses that one result, so two spellings of one place
always compare equal and a check can never look at another place than the write.

Spellings we do not understand (an unknown URL scheme, ``foo:bar`` that is neither a path nor
a URL, chained ``a::b`` URLs) are refused rather than guessed at.

Deleting goes through :func:`remove_tree` alone, which re-checks, right before it removes
anything, that the caller's ownership test still passes and that the target is none of the
places that must never be removed (the filesystem root, the home and working folders and
their parents, and the protected locations the caller names, such as the source).
"""

from __future__ import annotations

import os
import posixpath
import re
import shutil
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Location", "remove_tree", "resolve"]

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*):(.*)$", re.DOTALL)
_LOCAL_SCHEMES = ("file", "local")
_READ_ONLY_SCHEMES = ("http", "https")


@dataclass(frozen=True, eq=False)
class Location:
    """A resolved place: a filesystem and a canonical absolute path in it.

    Attributes
    ----------
    spec : str
        The location as the user gave it, for messages.
    protocol : str
        ``"file"`` for the local filesystem, else the fsspec protocol (``"s3"``, ...).
    path : str
        Canonical path: for local data the absolute path with symlinks, ``~``, ``..`` and
        repeated or trailing slashes resolved; for other filesystems fsspec's path,
        normalised the same way.
    storage_options : dict
        fsspec options (empty for local paths).
    """

    spec: str
    protocol: str
    path: str
    storage_options: Mapping[str, Any] = field(default_factory=dict)

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
        """Whether ``other`` is this location or lies inside it."""
        if self._family() != other._family():
            return False
        base = self.path.rstrip("/")
        return other.path == self.path or other.path.startswith(base + "/")

    def overlaps(self, other: Location) -> bool:
        return self.contains(other) or other.contains(self)

    @property
    def url(self) -> str:
        """A URL fsspec and zarr understand (a plain path for local data)."""
        return self.path if self.is_local else f"{self.protocol}://{self.path.lstrip('/')}"

    @property
    def name(self) -> str:
        return posixpath.basename(self.path.rstrip("/"))

    def child(self, *names: str) -> Location:
        path = posixpath.join(self.path, *names)
        spec = posixpath.join(self.spec, *names)  # messages name what is meant
        return Location(spec, self.protocol, path, self.storage_options)

    def sibling(self, name: str) -> Location:
        parent = posixpath.dirname(self.spec.rstrip("/")) or "."
        return Location(parent, self.protocol, self.parent_path(), self.storage_options).child(name)

    def parent_path(self) -> str:
        return posixpath.dirname(self.path.rstrip("/")) or "/"

    def __repr__(self) -> str:
        return f"Location({self.url!r})"

    # -- access ----------------------------------------------------------------------

    @property
    def fs(self) -> Any:
        """The fsspec filesystem (created lazily; fsspec caches instances)."""
        import fsspec

        if self.is_local:
            return fsspec.filesystem("file")
        return fsspec.filesystem(self.protocol, **dict(self.storage_options))

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
        import zarr.storage

        if self.is_local:
            return zarr.storage.LocalStore(self.path, read_only=read_only)
        fs = self.fs
        if not getattr(fs, "async_impl", False):
            from fsspec.implementations.asyn_wrapper import AsyncFileSystemWrapper

            fs = AsyncFileSystemWrapper(fs, asynchronous=True)  # as zarr wraps it
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
        (``file:``, ``file://``, ``local:``, ``local://``) or an fsspec URL (``s3://...``).
    name : str
        The parameter's name, for messages (``"src"``, ``"dst"``).
    storage_options : mapping, optional
        fsspec options; only for remote URLs.
    writable : bool
        The location will be written: read-only protocols (HTTP) are refused.

    Returns
    -------
    Location

    Raises
    ------
    TypeError
        If ``spec`` is not a str or os.PathLike.
    ValueError
        If ``spec`` is empty, uses a scheme we do not understand, is a chained URL, or is
        read-only where ``writable``; or ``storage_options`` are given for a local path.

    Examples
    --------
    >>> import os
    >>> a = resolve("out.zarr", name="dst")
    >>> b = resolve(f"file://{os.getcwd()}/x/../out.zarr/", name="dst")
    >>> a == b, a.path == os.path.join(os.path.realpath(os.getcwd()), "out.zarr")
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
        return _local(spec, spec, name, options)
    scheme, rest = match.group(1).lower(), match.group(2)
    if "::" in spec:
        raise ValueError(
            f"{name} {spec!r} is a chained fsspec URL; fstack_dask does not support those: "
            f"give the store's own URL"
        )
    if scheme in _LOCAL_SCHEMES:
        return _local(spec, rest[2:] if rest.startswith("//") else rest, name, options)
    if not rest.startswith("//"):
        raise _unknown_scheme(name, spec, scheme)
    return _remote(spec, scheme, name, options, writable)


def _local(spec: str, path: str, name: str, options: Mapping[str, Any]) -> Location:
    if options:
        raise ValueError(
            f"storage_options only apply to URLs such as 's3://...', but {name} {spec!r} is a "
            f"local path"
        )
    if not path:
        raise ValueError(f"{name} {spec!r} names no path")
    # realpath, not abspath: 'link/..' must mean the parent of the link's target, as the OS
    # would take it, and symlinked spellings must compare equal.
    canonical = os.path.realpath(os.path.expanduser(path))
    return Location(spec, "file", canonical, {})


def _remote(
    spec: str, scheme: str, name: str, options: Mapping[str, Any], writable: bool
) -> Location:
    import fsspec

    if writable and scheme in _READ_ONLY_SCHEMES:
        raise ValueError(
            f"{name} {spec!r} is an HTTP URL, which is read-only; write to a local path or an "
            f"object store such as s3://bucket/key"
        )
    try:
        cls = fsspec.get_filesystem_class(scheme)
    except (ValueError, ImportError) as exc:
        known = f" ({exc})" if isinstance(exc, ImportError) else ""
        raise ValueError(
            f"{name} {spec!r} uses the protocol {scheme!r}, which fsspec does not know or "
            f"cannot load{known}; expected a local path or a URL such as s3://bucket/key"
        ) from None
    path = str(cls._strip_protocol(spec))
    rooted = path.startswith("/")
    path = posixpath.normpath(path) if path else path
    if path in (".", "") or (not rooted and path.startswith("..")):
        raise ValueError(f"{name} {spec!r} names no place inside its store")
    if not rooted:
        path = path.lstrip("/")
    protocol = cls.protocol if isinstance(cls.protocol, str) else cls.protocol[0]
    if protocol in _LOCAL_SCHEMES:  # e.g. 'file' registered under another name
        return _local(spec, path, name, options)
    return Location(spec, protocol, path, dict(options))


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
