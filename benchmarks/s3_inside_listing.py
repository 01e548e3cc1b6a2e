"""The cost of the listing an ``--overwrite`` of an output on an object store makes before
anything is computed, to find a user's objects inside its arrays (g101,
:func:`~fstack_dask._outputs.removal.theirs_in_objects`), on moto's S3 server: an output of
``--keys`` objects, the listing against a copy of 1,000 of its objects (what the swap does
for each of them), alternated.

    python benchmarks/s3_inside_listing.py --keys 10000 --repeats 3
"""

from __future__ import annotations

import argparse
import shutil
import socket
import statistics
import subprocess
import sys
import time
import uuid

import numpy as np

from fstack_dask import fuse_zarr, write_stack
from fstack_dask._locations import resolve
from fstack_dask._outputs.removal import theirs_in_objects


def _moto() -> tuple[subprocess.Popen, dict]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = shutil.which("moto_server")
    cmd = [server] if server else [sys.executable, "-m", "moto.server"]
    proc = subprocess.Popen([*cmd, "-p", str(port)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)  # fmt: skip
    for _ in range(1200):
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            break
        except OSError:
            time.sleep(0.05)
    return proc, {"endpoint_url": f"http://127.0.0.1:{port}", "key": "k", "secret": "s"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--keys", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    import s3fs

    proc, s3 = _moto()
    try:
        fs = s3fs.S3FileSystem(skip_instance_cache=True, use_listings_cache=False, **s3)
        b = f"b{uuid.uuid4().hex[:12]}"
        fs.mkdir(b)
        stack = np.random.default_rng(0).integers(0, 4000, (5, 64, 64)).astype(np.uint16)
        write_stack(f"s3://{b}/src.zarr", stack, axes="zyx", storage_options=s3)
        fuse_zarr(f"s3://{b}/src.zarr", f"s3://{b}/out.zarr", chunks=32, levels=0,
                  progress=False, storage_options=s3, dst_storage_options=s3)  # fmt: skip
        fs.pipe({f"{b}/out.zarr/0/c/{i // 100 + 2}/{i % 100}": b"x" * 64 for i in range(args.keys)})
        dst = resolve(f"s3://{b}/out.zarr", name="dst", storage_options=s3)
        keys = sorted(fs.find(f"{b}/out.zarr"))[:1000]
        listing, copying = [], []
        for rep in range(args.repeats):
            t = time.perf_counter()
            found = theirs_in_objects(dst)
            listing.append(time.perf_counter() - t)
            t = time.perf_counter()
            fs.copy(keys, [k.replace("/out.zarr/", f"/copy{rep}.zarr/") for k in keys])
            copying.append(time.perf_counter() - t)
        print(
            f"{len(fs.find(f'{b}/out.zarr'))} objects, {len(found)} found; median of "
            f"{args.repeats}: listing {statistics.median(listing):.2f} s (min "
            f"{min(listing):.2f}), copy of 1,000 objects {statistics.median(copying):.2f} s "
            f"(min {min(copying):.2f})"
        )
    finally:
        proc.terminate()


if __name__ == "__main__":
    main()
