"""In-memory entry point with the reference's signature and layout."""

from __future__ import annotations

from typing import Any

import numpy as np

from ._auto import AUTO, auto_parameters, check_nhsize_or_auto, check_sth_or_auto
from ._kernel import fuse_block
from ._utils import check_alpha, check_dtype, check_focus

__all__ = ["focus_stack"]


def focus_stack(
    im_stack: Any,
    nhsize: int | str = 9,
    focus: Any = None,
    alpha: float = 0.2,
    sth: float | str = 13,
) -> np.ndarray:
    """All-in-focus image of an in-memory focus stack (Pertuz et al. 2013).

    A drop-in for the reference ``focus_stack`` (coppafish's
    ``extract/fstack.py``, after Pertuz's MATLAB ``fstack``), with the same
    signature and layout, computing the same numbers where the reference is
    defined; see "Differences from the reference" in the README for where it
    is not.

    Parameters
    ----------
    im_stack : array_like
        ``[M, N, P]`` grey stack or ``[M, N, P, 3]`` RGB stack: element
        ``[:, :, p]`` is the image at focus plane ``p``. Integer or floating
        dtype, any byte order. Floats are used unscaled and must be finite.
    nhsize : int or "auto", optional
        Side of the square focus-measure window, in pixels (>= 1). ``"auto"``
        chooses it from the data (:func:`fstack_dask.auto_parameters`); the default
        9 is the reference's.
    focus : array_like of float, optional
        Focus position of each plane, strictly monotonic, length ``P``.
        Defaults to ``arange(P)``.
    alpha : float, optional
        Steepness of the selectivity-to-sharpening map, in ``(0, 1]``.
    sth : float or "auto", optional
        Selectivity threshold in dB. ``"auto"`` chooses it from the data; the
        default 13 is the reference's.

    Returns
    -------
    numpy.ndarray
        ``[M, N]`` (grey) or ``[M, N, 3]`` (RGB) fused image in the input's
        dtype (native byte order); integers are rounded half to even.

    Raises
    ------
    TypeError
        For a non-numeric ``im_stack`` dtype or non-numeric parameters.
    ValueError
        For a wrong ``im_stack`` shape, an empty axis, non-finite float data,
        or out-of-range parameters.

    Notes
    -----
    With fewer than 5 planes the reference's 3-point fit (step 2) does not
    exist: every pixel is then treated as fully selective, which selects the
    plane of highest local variance with the sharpest weights. A single plane
    is returned unchanged. Pixels without contrast in any plane get the plane
    mean.

    References
    ----------
    .. [1] S. Pertuz, D. Puig, M. A. Garcia and A. Fusiello, "Generation of
       all-in-focus images by noise-robust selective fusion of limited
       depth-of-field images", IEEE Trans. Image Process. 22(3):1242-1251,
       2013. doi:10.1109/TIP.2012.2231087

    Examples
    --------
    >>> import numpy as np
    >>> from fstack_dask import focus_stack, synthetic_stack
    >>> data = synthetic_stack((64, 64), 7, dtype="uint8", seed=1)
    >>> fused = focus_stack(data.stack)
    >>> fused.shape, fused.dtype
    ((64, 64), dtype('uint8'))
    """
    im_stack = np.asarray(im_stack)
    check_dtype(im_stack.dtype, "im_stack")
    if im_stack.ndim not in (3, 4):
        raise ValueError(
            "im_stack must be [M, N, P] (grey) or [M, N, P, 3] (RGB), "
            f"got {im_stack.ndim} dimensions with shape {im_stack.shape}"
        )
    rgb = im_stack.ndim == 4
    if rgb and im_stack.shape[3] != 3:
        raise ValueError(f"im_stack's RGB axis (last) must have length 3, got {im_stack.shape[3]}")
    if 0 in im_stack.shape:
        raise ValueError(f"im_stack must not have an empty axis, got shape {im_stack.shape}")
    nhsize = check_nhsize_or_auto(nhsize)
    focus = check_focus(focus, im_stack.shape[2])
    alpha = check_alpha(alpha)
    sth = check_sth_or_auto(sth)

    # Plane-first (and channel-first) so each plane is contiguous in the kernel.
    planes = np.moveaxis(im_stack, (2, 3), (1, 0)) if rgb else np.moveaxis(im_stack, 2, 0)
    if AUTO in (nhsize, sth):
        chosen = auto_parameters(
            lambda y0, y1, x0, x1: planes[..., y0:y1, x0:x1],
            shape_yx=im_stack.shape[:2],
            n_planes=im_stack.shape[2],
            dtype=im_stack.dtype,
            rgb=rgb,
            focus=focus,
            nhsize=nhsize,
            sth=sth,
        )
        nhsize, sth = chosen.nhsize, chosen.sth
    result = fuse_block(planes, nhsize=nhsize, focus=focus, alpha=alpha, sth=sth, rgb=rgb)
    return np.moveaxis(result.image, 0, -1) if rgb else result.image
