"""The package's shape stays true (issue 17): five parts, one direction, no circle.

``lint-imports`` (import-linter, the contracts in ``pyproject.toml``) checks that the CLI sits
on top of runs, runs on top of sources, the algorithm and outputs (which import none of each
other), that the shared top-level modules import no part, and that no package's modules import
each other in a circle; deferred imports inside functions count. The rest checks what the
README promises of each part's ``__init__`` and of the public entry points.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import pathlib
import shutil
import subprocess
import sys

import pytest

import fstack_dask

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = pathlib.Path(fstack_dask.__file__).parent
PARTS = ("_algorithm", "_sources", "_outputs", "_runs", "_cli")


def test_the_import_contracts_hold():
    exe = shutil.which("lint-imports", path=str(pathlib.Path(sys.executable).parent))
    if exe is None:
        pytest.fail("lint-imports is missing: pip install -e '.[test]' installs import-linter")
    proc = subprocess.run([exe, "--no-cache"], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "3 kept, 0 broken" in proc.stdout


@pytest.mark.parametrize("part", PARTS)
def test_each_part_says_what_lives_there_and_what_it_may_import(part):
    doc = importlib.import_module(f"fstack_dask.{part}").__doc__ or ""
    assert "What lives here" in doc and "May import" in doc, part
    modules = sorted(p.stem for p in (PACKAGE / part).glob("*.py") if p.stem != "__init__")
    missing = [m for m in modules if f"``{m}``" not in doc]
    assert not missing, f"{part}/__init__.py does not name {missing}"


def _body_lines(node: ast.FunctionDef) -> int:
    body = node.body[1:] if ast.get_docstring(node) else node.body
    return body[-1].end_lineno - body[0].lineno + 1


def test_public_functions_read_as_a_story():
    """No public function's body (docstring aside) is over 60 lines."""
    long = {}
    for name in fstack_dask.__all__:
        obj = getattr(fstack_dask, name)
        if not callable(obj) or isinstance(obj, type):
            continue
        # where it is defined: its __module__ is the package's (fstack_dask._public)
        source = pathlib.Path(inspect.getsourcefile(inspect.unwrap(obj))).read_text()
        *_overloads, node = [n for n in ast.parse(source).body
                             if isinstance(n, ast.FunctionDef) and n.name == name]  # fmt: skip
        if _body_lines(node) > 60:
            long[name] = _body_lines(node)
    assert not long, long


def test_no_module_passes_about_500_lines():
    sizes = {
        str(p.relative_to(PACKAGE)): len(p.read_text().splitlines()) for p in PACKAGE.rglob("*.py")
    }
    assert max(sizes.values()) <= 550, sorted(sizes.items(), key=lambda kv: -kv[1])[:3]


@pytest.mark.parametrize("part", PARTS)
def test_the_readme_layout_table_names_every_module(part):
    """The layout table (docs/development.md) is where a reader looks a module up;
    ``_runs/reading`` and ``_runs/lazy_chunks`` were missing from it, unnoticed (found splitting
    the modules at the size limit)."""
    rows = [line for line in (ROOT / "docs" / "development.md").read_text().splitlines()
            if line.startswith(f"| `{part}/` |")]  # fmt: skip
    assert len(rows) == 1, f"docs/development.md's layout table has {len(rows)} rows for {part}/"
    modules = sorted(p.stem for p in (PACKAGE / part).glob("*.py") if p.stem != "__init__")
    missing = [m for m in modules if f"`{m}`" not in rows[0].split("|")[2]]
    assert not missing, f"docs/development.md's layout table does not name {part}/{missing}"


def test_the_readme_layout_table_names_every_top_module():
    """The layout table's "top" row names the shared top modules and ``_locations/``'s (the
    parts' rows are checked above); ``_dtypes.py`` and ``_version.py`` were missing from it
    (a README audit). The row: ``| top | `_params.py`, ... `_locations/` (`location`, ...) |``."""
    (row,) = [line for line in (ROOT / "docs" / "development.md").read_text().splitlines()
              if line.startswith("| top |")]  # fmt: skip
    named = {w.strip("()") for w in row.split("|")[2].replace("`", " ").replace(",", " ").split()}
    tops = [p.name for p in PACKAGE.glob("_*.py") if p.name not in ("__init__.py", "__main__.py")]
    tops += [p.stem for p in (PACKAGE / "_locations").glob("*.py") if p.stem != "__init__"]
    missing = sorted(set(tops) - named)
    assert not missing, f"docs/development.md's layout table's top row does not name {missing}"
