"""A Zarr store's metadata files checked before zarr is given them: regular files holding
JSON objects, whose shapes are integers and whose chunks hold at least one element, each
refusal naming the file (zarr's own messages do not).
"""

from __future__ import annotations

import json
import os
import stat
from typing import Any

from .._locations import Location
from .source import not_a_file

__all__: list[str] = []


def _check_metadata_json(location: Location, where: str, folder: str = "") -> None:
    """Metadata that is not a JSON object, or an array's that states no usable shape or chunk
    shape: name the file (zarr's own message does not). ``folder``: the array's path in an
    image group, for messages."""
    for name in ("zarr.json", ".zarray", ".zgroup", ".zattrs"):
        meta = location.child(name)
        if meta.is_local:  # a named pipe's read never ends, /dev/zero's never stops
            try:
                mode = os.stat(meta.path).st_mode
            except OSError:
                mode = stat.S_IFREG
            if not stat.S_ISREG(mode) and not stat.S_ISDIR(mode):
                raise ValueError(
                    f"{where}: {folder}{name} is {not_a_file(mode)}, not a regular file; the "
                    "store's metadata must be files"
                )
        try:
            raw = meta.read_bytes()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            continue
        except Exception as exc:  # an HTTP server's refusal (an expired token's 403), raw
            if meta.protocol != "http":
                raise
            from .._locations import redact_urls  # (aiohttp's names the URL, token and all)

            raise ValueError(
                f"{where}: {folder}{name} cannot be read ({type(exc).__name__}: "
                f"{redact_urls(_one_line(exc))}); an "
                "expired token or signature? check the URL, and check storage_options= (the "
                "endpoint, the credentials)"
            ) from None
        try:
            value = json.loads(raw)
        except (ValueError, UnicodeDecodeError, RecursionError) as exc:  # (nested 100000 deep)
            raise ValueError(
                f"{where}: {folder}{name} is not valid JSON ({_one_line(exc)}); the store's "
                "metadata is damaged"
            ) from None
        if not isinstance(value, dict):
            raise ValueError(
                f"{where}: {folder}{name} holds a JSON {type(value).__name__}, expected an "
                "object; the store's metadata is damaged"
            )
        for what, values in _stated_shapes(name, value):
            _check_stated(what, values, f"{where}: {folder}{name}")


def _stated_shapes(name: str, meta: dict[str, Any]) -> list[tuple[str, Any]]:
    """(what, value) of every shape and chunk shape an array's metadata file states."""
    if name == ".zarray":
        return [("shape", meta.get("shape")), ("chunk shape", meta.get("chunks"))]
    if name != "zarr.json" or meta.get("node_type") != "array":
        return []
    found = [("shape", meta.get("shape"))]
    grid = meta.get("chunk_grid")
    config = grid.get("configuration") if isinstance(grid, dict) else None
    if isinstance(config, dict):
        found.append(("chunk shape", config.get("chunk_shape")))
    codecs = meta.get("codecs")
    for codec in codecs if isinstance(codecs, list) else []:
        if not isinstance(codec, dict) or codec.get("name") != "sharding_indexed":
            continue
        config = codec.get("configuration")
        if isinstance(config, dict):
            found.append(("inner chunk shape (sharding)", config.get("chunk_shape")))
    return found


def _check_stated(what: str, values: Any, where: str) -> None:
    """Integers, and chunks of at least one element: zarr reads a JSON ``true`` as 1, and a
    zero chunk only fails when a chunk is read (a division by zero)."""
    if not isinstance(values, list):
        return  # missing or not a list: zarr's own message says so
    text = json.dumps(values)
    if any(isinstance(v, bool) or not isinstance(v, int) or v < 0 for v in values):
        raise ValueError(
            f"{where} gives {what} {text}; expected a list of integers >= 0 (the metadata "
            "is damaged)"
        )
    if what != "shape" and 0 in values:
        raise ValueError(
            f"{where} gives {what} {text}; every chunk must be at least 1 element along "
            "each axis (the metadata is damaged)"
        )


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__
