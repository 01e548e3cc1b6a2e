"""Every spelling resolves to the place the data lives: fsspec's wrapper and chained URLs,
``dir://``, HTTP, filesystems we cannot see through, symlink loops and dangling symlinks.

Real stores on disk and in fsspec's memory filesystem, a real HTTP server, the real CLI in a
subprocess where exit codes matter, and sha256 snapshots (``tree_digest``) of the whole test
folder before and after every refused run.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import pickle
import re
import socket
import subprocess
import sys
import time
import uuid
import zipfile
from pathlib import Path

import fsspec
import numpy as np
import pytest
import zarr
from conftest import tree_digest

from fstack_dask import focus_stack, fuse_zarr, synthetic_stack, write_stack
from fstack_dask._locations import reach, resolve

SHAPE, PLANES, CHUNK = (64, 48), 5, 32
CACHE = os.path.join(os.path.expanduser("~"), ".cache")  # numba's cache, for the subprocesses


def _stack(seed=0):
    return synthetic_stack(SHAPE, PLANES, dtype="uint16", seed=seed).stack.transpose(2, 0, 1)


def _write(path, seed=0):
    if "://" not in str(path):  # write_stack, as fuse_zarr, creates no missing parent
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    write_stack(str(path), _stack(seed), axes="zyx", chunks=(PLANES, CHUNK, CHUNK))
    return path


def cli(*args, cwd=None, timeout=120, env=None):
    return subprocess.run(
        [sys.executable, "-m", "fstack_dask", *map(str, args)],
        capture_output=True, text=True, timeout=timeout, cwd=cwd, check=False,
        env={**os.environ, "XDG_CACHE_HOME": CACHE, **(env or {})},
    )  # fmt: skip


def run_main(*args, capsys):
    """The CLI's main() in this process (the same code as the subprocess, much faster)."""
    from fstack_dask._cli.main import main

    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return subprocess.CompletedProcess(args, code, captured.out, captured.err)


def _snapshot(root) -> dict[str, str]:
    """``tree_digest`` that records where each symlink points instead of reading through it
    (a loop or a dangling link cannot be read)."""
    out = {}
    for dirpath, dirs, files in os.walk(root):
        for name in dirs + files:
            path = os.path.join(dirpath, name)
            key = os.path.relpath(path, root)
            if os.path.islink(path):
                out[key] = "-> " + os.readlink(path)
            elif name in dirs:
                out[key + "/"] = "dir"
            else:
                with open(path, "rb") as fh:
                    out[key] = hashlib.sha256(fh.read()).hexdigest()
    return out


def _one_line_error(proc):
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("fstack-dask: error: "), proc.stderr
    return lines[0]


def _expected(seed=0):
    return focus_stack(_stack(seed).transpose(1, 2, 0))


def _fused(path):
    return zarr.open_group(str(path), mode="r")["0"][...]


@pytest.fixture()
def src(tmp_path):
    return _write(tmp_path / "stack.zarr")


@pytest.fixture()
def old_output(tmp_path):
    """An fstack_dask output ``old.zarr`` (a real CLI run) holding a source in ``2024/``."""
    old = tmp_path / "old.zarr"
    proc = cli("fuse", _write(tmp_path / "first.zarr", seed=1), old, "--no-progress")
    assert proc.returncode == 0, proc.stderr
    inner = _write(old / "2024" / "stack.zarr")
    return old, inner


# ------------------------------------------------------------------ 1. wrappers and chains


def test_a_source_inside_an_output_is_protected_through_wrappers(old_output, tmp_path, capsys):
    """The issue's scenario: `fuse simplecache://$PWD/old.zarr/2024/stack.zarr old.zarr
    --overwrite` read the source as a remote store, and the overwrite deleted it."""
    old, inner = old_output
    before = tree_digest(tmp_path)
    local = ["--storage-options", json.dumps({"target_protocol": "file"})]
    for spelling, options in (
        (f"simplecache://{inner}", local),
        (f"simplecache::file://{inner}", []),
    ):
        proc = cli("fuse", spelling, old, "--overwrite", *options, "--no-progress")
        assert proc.returncode == 2, proc.stderr
        assert f"dst '{old}' contains the source" in _one_line_error(proc)
        assert tree_digest(tmp_path) == before
    dir_options = json.dumps({"path": str(old), "target_protocol": "file"})
    others = [
        (f"filecache::{inner}", []),
        (f"blockcache::file://{inner}", []),
        ("dir://2024/stack.zarr", ["--storage-options", dir_options]),
    ]
    for spelling, options in others:
        for flags in (["--overwrite"], ["--resume"], []):
            proc = run_main("fuse", spelling, old, *flags, *options, "--no-progress", capsys=capsys)
            assert proc.returncode == 2, (spelling, proc.stderr)
            assert "contains the source" in _one_line_error(proc)
    assert tree_digest(tmp_path) == before
    # and each spelling reads the source (locally, without copying it into a cache)
    for n, (spelling, options) in enumerate(others):
        kw = {"storage_options": json.loads(options[1])} if options else {}
        out = fuse_zarr(spelling, tmp_path / f"new{n}.zarr", progress=False, **kw)
        np.testing.assert_array_equal(out["0"][...], _expected())


def test_wrapper_spellings_resolve_to_the_underlying_place(tmp_path, monkeypatch):
    target = tmp_path / "data" / "stack.zarr"
    target.mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    canonical = resolve(str(target), name="src")
    local_fs = fsspec.filesystem("file")
    spellings = [
        (f"simplecache://{target}", {"target_protocol": "file"}),
        ("simplecache://data/stack.zarr", {"target_protocol": "file"}),  # relative, as fsspec
        (f"simplecache::file://{target}", {}),
        (f"simplecache::{target}", {}),
        # protocols in upper case, as a scheme may be: fsspec took 'SIMPLECACHE::...' for the
        # local file './SIMPLECACHE'
        (f"SIMPLECACHE::FILE://{target}", {}),
        (f"SimpleCache::{target}", {}),
        (f"filecache::file://{target}", {"filecache": {"cache_storage": str(tmp_path / "c")}}),
        (f"blockcache::file://{target}", {}),
        ("dir://stack.zarr", {"path": str(tmp_path / "data"), "target_protocol": "file"}),
        ("dir://data/stack.zarr", {"path": str(tmp_path)}),
        ("dir://stack.zarr", {"path": str(tmp_path / "data"), "fs": local_fs}),
        ("simplecache://stack.zarr", {"target_protocol": "dir",
                                      "target_options": {"path": str(tmp_path / "data")}}),
    ]  # fmt: skip
    for spelling, options in spellings:
        for writable in (False, True):
            loc = resolve(spelling, name="src", storage_options=options, writable=writable)
            assert loc == canonical and loc.is_local and loc.via == (), (spelling, loc)
            assert canonical.contains(loc) and loc.contains(canonical)
    inner = resolve(f"simplecache::file://{target}/0", name="dst", writable=True)
    assert canonical.contains(inner) and not inner.contains(canonical)


def test_a_remote_source_is_still_read_through_its_cache():
    base = f"memory://fstack-loc-{uuid.uuid4().hex}"
    _write(f"{base}/stack.zarr")
    src = resolve(f"simplecache::{base}/stack.zarr", name="src")
    assert src == resolve(f"{base}/stack.zarr", name="src") and src.url == f"{base}/stack.zarr"
    assert src.via == (("simplecache", {}),) and type(src.fs).__name__ == "SimpleCacheFileSystem"
    # a destination is written directly, never through a cache
    dst = resolve(f"simplecache::{base}/out.zarr", name="dst", writable=True)
    assert dst.via == () and type(dst.fs).__name__ == "MemoryFileSystem"
    out = fuse_zarr(f"simplecache::{base}/stack.zarr", f"{base}/out.zarr", progress=False)
    np.testing.assert_array_equal(out["0"][...], _expected())
    # the cached source, inside dst: refused, and nothing in the store changed
    fs = fsspec.filesystem("memory")
    _write(f"{base}/out.zarr/2024/stack.zarr", seed=2)
    before = {p: fs.cat_file(p) for p in fs.find(base)}
    with pytest.raises(ValueError, match="contains the source"):
        fuse_zarr(f"simplecache::{base}/out.zarr/2024/stack.zarr", f"{base}/out.zarr",
                  overwrite=True, progress=False)  # fmt: skip
    assert {p: fs.cat_file(p) for p in fs.find(base)} == before


