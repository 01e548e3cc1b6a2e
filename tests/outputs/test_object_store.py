"""Outputs on an object store: a real S3 API (moto's server, over HTTP, through s3fs), where
there is no rename, no flock, and folders are only key prefixes.

A sixth adversarial run (2026-12-05) found on S3 what ``memory://`` had hidden: the lock's
heartbeat failed there, every overwrite failed, an opened remote array was no place, and a
mistyped bucket was created. Every key's ETag is compared before and after."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable

import numpy as np
import pytest

from fstack_dask import focus_stack, fuse_zarr, write_stack

pytest.importorskip("s3fs")
pytest.importorskip("moto")

SHAPE = (7, 96, 80)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def s3():
    """A moto S3 server of this module's own, and the storage options that reach it."""
    port = _free_port()
    server = shutil.which("moto_server") or ""
    cmd = [server] if server else [sys.executable, "-m", "moto.server"]
    proc = subprocess.Popen([*cmd, "-p", str(port)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        for _ in range(1200):  # up to a minute: a loaded machine starts moto slowly
            try:
                socket.create_connection(("127.0.0.1", port), 0.2).close()
                break
            except OSError:
                time.sleep(0.05)
        else:
            pytest.skip("moto's S3 server did not start")
        yield {"endpoint_url": f"http://127.0.0.1:{port}", "key": "k", "secret": "s"}
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.fixture(scope="module")
def _s3fs(s3):
    """The tests' own s3fs instance on the module's server (none of the program's: not from
    fsspec's instance cache, no listings cache), shared: a new one is a botocore session,
    about 1 s of each test's set-up on a loaded machine."""
    import s3fs

    return s3fs.S3FileSystem(skip_instance_cache=True, use_listings_cache=False, **s3)


@pytest.fixture()
def bucket(_s3fs):
    fs = _s3fs
    name = f"b{uuid.uuid4().hex[:12]}"
    fs.mkdir(name)
    return fs, name


def _keys(fs, bucket: str) -> dict[str, str]:
    """Every object in the bucket and its ETag."""
    return {info["name"]: info["ETag"] for info in fs.find(bucket, detail=True).values()}


def _stack():
    rng = np.random.default_rng(3)
    return rng.integers(0, 4000, SHAPE).astype(np.uint16)


def _cli(*args, env=None):
    return subprocess.run(
        [sys.executable, "-m", "fstack_dask", *map(str, args)], capture_output=True,
        text=True, timeout=300, check=False, env={**os.environ, **(env or {})},
    )  # fmt: skip


def _fused_once(b: str, s3: dict, *, levels: int) -> tuple[str, str, tuple[str, ...]]:
    """A source in bucket ``b``, fused once into ``out.zarr`` beside it by the CLI: the
    source's URL, dst's, and the CLI options used."""
    src, dst = f"s3://{b}/src.zarr", f"s3://{b}/out.zarr"
    write_stack(src, _stack(), axes="zyx", chunks=(7, 32, 32), storage_options=s3)
    opts = ("--chunks", "32", "--levels", str(levels), "--no-progress", "--storage-options",
            json.dumps(s3), "--dst-storage-options", json.dumps(s3))  # fmt: skip
    assert _cli("fuse", src, dst, *opts).returncode == 0
    return src, dst, opts


def _killed_overwrite(script: str, src: str, dst: str, opts: tuple[str, ...]) -> None:
    """``fuse SRC DST OPTS --overwrite --nhsize 5`` run by ``script``, which SIGKILLs it."""
    proc = subprocess.run(
        [sys.executable, "-c", script, "fuse", src, dst, *opts, "--overwrite", "--nhsize", "5"],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert proc.returncode == -9, proc.stderr


def _swap_options(s3: dict) -> dict:
    """``fuse_zarr``'s options for a swap on S3: level 0 only, both sides on the test's S3."""
    return {"chunks": 32, "levels": 0, "progress": False, "storage_options": s3,
            "dst_storage_options": s3}  # fmt: skip


def _fuse_stopped_after_one_block(monkeypatch, src, dst, **options) -> None:
    """``fuse_zarr(src, dst, **options)`` on the synchronous scheduler, stopped after its first
    block as a Ctrl-C would (a KeyboardInterrupt at the second)."""
    from fstack_dask._runs.blocks import FuseJob

    real, calls = FuseJob.fuse_and_write, []

    def one_block(self, *args, **kwargs):
        if calls:
            raise KeyboardInterrupt
        calls.append(1)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(FuseJob, "fuse_and_write", one_block)
    with pytest.raises(KeyboardInterrupt):
        fuse_zarr(src, dst, **options, scheduler="synchronous")
    monkeypatch.setattr(FuseJob, "fuse_and_write", real)


def _output_objects(fs, b: str) -> dict[str, bytes]:
    """The bytes of every object of ``out.zarr`` in bucket ``b`` but its run's state."""
    return {k: fs.cat(k) for k in fs.find(f"{b}/out.zarr") if "/.fstack_dask/" not in k}


def _fault_in_move(monkeypatch, at: int, fault) -> Callable[[], None]:
    """The swap's ``folders._move_objects`` with ``fault(fs, a, d)`` run first at its
    ``at``-th call (1: dst aside, 2: the staged output into dst), each call then the real
    move unless ``fault`` raised. Returns what puts the real one back."""
    from fstack_dask._outputs import folders

    real, calls = folders._move_objects, []

    def move(fs_, a, d):
        calls.append(a)
        if len(calls) == at:
            fault(fs_, a, d)
        return real(fs_, a, d)

    monkeypatch.setattr(folders, "_move_objects", move)
    return lambda: monkeypatch.setattr(folders, "_move_objects", real)


def test_an_overwrite_on_s3_replaces_our_output_and_keeps_the_users_objects(s3, bucket):
    """``fs.mv`` failed on S3's folder placeholders after copying everything: every
    overwrite ended with an error and one more copy of the old output (and of the user's
    notes) beside dst. Now the old output is replaced, the user's object kept in dst, and no
    key outside dst changes."""
    fs, b = bucket
    src, dst, opts = _fused_once(b, s3, levels=1)
    fs.pipe(f"{b}/out.zarr/notes.txt", b"the user's notes")
    fs.pipe(f"{b}/out.zarr-backup/x", b"beside")
    before = _keys(fs, b)
    res = _cli("fuse", src, dst, *opts, "--overwrite", "--nhsize", "5")
    assert res.returncode == 0, res.stderr
    after = _keys(fs, b)
    assert {k: v for k, v in after.items() if not k.startswith(f"{b}/out.zarr/")} == {
        k: v for k, v in before.items() if not k.startswith(f"{b}/out.zarr/")
    }  # nothing beside dst, no staging prefix left
    assert after[f"{b}/out.zarr/notes.txt"] == before[f"{b}/out.zarr/notes.txt"]
    import zarr

    out = zarr.open_group(dst, mode="r", storage_options=s3)
    assert out.attrs["fstack_dask"]["nhsize"] == 5
    expected = focus_stack(_stack().transpose(1, 2, 0), nhsize=5)
    np.testing.assert_array_equal(out["0"][...], expected)


def test_the_lock_of_an_s3_run_keeps_beating(s3, bucket, monkeypatch):
    """The heartbeat touched the lock, which s3fs refuses for an existing object (and the
    error was swallowed): after 60 s any second run took over a live run's dst. It is
    rewritten now, and stays live."""
    from fstack_dask._locations import resolve
    from fstack_dask._outputs import lock as _lock
    from fstack_dask._outputs import staleness as _staleness

    fs, b = bucket
    monkeypatch.setattr(_staleness, "HEARTBEAT_EVERY", 0.3)
    monkeypatch.setattr(_staleness, "LOCK_STALE_AFTER", 2.0)  # S3 dates objects to the second
    where = resolve(f"s3://{b}/out.zarr/.fstack_dask/lock", name="dst", storage_options=s3)
    held = _lock.DestinationLock(where, "dst 'out.zarr'")
    held.acquire()
    try:
        time.sleep(4.0)
        info = _staleness.read_lock(where)
        assert info is not None and info["token"] == held.token
        assert _staleness.lock_is_live(info), time.time() - info["mtime"]
        assert not held.lost
    finally:
        held.release()
    assert not fs.exists(f"{b}/out.zarr/.fstack_dask/lock")


def test_an_opened_remote_array_is_the_source_it_reads(s3, bucket):
    """A ``zarr.Array`` opened on S3 had no place, so no overlap check ran: a dst inside it
    was written into the source's store."""
    import zarr

    fs, b = bucket
    src = f"s3://{b}/src.zarr"
    write_stack(src, _stack(), axes="zyx", chunks=(7, 32, 32), storage_options=s3)
    before = _keys(fs, b)
    array = zarr.open_array(f"{src}/0", mode="r", storage_options=s3)
    with pytest.raises(ValueError, match="dst .*source"):
        fuse_zarr(array, f"{src}/0/fused", axes="zyx", dst_storage_options=s3, progress=False)
    assert _keys(fs, b) == before


def test_a_dst_in_a_bucket_that_does_not_exist_is_refused(s3, bucket):
    """s3fs creates the bucket a write names: a typo in the bucket was created, silently."""
    fs, b = bucket
    write_stack(f"s3://{b}/src.zarr", _stack(), axes="zyx", storage_options=s3)
    typo = f"{b}x"
    with pytest.raises(FileNotFoundError, match=f"bucket '{typo}' does not exist"):
        fuse_zarr(f"s3://{b}/src.zarr", f"s3://{typo}/out.zarr", storage_options=s3,
                  dst_storage_options=s3, progress=False)  # fmt: skip
    assert not fs.exists(typo)


def test_write_stack_into_a_bucket_that_does_not_exist_is_one_line_naming_it(s3, bucket):
    """write_stack("s3://typo/x.zarr") raised s3fs's "The specified bucket does not exist",
    naming neither the parameter nor the bucket."""
    fs, b = bucket
    typo = f"{b}x"
    with pytest.raises(FileNotFoundError) as info:
        write_stack(f"s3://{typo}/src.zarr", _stack(), axes="zyx", storage_options=s3)
    assert str(info.value) == (
        f"path 's3://{typo}/src.zarr' cannot be created: its bucket '{typo}' does not exist; "
        "create it first (a typo in the URL?)"
    )
    assert not fs.exists(typo)


@pytest.mark.parametrize(
    ("spelling", "holds"),
    # (s3://b/. was told to try 's3://b/./fused.zarr')
    [("s3://{b}", "nothing"), ("s3://{b}/", "objects"), ("s3://{b}/x/..", "objects")],
)
def test_a_whole_bucket_as_dst_is_refused_and_no_bucket_made(s3, bucket, spelling, holds):
    """A bucket's root as dst: a run wrote our output among the bucket's other objects, and
    its --overwrite made a bucket of its own ('.b.fstack-staging-...') beside it, then failed
    (a review). Refused in one line naming dst, whatever the flags; nothing written."""
    fs, b = bucket
    src = f"s3://{b}-src/src.zarr"
    fs.mkdir(f"{b}-src")
    write_stack(src, _stack(), axes="zyx", chunks=(7, 32, 32), storage_options=s3)
    if holds == "objects":
        fs.pipe(f"{b}/notes.txt", b"the user's notes")
    before, buckets = _keys(fs, b), sorted(fs.ls(""))
    dst = spelling.format(b=b)
    opts = ("--no-progress", "--storage-options", json.dumps(s3), "--dst-storage-options",
            json.dumps(s3))  # fmt: skip
    for flags in ((), ("--overwrite",), ("--resume",)):
        res = _cli("fuse", src, dst, *opts, *flags)
        assert res.returncode == 2, res.stderr
        assert res.stderr.strip().splitlines() == [
            f"fstack-dask: error: dst {dst!r} is a whole bucket; name a folder inside it for "
            f"the output, e.g. 's3://{b}/fused.zarr'"
        ]
    assert _keys(fs, b) == before and sorted(fs.ls("")) == buckets


def test_an_upper_case_scheme_names_the_bucket_it_spells(s3, bucket):
    """S3://b/out.zarr (a scheme is case-insensitive): fsspec kept 'S3:' as the bucket, and
    the run was refused blaming --dst-storage-options; it now writes
    b/out.zarr, and S3://b is refused as a whole bucket."""
    fs, b = bucket
    src = f"s3://{b}/src.zarr"
    write_stack(src, _stack(), axes="zyx", chunks=(7, 32, 32), storage_options=s3)
    opts = ("--no-progress", "--storage-options", json.dumps(s3), "--dst-storage-options",
            json.dumps(s3))  # fmt: skip
    res = _cli("fuse", src, f"S3://{b}/out.zarr", *opts)
    assert res.returncode == 0, res.stderr
    assert fs.exists(f"{b}/out.zarr/zarr.json")
    res = _cli("fuse", "S3://" + src[5:], f"S3://{b}", *opts)
    assert res.returncode == 2 and "is a whole bucket" in res.stderr, res.stderr


KILLED_IN_THE_SWAP = """
import os, signal, sys
from fstack_dask._outputs import folders

move = folders._move_objects

def move_then_die(fs, src, dst):
    remove = fs.rm

    def rm(paths, *args, **kwargs):  # the first delete: the old output's root zarr.json
        remove(paths, *args, **kwargs)
        os.kill(os.getpid(), signal.SIGKILL)

    fs.rm = rm
    move(fs, src, dst)

folders._move_objects = move_then_die
from fstack_dask._cli.main import main
sys.exit(main(sys.argv[1:]))
"""


def test_a_kill_in_an_s3_swap_leaves_dst_unreadable_not_mixed(s3, bucket):
    """No rename on S3: the swap copies. Killed once the old output is copied aside and its
    root zarr.json deleted: dst is refused by the next runs (never taken for a complete output
    with chunks missing), and both outputs are whole beside it. dst keeps the killed run's
    lock (a swap holds it till the new output is whole in dst): refused as being written
    while the lock is fresh; once it is stale the old output goes back and a resume swaps
    the new one in."""
    fs, b = bucket
    src, dst, opts = _fused_once(b, s3, levels=0)
    old = {k[len(f"{b}/out.zarr/") :]: v for k, v in _keys(fs, b).items()
           if k.startswith(f"{b}/out.zarr/")}  # fmt: skip
    _killed_overwrite(KILLED_IN_THE_SWAP, src, dst, opts)
    keys = _keys(fs, b)
    assert f"{b}/out.zarr/zarr.json" not in keys and f"{b}/out.zarr/0/zarr.json" in keys
    (aside,) = {k.split("/")[1] for k in keys if "fstack-staging-old-" in k}
    assert {k[len(f"{b}/{aside}/") :]: v for k, v in keys.items()
            if k.startswith(f"{b}/{aside}/") and "/.fstack_dask/" not in k} == old  # fmt: skip
    (new,) = {k.split("/")[1] for k in keys if "fstack-staging-" in k} - {aside}
    staged = json.loads(fs.cat(f"{b}/{new}/zarr.json"))["attributes"]["fstack_dask"]
    assert staged["complete"] is True and staged["nhsize"] == 5
    for flag in ("--resume", "--overwrite"):
        res = _cli("fuse", src, dst, *opts, flag, "--nhsize", "5")
        assert res.returncode == 1 and "is being written by pid" in res.stderr, res.stderr
    assert _keys(fs, b) == keys
    time.sleep(3.0)  # the killed run's locks go stale (S3 dates objects to the second)
    res = _cli("fuse", src, dst, *opts, "--resume", "--nhsize", "5",
               env={"FSTACK_DASK_LOCK_STALE_AFTER": "2"})  # fmt: skip
    assert res.returncode == 0 and "restored" in res.stderr, res.stderr
    assert json.loads(fs.cat(f"{dst}/zarr.json"))["attributes"]["fstack_dask"]["nhsize"] == 5
    assert not [k for k in fs.find(b) if "fstack-staging-" in k], fs.find(b)


def test_an_unreachable_store_is_one_line_naming_its_option(s3, bucket):
    """botocore's errors named neither the parameter nor the option, with exit 1; a typo in
    an option gave fsspec's TypeError about ``AioSession``."""
    fs, b = bucket
    src, dst = f"s3://{b}/src.zarr", f"s3://{b}/out.zarr"
    write_stack(src, _stack(), axes="zyx", storage_options=s3)
    nowhere = json.dumps({**s3, "endpoint_url": "http://127.0.0.1:1",
                          "config_kwargs": {"retries": {"max_attempts": 1}}})  # fmt: skip
    typo = json.dumps({"endpointurl": s3["endpoint_url"], "key": "k", "secret": "s"})
    good = json.dumps(s3)
    cases = [
        (("--storage-options", nowhere, "--dst-storage-options", good), "src", "--storage-options"),
        (("--storage-options", good, "--dst-storage-options", nowhere), "dst",
         "--dst-storage-options"),
        (("--storage-options", good, "--dst-storage-options", typo), "dst",
         "--dst-storage-options"),
    ]  # fmt: skip
    before = _keys(fs, b)
    for options, name, option in cases:
        res = _cli("fuse", src, dst, *options, "--no-progress")
        lines = res.stderr.strip().splitlines()
        assert res.returncode == 2 and len(lines) == 1, res.stderr
        assert f"{name} 's3://{b}/" in lines[0] and "cannot be reached" in lines[0], lines[0]
        assert f"check {option} " in lines[0], lines[0]
    assert _keys(fs, b) == before


def test_credentials_for_a_prefix_are_not_told_their_bucket_is_missing(s3, bucket, monkeypatch):
    """Credentials limited to a prefix may not ask about the bucket itself (HeadBucket,
    GetBucketLocation: refused here, on the real server, as such a policy refuses them); s3fs
    then says the bucket does not exist, and so did the bucket check (a seventh adversarial
    run). A listing under dst's prefix tells."""
    import s3fs

    fs, b = bucket
    write_stack(f"s3://{b}/src.zarr", _stack(), axes="zyx", storage_options=s3)
    call = s3fs.S3FileSystem._call_s3

    async def refused(self, method, *args, **kwargs):
        if method in ("head_bucket", "get_bucket_location"):
            raise PermissionError("Access Denied")
        return await call(self, method, *args, **kwargs)

    monkeypatch.setattr(s3fs.S3FileSystem, "_call_s3", refused)
    # An instance of its own, which has not seen the bucket: options that differ from src's
    # (skip_instance_cache did the same at 0.7 s a filesystem, 60 of them: 150 s a test)
    opts = {**s3, "default_cache_type": "readahead"}
    out = fuse_zarr(f"s3://{b}/src.zarr", f"s3://{b}/mine/out.zarr", storage_options=s3,
                    dst_storage_options=opts, chunks=32, levels=0, progress=False)  # fmt: skip
    assert out.attrs["fstack_dask"]["complete"] is True


def _s3_lock(s3: dict, b: str):
    from fstack_dask._locations import resolve
    from fstack_dask._outputs import lock as _lock

    where = resolve(f"s3://{b}/out.zarr/.fstack_dask/lock", name="dst", storage_options=s3)
    return where, (lambda: _lock.DestinationLock(where, "dst 'out.zarr'"))


def test_two_runs_taking_over_one_stale_s3_lock_do_not_both_get_it(s3, bucket, monkeypatch):
    """A stale lock was taken over by deleting it and creating one's own: a run that judged
    it stale, then lost the race, deleted the lock of the run that won and took it too, and
    both wrote. The takeover is now one request, conditional on the ETag judged stale."""
    from fstack_dask._errors import DestinationLockedError
    from fstack_dask._outputs import lock as _lock
    from fstack_dask._outputs import staleness as _staleness

    fs, b = bucket
    where, new_lock = _s3_lock(s3, b)
    # stale after 5 s: a lock written by the run that wins stays live long enough for the
    # other to see it so on a loaded machine (S3 dates objects to the second)
    monkeypatch.setattr(_staleness, "LOCK_STALE_AFTER", 5.0)
    monkeypatch.setattr(_staleness, "HEARTBEAT_EVERY", 5.0 / 6)
    fs.pipe(where.path, b'{"host": "node-7", "pid": 1, "token": "a crashed run"}')
    time.sleep(6.2)
    first, second = new_lock(), new_lock()
    read = _lock.read_lock

    def read_then_the_second_run_takes_over(lock):
        info = read(lock)  # judged stale by the first run ...
        monkeypatch.setattr(_lock, "read_lock", read)
        second.acquire()  # ... and taken over by the second before the first acts
        return info

    monkeypatch.setattr(_lock, "read_lock", read_then_the_second_run_takes_over)
    try:
        with pytest.raises(DestinationLockedError, match="is being written by"):
            first.acquire()
        assert json.loads(fs.cat(where.path))["token"] == second.token
        assert not first.held and second.mine()
    finally:
        second.release()
    assert not fs.exists(where.path)


@pytest.mark.parametrize("step", ["renew", "release"])
def test_an_s3_lock_taken_over_after_its_check_is_neither_renewed_nor_removed(
    s3, bucket, monkeypatch, step
):
    """The heartbeat and the release each checked the token, then wrote or deleted: a run
    that took the lock over in between lost it to a rewrite, or saw it deleted. Both are
    conditional on the ETag this run wrote now. (The interleaving is made by hand: the
    check passes, then the takeover.)"""
    from fstack_dask._outputs import staleness as _staleness

    fs, b = bucket
    monkeypatch.setattr(_staleness, "HEARTBEAT_EVERY", 0.05)
    where, new_lock = _s3_lock(s3, b)
    held, taker = new_lock(), new_lock()
    monkeypatch.setattr(held, "_still_mine", lambda: True)  # as checked before the takeover
    held.acquire()
    try:
        if step == "release":
            held.stop_heartbeat()
        fs.pipe(where.path, taker.body)  # another run took it over
        if step == "renew":
            time.sleep(0.5)  # ten heartbeats, none of them stalled
            assert held.lost
        else:
            held.release()
        assert json.loads(fs.cat(where.path))["token"] == taker.token
    finally:
        held.stop_heartbeat()


KILLED_IN_THE_COPY_ASIDE = """
import os, signal, sys
from fstack_dask._outputs import folders

move = folders._move_objects

def move_then_die(fs, src, dst):
    copy = fs.copy

    def copy_half(paths, targets, *args, **kwargs):  # the old output's objects, copied aside
        half = len(paths) // 2
        copy(paths[:half], targets[:half], *args, **kwargs)
        os.kill(os.getpid(), signal.SIGKILL)

    fs.copy = copy_half
    move(fs, src, dst)

folders._move_objects = move_then_die
from fstack_dask._cli.main import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.parametrize("changed", [False, True], ids=["a copy", "an object changed"])
def test_a_partial_copy_aside_left_by_a_kill_goes_with_the_next_run(s3, bucket, changed):
    """Killed while the old output was copied aside (dst still whole): the partial copy,
    without a root zarr.json, was never known as ours and stayed beside dst for good. The next
    run removes it where every object in it is a copy of dst's object at the same place, and
    keeps it whole where one is not."""
    fs, b = bucket
    src, dst, opts = _fused_once(b, s3, levels=1)
    fs.pipe(f"{b}/out.zarr/notes.txt", b"the user's notes")
    _killed_overwrite(KILLED_IN_THE_COPY_ASIDE, src, dst, opts)
    keys = _keys(fs, b)
    (aside,) = {k.split("/")[1] for k in keys if "fstack-staging-old-" in k}
    copied = sorted(k for k in keys if k.startswith(f"{b}/{aside}/"))
    assert copied and f"{b}/{aside}/zarr.json" not in copied  # partial
    if changed:
        fs.pipe(copied[-1], b"not what dst holds")
    time.sleep(3.0)  # the killed run's lock goes stale (S3 dates objects to the second)
    res = _cli("fuse", src, dst, *opts, "--overwrite", "--nhsize", "5",
               env={"FSTACK_DASK_LOCK_STALE_AFTER": "2"})  # fmt: skip
    assert res.returncode == 0, res.stderr
    left = {k for k in _keys(fs, b) if not k.startswith((f"{b}/out.zarr/", f"{b}/src.zarr/"))}
    assert left == (set(copied) if changed else set())  # not shown a copy: kept whole
    assert fs.cat(f"{b}/out.zarr/notes.txt") == b"the user's notes"


def test_a_chunk_rewritten_at_its_size_within_the_second_is_told_by_its_etag(s3, bucket):
    """S3 lists LastModified in whole seconds, and no ctime or inode: a chunk rewritten with
    its old size within the second of a run's listing looked unchanged, and a resume trusted
    blocks read from the old bytes (a review, 2026-12-06). The listing's ETag now stands in
    the inode's column; a record without one (0, written before) still compares by the rest."""
    from fstack_dask._outputs.fingerprint import changed_files, source_files
    from fstack_dask._sources.open import open_source

    fs, b = bucket
    src = f"s3://{b}/src.zarr"
    write_stack(src, _stack(), axes="zyx", chunks=(7, 48, 40), storage_options=s3)
    source = open_source(src, storage_options=s3)
    before = source_files(source.data_files())
    chunk = next(p for p in fs.find(f"{b}/src.zarr") if "/c/" in p)
    old = fs.cat_file(chunk)
    fs.pipe_file(chunk, bytes(reversed(old)))  # other bytes, the same size
    after = source_files(open_source(src, storage_options=s3).data_files())
    after["stamps"] = before["stamps"]  # the same second
    names = [n for n in before["names"].tolist() if chunk.endswith("/" + n)]
    assert len(names) == 1 and changed_files(before, after) == names
    unversioned = {**before, "inodes": np.zeros_like(before["inodes"])}
    assert changed_files(unversioned, before) == []  # the same listing, versioned or not


def test_a_gcs_object_s_version_is_its_generation_not_its_etag():
    """GCS changes an object's ETag when only its metadata changes (a label, a storage
    class): the generation, which only a rewrite changes, is its version."""
    from fstack_dask._sources.source import _object_version

    listed = {"name": "b/src.zarr/c/0/0/0", "size": 10, "generation": "1733480000000001"}
    relabelled = _object_version({**listed, "etag": "CAE="})
    assert relabelled == _object_version({**listed, "etag": "CAI="}) != 0
    assert relabelled != _object_version({**listed, "generation": "1733480000000002"})


def test_a_complete_output_s_source_rewritten_within_the_second_is_not_resumed(
    s3, bucket, tmp_path, monkeypatch
):
    """A complete output keeps a digest of its source's listing (names, sizes, times), not
    the objects' versions the unfinished one keeps: a chunk of an S3 source rewritten at its
    size within the second of the run's listing left it as it was, and ``resume=True`` said
    "already complete" of a result the source no longer gives. The versions' digest is kept
    too; a record without one (written before) is still resumed."""
    from fstack_dask._sources import source as _source

    real = _source.Source.data_files

    def one_second(self, *args, **kwargs):  # S3 dates objects to the second: all in one here
        for name, size, _stamp, *rest in real(self, *args, **kwargs):
            yield (name, size, 0, *rest)

    monkeypatch.setattr(_source.Source, "data_files", one_second)
    fs, b = bucket
    src, dst = f"s3://{b}/src.zarr", tmp_path / "out.zarr"
    write_stack(src, _stack(), axes="zyx", chunks=(7, 48, 40), storage_options=s3)
    kw = {"chunks": 48, "storage_options": s3, "progress": False, "nhsize": 5}
    fuse_zarr(src, dst, **kw)
    fuse_zarr(src, dst, resume=True, **kw)  # unchanged: complete, nothing to do
    chunk = next(p for p in fs.find(f"{b}/src.zarr") if "/c/" in p)
    fs.pipe_file(chunk, bytes(reversed(fs.cat_file(chunk))))  # other bytes, the same size
    with pytest.raises(ValueError, match=r"complete, but the source's files were rewritten"):
        fuse_zarr(src, dst, resume=True, **kw)
    meta = dst / "zarr.json"  # as an older version recorded it: no versions
    doc = json.loads(meta.read_text())
    assert doc["attributes"]["fstack_dask"]["source_identity"].pop("files_versions_sha256")
    meta.write_text(json.dumps(doc))
    fuse_zarr(src, dst, resume=True, **kw)


def test_a_gcs_object_s_metadata_change_alone_leaves_its_stamp(monkeypatch):
    """gcsfs lists an object's ``updated`` as its mtime, which a change of its metadata alone
    (a label, a content type) moves too: such files were read again as suspects, which the
    generation (above) had meant to end. On GCS the stamp is the creation time, which each
    rewrite renews."""
    import datetime

    import fsspec

    from fstack_dask._outputs.fingerprint import changed_files, source_files
    from fstack_dask._sources.open import open_source

    src = f"memory://fstack-gcs-{uuid.uuid4().hex}/src.zarr"
    write_stack(src, _stack(), axes="zyx", chunks=(7, 48, 40))
    memory = type(fsspec.filesystem("memory"))
    find = memory.find
    t0 = datetime.datetime(2026, 12, 6, tzinfo=datetime.UTC)
    later = {"updated": t0}

    def as_gcs_lists(self, path, *args, **kwargs):
        found = find(self, path, *args, **kwargs)
        return {p: {**info, "generation": "1733480000000001", "ctime": t0,
                    "mtime": later["updated"]} for p, info in found.items()}  # fmt: skip

    monkeypatch.setattr(memory, "find", as_gcs_lists)
    before = source_files(open_source(src).data_files())
    later["updated"] = t0 + datetime.timedelta(hours=1)  # relabelled: the same generation
    assert changed_files(before, source_files(open_source(src).data_files())) == []


def test_a_failed_copy_in_an_s3_swap_puts_the_old_output_back(s3, bucket, monkeypatch):
    """The swap on S3 moves the old output aside, then copies the staged one into dst. An
    error part-way through that copy (a connection reset) left dst holding a few of the new
    output's objects and no zarr.json, the old output hidden beside it, the error saying
    "the previous output in dst is unchanged", and every later run refusing dst as not ours.
    The copies are removed and the old output moved back; a resume then finishes."""
    fs, b = bucket
    src, dst, _ = _fused_once(b, s3, levels=0)
    before = _output_objects(fs, b)

    def copy_three(fs_, a, d):  # the staged output into dst: three objects, then the error
        for key in sorted(fs_.find(a))[:3]:
            fs_.copy(key, d + key[len(a) :])
        raise OSError(104, "Connection reset by peer", a)

    undo = _fault_in_move(monkeypatch, 2, copy_three)
    opts = _swap_options(s3)
    with pytest.raises(OSError, match="the previous output in dst is unchanged"):
        fuse_zarr(src, dst, nhsize=5, overwrite=True, **opts)
    undo()
    after = _output_objects(fs, b)
    assert after == before
    assert not [k for k in fs.find(b) if "fstack-staging-old-" in k]
    out = fuse_zarr(src, dst, nhsize=5, resume=True, **opts)
    assert out.attrs["fstack_dask"]["nhsize"] == 5
    assert not [k for k in fs.find(b) if "fstack-staging-" in k]


def test_a_failed_delete_after_a_whole_s3_copy_says_the_new_output_is_in_dst(
    s3, bucket, monkeypatch
):
    """The S3 swap copies the staged output into dst whole (its zarr.json last), then deletes
    the staged copies. An error while deleting them (a connection reset) kept dst's new
    output, yet the error said "the previous output in dst is unchanged", the old output
    left hidden as '.NAME.fstack-staging-old-*'. The swap is done: the run ends as one
    whose old output could not be removed (a warning naming it), dst the new output."""
    from fstack_dask._outputs import folders

    fs, b = bucket
    src, dst, _ = _fused_once(b, s3, levels=0)

    def copy_all(fs_, a, d):  # the staged output into dst: all copied, then the deletes fail
        keys = [k for k in sorted(fs_.find(a)) if not k.endswith(f"/{folders.LOCK}")]
        for key in [k for k in keys if not k.endswith("/zarr.json")] + [f"{a}/zarr.json"]:
            fs_.copy(key, d + key[len(a) :])
        fs_.rm_file(f"{a}/zarr.json")
        raise OSError(104, "Connection reset by peer", a)

    undo = _fault_in_move(monkeypatch, 2, copy_all)
    opts = _swap_options(s3)
    try:
        out = fuse_zarr(src, dst, nhsize=5, overwrite=True, **opts)
    except OSError as exc:
        assert "previous output in dst is unchanged" not in str(exc), exc
        out = None
    undo()
    if out is None:  # (an error that told the truth: a resume finds it complete)
        out = fuse_zarr(src, dst, nhsize=5, resume=True, **opts)
    assert out.attrs["fstack_dask"]["nhsize"] == 5
    out = fuse_zarr(src, dst, nhsize=5, overwrite=True, **opts)
    assert not [k for k in fs.find(b) if "fstack-staging-" in k], fs.find(b)


_SWAP_AND_UNDO_FAIL = """
import sys
from fstack_dask import fuse_zarr
from fstack_dask._outputs import folders

real, calls = folders._move_objects, []


def move(fs_, a, d):
    calls.append(a)
    keys = sorted(fs_.find(a))
    if len(calls) == 2 and sys.argv[4] == "copy":  # the staged output into dst: five objects
        for key in keys[:5]:
            fs_.copy(key, d + key[len(a):])
        raise OSError(104, "Connection reset by peer", a)
    if len(calls) == 2 and sys.argv[4] == "whole":  # into dst: whole, its first delete fails
        keys = [k for k in keys if not k.endswith("/" + folders.LOCK)]
        for key in [k for k in keys if not k.endswith(a + "/zarr.json")] + [a + "/zarr.json"]:
            fs_.copy(key, d + key[len(a):])
        raise OSError(104, "Connection reset by peer", a)
    if len(calls) == 1 and sys.argv[4] == "aside":  # dst aside: copied, then a few deleted
        for key in keys:
            fs_.copy(key, d + key[len(a):])
        fs_.rm([f"{a}/zarr.json", *[k for k in keys if not k.endswith("/zarr.json")][:3]])
        raise OSError(104, "Connection reset by peer", a)
    return real(fs_, a, d)


def put_back(*args):  # the network is still down
    raise OSError(104, "Connection reset by peer", "put back")


folders._move_objects, folders._put_back = move, put_back
try:
    fuse_zarr(sys.argv[1], sys.argv[2], nhsize=5, overwrite=True, **eval(sys.argv[3]))
except OSError as exc:
    print(exc)
"""


@pytest.mark.parametrize("fails", ["copy", "aside"])
def test_an_s3_swap_whose_undo_fails_too_says_where_the_old_output_is_and_gets_it_back(
    s3, bucket, monkeypatch, fails
):
    """The S3 swap's copy into dst failed, and so did its undo (the same network fault): the
    error said "the previous output in dst is unchanged" where dst held five objects of the
    new output and the old one was hidden as '.NAME.fstack-staging-old-*', and every later
    run refused dst as not ours. So too where the move of the old output aside failed while
    deleting (its zarr.json first): dst held the rest of the old output. The error says
    where the old output is; the next run puts it back (dst's objects are copies of the
    staged or the old output's), and a resume swaps in the new."""
    from fstack_dask._outputs import staleness

    fs, b = bucket
    src, dst, _ = _fused_once(b, s3, levels=0)
    before = _output_objects(fs, b)
    opts = _swap_options(s3)
    proc = subprocess.run([sys.executable, "-c", _SWAP_AND_UNDO_FAIL, src, dst, repr(opts), fails],
                          capture_output=True, text=True, timeout=180, check=False)  # fmt: skip
    assert "Connection reset by peer" in proc.stdout, proc.stdout + proc.stderr
    assert "previous output in dst is unchanged" not in proc.stdout, proc.stdout
    assert f"the previous output is in 's3://{b}/.out.zarr.fstack-staging-old-" in proc.stdout
    assert "which the next run into dst puts back" in proc.stdout
    # (the failed run's lock, copied aside with the old output, is stale after a second)
    monkeypatch.setattr(staleness, "LOCK_STALE_AFTER", 1.0)
    monkeypatch.setattr(staleness, "HEARTBEAT_EVERY", 1.0 / 6)
    time.sleep(1.5)
    out = fuse_zarr(src, dst, nhsize=5, resume=True, **opts)
    assert out.attrs["fstack_dask"]["nhsize"] == 5
    after = _output_objects(fs, b)
    assert after != before and sorted(after) == sorted(before)
    assert not [k for k in fs.find(b) if "fstack-staging-" in k], fs.find(b)


def _copy_then_fail(fs_, a, d, exc):
    """``_move_objects`` cut short once its copy is whole: its first delete (the root
    zarr.json, which goes first) done, then ``exc``. (Locks stay where they are.)"""
    from fstack_dask._outputs.folders import LOCK

    keys = [k for k in sorted(fs_.find(a)) if not k.endswith(f"/{LOCK}")]
    for key in [k for k in keys if not k.endswith(f"{a}/zarr.json")] + [f"{a}/zarr.json"]:
        fs_.copy(key, d + key[len(a) :])
    fs_.rm_file(f"{a}/zarr.json")
    raise exc


@pytest.mark.parametrize("exc", [OSError(104, "Connection reset by peer"), KeyboardInterrupt()],
                         ids=["a connection reset", "Ctrl-C"])  # fmt: skip
def test_a_swap_cut_short_deleting_dst_after_its_copy_aside_moves_it_back(
    s3, bucket, monkeypatch, exc
):
    """The S3 swap first copies dst aside whole, then deletes dst's objects (its zarr.json
    first). Cut short there, dst was left without its zarr.json, refused by every later run
    as not ours (--resume, --overwrite), while the error said "the previous output in dst is
    unchanged ... rerun with --resume" (Ctrl-C: "rerun ... --resume to continue"). The old
    output is moved back before the error; a resume then swaps the new one in."""
    fs, b = bucket
    src, dst, _ = _fused_once(b, s3, levels=0)
    before = _output_objects(fs, b)
    undo = _fault_in_move(monkeypatch, 1, lambda fs_, a, d: _copy_then_fail(fs_, a, d, exc))
    opts = _swap_options(s3)  # (the fault: in dst's move aside)
    with pytest.raises(type(exc)) as raised:
        fuse_zarr(src, dst, nhsize=5, overwrite=True, **opts)
    undo()
    if isinstance(exc, OSError):
        assert "the previous output in dst is unchanged" in str(raised.value)
    after = _output_objects(fs, b)
    assert after == before  # true: the old output, whole
    assert not [k for k in fs.find(b) if "fstack-staging-old-" in k]
    out = fuse_zarr(src, dst, nhsize=5, resume=True, **opts)
    assert out.attrs["fstack_dask"]["nhsize"] == 5
    assert not [k for k in fs.find(b) if "fstack-staging-" in k]


INTERRUPTED_AFTER_THE_COPY = """
import sys
from fstack_dask._outputs import folders

move, calls = folders._move_objects, []

def move_then_stop(fs, src, dst):
    calls.append(src)
    if len(calls) == 2:  # the staged output into dst: copied whole, then Ctrl-C
        keys = [k for k in sorted(fs.find(src)) if not k.endswith("/" + folders.LOCK)]
        for key in [k for k in keys if not k.endswith(src + "/zarr.json")] + [src + "/zarr.json"]:
            fs.copy(key, dst + key[len(src):])
        fs.rm_file(src + "/zarr.json")
        raise KeyboardInterrupt
    move(fs, src, dst)

folders._move_objects = move_then_stop
from fstack_dask._cli.main import main
sys.exit(main(sys.argv[1:]))
"""


def test_ctrl_c_after_a_whole_s3_copy_says_the_new_output_is_in_dst(s3, bucket):
    """Ctrl-C once the S3 swap had copied the new output into dst whole: the run said
    "interrupted; rerun the same command with --resume to continue", and that resume failed
    ("the interrupted overwrite is gone", exit 2: it took the staged copies left for a run).
    It now says that dst holds the new output and where the previous one is; a resume
    removes that, and the staged copies are gone already."""
    fs, b = bucket
    src, dst, opts = _fused_once(b, s3, levels=0)
    res = subprocess.run(
        [sys.executable, "-c", INTERRUPTED_AFTER_THE_COPY, "fuse", src, dst, *opts,
         "--overwrite", "--nhsize", "5"], capture_output=True, text=True, timeout=300,
        check=False,
    )  # fmt: skip
    assert res.returncode == 130, res.stderr
    (aside,) = {k.split("/")[1] for k in fs.find(b) if "fstack-staging-" in k}
    assert "fstack-staging-old-" in aside
    assert "dst holds the new output, complete" in res.stderr and aside in res.stderr
    assert "to continue" not in res.stderr
    staged = json.loads(fs.cat(f"{b}/out.zarr/zarr.json"))["attributes"]["fstack_dask"]
    assert staged["complete"] is True and staged["nhsize"] == 5
    res = _cli("fuse", src, dst, *opts, "--resume", "--nhsize", "5")
    assert res.returncode == 0 and "already complete" in res.stderr, res.stderr
    assert not [k for k in fs.find(b) if "fstack-staging-" in k or "/.fstack_dask/" in k]


KILLED_AFTER_THE_COPY = INTERRUPTED_AFTER_THE_COPY.replace(
    "raise KeyboardInterrupt", "import os, signal; os.kill(os.getpid(), signal.SIGKILL)"
)


def test_a_kill_after_a_whole_s3_copy_is_resumed_at_once(s3, bucket):
    """Killed once the S3 swap had copied the new output into dst whole (the staged copies
    left, their zarr.json gone): the first --resume took them for a run to continue, removed
    them as copies of dst, and failed with "the interrupted overwrite is gone" (exit 2). It
    finds dst complete and tidies what is left beside it."""
    fs, b = bucket
    src, dst, opts = _fused_once(b, s3, levels=0)
    _killed_overwrite(KILLED_AFTER_THE_COPY, src, dst, opts)
    assert len({k.split("/")[1] for k in fs.find(b) if "fstack-staging-" in k}) == 2
    time.sleep(3.0)  # the killed run's lock goes stale (S3 dates objects to the second)
    res = _cli("fuse", src, dst, *opts, "--resume", "--nhsize", "5",
               env={"FSTACK_DASK_LOCK_STALE_AFTER": "2"})  # fmt: skip
    assert res.returncode == 0 and "already complete" in res.stderr, res.stderr
    assert not [k for k in fs.find(b) if "fstack-staging-" in k or "/.fstack_dask/" in k]
    out = json.loads(fs.cat(f"{b}/out.zarr/zarr.json"))["attributes"]["fstack_dask"]
    assert out["nhsize"] == 5


def test_a_second_run_while_an_s3_swap_copies_into_dst_is_refused(s3, bucket, monkeypatch):
    """The S3 swap moves the old output aside, then copies the staged one into dst, object by
    object (minutes for a large output). dst had no lock meanwhile: a plain second run into
    dst started then wrote its own output ("wrote dst", exit 0), which the swap's copy then
    mixed with the new one. dst keeps its lock, renewed, all through the swap: the second run
    is refused as for any output being written, with dst empty and with a part of the copy
    in it, and dst ends as the overwrite's output alone."""
    fs, b = bucket
    src, dst, opts = _fused_once(b, s3, levels=0)
    seconds = []

    def second_run() -> None:
        res = _cli("fuse", src, dst, *opts, "--nhsize", "7")
        seconds.append((res.returncode, res.stderr))

    def runs_meanwhile(fs_, a, d):  # the staged output into dst: another run, then again
        second_run()  # with dst emptied
        staged = [k for k in sorted(fs_.find(a)) if not k.endswith("/.fstack_dask/lock")]
        for key in [k for k in staged if "/.fstack_dask/" not in k][:3]:
            fs_.copy(key, d + key[len(a) :])
        second_run()  # with a part of the copy in dst

    undo = _fault_in_move(monkeypatch, 2, runs_meanwhile)
    out = fuse_zarr(src, dst, nhsize=5, overwrite=True, **_swap_options(s3))
    undo()
    assert len(seconds) == 2
    for code, err in seconds:
        assert code == 1 and "is being written by pid" in err, err
    assert out.attrs["fstack_dask"]["nhsize"] == 5
    expected = focus_stack(_stack().transpose(1, 2, 0), nhsize=5)
    np.testing.assert_array_equal(out["0"][...], expected)
    assert not [k for k in fs.find(b) if "fstack-staging-" in k or "/.fstack_dask/" in k]


_RESTORE_PAUSED = """
import os, sys, time
from fstack_dask._locations import resolve
from fstack_dask._outputs import folders
from fstack_dask._outputs.destination_checks import DestinationChecks

flags, real = sys.argv[3], folders._move_objects


def move(fs, a, d):  # the old output back into dst: all but its zarr.json, then a pause
    if "staging-old-" in a:
        copy = fs.copy

        def paused(x, y, **kw):
            if x == [a + "/zarr.json"]:
                open(os.path.join(flags, "copied"), "w").close()
                for _ in range(600):
                    if os.listdir(flags) != ["copied"]:
                        break
                    time.sleep(0.1)
            return copy(x, y, **kw)

        fs.copy = paused
    return real(fs, a, d)


folders._move_objects = move
DestinationChecks(resolve(sys.argv[1], name="dst", storage_options=eval(sys.argv[2]),
                          writable=True))
"""


def test_two_runs_putting_back_an_s3_swap_s_old_output_at_once_lose_nothing(
    s3, bucket, monkeypatch, tmp_path
):
    """A swap whose copy into dst failed, and its undo too, leaves the old output aside; the
    next run puts it back (38a3c8c). Two runs started then did so at once, without a lock:
    the second, while the first copied the old output into dst (minutes for a large one),
    removed those copies as "copies of the old output", then moved what was left of the old
    output into dst, nothing once the first had moved it: both said "restored", dst held
    only its zarr.json and the old output was lost. The put-back is done under dst's lock;
    the second run leaves it to the first, and dst is the old output, whole."""
    from fstack_dask._locations import resolve
    from fstack_dask._outputs import leftovers, staleness
    from fstack_dask._outputs.destination_checks import DestinationChecks

    fs, b = bucket
    src, dst, _ = _fused_once(b, s3, levels=0)
    old = _output_objects(fs, b)
    opts = _swap_options(s3)
    proc = subprocess.run([sys.executable, "-c", _SWAP_AND_UNDO_FAIL, src, dst, repr(opts),
                           "copy"], capture_output=True, text=True, timeout=180)  # fmt: skip
    assert "Connection reset by peer" in proc.stdout, proc.stdout + proc.stderr
    monkeypatch.setattr(staleness, "LOCK_STALE_AFTER", 2.0)
    monkeypatch.setattr(staleness, "HEARTBEAT_EVERY", 2.0 / 6)
    time.sleep(3.0)  # the failed run's locks go stale (S3 dates objects to the second)
    flags = tmp_path / "flags"
    flags.mkdir()
    first = subprocess.Popen(
        [sys.executable, "-c", _RESTORE_PAUSED, dst, repr(s3), str(flags)],
        env={**os.environ, "FSTACK_DASK_LOCK_STALE_AFTER": "2"}, stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        for _ in range(1200):
            if (flags / "copied").exists() or first.poll() is not None:
                break
            time.sleep(0.1)
        assert (flags / "copied").exists(), first.communicate()[1]
        real = leftovers.remove_tree

        def remove_tree(*args, **kwargs):  # (as a large output's removal takes minutes)
            kept = real(*args, **kwargs)
            (flags / "removed").touch()
            first.wait(timeout=120)
            return kept

        monkeypatch.setattr(leftovers, "remove_tree", remove_tree)
        DestinationChecks(resolve(dst, name="dst", storage_options=s3, writable=True))
    finally:
        (flags / "second done").touch()
        err = first.communicate(timeout=120)[1]
    assert first.returncode == 0, err
    after = _output_objects(fs, b)
    assert after == old
    assert not [k for k in fs.find(f"{b}/out.zarr") if "/.fstack_dask/" in k]


def test_an_s3_swap_failing_after_its_whole_copy_and_its_undo_says_dst_is_the_new_output(
    s3, bucket, monkeypatch
):
    """The S3 swap copied the new output into dst whole, then failed deleting the staged
    copies, and its undo failed too (the same network fault): the error said "the previous
    output in dst is unchanged; the new one is kept beside it ... rerun with resume=True to
    continue it" of a dst holding the new output, complete, the previous one hidden beside
    it. It says so, and where the previous one is; a resume removes it."""
    from fstack_dask._outputs import staleness

    fs, b = bucket
    src, dst, _ = _fused_once(b, s3, levels=0)
    opts = _swap_options(s3)
    proc = subprocess.run([sys.executable, "-c", _SWAP_AND_UNDO_FAIL, src, dst, repr(opts),
                           "whole"], capture_output=True, text=True, timeout=180)  # fmt: skip
    assert "Connection reset by peer" in proc.stdout, proc.stdout + proc.stderr
    out = json.loads(fs.cat(f"{b}/out.zarr/zarr.json"))["attributes"]["fstack_dask"]
    assert out["nhsize"] == 5 and out["complete"] is True  # the new output
    assert "previous output in dst is unchanged" not in proc.stdout, proc.stdout
    assert "dst holds the new output, complete" in proc.stdout, proc.stdout
    assert f"the previous one is left in 's3://{b}/.out.zarr.fstack-staging-old-" in proc.stdout
    monkeypatch.setattr(staleness, "LOCK_STALE_AFTER", 2.0)
    monkeypatch.setattr(staleness, "HEARTBEAT_EVERY", 2.0 / 6)
    time.sleep(3.0)  # the failed run's locks go stale (S3 dates objects to the second)
    out = fuse_zarr(src, dst, nhsize=5, resume=True, **opts)
    assert out.attrs["fstack_dask"]["nhsize"] == 5
    assert not [k for k in fs.find(b) if "fstack-staging-" in k or "/.fstack_dask/" in k]


def test_a_chained_url_gets_its_flat_storage_options_on_s3(bucket, s3):
    """``simplecache::s3://...`` with the endpoint and credentials as ``--storage-options``
    (the README's spelling): fsspec gave them to the cache, s3fs reached AWS without them, and
    the source "did not exist", the dst "could not be reached" (found by g58). Now they reach
    S3, the fusion is the plain URL's, and dst inside the source so spelled is refused."""
    fs, b = bucket
    src, ref, opts = _fused_once(b, s3, levels=0)
    cached = (f"simplecache::{src}", f"SIMPLECACHE::s3://{b}/cached.zarr")
    proc = _cli("fuse", *cached, *opts)
    assert proc.returncode == 0, proc.stderr
    assert fs.cat(f"{b}/cached.zarr/0/c/1/1") == fs.cat(f"{b}/out.zarr/0/c/1/1")
    before = _keys(fs, b)
    proc = _cli("fuse", src, f"simplecache::s3://{b}/src.zarr/x.zarr", *opts)
    assert proc.returncode == 2 and "lies inside it" in proc.stderr, proc.stderr
    assert _keys(fs, b) == before


@pytest.mark.parametrize("finished", [True, False])
def test_an_s3_overwrite_of_an_output_with_a_users_object_inside_an_array_is_refused(
    s3, bucket, monkeypatch, finished
):
    """A user's ``0/annotations/x.csv`` and a key named like a chunk beyond the grid
    (``0/c/4/0``) in our output on S3: an --overwrite went on, left them in the previous
    output hidden beside dst (a warning, exit 0), or, of an unfinished output, kept them in
    dst's array, where the new run's chunk ``0/c/4/0`` overwrote the user's after a warning
    that said it was kept (g101; a local dst was refused since g96). Refused as there: one
    line naming them, exit 2, no key changed."""

    fs, b = bucket
    src, dst, opts = _fused_once(b, s3, levels=0)
    if not finished:  # a new run into dst, stopped after one block, as Ctrl-C would
        fs.rm(f"{b}/out.zarr", recursive=True)
        _fuse_stopped_after_one_block(monkeypatch, src, dst, **_swap_options(s3))
        assert not fs.exists(f"{b}/out.zarr/0/c/2/2")  # (unfinished)
    fs.pipe(f"{b}/out.zarr/0/annotations/x.csv", b"x,y\n")
    fs.pipe(f"{b}/out.zarr/0/c/4/0", b"the user's")  # the grid is 3 x 3 chunks of 32
    before = _keys(fs, b)
    proc = _cli("fuse", src, dst, *opts, "--overwrite", "--chunks", "16")  # (a grid 6 x 5)
    assert proc.returncode == 2, proc.stderr
    line = proc.stderr.strip().splitlines()[-1]
    assert "'0/annotations', '0/c/4/0' inside its arrays" in line, line
    assert "move them out of dst first (nothing was written)" in line, line
    assert _keys(fs, b) == before


def test_a_users_object_put_inside_an_array_while_an_s3_overwrite_runs_keeps_the_old_output(
    s3, bucket, monkeypatch, caplog
):
    """A user's ``0/annotations/x.csv`` put into the output on S3 while an overwrite of it
    ran (after its check): the swap removed the previous output's chunks around it, left
    hidden beside dst, said only as "kept ... : fstack_dask did not write them". The
    previous output is kept whole there, and a warning names the file and the folder, as
    on a local disk."""
    import logging

    from fstack_dask._outputs.destination import Destination

    fs, b = bucket
    src, dst, _opts = _fused_once(b, s3, levels=0)
    real = Destination.swap_in

    def swap_in(self, target):
        fs.pipe(f"{b}/out.zarr/0/annotations/x.csv", b"x,y\n")
        return real(self, target)

    before = {k: v for k, v in _output_objects(fs, b).items()}
    monkeypatch.setattr(Destination, "swap_in", swap_in)
    with caplog.at_level(logging.WARNING, logger="fstack_dask"):
        fuse_zarr(src, dst, **_swap_options(s3), nhsize=5, overwrite=True)
    (hidden,) = {k.split("/")[1] for k in fs.find(b) if "fstack-staging-old-" in k}
    kept = {k.replace(f"{b}/{hidden}/", f"{b}/out.zarr/"): fs.cat(k)
            for k in fs.find(f"{b}/{hidden}") if "/.fstack_dask/" not in k}  # fmt: skip
    assert kept == {**before, f"{b}/out.zarr/0/annotations/x.csv": b"x,y\n"}
    said = [r.getMessage() for r in caplog.records if "'0/annotations'" in r.getMessage()]
    assert said and hidden in said[0] and "kept whole" in said[0], said


def _marker(s3: dict, b: str, key: str) -> None:
    """An empty key ending in '/', as the AWS console's "Create folder" makes (s3fs makes none)."""
    import botocore.session

    client = botocore.session.get_session().create_client(
        "s3", endpoint_url=s3["endpoint_url"], aws_access_key_id=s3["key"],
        aws_secret_access_key=s3["secret"], region_name="us-east-1",
    )  # fmt: skip
    client.put_object(Bucket=b, Key=key, Body=b"")


def test_a_folder_made_in_the_s3_console_is_a_dst_written_into(s3, bucket):
    """``out.zarr/``, made by the AWS console's "Create folder" before the first run, was
    refused as "a folder with other content ('out.zarr')": s3fs lists a folder's marker as
    an entry named like the folder. It is an empty folder: written into."""
    fs, b = bucket
    src = f"s3://{b}/src.zarr"
    write_stack(src, _stack(), axes="zyx", chunks=(7, 32, 32), storage_options=s3)
    _marker(s3, b, "out.zarr/")
    opts = ("--chunks", "32", "--no-progress", "--storage-options", json.dumps(s3),
            "--dst-storage-options", json.dumps(s3))  # fmt: skip
    proc = _cli("fuse", src, f"s3://{b}/out.zarr", *opts)
    assert proc.returncode == 0, proc.stderr
    assert fs.exists(f"{b}/out.zarr/0/c/2/2")


@pytest.mark.parametrize("finished", [True, False])
def test_folder_markers_in_an_s3_output_go_with_its_overwrite(s3, bucket, monkeypatch, finished):
    """Folders' markers (empty keys ending in '/', as the AWS console and other tools make
    them) in our output: ``0/``, ``0/c/1/``, ``.fstack_dask/``, dst's own ``out.zarr/``, a
    user's ``2024/`` beside our entries. An --overwrite failed on them, "The specified key
    does not exist" (s3's copy of a marker), or refused "holds '0/c/' inside its arrays". Ours
    go with the output, the user's move into the new one with what they hold, and a marker of
    the user's folder inside an array (``0/annotations/``) is refused as that folder is."""

    fs, b = bucket
    src, dst, opts = _fused_once(b, s3, levels=1)
    if not finished:  # a new run into dst, stopped after one block, as Ctrl-C would
        fs.rm(f"{b}/out.zarr", recursive=True)
        _fuse_stopped_after_one_block(monkeypatch, src, dst, **{**_swap_options(s3), "levels": 1})
    theirs = ["out.zarr/2024/", "out.zarr/notes/"]
    for key in ["out.zarr/", "out.zarr/0/", "out.zarr/0/c/", "out.zarr/0/c/1/",
                "out.zarr/1/", "out.zarr/.fstack_dask/", *theirs]:  # fmt: skip
        _marker(s3, b, key)
    fs.pipe(f"{b}/out.zarr/2024/x.txt", b"the user's")
    proc = _cli("fuse", src, dst, *opts, "--overwrite", "--nhsize", "5")
    assert proc.returncode == 0, proc.stderr
    # (in place, a user's entries beside ours stay, named: the markers of ours are not)
    said = "" if finished else "kept ['2024', 'notes'] in"
    assert [n for n in proc.stderr.splitlines() if n] == (
        [f"fstack-dask: warning: {said} s3://{b}/out.zarr: fstack_dask did not write them"]
        if said
        else []
    ), proc.stderr
    keys = set(_keys(fs, b))
    assert not [k for k in keys if "fstack-staging" in k], sorted(keys)
    assert {f"{b}/{k}" for k in theirs} <= keys and fs.cat(f"{b}/out.zarr/2024/x.txt")
    _marker(s3, b, "out.zarr/0/annotations/")  # a user's folder inside our array, empty
    before = _keys(fs, b)
    proc = _cli("fuse", src, dst, *opts, "--overwrite")
    assert proc.returncode == 2 and "'0/annotations' inside its arrays" in proc.stderr
    assert _keys(fs, b) == before


_OTHER_WRITE_STACK = """
import json, sys
import numpy as np
from fstack_dask import write_stack
write_stack(sys.argv[1], np.full((4, 6, 5), 7, np.uint16), axes="zyx",
            storage_options=json.loads(sys.argv[2]), zarr_format=int(sys.argv[3]))
"""


@pytest.mark.parametrize("zarr_format", [3, 2])
def test_write_stack_into_an_s3_path_another_writer_takes_meanwhile_is_refused_to_one(
    s3, bucket, monkeypatch, zarr_format
):
    """Two write_stack calls into one new S3 prefix (array jobs converting one stack, in one
    Zarr format), the second begun as the first wrote its first object: both went on, into
    one store, each returning as done (zarr's check that the path is new, then its write:
    not atomic; a local path is claimed by an exclusive mkdir since g102). The group's
    metadata object is created by one conditional request (If-None-Match): one writer
    alone goes on, the other refused, and the store is the one's whole."""
    import zarr
    from zarr.storage import FsspecStore

    fs, b = bucket
    path = f"s3://{b}/s.ome.zarr"
    real, other = FsspecStore.set, []

    async def set_(self, key, value, *args, **kwargs):
        if not other:  # this call's first write through zarr: the other writer starts
            proc = subprocess.run([sys.executable, "-c", _OTHER_WRITE_STACK, path,
                                   json.dumps(s3), str(zarr_format)], capture_output=True,
                                  text=True, timeout=300, check=False)  # fmt: skip
            other.append(proc)
        return await real(self, key, value, *args, **kwargs)

    monkeypatch.setattr(FsspecStore, "set", set_)
    write_stack(path, _stack(), axes="zyx", storage_options=s3, zarr_format=zarr_format)
    monkeypatch.setattr(FsspecStore, "set", real)
    assert other[0].returncode != 0, "both writers went on"
    assert "already exists" in other[0].stderr.strip().splitlines()[-1], other[0].stderr
    group = zarr.open_group(path, mode="r", storage_options=s3)
    np.testing.assert_array_equal(group["0"][...], _stack())


@pytest.mark.parametrize("where", ["0/notes.txt", "readme.txt"])
def test_an_object_put_in_an_output_as_it_is_removed_is_kept(s3, bucket, where):
    """The removal of our output on an object store listed its objects, deleted ours, then
    deleted its prefix recursively: a user's object put there meanwhile went with it, where on
    a local disk the folder's rmdir keeps a file put in it. What is left is listed again: an
    object there now is kept, and said kept."""
    from fstack_dask._locations import remove_tree, resolve

    fs, b = bucket
    top = f"{b}/out.zarr"
    fs.pipe({f"{top}/zarr.json": b"{}", f"{top}/0/zarr.json": b"{}", f"{top}/0/c/0/0": b"x"})
    location = resolve(f"s3://{top}", name="dst", storage_options=s3, writable=True)

    def ours(entry, rel):  # judged after the listing, as a user's tool writes
        fs.pipe(f"{top}/{where}", b"mine")
        return True

    kept = remove_tree(location, owned=lambda _location: None, only=["0", "zarr.json"],
                       ours_within=ours)  # fmt: skip
    assert fs.cat(f"{top}/{where}") == b"mine"
    assert kept == [where]
    assert not [k for k in fs.find(top) if not k.endswith(where)]


def test_an_object_whose_key_ends_in_a_slash_and_holds_bytes_is_a_users_not_a_marker(
    s3, bucket, monkeypatch
):
    """S3 lets an object's key end in '/' and hold bytes. Such an object was taken for a
    folder's marker: an --overwrite of an unfinished output holding ``0/c/`` deleted it with
    the output's chunks, exit 0, and the removal of an output deleted it so too (s3fs's fs.rm
    of its key deletes the key without the '/', another object). A marker is an empty object:
    one with bytes is a user's object inside our array, refused as any, and never removed."""
    from fstack_dask._locations import resolve
    from fstack_dask._outputs.removal import remove_output

    fs, b = bucket
    src, dst = f"s3://{b}/src.zarr", f"s3://{b}/out.zarr"
    write_stack(src, _stack(), axes="zyx", chunks=(7, 32, 32), storage_options=s3)
    _fuse_stopped_after_one_block(monkeypatch, src, dst, **_swap_options(s3))
    theirs = f"{b}/out.zarr/0/c/"
    _marker(s3, b, "out.zarr/0/c/1/")  # a marker of ours beside it: empty
    fs.pipe_file(f"{b}/out.zarr/0/c/9", b"another object of the user's")
    _object(s3, b, "out.zarr/0/c/", b"the user's own bytes")
    before = _keys(fs, b)
    opts = ("--chunks", "32", "--levels", "0", "--no-progress", "--storage-options",
            json.dumps(s3), "--dst-storage-options", json.dumps(s3))  # fmt: skip
    proc = _cli("fuse", src, dst, *opts, "--overwrite")
    assert proc.returncode == 2 and "holds '0/c/', '0/c/9' inside its arrays" in proc.stderr, (
        proc.stderr
    )
    assert _keys(fs, b) == before
    location = resolve(dst, name="dst", storage_options=s3)
    kept = remove_output(location, protect=[])
    assert kept, kept
    left = sorted(k for k in _keys(fs, b) if k.startswith(f"{b}/out.zarr"))
    assert left == [theirs, f"{b}/out.zarr/0/c/9"], left
    assert fs.cat(f"{b}/out.zarr/0/c/9") == b"another object of the user's"


def _object(s3: dict, b: str, key: str, body: bytes) -> None:
    """An object of ``key`` (which may end in '/', which s3fs strips) holding ``body``."""
    import botocore.session

    client = botocore.session.get_session().create_client(
        "s3", endpoint_url=s3["endpoint_url"], aws_access_key_id=s3["key"],
        aws_secret_access_key=s3["secret"], region_name="us-east-1",
    )  # fmt: skip
    client.put_object(Bucket=b, Key=key, Body=body)
    assert client.get_object(Bucket=b, Key=key)["Body"].read() == body


@pytest.mark.parametrize("key", ["out.zarr/notes/", "out.zarr/.fstack_dask/notes/"])
def test_an_s3_overwrite_with_a_users_slash_keyed_object_beside_ours_is_refused_before_it_runs(
    s3, bucket, key
):
    """A user's object whose key ends in '/' and holds bytes, beside our entries (``notes/``)
    or in the state folder, of a finished output on S3: the --overwrite fused every block,
    then its swap refused to move the object, the new output kept beside dst for --resume.
    Refused before anything is computed, as a user's object inside our arrays is: one line
    naming it, exit 2, no key written."""
    line = _overwrite_refused_for(s3, bucket, key, levels=1)
    rel = key.removeprefix("out.zarr/")
    assert f"holds {rel!r}, an object whose key ends in '/' holding 16 bytes" in line, line
    assert "move it out of dst first (nothing was written)" in line, line


def _overwrite_refused_for(s3, bucket, key: str, *, levels: int) -> str:
    """The one line refusing the CLI's --overwrite of an output fused once, the user's object
    ``key`` (16 bytes) put beside it first; exit 2, no key changed (no block was fused)."""
    fs, b = bucket
    src, dst, opts = _fused_once(b, s3, levels=levels)
    _object(s3, b, key, b"the user's bytes")
    before = _keys(fs, b)
    proc = _cli("fuse", src, dst, *opts, "--overwrite", "--nhsize", "5")
    assert proc.returncode == 2, proc.stderr
    assert _keys(fs, b) == before
    return proc.stderr.strip().splitlines()[-1]


def test_a_users_slash_keyed_object_put_beside_ours_while_an_s3_overwrite_runs_fails_its_swap(
    s3, bucket, monkeypatch
):
    """The same object put into dst while the overwrite ran, after its checks: the swap,
    the backstop, refuses before it copies anything; dst is unchanged and the new output
    kept beside it for --resume."""
    from fstack_dask._outputs.destination import Destination

    fs, b = bucket
    src, dst, _opts = _fused_once(b, s3, levels=0)
    real = Destination.swap_in

    def swap_in(self, target):
        _object(s3, b, "out.zarr/notes/", b"the user's bytes")
        return real(self, target)

    before = _output_objects(fs, b)
    monkeypatch.setattr(Destination, "swap_in", swap_in)
    with pytest.raises(FileExistsError, match="'notes/', an object whose key ends in '/'"):
        fuse_zarr(src, dst, **_swap_options(s3), nhsize=5, overwrite=True)
    theirs = f"{b}/out.zarr/notes/"  # (s3fs reads no such key: its cat strips the '/')
    after = {k: fs.cat(k) for k in fs.find(f"{b}/out.zarr")
             if "/.fstack_dask/" not in k and k != theirs}  # fmt: skip
    assert after == before and theirs in _keys(fs, b)
    assert [k for k in fs.find(b) if ".fstack-staging-" in k and k.endswith("/0/c/2/2")]


@pytest.mark.parametrize("key", ["out.zarr/0", "out.zarr/.fstack_dask"])
def test_an_s3_overwrite_of_an_output_with_a_users_object_named_as_a_folder_of_ours_is_refused(
    s3, bucket, key
):
    """A user's object whose key is that of a folder of our output (``out.zarr/0`` beside
    ``out.zarr/0/c/0/0``, S3 allows both; ``out.zarr/.fstack_dask``): an --overwrite deleted
    it, exit 0, with its folder's prefix (s3fs's recursive rm of ``0`` takes the object
    ``0`` too). Refused before anything is computed, as a user's object inside our arrays
    is: one line naming it, exit 2, no key changed."""
    line = _overwrite_refused_for(s3, bucket, key, levels=0)
    assert f"holds {key.removeprefix('out.zarr/')!r} inside its arrays" in line, line
