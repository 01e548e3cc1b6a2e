"""Refusing an array or group inside an unfinished output (an fstack_dask output a run did
not finish, or a store ``write_stack`` did not finish): its unwritten blocks read as fill
values, and only the folders above it say it is unfinished.
"""

from __future__ import annotations

import dataclasses
import json
import os
import posixpath
from collections.abc import Mapping
from typing import Any

from .._locations import Location
from .._ngff import WRITE_STACK_UNFINISHED

__all__: list[str] = []


def _refuse_inside_unfinished(location: Location, where: str) -> None:
    """Refuse an array or group inside an unfinished fstack_dask output (``out.zarr/0``,
    ``out.zarr/depth``): its blocks not yet written read as fill values, and only its root
    says it is unfinished (the root itself is refused by :func:`_ome_source`). The folders
    above are looked at while they are Zarr groups."""
    here = location
    for _ in range(_MAX_NESTING):
        spec = posixpath.dirname(here.spec.rstrip("/")) or "."
        if here.is_local and os.path.realpath(os.path.expanduser(spec)) != here.parent_path():
            spec = here.parent_path()  # a link's folder ('.' for 'link'), not the one it is in
        parent = dataclasses.replace(here, spec=spec, path=here.parent_path())
        if parent.path == here.path:
            return
        attrs = _group_attributes(parent)
        if attrs is None:
            return
        ours = attrs.get("fstack_dask")
        if isinstance(ours, Mapping) and ours.get("complete") is False:
            raise ValueError(
                f"{where} is inside {parent.spec!r}, an unfinished fstack_dask output whose "
                "unwritten blocks read as fill values; finish it with resume=True first, or "
                "fuse the stack it was fused from"
            )
        if attrs.get(WRITE_STACK_UNFINISHED):
            raise ValueError(f"{where} is inside {parent.spec!r}, {_UNFINISHED_STACK}")
        here = parent


_MAX_NESTING = 8  # an output's deepest array is depth/<level>: two below its root


_UNFINISHED_STACK = (
    "a store that write_stack did not finish (killed while writing?) whose unwritten chunks "
    "read as fill values; remove it and write the stack again"
)


def _group_attributes(location: Location) -> dict[str, Any] | None:
    """A Zarr group's attributes (v3 ``zarr.json``, v2 ``.zgroup`` + ``.zattrs``), or None
    where ``location`` is no readable group."""
    for name in ("zarr.json", ".zgroup"):
        try:
            meta = json.loads(location.child(name).read_bytes())
        except Exception:  # absent, not a file (a named pipe), damaged, or unreachable: the
            continue  # check is only for a group we can read
        if not isinstance(meta, dict) or (name == "zarr.json" and meta.get("node_type") != "group"):
            return None
        if name == "zarr.json":
            attrs = meta.get("attributes")
        else:
            try:
                attrs = json.loads(location.child(".zattrs").read_bytes())
            except Exception:
                attrs = {}
        return attrs if isinstance(attrs, dict) else {}
    return None
