"""ruff lint and format are part of the suite, so CI enforces them."""

from __future__ import annotations

import pathlib
import shutil
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _ruff():
    exe = shutil.which("ruff") or str(pathlib.Path(sys.executable).parent / "ruff")
    if not pathlib.Path(exe).exists():
        pytest.skip("ruff is not installed")
    return exe


@pytest.mark.parametrize("args", [["check", "."], ["format", "--check", "."]])
def test_ruff(args):
    result = subprocess.run([_ruff(), *args], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_only_scripts_are_executable():
    """A commit once made every tracked file executable (mode 100755, 273 files: a helper's
    umask); only the shell scripts CI and the benchmarks run are."""
    if not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    listed = subprocess.run(
        ["git", "ls-files", "-s"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.splitlines()
    executable = sorted(line.split("\t", 1)[1] for line in listed if line.startswith("100755"))
    assert all(p.endswith(".sh") or p == ".ci/run" for p in executable), executable
