"""The test suite's time by file, by test function and by kind, from a pytest log.

Usage: ``python -m pytest --durations=0 > LOG``, then
``python benchmarks/suite_time.py LOG [REPO] [N]``. Seconds are summed over setup, call and
teardown, so over all xdist workers. A test's kind is the first of SLURM, object store, a CLI
in a subprocess, a LocalCluster or worker processes, hypothesis and numba that its source, or
a module-level helper it calls, names (a rough sort: see benchmarks/RESULTS.md, "Test suite time").
"""

from __future__ import annotations

import ast
import collections
import pathlib
import re
import sys

_LINE = re.compile(r"^([\d.]+)s (setup|call|teardown)\s+(\S.*)$")
_KINDS = {
    "slurm": lambda path, text: "test_slurm" in path,
    "object store": lambda path, text: "object_store" in path or "moto" in text,
    "CLI subprocess": lambda path, text: bool(
        "subprocess" in text or "Popen" in text or re.search(r"\b_?cli\(", text)
    ),
    "LocalCluster": lambda path, text: any(
        w in text for w in ("LocalCluster", "local_cluster", "Cluster(", "processes")
    ),
    "hypothesis": lambda path, text: "@given" in text,
    "numba compile": lambda path, text: "numba" in text or "jit" in text.lower(),
}


def _text(repo: pathlib.Path, path: str, name: str, cache: dict) -> str:
    """A test function's source, its decorators and the module-level helpers it calls."""
    if (path, name) not in cache:
        file, text = repo / path, ""
        if file.suffix == ".py" and file.exists():
            src = file.read_text()
            defs = {n.name: n for n in ast.walk(ast.parse(src)) if isinstance(n, ast.FunctionDef)}
            node = defs.get(name)
            if node is not None:
                deco = "".join(ast.get_source_segment(src, d) or "" for d in node.decorator_list)
                text = "@given" * ("given(" in deco) + (ast.get_source_segment(src, node) or "")
                called = {c.func.id for c in ast.walk(node)
                          if isinstance(c, ast.Call) and isinstance(c.func, ast.Name)}  # fmt: skip
                called |= {a.arg for a in node.args.args}
                text += "".join(ast.get_source_segment(src, defs[c]) or ""
                                for c in called if c in defs and c != name)  # fmt: skip
        cache[path, name] = text
    return cache[path, name]


def main(log: str, repo: str = ".", n: int = 40) -> None:
    by_file, by_func, by_kind = collections.Counter(), collections.Counter(), collections.Counter()
    params, cache = collections.Counter(), {}
    for line in open(log, errors="replace"):
        m = _LINE.match(line.strip())
        if not m:
            continue
        seconds, phase, nodeid = float(m[1]), m[2], m[3]
        path, _, rest = nodeid.partition("::")
        name = rest.split("[")[0]
        by_file[path] += seconds
        by_func[f"{path}::{name}"] += seconds
        params[f"{path}::{name}"] += phase == "call"
        text = _text(pathlib.Path(repo), path, name, cache)
        by_kind[next((k for k, f in _KINDS.items() if f(path, text)), "other")] += seconds
    print(f"total {sum(by_file.values()):.0f} s")
    for title, counts in (("kind", by_kind), ("file", by_file), ("function", by_func)):
        print(f"\n== by {title}" + " (parametrizations)" * (title == "function"))
        for key, seconds in counts.most_common(n):
            print(f"{seconds:8.1f}  " + f"{params[key]:3d}  " * (title == "function") + key)


if __name__ == "__main__":
    main(sys.argv[1], *sys.argv[2:3], *map(int, sys.argv[3:4]))