def test_storage_options_do_not_make_one_place_two():
    """Credentials (or a cache's options) say how a place is reached, not which place it is:
    a source given with some options is inside a dst given with others."""
    base = f"memory://fstack-loc-{uuid.uuid4().hex}"
    dst = resolve(f"{base}/out.zarr", name="dst", writable=True)
    inside = f"{base}/out.zarr/2024/stack.zarr"
    for spelling, options in (
        (inside, {"use_listings_cache": False}),
        (f"simplecache::{inside}", {"memory": {"use_listings_cache": False}}),
    ):
        src = resolve(spelling, name="src", storage_options=options)
        assert dict(src.storage_options) == {"use_listings_cache": False}
        assert dict(dst.storage_options) == {}
        assert dst.contains(src) and dst.overlaps(src) and not src.contains(dst)


# ------------------------------------------------------- 2. places we cannot see through


def _zip_of(folder: Path, archive: Path) -> Path:
    archive.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(archive, "w") as zf:
        for root, _dirs, files in os.walk(folder):
            for name in files:
                path = Path(root) / name
                zf.write(path, path.relative_to(folder.parent).as_posix())
    return archive


def test_a_source_in_an_archive_inside_dst_is_protected(old_output, tmp_path):
    """A zip:// source keeps its own protocol, but overlaps its archive file: a dst holding
    the archive is refused (the overwrite would have deleted old.zarr/2024/)."""
    old, inner = old_output
    archive = _zip_of(inner, old / "2024" / "a.zip")
    options = json.dumps({"fo": str(archive)})
    before = tree_digest(tmp_path)
    for dst in (old, old / "2024"):
        proc = cli("fuse", "zip://stack.zarr", dst, "--overwrite", "--storage-options", options,
                   "--no-progress")  # fmt: skip
        assert proc.returncode == 2, proc.stderr
        assert "contains the source" in _one_line_error(proc)
    assert tree_digest(tmp_path) == before
    out = fuse_zarr("zip://stack.zarr", tmp_path / "elsewhere.zarr", progress=False,
                    storage_options={"fo": str(archive)})  # fmt: skip
    np.testing.assert_array_equal(out["0"][...], _expected())


def test_filesystems_we_cannot_see_through_are_refused_as_dst(src, tmp_path):
    archive = _zip_of(src, tmp_path / "a.zip")
    refs = tmp_path / "refs.json"
    refs.write_text(json.dumps({"version": 1, "refs": {}}))
    before = tree_digest(tmp_path)
    for spelling, options in [
        ("zip://out.zarr", {"fo": str(archive), "mode": "w"}),  # opening it would truncate it
        ("simplecache://out.zarr", {"target_protocol": "zip",
                                    "target_options": {"fo": str(archive), "mode": "w"}}),
        (f"simplecache::zip://out.zarr::file://{archive}", {"zip": {"mode": "w"}}),
        ("reference://out.zarr", {"fo": str(refs)}),
    ]:  # fmt: skip
        with pytest.raises(ValueError, match="hides where its data lives") as info:
            resolve(spelling, name="dst", storage_options=options, writable=True)
        assert str(info.value).startswith(f"dst {spelling!r}")
    proc = cli("fuse", src, "zip://out.zarr", "--dst-storage-options",
               json.dumps({"fo": str(archive), "mode": "w"}), "--no-progress")  # fmt: skip
    assert proc.returncode == 2 and "hides where its data lives" in _one_line_error(proc)
    # as a chained source it is refused too (fstack_dask reads it only from its own URL)
    with pytest.raises(ValueError, match="not from a chained URL"):
        resolve(f"zip://stack.zarr::file://{archive}", name="src")
    assert tree_digest(tmp_path) == before


def test_references_may_read_anywhere_on_their_filesystem(tmp_path):
    refs = tmp_path / "refs.json"
    refs.write_text(json.dumps({"version": 1, "refs": {"stack.zarr/zarr.json": "{}"}}))
    src = resolve("reference://stack.zarr", name="src",
                  storage_options={"fo": str(refs), "remote_protocol": "file"})  # fmt: skip
    assert src.protocol == "reference"
    far = resolve(tmp_path / "far" / "away.zarr", name="dst", writable=True)
    assert far.overlaps(src)  # its references can name any local file
    remote = resolve("reference://stack.zarr", name="src",
                     storage_options={"fo": str(refs), "remote_protocol": "memory"})  # fmt: skip
    assert not far.overlaps(remote) and resolve(refs, name="dst").overlaps(remote)
    assert resolve("memory://any/where", name="dst", writable=True).overlaps(remote)


# ----------------------------------------------------------------------------- 3. HTTP


# A real http.server answering 403 (or the status it returns) to each request that
# ``refuses(path, raw query)`` (the
# snippet each server below defines), as an object store does to a missing, expired or altered
# token or presigned URL's signature; its own arguments in ``args``
_SERVER = """
import http.server, os, sys, threading, urllib.parse
port, root, args = int(sys.argv[1]), sys.argv[2], sys.argv[3:]
count, lock, here = [0], threading.Lock(), threading.local()  # (here: the request's headers)
def fresh(path):  # None for no file, else whether it is among the first int(args[0]) asked
    if not os.path.isfile(root + urllib.parse.unquote(path)):
        return None
    with lock:
        count[0] += 1
        return count[0] <= int(args[0])
{refuses}
class Handler(http.server.SimpleHTTPRequestHandler):
    def __init__(self, *a, **k):
        super().__init__(*a, directory=root, **k)
    def send_head(self):
        path, _, raw = self.path.partition("?")
        here.headers = self.headers
        refused = refuses(path, raw)
        if refused:
            self.send_error(403 if refused is True else refused)
            return None
        return super().send_head()
    def log_message(self, *args):
        pass
http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()
"""
# every request without the token (args[1]) in its query, each request logged to args[0]
_TOKEN_SERVER = _SERVER.format(
    refuses="""
def refuses(path, raw):
    with open(args[0], "a") as f:
        f.write(path + "?" + raw + "\\n")
    query = urllib.parse.parse_qs(raw)
    return query.get("token") != [args[1]] or query.get("sig") != ["a/b+c"]
"""
)
# a file requested with another raw query than args[0], byte for byte (an object store checks a
# presigned URL's signature over the query as it was signed)
_RAW_QUERY_SERVER = _SERVER.format(
    refuses="""
def refuses(path, raw):
    return os.path.isfile(root + urllib.parse.unquote(path)) and raw != args[0]
"""
)
# token 'old' answers the first args[0] requests for files, then 403 (expired); 'new' always
_EXPIRING_SERVER = _SERVER.format(
    refuses="""
def refuses(path, raw):
    new = fresh(path)
    return new is not None and not (raw == "token=new" or (raw == "token=old" and new))
"""
)
# answers the first args[0] requests for files, then 503 (down) until the file args[1] exists
_FLAKY_SERVER = _SERVER.format(
    refuses="""
def refuses(path, raw):
    new = fresh(path)
    return False if new is not False or os.path.exists(args[1]) else 503
"""
)
# answers the first args[0] requests for chunks, then 404 for them (a store being replaced, a
# server reconfigured) until the file args[1] exists; its folder pages still list every file
_GONE_SERVER = _SERVER.format(
    refuses="""
def refuses(path, raw):
    new = fresh(path) if "/c/" in path else None
    return False if new is not False or os.path.exists(args[1]) else 404
"""
)
# as _GONE_SERVER, its folder pages answering 503 too meanwhile (a server being reconfigured)
_GLITCHING_SERVER = _SERVER.format(
    refuses="""
def refuses(path, raw):
    if os.path.exists(args[1]):
        return False
    if os.path.isdir(root + urllib.parse.unquote(path)):
        return 503 if "/c/0/" in path and count[0] > int(args[0]) else False
    new = fresh(path) if "/c/" in path else None
    return False if new is not False else 404
"""
)
# files only: a folder is 404, as an object store's missing key (S3's NoSuchKey)
_OBJECT_SERVER = _SERVER.format(
    refuses="""
def refuses(path, raw):
    return 404 if os.path.isdir(root + urllib.parse.unquote(path)) else False
"""
)
# every request without the basic auth "user:password" the file args[0] holds: 401
_AUTH_SERVER = _SERVER.format(
    refuses="""
import base64
def refuses(path, raw):
    with open(args[0], "rb") as f:
        wanted = "Basic " + base64.b64encode(f.read().strip()).decode()
    return 401 if here.headers.get("Authorization") != wanted else False
"""
)
# an object store behind basic auth: 404 for a folder or a missing file, asked before the
# credentials; 401 for a file without the basic auth "user:password" args[0] holds
_OBJECT_AUTH_SERVER = _SERVER.format(
    refuses="""
import base64
def refuses(path, raw):
    if not os.path.isfile(root + urllib.parse.unquote(path)):
        return 404
    with open(args[0], "rb") as f:
        wanted = "Basic " + base64.b64encode(f.read().strip()).decode()
    return 401 if here.headers.get("Authorization") != wanted else False
"""
)
_SIGNED = "X-Amz-Credential=AKIA%2F20261207%2Fs3&X-Amz-Signature=ab%2Bcd%3D&r=a+b&e=%3F"


