"""An HTTP(S) URL's query string sent byte for byte with every request.

A presigned URL's signature (S3's ``X-Amz-Signature``, GCS's, an Azure SAS) is computed over
the query as it was issued; fsspec's ``params`` are re-encoded by aiohttp from the decoded
pairs (``%2F`` sent as ``/``, ``%3F`` as ``?``, a ``+`` read as a space), which a server that
checks the raw query refuses. The query is not in the path either: zarr appends its keys to
the path, after it.
"""

from __future__ import annotations

import weakref

import yarl
from fsspec.implementations.http import HTTPFileSystem

__all__ = ["QueryHTTPFileSystem"]


class QueryHTTPFileSystem(HTTPFileSystem):
    """fsspec's HTTP filesystem that appends ``query``, as given, to every URL it requests
    (one that has a query of its own, a link a listing found, is requested as it is)."""

    def __init__(self, *args, query: str = "", **kwargs):
        super().__init__(*args, **kwargs)
        self.query = query

    def encode_url(self, url: str) -> yarl.URL:
        base = super().encode_url(url)
        if not self.query or base.raw_query_string:
            return base
        return yarl.URL(f"{base}?{self.query}", encoded=True)  # base: its path already encoded

    async def set_session(self):
        new = self._session is None
        session = await super().set_session()
        if new and self.asynchronous:  # as fsspec closes a synchronous instance's: zarr's async
            weakref.finalize(self, self.close_session, self.loop, session)  # one said "Unclosed"
        return session
