"""Small real focus stacks shipped with the package (see ``data/README.md``)."""

from __future__ import annotations

from importlib import resources

import numpy as np

from ._public import public

__all__ = ["SAMPLES", "sample_stack"]

#: Names accepted by :func:`sample_stack`, with their axes.
SAMPLES = {"mitochondria_lightsheet": "zyx", "pcb": "zyxc"}


@public
def sample_stack(name: str) -> np.ndarray:
    """Load a small real focus stack, plane-first (``zyx``, or ``zyxc`` for RGB), to try the
    fusion of Pertuz et al. [1]_ on.

    Parameters
    ----------
    name : {"mitochondria_lightsheet", "pcb"}
        ``"mitochondria_lightsheet"``: 34 planes of 128 x 128 uint16
        fluorescence (ZJUOPTKuangLab/DFNN, MIT). ``"pcb"``: 7 planes of
        192 x 256 RGB uint8 macro photographs (PetteriAimonen/focus-stack,
        MIT).

    Returns
    -------
    numpy.ndarray
        The stack, axes as ``SAMPLES[name]``.

    References
    ----------
    .. [1] S. Pertuz, D. Puig, M. A. Garcia and A. Fusiello, "Generation of
       all-in-focus images by noise-robust selective fusion of limited
       depth-of-field images", IEEE Trans. Image Process. 22(3):1242-1251,
       2013. doi:10.1109/TIP.2012.2231087

    Examples
    --------
    >>> sample_stack("pcb").shape
    (7, 192, 256, 3)
    """
    if not isinstance(name, str) or name not in SAMPLES:  # (a list: "unhashable type")
        raise ValueError(f"name must be one of {sorted(SAMPLES)}, got {name!r}")
    with resources.files("fstack_dask").joinpath(f"data/{name}.npz").open("rb") as fh:
        with np.load(fh) as data:
            return data["stack"]