def _serve(tmp_path, command):
    """A real HTTP server on a free port, serving a tmp folder: (root, base URL, port)."""
    root = tmp_path / "served"
    root.mkdir()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = subprocess.Popen(
        [sys.executable, *command(port, root)], stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    return root, port, server


@pytest.fixture()
def http_root(tmp_path):
    """A real HTTP server (python -m http.server) on a free port, serving a tmp folder."""
    yield from _serving(*_serve(tmp_path, lambda port, root: [
        "-m", "http.server", str(port), "--bind", "127.0.0.1", "--directory", str(root),
    ]))  # fmt: skip


@pytest.fixture()
def http_token_root(tmp_path):
    """A real HTTP server that refuses every request without ``?token=t0k&sig=a/b+c``."""
    log = tmp_path / "requests.log"
    yield from _serving(*_serve(tmp_path, lambda port, root: [
        "-c", _TOKEN_SERVER, str(port), str(root), str(log), "t0k"]))  # fmt: skip


@pytest.fixture()
def http_signed_root(tmp_path):
    """A real HTTP server that refuses every file requested without the query ``_SIGNED``."""
    yield from _serving(*_serve(tmp_path, lambda port, root: [
        "-c", _RAW_QUERY_SERVER, str(port), str(root), _SIGNED]))  # fmt: skip


@pytest.fixture()
def http_expiring_root(tmp_path):
    """A real HTTP server whose token 'old' expires after 60 requests for files."""
    yield from _serving(*_serve(tmp_path, lambda port, root: [
        "-c", _EXPIRING_SERVER, str(port), str(root), "60"]))  # fmt: skip


@pytest.fixture()
def http_expiring_early(tmp_path):
    """As ``http_expiring_root``, its token 'old' expiring after 20 requests for files."""
    yield from _serving(*_serve(tmp_path, lambda port, root: [
        "-c", _EXPIRING_SERVER, str(port), str(root), "20"]))  # fmt: skip


@pytest.fixture()
def http_flaky_root(tmp_path):
    """A real HTTP server that answers 503 after 20 requests for files, until ``up`` exists."""
    yield from _serving(*_serve(tmp_path, lambda port, root: [
        "-c", _FLAKY_SERVER, str(port), str(root), "20", str(tmp_path / "up")]))  # fmt: skip


@pytest.fixture()
def http_gone_root(tmp_path):
    """A real HTTP server that answers 404 after 40 requests for chunks, until ``up`` exists."""
    yield from _serving(*_serve(tmp_path, lambda port, root: [
        "-c", _GONE_SERVER, str(port), str(root), "40", str(tmp_path / "up")]))  # fmt: skip


@pytest.fixture()
def http_glitching_root(tmp_path):
    """As ``http_gone_root``, its folder pages answering 503 meanwhile, until ``up`` exists."""
    yield from _serving(*_serve(tmp_path, lambda port, root: [
        "-c", _GLITCHING_SERVER, str(port), str(root), "40", str(tmp_path / "up")]))  # fmt: skip


@pytest.fixture()
def http_object_root(tmp_path):
    """A real HTTP server serving files only, as an object store does (a folder is 404)."""
    yield from _serving(*_serve(tmp_path, lambda port, root: [
        "-c", _OBJECT_SERVER, str(port), str(root)]))  # fmt: skip


@pytest.fixture()
def http_auth_root(tmp_path):
    """A real HTTP server that refuses every request without the basic auth ``tmp_path /
    "accepted"`` holds (``alice:old`` to begin with)."""
    (tmp_path / "accepted").write_text("alice:old")
    yield from _serving(*_serve(tmp_path, lambda port, root: [
        "-c", _AUTH_SERVER, str(port), str(root), str(tmp_path / "accepted")]))  # fmt: skip


@pytest.fixture()
def http_object_auth_root(tmp_path):
    """A real HTTP server as an object store behind basic auth (``alice:old``): no folder
    pages, a missing file 404 whatever the credentials, a file 401 without them."""
    (tmp_path / "accepted").write_text("alice:old")
    yield from _serving(*_serve(tmp_path, lambda port, root: [
        "-c", _OBJECT_AUTH_SERVER, str(port), str(root), str(tmp_path / "accepted")]))  # fmt: skip


def _serving(root, port, server):
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise
                time.sleep(0.1)
        yield root, f"http://127.0.0.1:{port}"
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_an_http_source_fuses_like_the_local_one(http_root, tmp_path):
    root, base = http_root
    local = _write(root / "stack.zarr")
    expected = fuse_zarr(local, tmp_path / "local.zarr", depth_map=True, progress=False)
    proc = cli("fuse", f"{base}/stack.zarr", tmp_path / "http.zarr", "--depth-map",
               "--chunks", CHUNK, "--no-progress")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""  # no warnings either
    out = zarr.open_group(str(tmp_path / "http.zarr"), mode="r")
    np.testing.assert_array_equal(out["0"][...], expected["0"][...])
    np.testing.assert_array_equal(out["depth"]["0"][...], expected["depth"]["0"][...])
    assert out.attrs["fstack_dask"]["src"] == f"{base}/stack.zarr"
    # through a cache, and on worker processes
    out = fuse_zarr(f"simplecache::{base}/stack.zarr", tmp_path / "cached.zarr",
                    scheduler="processes", progress=False)  # fmt: skip
    np.testing.assert_array_equal(out["0"][...], expected["0"][...])


def test_an_http_url_with_a_query_string_is_read_with_it_on_every_request(
    http_token_root, tmp_path
):
    # A token or a presigned URL's signature in the query ('?' and '[' in it) was read as a
    # glob of local plane files: "src pattern ... matches no files"
    root, base = http_token_root
    local = _write(root / "stack.zarr")
    expected = fuse_zarr(local, tmp_path / "local.zarr", progress=False)
    url = f"{base}/stack.zarr?token=t0k&sig=a%2Fb%2Bc&k%5B0%5D=%3F"
    proc = cli("fuse", url, tmp_path / "http.zarr", "--chunks", CHUNK, "--no-progress")
    assert proc.returncode == 0, proc.stderr
    out = zarr.open_group(str(tmp_path / "http.zarr"), mode="r")
    np.testing.assert_array_equal(out["0"][...], expected["0"][...])
    # the token reached the server with every key, and is not recorded in the output
    assert out.attrs["fstack_dask"]["src"] == f"{base}/stack.zarr"
    requests = (tmp_path / "requests.log").read_text().split()
    assert any(r.startswith("/stack.zarr/0/c/") for r in requests)
    # as given, byte for byte (but where http.server redirected a folder to its '/' and
    # aiohttp followed it)
    assert all(r.partition("?")[2] == "token=t0k&sig=a%2Fb%2Bc&k%5B0%5D=%3F"
               for r in requests if not r.partition("?")[0].endswith("/"))  # fmt: skip
    assert "t0k" not in json.dumps(dict(out.attrs))
    proc = cli("info", url)
    assert proc.returncode == 0 and "stack.zarr" in proc.stdout, proc.stderr
    # without it, the server's refusal, not "matches no files"
    proc = cli("fuse", f"{base}/stack.zarr?token=bad", tmp_path / "bad.zarr", "--no-progress")
    assert proc.returncode == 2 and "matches no files" not in proc.stderr, proc.stderr
    assert not (tmp_path / "bad.zarr").exists()
    # the query in the URL and in storage_options' params at once: which one is meant?
    with pytest.raises(ValueError, match=r"storage_options give 'params' too"):
        fuse_zarr(url, tmp_path / "both.zarr", storage_options={"params": {"token": "x"}})
    # a glob in a URL's path is refused as such, not looked for on the local disk
    proc = cli("fuse", f"{base}/planes/*.zarr", tmp_path / "glob.zarr", "--no-progress")
    assert proc.returncode == 2 and "glob in a URL" in proc.stderr, proc.stderr


def test_an_http_url_with_a_query_string_is_read_on_worker_processes(http_token_root, tmp_path):
    # The URL sent to worker processes was made an absolute local glob (its '?' a wildcard):
    # "src pattern '/cwd/http:/host/stack.zarr?token=...' matches no files"
    root, base = http_token_root
    expected = fuse_zarr(_write(root / "stack.zarr"), tmp_path / "local.zarr", progress=False)
    url = f"{base}/stack.zarr?token=t0k&sig=a%2Fb%2Bc"
    proc = cli("fuse", url, tmp_path / "http.zarr", "--chunks", CHUNK, "--no-progress",
               "--scheduler", "processes")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    out = zarr.open_group(str(tmp_path / "http.zarr"), mode="r")
    np.testing.assert_array_equal(out["0"][...], expected["0"][...])


def test_an_http_urls_query_is_sent_as_given_and_never_printed(http_signed_root, tmp_path):
    # The query was sent re-encoded from its decoded pairs (%2F as '/', %3F as '?', '+' as a
    # space), which a server checking a presigned URL's signature refused; and an error line
    # (a batch log) printed it, credential and signature
    root, base = http_signed_root
    expected = fuse_zarr(_write(root / "stack.zarr"), tmp_path / "local.zarr", progress=False)
    proc = cli("fuse", f"{base}/stack.zarr?{_SIGNED}", tmp_path / "http.zarr", "--no-progress")
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    out = zarr.open_group(str(tmp_path / "http.zarr"), mode="r")
    np.testing.assert_array_equal(out["0"][...], expected["0"][...])
    # a refused signature (expired) and a wrong path: the error line hides the query's values
    for url in (f"{base}/stack.zarr?X-Amz-Signature=SECRET1", f"{base}/none.zarr?{_SIGNED}"):
        proc = cli("fuse", url, tmp_path / "bad.zarr", "--no-progress")
        assert proc.returncode != 0 and "X-Amz-Signature=***" in proc.stderr, proc.stderr
        assert "SECRET1" not in proc.stderr and "ab%2Bcd" not in proc.stderr, proc.stderr
        assert not (tmp_path / "bad.zarr").exists()


def test_a_query_that_is_a_bare_key_is_hidden_too(http_token_root, tmp_path):
    # A query without "=" (the credential alone: ?s3cr3t) was printed whole, as a name, with
    # "=***" after it: in the src's line and in the server's refusal
    root, base = http_token_root
    _write(root / "stack.zarr")
    for url in (f"{base}/stack.zarr?Zk9SECRET", f"{base}/none.zarr?Zk9SECRET&token=t0k"):
        proc = cli("fuse", url, tmp_path / "bad.zarr", "--no-progress")
        assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
        assert "Zk9SECRET" not in proc.stderr and "t0k" not in proc.stderr, proc.stderr
        assert "zarr?***" in proc.stderr, proc.stderr
        assert not (tmp_path / "bad.zarr").exists()


def test_a_urls_password_is_sent_and_never_printed_nor_kept(http_auth_root, tmp_path):
    # http://user:password@host/...: the password was kept in the URL read, so printed in
    # error lines and written into the output's record (its src, its source's identity), and
    # a renewed password refused a --resume as another source. It is sent with every
    # request (worker processes too), as the query is, and shown as ***
    root, base = http_auth_root
    expected = fuse_zarr(_write(root / "stack.zarr"), tmp_path / "local.zarr", progress=False)
    url, dst = base.replace("://", "://alice:{}@") + "/stack.zarr", tmp_path / "http.zarr"
    proc = cli("fuse", url.format("old"), dst, "--scheduler", "processes", "--no-progress")
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    np.testing.assert_array_equal(zarr.open_group(str(dst), mode="r")["0"][...],
                                  expected["0"][...])  # fmt: skip
    kept = [p for p in dst.rglob("*") if p.is_file() and b"alice:old" in p.read_bytes()]
    assert kept == [], kept
    proc = cli("fuse", url.format("wr0ng"), tmp_path / "bad.zarr", "--no-progress")
    assert proc.returncode != 0 and "alice:***@" in proc.stderr, proc.stderr
    assert "wr0ng" not in proc.stderr and not (tmp_path / "bad.zarr").exists(), proc.stderr
    (tmp_path / "accepted").write_text("alice:new")  # renewed: the same source
    proc = cli("fuse", url.format("new"), dst, "--resume", "--no-progress")
    assert proc.returncode == 0 and "already complete" in proc.stderr, proc.stderr


def test_a_password_holding_url_delimiters_is_never_printed(http_auth_root, tmp_path):
    # A password with '/', '?' or '#' typed as they are ends the URL's host part there: the
    # "port" was the password's start, and 'cannot be reached (... port can't be converted to
    # integer)' printed it whole. Refused, the password as ***; written
    # %2F, %3F, %23 (and '@', ':' as they are) it is sent
    root, base = http_auth_root
    expected = fuse_zarr(_write(root / "stack.zarr"), tmp_path / "local.zarr", progress=False)
    url = base.replace("://", "://alice:{}@") + "/stack.zarr"
    for password in ("pa/ss@w", "pa?ss@w", "pa#ss@w"):
        for command in (["info"], ["fuse", "--no-progress"]):
            dst = [tmp_path / "out.zarr"] if command[0] == "fuse" else []
            proc = cli(command[0], url.format(password), *dst, *command[1:])
            assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
            assert "ss@w" not in proc.stderr and "alice:***@" in proc.stderr, proc.stderr
            assert "write them %2F, %3F and %23" in proc.stderr, proc.stderr
    for command in (["info"], ["fuse", "--no-progress"]):  # digits, then '/': a "port" (g101:
        # printed whole, "src 'http://alice:12/x@127.0.0.1:...' ... 'alice' does not resolve";
        # after a user name with a dot, still printed whole)
        for user in ("alice", "alice.smith", "alice%40lab.org"):
            dst = [tmp_path / "out.zarr"] if command[0] == "fuse" else []
            proc = cli(command[0], url.replace("alice", user).format("12/x"), *dst, *command[1:])
            assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
            assert "12/x" not in proc.stderr and f"{user}:***@" in proc.stderr, proc.stderr
    assert not (tmp_path / "out.zarr").exists()
    (tmp_path / "accepted").write_text("alice:p@s:s/x?#")
    proc = cli("fuse", url.format("p@s:s%2Fx%3F%23"), tmp_path / "out.zarr", "--no-progress")
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    _same_image(tmp_path / "out.zarr", expected)


def test_an_ipv6_host_s_path_holding_an_at_sign_is_read_and_printed_as_written(tmp_path):
    # http://[0:0:0:0:0:0:0:1]:PORT/a@b/stack.zarr, no password: the address's ':' was taken
    # for a password's, refused "its password holds '/', '?' or '#'" and printed mangled,
    # 'http://[0:***@b/stack.zarr'; written with '::' it ended "error: Invalid IPv6 URL"
    # (fsspec splits a chained URL at '::'), naming nothing
    try:
        with socket.socket(socket.AF_INET6) as sock:
            sock.bind(("::1", 0))
            port = sock.getsockname()[1]
    except OSError:
        pytest.skip("no IPv6 loopback here")
    root = tmp_path / "served"
    server = subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind", "::1",
                               "--directory", str(root)], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        _write(root / "a@b" / "stack.zarr")
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("::1", port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline and server.poll() is None
                time.sleep(0.1)
        url = f"http://[0:0:0:0:0:0:0:1]:{port}/a@b/stack.zarr"
        proc = cli("info", url)
        assert proc.returncode == 0, proc.stderr
        assert url in proc.stdout and "***" not in proc.stdout + proc.stderr, proc.stdout
        short = f"http://[::1]:{port}/a@b/stack.zarr"
        proc = cli("info", short)
        assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
        assert f"src {short!r}: its IPv6 address holds '::'" in proc.stderr, proc.stderr
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_a_token_as_user_name_and_another_scheme_s_password_are_never_printed(
    http_auth_root, tmp_path
):
    # A user name given alone (a token, https://TOKEN@host/, as GitHub's and Hugging Face's
    # are given), sent as basic auth, was printed whole in info and in every error line; so
    # was the password of an s3://, ftp:// or webhdfs:// URL, which no filesystem here reads
    # (s3: botocore's "Invalid bucket name "KEY:SECRET@b"", exit 1)
    root, base = http_auth_root
    _write(root / "stack.zarr")
    (tmp_path / "accepted").write_text("t0ken:")
    url = base.replace("://", "://t0ken@") + "/stack.zarr"
    proc = cli("info", url)
    assert proc.returncode == 0 and "t0ken" not in proc.stdout + proc.stderr, proc.stdout
    (tmp_path / "accepted").write_text("alice:old")
    proc = cli("info", url)  # refused: 401
    assert proc.returncode == 2 and "HTTP 401" in proc.stderr, proc.stderr
    assert "t0ken" not in proc.stderr, proc.stderr
    for other in ("s3://AKIA:s3cr3t@bucket/stack.zarr", "ftp://alice:s3cr3t@127.0.0.1:1/s.zarr",
                  "webhdfs://alice:s3cr3t@127.0.0.1:1/s.zarr",
                  "simplecache::s3://AKIA:s3cr3t@bucket/stack.zarr"):  # fmt: skip
        for command in (["info"], ["fuse", "--no-progress"]):
            dst = [tmp_path / "out.zarr"] if command[0] == "fuse" else []
            proc = cli(command[0], other, *dst, *command[1:])
            assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
            assert "s3cr3t" not in proc.stderr and ":***@" in proc.stderr, proc.stderr
            assert "URL is not read; give the credentials in storage_options" in proc.stderr
    assert not (tmp_path / "out.zarr").exists()


def test_a_wrong_password_is_told_as_refused_not_missing_and_beats_netrc(http_auth_root,
                                                                        tmp_path):  # fmt: skip
    # A wrong (or no) password in the URL: the server's 401 on every file read as "src ...
    # does not exist; expected a Zarr array or group". Told as refused, the password
    # hidden; a ~/.netrc naming the host with the right one does not replace the URL's
    root, base = http_auth_root
    _write(root / "stack.zarr")
    home = tmp_path / "home"
    home.mkdir()
    (home / ".netrc").write_text("machine 127.0.0.1 login alice password old\n")
    os.chmod(home / ".netrc", 0o600)
    wrong = base.replace("://", "://alice:wr0ng@") + "/stack.zarr"
    for url in (wrong, f"{base}/stack.zarr"):
        for command in (["info"], ["fuse", "--no-progress"]):
            dst = [tmp_path / "out.zarr"] if command[0] == "fuse" else []
            env = {"HOME": str(home), "NETRC": str(home / ".netrc")} if url == wrong else {}
            proc = cli(command[0], url, *dst, *command[1:], env=env)
            assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
            assert "the server refused access to its metadata (HTTP 401" in proc.stderr
            assert "wr0ng" not in proc.stderr and "does not exist" not in proc.stderr
    assert not (tmp_path / "out.zarr").exists()


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_a_wrong_password_for_a_store_of_either_zarr_format_is_told_as_refused(
    http_object_auth_root, tmp_path, zarr_format
):
    # An object store behind basic auth answers 404 for a missing file before it asks for
    # credentials: a v2 store read with a wrong password (its .zarray refused, 401) was told
    # "src ... does not exist; expected a Zarr array or group", zarr.json alone being asked
    root, base = http_object_auth_root
    zarr.create_array(str(root / "stack.zarr"), shape=(PLANES, 64, 64), chunks=(PLANES, 32, 32),
                      dtype="uint16", zarr_format=zarr_format, dimension_names=None)  # fmt: skip
    url = base.replace("://", "://alice:wr0ng@") + "/stack.zarr"
    proc = cli("info", url)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert "the server refused access to its metadata (HTTP 401" in proc.stderr, proc.stderr
    assert "wr0ng" not in proc.stderr and "does not exist" not in proc.stderr


def test_a_run_whose_token_expired_resumes_with_a_renewed_one(http_expiring_root, tmp_path):
    # The query is not the source's identity: --resume with a renewed token continues
    # the run (g77 said so from the code; the g81 review runs it). A token expired mid-run
    # failed the blocks naming it (in Python: aiohttp's "url='...?token=old'"), and one
    # expired before the run raised aiohttp's ClientResponseError, token and all, exit 1
    root, base = http_expiring_root
    data = synthetic_stack((256, 256), 5, dtype="uint16", seed=0).stack.transpose(2, 0, 1)
    write_stack(str(root / "stack.zarr"), data, axes="zyx", chunks=(5, 32, 32))
    expected = fuse_zarr(root / "stack.zarr", tmp_path / "local.zarr", chunks=64, progress=False)
    url, dst = f"{base}/stack.zarr", tmp_path / "http.zarr"
    with pytest.raises(RuntimeError, match=r"\(HTTP 403, 'http://[^']*\?token=\*\*\*'\)") as info:
        fuse_zarr(f"{url}?token=old", dst, chunks=64, progress=False)
    assert "token=old" not in str(info.value)
    proc = cli("fuse", f"{url}?token=old", tmp_path / "late.zarr", "--no-progress")
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert "zarr.json cannot be read (ClientResponseError: 403" in proc.stderr, proc.stderr
    assert "token=old" not in proc.stderr and "token=***" in proc.stderr, proc.stderr
    assert not (tmp_path / "late.zarr").exists()
    proc = cli("fuse", f"{url}?token=new", dst, "--chunks", 64, "--no-progress", "--resume")
    assert proc.returncode == 0 and "token=new" not in proc.stderr, proc.stderr
    assert "resuming" in proc.stderr, proc.stderr
    out = zarr.open_group(str(dst), mode="r")
    np.testing.assert_array_equal(out["0"][...], expected["0"][...])
    assert out.attrs["fstack_dask"]["src"] == url


def test_http_urls_keep_their_host():
    loc = resolve("http://127.0.0.1:8000//data/./stack.zarr/#top", name="src")
    assert loc.url == loc.path == "http://127.0.0.1:8000/data/stack.zarr"
    assert loc.child("zarr.json").url == "http://127.0.0.1:8000/data/stack.zarr/zarr.json"
    secure = resolve("https://example.org/a/stack.zarr", name="src")
    assert secure.url == "https://example.org/a/stack.zarr" and not secure.is_local
    assert resolve("simplecache::https://example.org/a/stack.zarr", name="src") == secure
    for spelling in ("https://example.org/out.zarr", "simplecache::https://example.org/out.zarr"):
        with pytest.raises(ValueError, match="read-only"):
            resolve(spelling, name="dst", writable=True)


# ------------------------------------------------------------------------------ 4. dir://


def test_dir_urls_resolve_or_say_what_they_lack(src, tmp_path):
    before = tree_digest(tmp_path)
    for args in (["dir://stack.zarr", tmp_path / "out.zarr"], [src, "dir://out.zarr"]):
        proc = cli("fuse", *args, "--no-progress", cwd=tmp_path)
        assert proc.returncode == 2, proc.stderr
        assert "is a dir:// URL without its folder" in _one_line_error(proc)
    assert tree_digest(tmp_path) == before
    folder = json.dumps({"path": str(tmp_path), "target_protocol": "file"})
    dst_folder = json.dumps({"path": str(tmp_path)})  # fsspec's default target: local files
    proc = cli("fuse", "dir://stack.zarr", "dir://out.zarr", "--storage-options", folder,
               "--dst-storage-options", dst_folder, "--no-progress")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    np.testing.assert_array_equal(_fused(tmp_path / "out.zarr"), _expected())
    with pytest.raises(ValueError, match="escapes") as info:
        resolve("dir://../x", name="dst", storage_options={"path": str(tmp_path)})
    assert len(str(info.value).splitlines()) == 1


# --------------------------------------------------------------------------- 5. symlinks


def test_a_symlink_loop_is_named_as_such(src, tmp_path, capsys):
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    (tmp_path / "ping").symlink_to("pong")
    (tmp_path / "pong").symlink_to("ping")
    before = _snapshot(tmp_path)
    proc = cli("fuse", src, tmp_path / "loop", "--no-progress")
    assert proc.returncode == 2
    assert "is a symlink loop" in _one_line_error(proc)
    for dst in ("ping", "loop/out.zarr", "loop/"):
        for flags in ([], ["--overwrite"], ["--resume"]):
            proc = run_main(
                "fuse", src, f"{tmp_path}/{dst}", *flags, "--no-progress", capsys=capsys
            )
            assert proc.returncode == 2 and "symlink loop" in _one_line_error(proc), dst
    proc = run_main("fuse", tmp_path / "ping", tmp_path / "out.zarr", capsys=capsys)
    assert proc.returncode == 2 and "src" in _one_line_error(proc) and "loop" in proc.stderr
    assert _snapshot(tmp_path) == before


def test_a_dangling_symlink_as_dst_is_refused_not_followed(src, tmp_path, capsys):
    """The folder would be created where the link points, somewhere the user did not name."""
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "out.zarr").symlink_to(tmp_path / "elsewhere" / "out.zarr")
    (tmp_path / "chain").symlink_to("out.zarr")
    (tmp_path / "x").mkdir()
    before = _snapshot(tmp_path)
    proc = cli("fuse", src, tmp_path / "out.zarr", "--no-progress")
    assert proc.returncode == 2
    line = _one_line_error(proc)
    assert "is a dangling symlink to" in line and str(tmp_path / "elsewhere" / "out.zarr") in line
    spellings = [
        tmp_path / "chain",
        f"{tmp_path}/out.zarr/",
        f"file://{tmp_path}/out.zarr",
        f"{tmp_path}/out.zarr/.",
        f"{tmp_path}/out.zarr/x/..",
        f"{tmp_path}/x/../out.zarr/.",
    ]
    for dst in spellings:  # the last three: a third adversarial run wrote through them
        for flags in ([], ["--overwrite"]):
            proc = run_main("fuse", src, dst, *flags, "--no-progress", capsys=capsys)
            assert proc.returncode == 2 and "dangling symlink" in _one_line_error(proc), dst
    assert _snapshot(tmp_path) == before
    assert not (tmp_path / "elsewhere" / "out.zarr").exists()
    # a symlink to an existing (empty) folder is written through, as before
    (tmp_path / "elsewhere" / "out.zarr").mkdir()
    assert cli("fuse", src, tmp_path / "out.zarr", "--no-progress").returncode == 0
    np.testing.assert_array_equal(_fused(tmp_path / "elsewhere" / "out.zarr"), _expected())


