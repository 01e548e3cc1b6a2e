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

An HTTP(S) URL's query string (a token, a signature) is sent as given with every request
(``query``) and hidden in messages.

Deleting goes through :func:`remove_tree` alone, which re-checks, right before it removes
anything, that the caller's ownership test still passes and that the target is none of the
places that must never be removed (the filesystem root, the home and working folders and
their parents, and the protected locations the caller names, such as the source).
"""

from .location import Location
from .places import (
    change_locked,
    marks_reader,
    owner_and_mode,
    permission_missing,
    read_only_mount,
    redact_urls,
    sticky_keeps,
)
from .remove import is_marker, mounts_within, remove_keys, remove_tree
from .resolve import reach, resolve

__all__ = [
    "Location",
    "change_locked",
    "is_marker",
    "marks_reader",
    "mounts_within",
    "owner_and_mode",
    "permission_missing",
    "reach",
    "read_only_mount",
    "redact_urls",
    "remove_keys",
    "remove_tree",
    "resolve",
    "sticky_keeps",
]
