"""The public API as the package's ``py.typed`` promises it to type checkers (mypy, pyright)
and to tools that read annotations at run time (Sphinx, typeguard, beartype)."""

from __future__ import annotations

import ast
import pathlib
import typing

import dask.array as da
import numpy as np
import pytest

import fstack_dask
from fstack_dask import (
    FusionResult,
    auto_parameters_for,
    fuse,
    fuse_zarr,
    sample_stack,
    synthetic_stack,
    write_stack,
)

INIT = pathlib.Path(fstack_dask.__file__)


def _type_checking_block(tree: ast.Module) -> ast.If:
    (block,) = [
        node
        for node in tree.body
        if isinstance(node, ast.If) and ast.unparse(node.test) == "TYPE_CHECKING"
    ]
    return block


def test_type_checkers_see_each_public_name_and_no_catch_all():
    """A module-level ``__getattr__`` tells mypy and pyright that any name exists: a misspelled
    ``fstack_dask.fuze(...)`` or ``from fstack_dask import fuze`` passed both, typed Any. It
    is hidden from them; they see the imports under ``TYPE_CHECKING``, one per public name."""
    tree = ast.parse(INIT.read_text())
    top_level = [n.name for n in tree.body if isinstance(n, ast.FunctionDef)]
    assert "__getattr__" not in top_level
    (hidden,) = [
        node
        for node in tree.body
        if isinstance(node, ast.If) and ast.unparse(node.test) == "not TYPE_CHECKING"
    ]
    assert [n.name for n in hidden.body if isinstance(n, ast.FunctionDef)] == ["__getattr__"]
    seen = {
        alias.asname or alias.name
        for node in _type_checking_block(tree).body
        if isinstance(node, ast.ImportFrom)
        for alias in node.names
    }
    assert seen == set(fstack_dask.__all__) - {"__version__"}
    with pytest.raises(AttributeError, match="no attribute 'fuze'"):
        fstack_dask.fuze  # noqa: B018  (still refused at run time)


def test_public_annotations_resolve_and_say_what_comes_back():
    """``fuse`` was typed ``da.Array | FusionResult`` whatever ``return_maps``: the README's
    ``fuse(stack, ...).compute()`` failed mypy and pyright (no ``compute`` on FusionResult);
    ``fuse`` took ``memory_per_task`` as a size string but was typed int. (``fuse_zarr``
    returns a ``zarr.Group`` typed Any: zarr types ``group["0"]`` as ``Array | Group``, so the
    README's ``out["0"][:]`` would fail a type checker.)"""
    for name in fstack_dask.__all__:
        obj = getattr(fstack_dask, name)
        if callable(obj):
            typing.get_type_hints(obj.__init__ if isinstance(obj, type) else obj)
    returns = {
        typing.get_type_hints(o)["return_maps"]: typing.get_type_hints(o)["return"]
        for o in typing.get_overloads(fuse)
    }
    assert returns == {
        typing.Literal[False]: da.Array,
        typing.Literal[True]: FusionResult,
        bool: da.Array | FusionResult,
    }
    assert typing.get_type_hints(fuse)["memory_per_task"] == int | str
    hints = typing.get_type_hints(fuse_zarr)
    assert hints["return"] is typing.Any
    assert hints["channels"] == typing.get_type_hints(fuse)["channels"]


@pytest.mark.parametrize("bad", [[], {}, None, 3])
def test_sample_stack_names_its_parameter(bad):
    """``sample_stack([])`` was ``TypeError: unhashable type: 'list'``."""
    with pytest.raises(ValueError, match=r"^name must be one of \['mitochondria_lightsheet'"):
        sample_stack(bad)


_UNPICKLE = r"""
import pickle, sys
objects = pickle.loads(sys.stdin.buffer.read())  # fstack_dask not imported before
print(sorted(f"{type(o).__module__}.{type(o).__name__}" for o in objects[0]))
print(sorted(f"{o.__module__}.{o.__qualname__}" for o in objects[1]))
"""