def test_a_path_through_a_folder_that_cannot_be_read_names_the_parameter():
    """``os.path.realpath`` raises where a folder on the way may not be read (a seventh
    adversarial run: ``/proc/1/root/...``, a raw PermissionError)."""
    path = "/proc/1/root/tmp/x.zarr"
    try:
        os.path.realpath(path)
    except OSError:
        pass
    else:
        pytest.skip("this machine lets the path be resolved")
    with pytest.raises(PermissionError, match=r"^src '/proc/1/root/tmp/x.zarr' cannot be resolved"):
        resolve(path, name="src")


def test_a_run_makes_its_filesystems_once_even_where_fsspec_caches_none(monkeypatch):
    """With ``skip_instance_cache`` (fsspec then keeps no instance) every access to a remote
    place made a filesystem: on S3 a botocore session, 0.3-0.7 s, about 2.6 a block (a
    64-block run took 224 s). A run's places now keep theirs, one a thread: as many
    filesystems for 64 blocks as for 4."""
    from fsspec.implementations.memory import MemoryFileSystem

    made = []
    init = MemoryFileSystem.__init__

    def counting(self, *args, **kwargs):
        made.append(1)
        init(self, *args, **kwargs)

    monkeypatch.setattr(MemoryFileSystem, "__init__", counting)
    base = f"memory://fstack-fs-{uuid.uuid4().hex}"
    stack = np.random.default_rng(0).integers(0, 4000, (5, 128, 128)).astype(np.uint16)
    opts = {"skip_instance_cache": True}
    write_stack(f"{base}/src.zarr", stack, axes="zyx", storage_options=opts)
    counts = {}
    for chunk in (64, 16):
        made.clear()
        fuse_zarr(f"{base}/src.zarr", f"{base}/out{chunk}.zarr", storage_options=opts,
                  dst_storage_options=opts, chunks=chunk, levels=0, progress=False)  # fmt: skip
        counts[chunk] = len(made)
    assert counts[16] <= counts[64] + 4 and counts[64] < 20, counts


