"""Probe of one weight refinement that was tried and NOT adopted (see QUALITY.md).

The refinement: inside the reference's weights ``omega_p = 0.5 + 0.5 tanh(phi (fm_p /
max fm - 1))``, use the focus measure averaged over planes ``p - 1, p, p + 1`` (per pixel,
fewer at the first and last plane) instead of ``fm_p``. Per pixel, so chunk-invariant.
It lets the planes next to the sharpest one share its weight, which averages noise
where the blur between planes is strong.

Prints, for every training condition of ``auto_sweep.py`` on seed 100 (256 x 256), the
PSNR of ``auto`` and the change with the refinement. About 5 minutes on one core.

    python benchmarks/refinement_probe.py
"""

from __future__ import annotations

import pathlib
import sys

import numpy as np
from scipy.signal import medfilt2d

sys.path.insert(0, str(pathlib.Path(__file__).parent))
from _fusion_tools import prepare, psnr, round_to, to_planes  # noqa: E402

from fstack_dask import auto_parameters, synthetic_stack  # noqa: E402


def blend_zsmooth(planes, rgb, prep, *, sth, k=1, alpha=0.2):
    """``fuse_block``'s weights and blend with ``fm`` box-averaged over 2k+1 planes."""
    fm, fmax, s_raw = prep
    n_planes = fm.shape[0]
    csum = np.concatenate([np.zeros((1,) + fm.shape[1:]), np.cumsum(fm, axis=0, dtype=float)])
    lo = np.clip(np.arange(n_planes) - k, 0, n_planes)
    hi = np.clip(np.arange(n_planes) + k + 1, 0, n_planes)
    fz = (csum[hi] - csum[lo]) / (hi - lo)[:, None, None]
    fzmax = fz.max(axis=0)
    with np.errstate(all="ignore"):
        s_used = np.where(np.isnan(s_raw), -np.inf, s_raw)
        phi = medfilt2d(0.5 * (1 + np.tanh(alpha * (s_used - sth))) / alpha, 3)
        flat = fmax == 0
        values = planes if rgb else planes[None]
        num = np.zeros((values.shape[0],) + fmax.shape)
        den = np.zeros(fmax.shape)
        for p in range(n_planes):
            fmn = fz[p] / fzmax
            fmn[flat] = 1.0
            weight = 0.5 + 0.5 * np.tanh(phi * (fmn - 1))
            den += weight
            for ch in range(values.shape[0]):
                num[ch] += values[ch, p] * weight
    out = num / den
    return out if rgb else out[0]


def main() -> None:
    print("P noise max_sigma dtype nhsize sth PSNR(auto) change(refined)")
    for dtype, rgb in (("uint16", False), ("uint8", True)):
        for n_planes in (7, 11, 21, 51):
            for noise in (0.0, 0.01, 0.02, 0.03, 0.05, 0.1):
                for ms in (1.0, 2.0, 4.0, 8.0):
                    s = synthetic_stack(
                        (256, 256),
                        n_planes,
                        rgb=rgb,
                        dtype=dtype,
                        noise=noise,
                        max_sigma=ms,
                        seed=100,
                    )
                    planes, _ = to_planes(s.stack)
                    truth = np.moveaxis(s.all_in_focus, -1, 0) if rgb else s.all_in_focus
                    peak = float(np.iinfo(dtype).max)
                    c = auto_parameters(
                        lambda y0, y1, x0, x1, pl=planes: pl[..., y0:y1, x0:x1],
                        shape_yx=planes.shape[-2:],
                        n_planes=n_planes,
                        dtype=dtype,
                        rgb=rgb,
                    )
                    prep = prepare(planes, rgb, c.nhsize)
                    base, refined = (
                        psnr(
                            round_to(blend_zsmooth(planes, rgb, prep, sth=c.sth, k=k), dtype),
                            truth,
                            peak,
                        )
                        for k in (0, 1)
                    )
                    print(
                        f"{n_planes} {noise} {ms} {dtype} {c.nhsize} {c.sth:g} {base:.2f} "
                        f"{refined - base:+.2f}",
                        flush=True,
                    )


if __name__ == "__main__":
    main()
