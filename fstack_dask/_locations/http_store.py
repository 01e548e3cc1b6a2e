"""An HTTP(S) Zarr store that tells a chunk its server lists but does not serve from one never
stored.

fsspec turns an HTTP 404 into ``FileNotFoundError``, which zarr's store reads as "chunk not
stored": the fill value. A server that stops serving a chunk mid-run (reconfigured, a store
being replaced, a CDN's glitch) had the run finish "complete", exit 0, every pixel fused from
zeros. Where a chunk is not served, its folder's listing (the server's folder
page, fetched once per folder and process, and only for chunks not served) says whether it is
stored: listed, it is an error (:class:`UnservedChunkError`); not listed, a sparse store's
unstored chunk, the fill value as Zarr means it. An object store lists no folder over HTTP:
its chunks not served read as the fill value, as before (docs/safety.md, "One place,
however it is spelled").
"""

from __future__ import annotations

import asyncio
import posixpath
from typing import Any

from zarr.storage import FsspecStore

__all__ = ["ListedHTTPStore", "UnservedChunkError"]


class UnservedChunkError(Exception):
    """A chunk its server lists answered 404: ``url`` is the file's URL."""

    def __init__(self, url: str):
        super().__init__(url)
        self.url = url


class ListedHTTPStore(FsspecStore):
    """zarr's ``FsspecStore`` over HTTP, whose chunk not served is an error where the server
    lists it (the module docstring)."""

    async def get(self, key: str, prototype: Any, byte_range: Any = None) -> Any:
        value = await super().get(key, prototype, byte_range)
        if value is None and not key.rsplit("/", 1)[-1].startswith((".z", "zarr.json")):
            path = f"{self.path.rstrip('/')}/{key}"
            if await self._listed(path):
                raise UnservedChunkError(path)
        return value

    async def _listed(self, path: str) -> bool:
        folder, name = posixpath.split(path)
        listed = self.__dict__.setdefault("_listings", {})  # (fsspec's HTTP caches none)
        if folder not in listed:  # the one request, also for the reads that missed meanwhile:
            # a block's reads miss at once, and each fetched the page (4-5 times a folder)
            listed[folder] = asyncio.ensure_future(self._names(folder))
        asked = listed[folder]
        try:  # (shielded: a read cancelled while it waits cancels not the others' listing)
            return name in await asyncio.shield(asked)
        except Exception:  # each waiting read fails with it; a later read asks anew
            if listed.get(folder) is asked:
                del listed[folder]
            raise

    def __getstate__(self) -> dict[str, Any]:
        # the listings are tasks of this process's loop: a copy (a worker's) lists anew
        return {k: v for k, v in self.__dict__.items() if k != "_listings"}

    async def _names(self, folder: str) -> set[str]:
        try:
            entries = await self.fs._ls(folder + "/", detail=False)
        except Exception as exc:  # no folder page (an object store's 404 or 403): none known
            if not _no_page(exc):
                # a 5xx, a timeout, the connection reset: taken for none, the chunk not served
                # read as the fill value, and every miss in the folder for the run
                raise
            entries = []
        return {
            (e["name"] if isinstance(e, dict) else e).rstrip("/").rsplit("/", 1)[-1]
            .split("?")[0] for e in entries
        }  # fmt: skip


def _no_page(exc: BaseException) -> bool:
    """Whether the server answered a folder page's request, with no page: a 4xx (fsspec's
    FileNotFoundError for a 404), as an object store does; not a failure to answer."""
    status = getattr(exc, "status", None)
    return isinstance(exc, FileNotFoundError) or isinstance(status, int) and 400 <= status < 500