def test_a_cache_keeps_its_own_storage_option_among_the_datas(tmp_path):
    """``simplecache::`` with ``cache_storage`` among flat storage options: since e379704 gave
    a chained URL's flat options to the data's filesystem save the cache's own, read from
    simplecache's ``__init__``, which names none, the option went to the data's filesystem and
    the cache filled a temporary folder (a review). The cache is kept where it was asked."""
    base = f"memory://fstack-loc-{uuid.uuid4().hex}"
    _write(f"{base}/stack.zarr")
    cache = tmp_path / "cache"
    out = fuse_zarr(f"simplecache::{base}/stack.zarr", f"{base}/out.zarr", progress=False,
                    storage_options={"cache_storage": str(cache)})  # fmt: skip
    np.testing.assert_array_equal(out["0"][...], _expected())
    assert cache.is_dir() and any(cache.iterdir())


def _same_image(dst, expected):
    out = zarr.open_group(str(dst), mode="r")
    np.testing.assert_array_equal(out["0"][...], expected["0"][...])


def _expiring_stack(root, tmp_path):
    data = synthetic_stack((256, 256), 5, dtype="uint16", seed=0).stack.transpose(2, 0, 1)
    write_stack(str(root / "stack.zarr"), data, axes="zyx", chunks=(5, 32, 32))
    return fuse_zarr(root / "stack.zarr", tmp_path / "local.zarr", chunks=64, progress=False)