def test_public_names_live_in_fstack_dask_and_pickle_there(tmp_path):
    """``fuse_zarr.__module__`` was ``fstack_dask._runs.fuse_zarr``: help(), Sphinx, tracebacks
    (``fstack_dask._errors.SourceValueError``) and every pickle named private modules. The
    pickles now name ``fstack_dask`` and load in a fresh process, which imports each on use."""
    import pickle
    import subprocess
    import sys

    import cloudpickle
    import numpy as np

    names = [n for n in fstack_dask.__all__ if n != "__version__"]
    objects = [getattr(fstack_dask, n) for n in names]
    assert {o.__module__ for o in objects} == {"fstack_dask"}
    stack = fstack_dask.synthetic_stack((24, 24), 5, seed=1)
    made = [stack, fstack_dask.auto_parameters_for(stack.stack, axes="yxz"),
            fuse(stack.stack, axes="yxz", return_maps=True),
            fstack_dask.SourceValueError("a"), fstack_dask.SourceReadError("b"),
            fstack_dask.DestinationFullError("full"),
            fstack_dask.DestinationLockedError("c")]  # fmt: skip
    data = pickle.dumps((made, objects))
    plain = [o for o in made if not isinstance(o, FusionResult)]  # (its graph: private tasks)
    assert b"fstack_dask._" not in pickle.dumps((plain, objects))  # no private module named
    assert b"fstack_dask._" not in cloudpickle.dumps(objects)  # as dask sends them: by name
    child = subprocess.run([sys.executable, "-c", _UNPICKLE], input=data, capture_output=True,
                           cwd=tmp_path, timeout=60)  # fmt: skip
    assert child.returncode == 0, child.stderr.decode()[-2000:]
    kinds, functions = child.stdout.decode().splitlines()
    assert kinds == str(sorted(f"fstack_dask.{type(o).__name__}" for o in made))
    assert functions == str(sorted(f"fstack_dask.{n}" for n in names))
    again = pickle.loads(pickle.dumps(made[2]))
    assert np.array_equal(again.image.compute(), made[2].image.compute())


def test_a_worker_process_s_error_comes_back_as_the_public_class(tmp_path):
    """A real ``scheduler="processes"`` run: the worker's SourceValueError, pickled there,
    is ``fstack_dask.SourceValueError`` here."""
    import numpy as np

    stack = fstack_dask.synthetic_stack((32, 32), 5, seed=2).stack
    src = tmp_path / "nan.zarr"
    bad = np.ascontiguousarray(stack.transpose(2, 0, 1)).astype(np.float32)
    bad[2, 3, 4] = np.nan
    fstack_dask.write_stack(src, bad, axes="zyx")
    with pytest.raises(fstack_dask.SourceValueError, match="holds nan") as caught:
        fuse_zarr(src, tmp_path / "out.zarr", scheduler="processes", progress=False)
    assert type(caught.value).__module__ == "fstack_dask"


def test_the_readme_names_the_public_api_as_it_is():
    """The README's (now docs/python.md's) "Public API (`fstack_dask.__all__`): ..." left out
    ``__version__`` (a README audit): its names are ``__all__``'s, besides the built-in errors
    it mentions."""
    import re

    readme = (pathlib.Path(__file__).parents[1] / "docs" / "python.md").read_text()
    paragraph = readme.split("Public API (`fstack_dask.__all__`):", 1)[1].split("\n\n", 1)[0]
    named = set(re.findall(r"`([A-Za-z_]+)`", paragraph)) - {"ValueError", "TypeError"}
    assert named == set(fstack_dask.__all__), named ^ set(fstack_dask.__all__)


def _public_functions() -> list[str]:
    import inspect

    return [n for n in fstack_dask.__all__ if inspect.isfunction(getattr(fstack_dask, n))]


def _numpydoc_sections(doc: str) -> dict[str, str]:
    """A numpydoc docstring's sections by title (a title line over a line of dashes)."""
    import re

    parts = re.split(r"^(\w[\w ]*)\n-{3,}\n", doc, flags=re.M)
    return dict(zip(parts[1::2], parts[2::2], strict=True))


