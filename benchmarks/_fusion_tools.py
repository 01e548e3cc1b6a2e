"""Helpers shared by the quality benchmark and the training sweep (benchmark-only code).

``prepare`` computes the parameter-independent-of-``sth`` part of the fusion (focus
measure, selectivity) once per ``nhsize``; ``blend`` finishes it for any ``sth`` /
``alpha``. Together they give exactly ``fuse_block``'s numbers (``python
benchmarks/_fusion_tools.py`` checks it), so a sweep over ``sth`` costs one focus
measure per window.
"""

from __future__ import annotations

import numpy as np
from scipy.signal import medfilt2d

from fstack_dask._algorithm.numpy_engine import focus_measure, luminance, selectivity


def to_planes(stack: np.ndarray) -> tuple[np.ndarray, bool]:
    """Reference layout (M, N, P[, 3]) to plane-first (P, M, N) / (3, P, M, N)."""
    rgb = stack.ndim == 4
    planes = np.moveaxis(stack, (2, 3), (1, 0)) if rgb else np.moveaxis(stack, 2, 0)
    return np.ascontiguousarray(planes), rgb


def prepare(planes: np.ndarray, rgb: bool, nhsize: int):
    """Focus measure and raw selectivity of a plane-first stack."""
    n_planes = planes.shape[1] if rgb else planes.shape[0]
    with np.errstate(all="ignore"):
        grey = np.stack([luminance(planes[:, p]) for p in range(n_planes)]) if rgb else planes
        fm, fmax, arg = focus_measure(grey, nhsize)
        s_raw = selectivity(
            fm, fmax.astype(np.float64), arg, np.arange(n_planes, dtype=np.float64), nhsize
        )
    return fm, fmax, s_raw


def blend(planes, rgb, prep, *, sth, alpha=0.2, phi_map=None):
    """The weights and blend of ``fuse_block`` (float64, before rounding)."""
    fm, fmax, s_raw = prep
    n_planes = fm.shape[0]
    with np.errstate(all="ignore"):
        s_used = np.where(np.isnan(s_raw), -np.inf, s_raw)
        if phi_map is None:
            phi = 0.5 * (1 + np.tanh(alpha * (s_used - sth))) / alpha
        else:
            phi = phi_map(s_used)
        phi = medfilt2d(phi, 3)
        flat = fmax == 0
        values = planes if rgb else planes[None]
        num = np.zeros((values.shape[0],) + fmax.shape)
        den = np.zeros(fmax.shape)
        for p in range(n_planes):
            fmn = fm[p] / fmax
            fmn[flat] = 1.0
            weight = 0.5 + 0.5 * np.tanh(phi * (fmn.astype(np.float64) - 1))
            den += weight
            for ch in range(values.shape[0]):
                num[ch] += values[ch, p].astype(np.float64) * weight
        fused = num / den
    return fused if rgb else fused[0]


def round_to(values: np.ndarray, dtype) -> np.ndarray:
    dtype = np.dtype(dtype)
    if dtype.kind == "f":
        return values.astype(dtype)
    info = np.iinfo(dtype)
    return np.clip(np.round(values), info.min, info.max).astype(dtype)


def psnr(img: np.ndarray, truth: np.ndarray, peak: float) -> float:
    """PSNR in dB of a plane-first image against the truth (same layout)."""
    err = np.mean((img.astype(np.float64) - truth.astype(np.float64)) ** 2)
    return float("inf") if err == 0 else float(10 * np.log10(peak**2 / err))


def focusweave_fuse(planes: np.ndarray, rgb: bool) -> np.ndarray:
    """focusweave 2.0.0 at its defaults, no alignment, same size; plane-first output."""
    from focusweave import FocusStackConfig, run

    n_planes = planes.shape[1] if rgb else planes.shape[0]
    if rgb:
        images = [np.ascontiguousarray(np.moveaxis(planes[:, p], 0, -1)) for p in range(n_planes)]
    else:  # grey: the same plane in R, G and B; the result's channels are then equal
        images = [
            np.ascontiguousarray(np.repeat(planes[p][..., None], 3, -1)) for p in range(n_planes)
        ]
    out = run(FocusStackConfig(images=images, no_align=True, keep_size=True, workers=1)).image
    return np.moveaxis(out, -1, 0) if rgb else out[..., 0]


if __name__ == "__main__":  # self-check: prepare + blend == focus_stack, bit for bit
    from fstack_dask import focus_stack, synthetic_stack

    for rgb, dtype in ((False, "uint16"), (True, "uint8")):
        s = synthetic_stack((96, 80), 9, rgb=rgb, dtype=dtype, noise=0.03, seed=5)
        planes, _ = to_planes(s.stack)
        for nh, sth in ((9, 13.0), (15, 4.0)):
            mine = round_to(blend(planes, rgb, prepare(planes, rgb, nh), sth=sth), dtype)
            ref = focus_stack(s.stack, nhsize=nh, sth=sth)
            assert np.array_equal(mine, np.moveaxis(ref, -1, 0) if rgb else ref)
    print("prepare + blend == focus_stack")