def test_a_run_failing_on_an_http_read_says_one_line(http_expiring_early, tmp_path):
    # A read refused mid-run left its selection's other reads pending on zarr's loop, each
    # reported at exit as asyncio's "Task was destroyed but it is pending!" and its task's
    # repr under the one error line
    root, base = http_expiring_early
    _expiring_stack(root, tmp_path)
    proc = cli("fuse", f"{base}/stack.zarr?token=old", tmp_path / "http.zarr", "--chunks", 64,
               "--no-progress")  # fmt: skip
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.count("\n") == 1 and "destroyed" not in proc.stderr, proc.stderr


def test_a_read_refused_mid_run_says_so_and_resumes(http_expiring_early, tmp_path):
    # An expired token's 403 on a chunk was told as "the source is corrupt, truncated or
    # unreadable": the server's refusal, the file (its query hidden), how to go on
    root, base = http_expiring_early
    expected = _expiring_stack(root, tmp_path)
    url, dst = f"{base}/stack.zarr", tmp_path / "http.zarr"
    proc = cli("fuse", f"{url}?token=old", dst, "--chunks", 64, "--no-progress")
    assert proc.returncode == 1 and proc.stderr.count("\n") == 1, proc.stderr
    assert "the server refused access to chunk" in proc.stderr, proc.stderr
    assert re.search(r"\(HTTP 403, 'http://[^']*/c/[^']*\?token=\*\*\*'\)", proc.stderr)
    assert "corrupt" not in proc.stderr and "token=old" not in proc.stderr, proc.stderr
    assert "--resume and a renewed URL" in proc.stderr, proc.stderr
    proc = cli("fuse", f"{url}?token=new", dst, "--chunks", 64, "--no-progress", "--resume")
    assert proc.returncode == 0, proc.stderr
    _same_image(dst, expected)


def test_a_server_failing_mid_run_says_so_and_resumes(http_flaky_root, tmp_path):
    # A 503 (a server down or overloaded) was "the source is corrupt ..." too; neither fsspec
    # nor zarr retries it
    root, base = http_flaky_root
    expected = _expiring_stack(root, tmp_path)
    url, dst = f"{base}/stack.zarr", tmp_path / "http.zarr"
    err = _fails_then_resumes(url, dst, expected, tmp_path / "up")
    assert "the server failed to send chunk" in err, err
    assert "(HTTP 503, 'http://" in err and "corrupt" not in err, err


