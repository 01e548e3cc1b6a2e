"""Out-of-core all-in-focus fusion of focus stacks with Dask and Zarr.

Implements the noise-robust selective all-in-focus fusion of Pertuz et al.,
IEEE Trans. Image Process. 22(3):1242-1251, 2013, as its reference
implementation (coppafish's ``extract/fstack.py``) computes it.
"""

from ._auto import AutoParameters, auto_parameters
from ._dask import FusionResult, auto_parameters_for, fuse
from ._focus_stack import focus_stack
from ._pipeline import DestinationFullError, DestinationLockedError, fuse_zarr
from ._synthetic import SyntheticStack, synthetic_stack
from ._utils import overlap_depth
from ._version import __version__

__all__ = [
    "AutoParameters",
    "DestinationFullError",
    "DestinationLockedError",
    "FusionResult",
    "__version__",
    "SyntheticStack",
    "auto_parameters",
    "auto_parameters_for",
    "focus_stack",
    "fuse",
    "fuse_zarr",
    "overlap_depth",
    "synthetic_stack",
]
