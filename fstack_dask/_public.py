"""The public names' home: :func:`public` gives each ``__module__ = "fstack_dask"``.

Defined in private modules, they showed those paths to ``help()``, Sphinx, tracebacks
(``fstack_dask._errors.SourceValueError: ...``) and every pickle of them, which would
break if a private module moved. numpy's ``set_module`` does the same. Pickles still
resolve (``fstack_dask.<name>``, imported on first use by the package's ``__getattr__``),
in a fresh process or a dask worker alike. (The price, numpy's too: before Python 3.13,
``inspect.getsource`` of a public class looks for it in the package's ``__init__`` and
finds none; a function's source is still found.)
"""

from __future__ import annotations

import typing
from typing import TypeVar

__all__ = ["public"]

T = TypeVar("T")


def public(obj: T) -> T:
    """``obj``, its ``__module__`` set to ``"fstack_dask"`` (a decorator).

    A class's own annotations are resolved first, in its defining module: ``get_type_hints``
    looks names up in the class's ``__module__``, which would no longer hold them. Apply it
    under ``@overload`` too: ``typing.get_overloads`` finds overloads by module.
    """
    if isinstance(obj, type) and "__annotations__" in vars(obj):
        hints = typing.get_type_hints(obj, include_extras=True)
        obj.__annotations__ = {name: hints[name] for name in vars(obj)["__annotations__"]}
    obj.__module__ = "fstack_dask"  # type: ignore[attr-defined]
    return obj