def _fails_then_resumes(url, dst, expected, up, *options):
    """The first run's one error line (exit 1, "rerun with --resume"); its resume, once ``up``
    exists, gives the local fusion ``expected``."""
    proc = cli("fuse", url, dst, "--chunks", 64, "--no-progress", *options)
    assert proc.returncode == 1 and proc.stderr.count("\n") == 1, proc.stderr
    assert "rerun with --resume" in proc.stderr, proc.stderr
    up.touch()
    resumed = cli("fuse", url, dst, "--chunks", 64, "--no-progress", "--resume")
    assert resumed.returncode == 0, resumed.stderr
    _same_image(dst, expected)
    return proc.stderr


def test_a_chunk_its_server_lists_and_no_longer_serves_is_no_fill_value(http_gone_root, tmp_path):
    # fsspec takes a 404 for "not stored", which zarr reads as the fill value: the run
    # finished "complete", exit 0, every pixel fused from zeros
    root, base = http_gone_root
    expected = _expiring_stack(root, tmp_path)
    url, dst = f"{base}/stack.zarr?name=secret", tmp_path / "http.zarr"
    err = _fails_then_resumes(url, dst, expected, tmp_path / "up", "--scheduler", "synchronous")
    assert "the server no longer serves chunk" in err, err
    assert "(HTTP 404, 'http://" in err and "secret" not in err and "?name=***" in err, err
    assert "is kept with" in err, err  # its first blocks: read before the 404s


@pytest.mark.parametrize("scheduler", ["synchronous", "threads"])
def test_a_chunk_no_longer_served_whose_folder_page_fails_is_no_fill_value(
    http_glitching_root, tmp_path, scheduler
):
    # A folder page that failed (a 5xx, a timeout, the connection reset) was taken for "no
    # folder page" (an object store): the chunk not served read as the fill value, as did every
    # read of that folder meanwhile and for the rest of the run, exit 0. It
    # is the read's failure, and a later read asks for the page anew
    root, base = http_glitching_root
    expected = _expiring_stack(root, tmp_path)
    url, dst = f"{base}/stack.zarr?name=secret", tmp_path / "http.zarr"
    err = _fails_then_resumes(url, dst, expected, tmp_path / "up", "--scheduler", scheduler)
    assert "(HTTP 503, 'http://" in err and "secret" not in err, err


def test_a_chunk_a_sparse_store_never_stored_still_reads_as_the_fill_value(http_root, tmp_path):
    # Zarr leaves a chunk all fill value unstored (write_empty_chunks=False): over HTTP too
    root, base = http_root
    data = synthetic_stack((256, 256), 5, dtype="uint16", seed=0).stack.transpose(2, 0, 1)
    data[:, :32, :32] = 0
    write_stack(str(root / "stack.zarr"), data, axes="zyx", chunks=(5, 32, 32))
    (root / "stack.zarr" / "0" / "c" / "0" / "0" / "0").unlink()  # all zero: never stored
    expected = fuse_zarr(root / "stack.zarr", tmp_path / "local.zarr", chunks=64, progress=False)
    proc = cli("fuse", f"{base}/stack.zarr", tmp_path / "http.zarr", "--chunks", 64,
               "--no-progress")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    _same_image(tmp_path / "http.zarr", expected)


def test_an_http_server_that_cannot_be_reached_is_told_so(tmp_path):
    # Nothing listening at the port, or a host name that does not resolve, was "src ... does
    # not exist; expected a Zarr array or group": fsspec takes a failure to connect for a
    # missing file
    with socket.socket() as sock:  # a port nothing listens on once it is closed
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    before = tree_digest(tmp_path)
    for url, says in [
        (f"http://127.0.0.1:{port}/stack.zarr?token=SECRET",
         f"cannot be reached: nothing answers at 127.0.0.1:{port} (connection refused)"),
        ("https://no-such-host.invalid/stack.zarr?token=SECRET",
         "cannot be reached: its host name 'no-such-host.invalid' does not resolve"),
    ]:  # fmt: skip
        proc = cli("fuse", url, tmp_path / "out.zarr", "--no-progress")
        assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
        assert says in proc.stderr and "does not exist" not in proc.stderr, proc.stderr
        assert "SECRET" not in proc.stderr and "token=***" in proc.stderr, proc.stderr
    assert tree_digest(tmp_path) == before


# answers every request 3 s after it came: a slow server (a cold start, a loaded gateway)
_SLOW_SERVER = """
import http.server, sys, time
class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        time.sleep(3)
        self.send_response(404)
        self.end_headers()
    def log_message(self, *args):
        pass
http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
"""


def test_a_slow_server_is_reached_within_the_timeout_storage_options_give(tmp_path, monkeypatch):
    # The reachability probe bounded its answer to 60 s whatever storage_options said: a server
    # the user allowed longer (client_kwargs' or the requests' timeout), which the reads would
    # have opened, was refused 'cannot be reached'. Its bound is lowered to 1 s
    # here, the server answering after 3 s
    import aiohttp

    resolving = importlib.import_module("fstack_dask._locations.resolve")
    monkeypatch.setattr(resolving, "_ANSWER_S", 1)
    gen = _serving(*_serve(tmp_path, lambda port, root: ["-c", _SLOW_SERVER, str(port)]))
    _, base = next(gen)
    try:
        allowed = aiohttp.ClientTimeout(total=30)
        for options in ({"client_kwargs": {"timeout": allowed}}, {"timeout": allowed}):
            reach(resolve(f"{base}/stack.zarr", name="src", storage_options=options), name="src")
        with pytest.raises(ValueError, match="did not answer within 1 s"):  # ours otherwise
            reach(resolve(f"{base}/stack.zarr", name="src"), name="src")
    finally:
        gen.close()


def test_auto_refuses_its_dst_before_reading_its_sample(http_token_root, tmp_path):
    # "auto" read its sample of tiles (minutes of a remote stack) before dst was examined:
    # an existing output without --overwrite, or a dst that cannot be created, was refused
    # only after it. The server logs every request: none for a chunk before the refusal
    root, base = http_token_root
    _write(root / "stack.zarr")
    url, log = f"{base}/stack.zarr?token=t0k&sig=a%2Fb%2Bc", tmp_path / "requests.log"
    assert cli("fuse", url, tmp_path / "out.zarr", "--no-progress").returncode == 0
    log.write_text("")  # an output there: its requests forgotten
    proc = cli("fuse", url, tmp_path / "out.zarr", "--nhsize", "auto", "--sth", "auto",
               "--no-progress")  # fmt: skip
    assert proc.returncode == 2 and "already exists" in proc.stderr, proc.stderr
    for dst in (tmp_path / "none" / "out.zarr", tmp_path / "out.zarr"):
        proc = cli("fuse", url, dst, "--sth", "auto", "--no-progress")
        assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    requests = log.read_text().split()
    assert requests and not [r for r in requests if "/c/" in r], requests
    proc = cli("fuse", url, tmp_path / "new.zarr", "--sth", "auto", "--no-progress")
    assert proc.returncode == 0, proc.stderr  # the same run into a new dst reads them
    assert [r for r in log.read_text().split() if "/c/" in r]


def test_a_sparse_stores_folder_page_is_fetched_once(http_token_root, tmp_path):
    # Each chunk not served fetches its folder's page, to tell a chunk never stored from one
    # served no more: the reads of a block miss at once, and each fetched it, 2-5 times a
    # folder. The server logs every request: each page of a folder that holds no
    # chunk once
    root, base = http_token_root
    planes = _stack()
    sparse = zarr.create_array(root / "sparse.zarr", shape=(len(planes), 256, 256),
                               chunks=(len(planes), 16, 16), dtype="uint16",
                               dimension_names=["z", "y", "x"])  # fmt: skip
    sparse[:, :16, :16] = planes[:, :16, :16]  # one chunk stored
    log = tmp_path / "requests.log"
    proc = cli("fuse", f"{base}/sparse.zarr?token=t0k&sig=a%2Fb%2Bc", tmp_path / "out.zarr",
               "--scheduler", "threads", "--no-progress")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    pages = [r.split("?")[0] for r in log.read_text().split() if r.split("?")[0].endswith("/")]
    # (c/0/1/ to c/0/15/ hold no chunk: read by the check of missing chunks alone)
    fetched = {k: pages.count(f"/sparse.zarr/c/0/{k}/") for k in range(1, 16)}
    assert set(fetched.values()) == {1}, fetched
    # a store that listed a folder is copied as it was (to worker processes) without it
    array = zarr.open_array(resolve(f"{base}/sparse.zarr?token=t0k&sig=a%2Fb%2Bc", name="src")
                            .zarr_store(read_only=True), mode="r")  # fmt: skip
    assert not array[:, 100:120, 100:120].any()  # (its folders listed)
    copied = pickle.loads(pickle.dumps(array))
    np.testing.assert_array_equal(copied[:, :16, :16], planes[:, :16, :16])


