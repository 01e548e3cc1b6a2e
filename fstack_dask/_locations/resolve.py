"""Every path or URL resolved once into a :class:`~.location.Location`."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any
from urllib.parse import unquote

from .location import Location
from .places import (
    _LOCAL_SCHEMES,
    _READ_ONLY_SCHEMES,
    _SCHEME,
    _first,
    _http,
    _local,
    _place,
    _read_only,
)
from .wrappers import _is_wrapper, _unwrap, refuse_userinfo


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
        if scheme == "file":  # a URL's path is percent-encoded (RFC 8089): file:///d/a%3Fb.zarr
            path = unquote(path)  # is the folder a?b.zarr, read as 'a%3Fb.zarr'
        return _local(spec, path, name, options, writable)
    if not rest.startswith("//"):
        raise _unknown_scheme(name, spec, scheme)
    return _remote(spec, scheme, name, options, writable)


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
    refuse_userinfo(spec, name)
    protocol = _first(cls.protocol)
    # a scheme is case-insensitive (RFC 3986), fsspec's stripping is not: S3://b/out.zarr
    # was the bucket 'S3:', refused as a storage option's fault
    url = scheme + spec[len(scheme) :]
    if protocol == "http":
        return _http(spec, spec, name, options)
    return _place(spec, protocol, str(cls._strip_protocol(url)), name, options, writable)


def reach(location: Location, *, name: str, option: str | None = None) -> None:
    """Ask a remote ``location`` once whether it exists, so that an endpoint that does not
    answer, missing credentials or a wrong storage option is told naming the parameter
    (botocore's ``EndpointConnectionError`` or ``NoCredentialsError`` named neither: a sixth
    adversarial run).

    Raises
    ------
    ValueError
        If the filesystem cannot be created or does not answer.
    """
    if location.is_local:
        return
    if option is None:  # (write_stack's path: its own storage_options)
        option = "storage_options" if name == "src" else f"{name}_storage_options"
    if location.protocol == "http":
        _reach_server(location, name)
    try:
        location.exists()
    except Exception as exc:
        told = " ".join(f"{type(exc).__name__}: {exc}".split())
        also = "; dst does not inherit src's options" if name == "dst" else ""
        raise ValueError(
            f"{name} {location.spec!r} cannot be reached ({told}); check {option}= (the "
            f"endpoint, the credentials{also})"
        ) from exc


# The probe's bounds: aiohttp's own are 300 s in all, so a server that took the connection and
# never answered held the run that long before it said anything
_CONNECT_S, _ANSWER_S = 30, 60


def _reach_server(location: Location, name: str) -> None:
    """Ask an HTTP(S) server once for ``location``: any answer, an error status too, is a
    server reached (what it said is told where the data is read), and :func:`reach` goes on.
    A refused connection or a host name that does not resolve was "does not exist": fsspec's
    ``exists`` takes every failure to connect for a missing file."""
    import aiohttp
    from fsspec.asyn import sync

    fs = location.fs
    # the reads' own bounds where storage_options set any (a slow server's user allows it
    # more; the probe's 60 s refused what the reads would have opened): ours otherwise
    theirs = "timeout" in fs.kwargs or "timeout" in getattr(fs, "client_kwargs", {})
    ours = aiohttp.ClientTimeout(total=None, sock_connect=_CONNECT_S, sock_read=_ANSWER_S)
    asked = {**fs.kwargs} if theirs else {**fs.kwargs, "timeout": ours}

    async def ask() -> None:
        session = await fs.set_session()
        async with session.get(fs.encode_url(location.path), **asked):
            pass

    try:
        sync(fs.loop, ask)
        return
    except aiohttp.ClientConnectorDNSError as exc:
        why = f"its host name {exc.host!r} does not resolve (a typo in the URL?)"
    except aiohttp.ClientConnectorError as exc:
        refused = isinstance(exc.os_error, ConnectionRefusedError)
        reason = "connection refused" if refused else " ".join(str(exc.os_error).split())
        why = f"nothing answers at {exc.host}:{exc.port} ({reason}): is the server up?"
    except (TimeoutError, aiohttp.ServerTimeoutError) as exc:
        url = fs.encode_url(location.path)
        bound = "the timeout storage_options set" if theirs else f"{_ANSWER_S} s"
        why = (f"the server at {url.host}:{url.port} took the connection but did not answer "
               f"within {bound} ({type(exc).__name__})")  # fmt: skip
    except Exception:  # an answer, or a wrong option: told by exists() as for any URL
        return
    raise ValueError(f"{name} {location.spec!r} cannot be reached: {why}")