def _documented_parameters(section: str) -> list[str]:
    """Names of a Parameters section, in order (``a, b : type`` documents two)."""
    names = []
    for line in section.splitlines():
        if line and not line[0].isspace():
            names += [n.strip().lstrip("*") for n in line.split(" : ")[0].split(",")]
    return names


@pytest.mark.parametrize("name", _public_functions())
def test_each_public_function_documents_its_signature_cites_the_paper_and_shows_use(name):
    """numpydoc as the brief asks: Parameters naming the signature's parameters in order,
    References citing Pertuz et al. 2013 (overlap_depth, sample_stack and write_stack had
    none), Examples that the suite runs (--doctest-modules)."""
    import inspect

    func = getattr(fstack_dask, name)
    sections = _numpydoc_sections(inspect.getdoc(func))
    assert _documented_parameters(sections.get("Parameters", "")) == list(
        inspect.signature(func).parameters
    )
    assert "Pertuz" in sections.get("References", ""), sorted(sections)
    assert "1242-1251" in sections["References"] and "2013" in sections["References"]
    assert ">>> " in sections.get("Examples", "")
    order = ["Parameters", "Returns", "Raises", "Notes", "References", "Examples"]
    assert [s for s in order if s in sections] == [s for s in sections if s in order]


@pytest.mark.parametrize(
    ("call", "says"),
    [
        # np.isfinite(10**30) raised numpy's "ufunc 'isfinite' not supported" (942354a)
        (lambda src, dst: fuse_zarr(src, dst, memory_per_task=10**30, progress=False),
         r"^memory_per_task must be at most 1 PiB \(1125899906842624 bytes\), got a number of "),
        # "The truth value of an array with more than one element is ambiguous" (a sweep)
        # (a TypeError since g77: the type is wrong)
        (lambda src, dst: fuse_zarr(src, dst, channels=np.array([1, 2]), progress=False),
         r"^channels must be a str, 'auto', 'rgb' or 'independent', got array"),
        (lambda src, dst: auto_parameters_for(np.zeros((5, 16, 16)), channels=np.array([1, 2])),
         r"^channels must be a str, 'auto', 'rgb' or 'independent', got array"),
    ],
)  # fmt: skip
def test_a_value_of_a_type_numpy_cannot_judge_is_refused_naming_its_parameter(tmp_path, call, says):
    src, dst = tmp_path / "in.zarr", tmp_path / "out.zarr"
    write_stack(src, synthetic_stack((16, 16), 5, dtype="uint8").stack.transpose(2, 0, 1),
                axes="zyx")  # fmt: skip
    with pytest.raises((ValueError, TypeError), match=says):
        call(src, dst)
    assert not dst.exists()


def test_the_warnings_category_is_public_and_filters_a_runs_warnings(tmp_path):
    """A notebook user could not filter fstack_dask's warnings without importing a private
    module (found by g65): ``fstack_dask.FstackDaskWarning`` is their category, and a filter on
    it makes a run's warning (here: a 2 x 2 crop of 21 planes) raise, or silences it."""
    import warnings

    import zarr

    stack = fstack_dask.synthetic_stack((2, 2), 21, dtype="uint16", seed=2).stack  # (y, x, z)
    zarr.create_array(str(tmp_path / "in.zarr"), data=stack)
    with warnings.catch_warnings():
        warnings.simplefilter("error", fstack_dask.FstackDaskWarning)
        with pytest.raises(fstack_dask.FstackDaskWarning, match="21 focus planes of 2 x 2"):
            fstack_dask.fuse_zarr(tmp_path / "in.zarr", tmp_path / "a.zarr", axes="yxz",
                                  progress=False)  # fmt: skip
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        warnings.simplefilter("ignore", fstack_dask.FstackDaskWarning)
        out = fstack_dask.fuse_zarr(tmp_path / "in.zarr", tmp_path / "b.zarr", axes="yxz",
                                    progress=False)  # fmt: skip
    assert not [w for w in seen if "focus planes" in str(w.message)]
    assert out["0"].shape == (2, 2)