def test_an_http_object_store_is_read(http_object_root, tmp_path):
    # A store on a server without folder pages (S3, GCS, Azure over https: a folder's URL is
    # 404) was "src ... does not exist; expected a Zarr array or group", and once read,
    # its chunks, which no folder lists, were warned of as none stored
    root, base = http_object_root
    expected = fuse_zarr(_write(root / "stack.zarr"), tmp_path / "local.zarr", progress=False)
    proc = cli("fuse", f"{base}/stack.zarr", tmp_path / "http.zarr", "--no-progress")
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    _same_image(tmp_path / "http.zarr", expected)
    proc = cli("fuse", f"{base}/none.zarr", tmp_path / "none.zarr", "--no-progress")
    assert proc.returncode == 2 and "does not exist" in proc.stderr, proc.stderr


def test_a_token_expiring_under_worker_processes_is_told_so(http_expiring_early, tmp_path):
    # With --scheduler processes a worker opening the source after the token expired got the
    # server's 403 on its metadata, an aiohttp error that cannot be pickled back to the run:
    # "can't pickle multidict._multidict.CIMultiDictProxy objects", exit 2. Now told
    # as a refused read is, exit 1, and a renewed URL goes on
    root, base = http_expiring_early
    expected = _expiring_stack(root, tmp_path)
    url, dst = f"{base}/stack.zarr", tmp_path / "http.zarr"
    proc = cli("fuse", f"{url}?token=old", dst, "--chunks", 64, "--no-progress",
               "--scheduler", "processes")  # fmt: skip
    assert proc.returncode == 1 and proc.stderr.count("\n") == 1, proc.stderr
    assert "the server refused access to the metadata of src (HTTP 403" in proc.stderr
    assert "pickle" not in proc.stderr and "token=old" not in proc.stderr, proc.stderr
    again = ["--resume"] if dst.exists() else []  # (nothing written: no output kept)
    proc = cli("fuse", f"{url}?token=new", dst, "--chunks", 64, "--no-progress", *again)
    assert proc.returncode == 0, proc.stderr
    _same_image(dst, expected)


def test_a_file_url_is_percent_decoded(tmp_path):
    """``file:///.../a%3Fb.zarr``, a real folder named ``a?b.zarr`` spelled as RFC 8089 spells
    it, was read as a folder named ``a%3Fb.zarr``: "does not exist". The URL's
    path is percent-decoded, and the stack fuses as its plain path does."""
    from fstack_dask import fuse_zarr, synthetic_stack, write_stack

    src = tmp_path / "a?b.zarr"
    write_stack(src, synthetic_stack((64, 64), 5, seed=1).stack.transpose(2, 0, 1), axes="zyx")
    url = f"file://{tmp_path}/a%3Fb.zarr"
    assert resolve(url, name="src").path == str(src.resolve())
    out = fuse_zarr(url, tmp_path / "o.zarr", progress=False)
    expected = fuse_zarr(src, tmp_path / "p.zarr", progress=False)
    np.testing.assert_array_equal(out["0"][...], expected["0"][...])


def test_the_cli_on_a_cluster_reads_the_auto_sample_once(http_token_root, tmp_path):
    """``fuse --auto`` on a cluster (``cluster.kind: distributed``) plans before connecting,
    to refuse bad input first; "auto" read its sample there, and fuse_zarr read it again: a
    remote source's sample chunks were asked twice more than a run given the same nhsize and
    sth asks. They are asked once more: the run takes what was chosen."""
    import collections

    from distributed import LocalCluster

    root, base = http_token_root
    _write(root / "stack.zarr")
    url = f"{base}/stack.zarr?token=t0k&sig=a%2Fb%2Bc"
    log = tmp_path / "requests.log"

    def chunk_requests(dst: Path, *options: str) -> collections.Counter:
        log.write_text("")
        proc = cli("fuse", url, dst, "--config", config, "--no-progress", *options)
        assert proc.returncode == 0, proc.stderr
        return collections.Counter(r.partition("?")[0] for r in log.read_text().split()
                                   if "/c/" in r)  # fmt: skip

    with LocalCluster(n_workers=1, threads_per_worker=2, processes=False, protocol="tcp",
                      host="127.0.0.1", dashboard_address=":0") as cluster:  # fmt: skip
        config = tmp_path / "dist.yaml"
        config.write_text(f"cluster: {{kind: distributed, address: '{cluster.scheduler_address}'}}")
        auto = chunk_requests(tmp_path / "auto.zarr", "--auto")
        chosen = zarr.open_group(str(tmp_path / "auto.zarr"), mode="r").attrs["fstack_dask"]
        given = chunk_requests(tmp_path / "given.zarr", "--nhsize", str(chosen["nhsize"]),
                               "--sth", str(chosen["sth"]))  # fmt: skip
    more = auto - given  # (the sample's chunks)
    assert more and max(more.values()) == 1, more
    assert chosen["auto"] is not None  # (the choice recorded, as a run's own is)


_LOGGING_SERVER = _SERVER.format(
    refuses="""
def refuses(path, raw):  # each request logged to args[0]; the chunks of one folder 404
    with open(args[0], "a") as f:
        f.write(path + "\\n")
    return 404 if "/c/0/1/" in path and not path.endswith("/") else False
"""
)


@pytest.fixture()
def http_row_gone(tmp_path):
    """A real HTTP server logging each request to ``requests.log`` and answering 404 for the
    chunks of the folder c/0/1/ of a stack 64 x 256 in 32 x 32 chunks it serves (its page
    lists them): (the stack's URL, the log)."""
    log = tmp_path / "requests.log"
    served = _serve(tmp_path, lambda port, root: ["-c", _LOGGING_SERVER, str(port), str(root),
                                                    str(log)])  # fmt: skip
    for root, base in _serving(*served):
        wide = synthetic_stack((64, 256), PLANES, seed=1).stack.transpose(2, 0, 1)
        write_stack(str(root / "stack.zarr"), wide, axes="zyx", chunks=(PLANES, 32, 32))
        yield f"{base}/stack.zarr", log


def test_a_chunk_not_served_is_named_not_the_range_its_block_read(http_row_gone, tmp_path):
    """A block whose read covers chunks served and one not (its halo reaching the next row of
    chunks): the line said "the server no longer serves chunks '0/c/0/0/0' to 'c/0/1/1'", served
    chunks named with the one not, the last without the array's path. It names the
    chunk that answered 404."""
    from fstack_dask._errors import SourceReadError

    with pytest.raises(SourceReadError) as info:
        fuse_zarr(http_row_gone[0], tmp_path / "o.zarr", chunks=64, progress=False,
                  scheduler="threads", levels=0)  # fmt: skip
    said = str(info.value)
    assert re.match(r"the server no longer serves chunk '0/c/0/1/\d' of src ", said), said


@pytest.mark.parametrize("url", ["s3://AKIA:s3cr3t/w+x/yz@bucket/stack.zarr",
                                 "ftp://alice:s3cr3t/x@127.0.0.1:1/s.zarr"])  # fmt: skip
def test_a_password_holding_a_slash_in_another_scheme_s_url_is_refused(url, capsys):
    # An AWS secret key holds '/' about every other time: s3://KEY:abc/def@bucket/x was read
    # as the bucket 'KEY:abc', and botocore's "Invalid bucket name" line printed the key and
    # the secret's first part, exit 1
    proc = run_main("info", url, capsys=capsys)
    assert proc.returncode == 2, proc.stderr
    assert "s3cr3t" not in proc.stderr and "URL is not read" in proc.stderr, proc.stderr


def test_a_port_then_a_path_holding_at_is_no_user_name(capsys):
    from fstack_dask._locations.wrappers import refuse_userinfo

    refuse_userinfo("ftp://127.0.0.1:21/a@b/s.zarr", "src")  # (no error: no user name)
