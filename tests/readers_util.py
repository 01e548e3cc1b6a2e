"""Helpers shared by the reader tests: optional packages and the real stacks."""

from __future__ import annotations

import importlib
import os
import pathlib
import threading

import numpy as np
import pytest

_HERE = pathlib.Path(__file__).resolve()
# The real stacks live in the workspace's shared/realdata, beside the repository (and
# beside CI's clone), never in the repository itself.
REALDATA_CANDIDATES = [
    pathlib.Path(os.environ.get("FSTACK_REALDATA", "/nonexistent")),
    _HERE.parents[2] / "shared" / "realdata",
    pathlib.Path("/work/shared/realdata"),
]
REALDATA = next((p for p in REALDATA_CANDIDATES if p.is_dir()), None)
NO_REALDATA = (
    "the real stacks (shared/realdata beside the repository) are absent: they are not part "
    "of the repository, so a clean checkout without the workspace's shared/ folder has none"
)


def need(module: str):
    """Import an optional reader dependency: skip without it, but fail on CI (test extra)."""
    try:
        return importlib.import_module(module)
    except ImportError:
        msg = f"{module} is missing: pip install -e '.[test]'"
        if os.environ.get("CI"):
            pytest.fail(msg)
        # module level too (``x = need("x")`` at the top of a file): without the flag
        # pytest reports a collection error there instead of skipping the module
        pytest.skip(msg, allow_module_level=True)


def realdata(name: str) -> pathlib.Path:
    if REALDATA is None or not (REALDATA / name).is_dir():
        pytest.skip(NO_REALDATA)
    return REALDATA / name


def regions(shape_yx, n=6, seed=0):
    """Some y/x regions (step-1 slices), edges included."""
    rng = np.random.default_rng(seed)
    out = [(slice(0, shape_yx[0]), slice(0, shape_yx[1])), (slice(0, 1), slice(-1, None))]
    for _ in range(n):
        y0, x0 = (int(rng.integers(0, s)) for s in shape_yx)
        y1 = int(rng.integers(y0 + 1, shape_yx[0] + 1))
        x1 = int(rng.integers(x0 + 1, shape_yx[1] + 1))
        out.append((slice(y0, y1), slice(x0, x1)))
    return out


def read_concurrently(array, keys, threads=8):
    """Read every key from `threads` threads at once; return the results in key order."""
    results: list = [None] * len(keys)
    errors: list = []
    start = threading.Barrier(threads)

    def work(worker):
        start.wait()
        try:
            for i in range(worker, len(keys), threads):
                results[i] = array[keys[i]]
        except BaseException as exc:  # reported below, in the test's thread
            errors.append(exc)

    pool = [threading.Thread(target=work, args=(w,)) for w in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    if errors:
        raise errors[0]
    return results


def patch_tiff_tag(path, tag: str, value: int, *, pages=None, index: int = 0) -> None:
    """Rewrite one value of a tag in place (entry `index` of an array tag such as
    StripByteCounts) in every page, or in `pages`: a TIFF whose header lies about its data."""
    import struct

    import tifffile

    spots = []
    with tifffile.TiffFile(path) as tif:
        for k, page in enumerate(tif.pages):
            if pages is not None and k not in pages:
                continue
            entry = page.tags[tag]
            code = tif.byteorder + {3: "H", 4: "I", 16: "Q"}[int(entry.dtype)]
            spots.append((entry.valueoffset + index * struct.calcsize(code), code))
    with open(path, "r+b") as fh:
        for offset, code in spots:
            fh.seek(offset)
            fh.write(struct.pack(code, value))
