"""Out-of-core all-in-focus fusion of focus stacks with Dask and Zarr.

Implements the noise-robust selective all-in-focus fusion of Pertuz et al.,
IEEE Trans. Image Process. 22(3):1242-1251, 2013, as its reference
implementation (coppafish's ``extract/fstack.py``) computes it.

The public names are imported on first use (PEP 562), so that ``import fstack_dask``
and the command line start quickly and a Ctrl-C during start-up is handled by the CLI.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._imports import import_through_one_ctrl_c
from ._version import __version__

__all__ = [
    "AutoParameters",
    "DestinationFullError",
    "DestinationLockedError",
    "FstackDaskWarning",
    "FusionResult",
    "SourceReadError",
    "SourceValueError",
    "SyntheticStack",
    "__version__",
    "auto_parameters",
    "auto_parameters_for",
    "focus_stack",
    "fuse",
    "fuse_zarr",
    "overlap_depth",
    "sample_stack",
    "synthetic_stack",
    "write_stack",
]

_WHERE = {
    "AutoParameters": "._algorithm.auto",
    "auto_parameters": "._algorithm.auto",
    "auto_parameters_for": "._runs.lazy",
    "DestinationFullError": "._errors",
    "DestinationLockedError": "._errors",
    "FstackDaskWarning": "._errors",
    "SourceReadError": "._errors",
    "SourceValueError": "._errors",
    "FusionResult": "._runs.lazy",
    "fuse": "._runs.lazy",
    "focus_stack": "._algorithm.focus_stack",
    "fuse_zarr": "._runs.fuse_zarr",
    "SyntheticStack": "._synthetic",
    "synthetic_stack": "._synthetic",
    "overlap_depth": "._params",
    "sample_stack": "._samples",
    "write_stack": "._outputs.write_stack",
}

if TYPE_CHECKING:  # pragma: no cover
    from ._algorithm.auto import AutoParameters, auto_parameters
    from ._algorithm.focus_stack import focus_stack
    from ._errors import (
        DestinationFullError,
        DestinationLockedError,
        FstackDaskWarning,
        SourceReadError,
        SourceValueError,
    )
    from ._outputs.write_stack import write_stack
    from ._params import overlap_depth
    from ._runs.fuse_zarr import fuse_zarr
    from ._runs.lazy import FusionResult, auto_parameters_for, fuse
    from ._samples import sample_stack
    from ._synthetic import SyntheticStack, synthetic_stack


if not TYPE_CHECKING:
    # Hidden from type checkers, which take a module's __getattr__ for "any name exists":
    # they would pass a misspelled fstack_dask.fuze(...); they see the imports above.
    def __getattr__(name: str) -> Any:
        module = _WHERE.get(name)
        if module is None:
            raise AttributeError(f"module 'fstack_dask' has no attribute {name!r}")
        from ._dask_config import check_dask_config

        check_dask_config()  # before dask's import, which would hang on it
        value = getattr(import_through_one_ctrl_c(module, __name__), name)
        globals()[name] = value
        return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
