"""Names and metadata values that a terminal acts on: an escape sequence (ESC, BEL), a
newline that forges a line of output, a name that is not UTF-8 (an adversarial run on names,
2026-12-06). What the command line prints (``info``'s lines, ``demo``'s, the log's notes
and warnings, errors) shows them escaped or quoted, each message on one line, and never
stops on a strict UTF-8 stdout (a desktop's en_US.UTF-8 locale)."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import tifffile

from fstack_dask import fuse_zarr

TIMEOUT = 120
FORGED = "b\x1b]0;title\x07\x1b[2J\nfstack-dask: error: forged"


def _planes(folder, n=5):
    folder.mkdir()
    rng = np.random.default_rng(0)
    for k in range(n):
        tifffile.imwrite(folder / f"p{k}.tif", rng.integers(0, 60000, (48, 48), dtype=np.uint16))
    return folder


def _cli(*args, strict=False):
    env = dict(os.environ)
    if strict:  # as Python's stdout is under a UTF-8 locale other than C.UTF-8
        env["PYTHONIOENCODING"] = "utf-8:strict"
    return subprocess.run(
        [sys.executable, "-m", "fstack_dask", *map(str, args)], capture_output=True,
        timeout=TIMEOUT, check=False, env=env, text=True, errors="surrogateescape",
    )  # fmt: skip


def _clean(text):
    """No character a terminal acts on, and no line a crafted name forged."""
    assert "\x1b" not in text and "\x07" not in text, text
    assert "forged" not in text or "\\nfstack-dask: error: forged" in text, text
    assert not any(line.startswith("fstack-dask: error: forged") for line in text.splitlines())


def test_info_shows_a_crafted_name_quoted_on_one_line(tmp_path):
    """``info`` printed the source and output paths (and a fused output's source) as they
    were: the name's ESC sequences cleared the screen and set the terminal's title, and its
    newline forged an error line."""
    folder = _planes(tmp_path / FORGED)
    fuse_zarr(folder, folder / "o.ome.zarr", progress=False)
    for target, key in ((folder, "source:"), (folder / "o.ome.zarr", "output:")):
        res = _cli("info", target)
        assert res.returncode == 0, res.stderr
        _clean(res.stdout + res.stderr)
        assert f"{key}" in res.stdout and repr(str(target)) in res.stdout, res.stdout
    assert f"fused from: {str(folder)!r}" in res.stdout, res.stdout


def test_a_name_that_is_not_utf8_is_shown_on_a_strict_stdout(tmp_path):
    """A name with a byte that is not UTF-8 (a str with a surrogate) stopped ``info`` and
    ``demo`` on a strict UTF-8 stdout: "'utf-8' codec can't encode character '\\udcff'",
    the demo's planes written and nothing fused."""
    folder = _planes(tmp_path / os.fsdecode(b"planes\xff"))
    res = _cli("info", folder, strict=True)
    assert res.returncode == 0 and f"source:             {str(folder)!r}" in res.stdout, (
        res.stdout + res.stderr
    )
    demo = tmp_path / os.fsdecode(b"demo\xff")
    res = _cli("demo", demo, "--size", "32", "--planes", "5", "--no-progress", strict=True)
    assert res.returncode == 0, res.stderr
    assert f"wrote {str(demo / 'fused.ome.zarr')!r}: " in res.stdout, res.stdout
    assert (demo / "fused.ome.zarr" / "zarr.json").is_file()


def test_notes_naming_a_crafted_dst_stay_one_line_each(tmp_path):
    """The log's note "writing <dst>" (a TIFF dst) showed the name as it was."""
    folder = _planes(tmp_path / "planes")
    dst = tmp_path / "o\x1b[2J\x07\nfstack-dask: error: forged.ome.tif"
    res = _cli("fuse", folder, dst, "--no-progress")
    assert res.returncode == 0, res.stderr
    _clean(res.stdout + res.stderr)
    assert all(line.startswith("fstack-dask: ") for line in res.stderr.splitlines()), res.stderr
    assert dst.is_file()


def test_a_hint_naming_a_path_quotes_it_as_python_does(tmp_path):
    """Hints quoted a path by hand ('...'): a name holding a quote ended the quoting early,
    and one holding a newline was shown split (the one-line report joined it with a space)."""
    folder = tmp_path / "it's\nhere"
    folder.mkdir()
    tifffile.imwrite(folder / "one.tif", np.zeros((32, 32), np.uint16))
    res = _cli("fuse", folder / "one.tif", tmp_path / "o.ome.zarr")
    assert res.returncode == 2 and len(res.stderr.splitlines()) == 1, res.stderr
    assert f"(e.g. {str(folder / '*.tif')!r})" in res.stderr, res.stderr
