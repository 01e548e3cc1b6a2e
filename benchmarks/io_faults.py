"""Fault-injection sweep of the CLI: an errno (or SIGKILL) at the N-th system call on src/dst.

Each scenario (a fresh Zarr run, a --resume, an --overwrite of a complete output, an OME-TIFF
dst, a demo --overwrite) is first traced (strace -f -y) to find, per system call and thread,
the calls that touch the case's folder; each of those (sampled to at most ``--per`` per call)
is then failed with ``strace -e inject=CALL:error=ERRNO:when=N`` (counted per thread by
strace, so the same index may also hit another thread's call: the injected lines are
reported). A TIFF dst is compared by its bytes with the case's path and hex digests masked,
so its OME-XML UUID (derived from the provenance) differs: compare its pixels where it is
flagged. After each fault: no traceback, no hang, one error line and a non-zero status (or
0), the source unchanged, nothing beside dst, and dst either the old output (overwrite) or
finished bit-identical by a plain rerun (--resume, or --overwrite for a swap).

    python benchmarks/io_faults.py --out /tmp/sweep [--scenarios fresh,resume] [--per 6]

Needs strace (Linux). Prints one line per problem and a JSON summary at the end.
"""

from __future__ import annotations

import argparse
import collections
import functools
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

CALLS = (
    "write", "pwrite64", "fsync", "fdatasync", "rename", "renameat2", "unlink", "unlinkat",
    "rmdir", "mkdir", "mkdirat", "openat", "read", "getdents64", "flock", "ftruncate",
)  # fmt: skip
ERRNOS = ("EIO", "ENOSPC", "EACCES", "EINTR", "ESTALE")
FUSE = ["--chunks", "32", "--depth-map", "--no-progress", "--scheduler", "synchronous"]
LINE = re.compile(r"^(\d+)\s+(\w+)\((.*)$")


def tree(root: Path, case: Path | None = None) -> dict:
    """sha256 of each file below root, the case's folder (same length in every case, so a
    TIFF's offsets do not move) masked where a file records it (provenance)."""
    mask = str(case).encode() if case else None
    out = {}
    for dirpath, dirs, files in os.walk(root):
        rel = os.path.relpath(dirpath, root)
        for d in dirs:
            out[os.path.join(rel, d) + "/"] = "dir"
        for f in files:
            data = Path(dirpath, f).read_bytes()
            if mask:  # and the random output id, and digests of things holding the path
                data = data.replace(mask, b"#" * len(mask))
                if f.endswith((".json", ".tif")) or f.startswith(".fstack"):
                    data = re.sub(rb"[0-9a-f]{32,64}", lambda m: b"h" * len(m[0]), data)
            out[os.path.join(rel, f)] = hashlib.sha256(data).hexdigest()
    return out


def cli(args, env, prefix=(), timeout=90):
    cmd = [*prefix, sys.executable, "-m", "fstack_dask", *map(str, args)]
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return None


class Scenario:
    """A case folder ``base/case``: ``in.zarr`` (src), ``out/`` (dst's parent)."""

    def __init__(self, name, base: Path, src: Path):
        self.name, self.base, self.src = name, base, src

    def prepare(self, case: Path, env):
        case.mkdir(parents=True)
        shutil.copytree(self.src, case / "in.zarr")  # copy2: the same mtimes, same provenance
        (case / "out").mkdir()
        (case / "tmp").mkdir()
        dst = self.dst(case)
        if self.name == "resume":  # a run cut short: the first 3 blocks done
            res = cli(["fuse", case / "in.zarr", dst, *FUSE], env,
                      prefix=["strace", "-f", "-qq", "-o", "/dev/null", "-e", "trace=rename",
                              "-e", "inject=rename:signal=SIGKILL:when=8"])  # fmt: skip
            assert dst.exists(), res and res.stderr
        elif self.name == "overwrite":
            res = cli(["fuse", case / "in.zarr", dst, *FUSE, "--alpha", "0.5"], env)
            assert res.returncode == 0, res.stderr
        elif self.name == "demo":
            res = cli(["demo", dst, "--size", "48", "--planes", "5", "--no-progress",
                       "--scheduler", "synchronous", "--seed", "1"], env)  # fmt: skip
            assert res.returncode == 0, res.stderr

    def dst(self, case: Path) -> Path:
        return case / "out" / {"tiff": "fused.ome.tif", "demo": "demo"}.get(self.name, "fused.zarr")

    def args(self, case: Path):
        dst = self.dst(case)
        if self.name == "demo":
            return ["demo", dst, "--size", "48", "--planes", "5", "--no-progress",
                    "--scheduler", "synchronous", "--overwrite"]  # fmt: skip
        extra = {"resume": ["--resume"], "overwrite": ["--overwrite"]}.get(self.name, [])
        return ["fuse", case / "in.zarr", dst, *FUSE, *extra]

    def finish_args(self, case: Path):
        """The plain rerun that must finish a failed run bit-identically."""
        args = self.args(case)
        if self.name in ("fresh", "tiff", "resume") and self.dst(case).exists():
            args = [a for a in args if a != "--resume"] + ["--resume"]
        work = self.dst(case).with_name(f".{self.dst(case).name}.fstack-work")  # a TIFF's
        if self.name in ("fresh", "tiff") and not self.dst(case).exists() and not work.exists():
            args = [a for a in args if a != "--resume"]
        elif self.name == "tiff" and work.exists() and "--resume" not in args:
            args = [*args, "--resume"]
        return args


def env_for(case: Path):
    return {**os.environ, "TMPDIR": str(case / "tmp"), "XDG_CACHE_HOME": "/tmp/g19/xdg-cache"}


def count(sc: Scenario, work: Path) -> dict:
    """{call: [per-thread index of each call touching the case folder]} of one clean run."""
    case = work / "c0000"
    shutil.rmtree(case, ignore_errors=True)
    env = env_for(case)
    sc.prepare(case, env)
    trace = work / f"c0000-{sc.name}.trace"
    res = cli(sc.args(case), env, prefix=["strace", "-f", "-y", "-qq", "-o", str(trace),
                                          "-e", "trace=" + ",".join(CALLS)])  # fmt: skip
    assert res.returncode == 0, res.stderr
    seen, hits = collections.Counter(), collections.defaultdict(set)
    for ln in trace.read_text().splitlines():
        m = LINE.match(ln)
        if not m or "resumed>" in ln:
            continue
        tid, call, rest = m.groups()
        seen[tid, call] += 1
        if str(case) in rest.split(") = ")[0] or str(case) in rest:
            hits[call].add(seen[tid, call])
    return {c: sorted(v) for c, v in hits.items()}


def sample(xs, per):
    if len(xs) <= per:
        return xs
    if per == 1:
        return [xs[len(xs) // 2]]
    step = (len(xs) - 1) / (per - 1)
    return sorted({xs[round(i * step)] for i in range(per)})


def trial(sc: Scenario, work: Path, ref: dict, old: dict | None, k, call, n, fault):
    case = work / f"t{k:04d}"
    shutil.rmtree(case, ignore_errors=True)
    env = env_for(case)
    sc.prepare(case, env)
    src_before = tree(case / "in.zarr")
    trace = case.with_suffix(".trace")
    how = "signal=SIGKILL" if fault == "SIGKILL" else f"error={fault}"
    strace = ["strace", "-f", "-y", "-qq", "-o", str(trace), "-e", f"trace={call}",
              "-e", f"inject={call}:{how}:when={n}"]  # fmt: skip
    res = cli(sc.args(case), env, prefix=strace)
    injected = [ln.split(None, 1)[1][:160] for ln in trace.read_text().splitlines()
                if "INJECTED" in ln or "killed by SIGKILL" in ln]  # fmt: skip
    problems = []
    dst = sc.dst(case)
    if res is None:
        problems.append("hang (timeout)")
    else:
        err = res.stderr
        if "Traceback" in err:
            problems.append("traceback: " + err.strip().splitlines()[-1][:200])
        errors = [ln for ln in err.splitlines() if ln.startswith("fstack-dask: error:")]
        others = [ln for ln in err.splitlines() if not ln.startswith("fstack-dask: ")]
        if res.returncode not in (0, -9, 137) and (len(errors) != 1 or others):
            problems.append(f"rc {res.returncode} stderr not one error line: {err.strip()[:300]!r}")
        if res.returncode == 0 and tree(dst, case) != ref and sc.name != "demo":
            problems.append("rc 0 but dst differs from the reference")
    if tree(case / "in.zarr") != src_before:
        problems.append("src modified")
    beside = sorted(set(os.listdir(case / "out")) - {dst.name})
    if res and "kept beside it in" in res.stderr:  # a staged overwrite kept for a resume
        beside = [b for b in beside if b not in res.stderr]
    if beside and not (res and res.returncode in (-9, 137)):
        problems.append(f"left beside dst: {beside}")
    if os.listdir(case / "tmp") and not (res and res.returncode in (-9, 137)):
        problems.append(f"left in TMPDIR: {os.listdir(case / 'tmp')}")
    line = res.stderr.strip().splitlines()[-1][:200] if res and res.stderr.strip() else ""
    rc = None if res is None else res.returncode
    if res is not None and res.returncode != 0:
        if sc.name == "overwrite" and dst.exists() and tree(dst, case) not in (old, ref):
            if res.returncode not in (-9, 137):
                problems.append("overwrite failed and dst is neither the old nor the new output")
        fin = cli(sc.finish_args(case), env)
        if fin is None or fin.returncode != 0:
            problems.append(f"not finishable by a rerun: {fin and fin.stderr.strip()[:300]!r}")
        elif sc.name != "demo" and tree(dst, case) != ref:
            problems.append("rerun finished but dst differs from the reference")
        beside = sorted(set(os.listdir(case / "out")) - {dst.name})
        if beside:
            problems.append(f"left beside dst after the rerun: {beside}")
    hit = any(str(case) in ln for ln in injected)
    if fault != "SIGKILL" and not hit and res is not None and res.returncode:
        problems = []  # the fault hit another thread's call, not ours (the interpreter's)
    if not problems:
        shutil.rmtree(case, ignore_errors=True)
        trace.unlink(missing_ok=True)
    (case.parent / f"{case.name}.what").write_text(f"{sc.name} {call} {fault} {n}")
    return {
        "case": case.name, "scenario": sc.name, "call": call, "n": n, "fault": fault,
        "rc": rc, "line": line,
        "injected": injected[:3], "problems": problems,
    }  # fmt: skip


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--scenarios", default="fresh,resume,overwrite,tiff,demo")
    ap.add_argument("--errnos", default=",".join(ERRNOS) + ",SIGKILL")
    ap.add_argument("--calls", default=",".join(CALLS))
    ap.add_argument("--per", type=int, default=6)
    ap.add_argument("--jobs", type=int, default=2)
    a = ap.parse_args(argv)
    work = a.out.resolve()
    work.mkdir(parents=True, exist_ok=True)
    src = work / "in.zarr"
    if not src.exists():
        import numpy as np
        import zarr

        from fstack_dask import synthetic_stack

        data = np.moveaxis(synthetic_stack((96, 96), 5, dtype="uint16", seed=3).stack, 2, 0)
        arr = zarr.create_array(str(src), shape=data.shape, dtype="uint16", chunks=(5, 32, 32),
                                dimension_names=["z", "y", "x"])  # fmt: skip
        arr[...] = data
    results = []
    for name in a.scenarios.split(","):
        sc = Scenario(name, work, src)
        refcase = work / "r0000"
        shutil.rmtree(refcase, ignore_errors=True)
        env = env_for(refcase)
        sc.prepare(refcase, env)
        old = tree(sc.dst(refcase), refcase) if name == "overwrite" else None
        res = cli(sc.args(refcase), env)
        assert res.returncode == 0, res.stderr
        ref = tree(sc.dst(refcase), refcase)
        hits = count(sc, work)
        (work / f"hits-{name}.json").write_text(json.dumps(hits))
        jobs = [(c, n, f) for c in a.calls.split(",") for f in a.errnos.split(",")
                for n in sample(hits.get(c, []), a.per)]  # fmt: skip
        print(f"{name}: {sum(map(len, hits.values()))} calls on the case, {len(jobs)} trials",
              flush=True)  # fmt: skip
        with ThreadPoolExecutor(a.jobs) as pool:
            base = len(results) + 1
            runs = [(base + i, *j) for i, j in enumerate(jobs)]
            one = functools.partial(trial, sc, work, ref, old)
            for r in pool.map(lambda j, one=one: one(*j), runs):
                results.append(r)
                if r["problems"]:
                    print(json.dumps(r), flush=True)
    bad = [r for r in results if r["problems"]]
    print(json.dumps({"trials": len(results), "problems": len(bad)}))
    (work / "results.json").write_text(json.dumps(results, indent=1))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
