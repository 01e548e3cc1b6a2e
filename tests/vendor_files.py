"""Vendor files written by the formats' own writers, for the reader and output tests.

CZI files are written with ZEISS's pylibCZIrw (``CziWriter``): tiled mosaics whose tiles
overlap (as a scanner writes them), with Z, C and scenes, grey and RGB.
"""

from __future__ import annotations

import numpy as np

TILE = (48, 64)  # a tile's rows and columns
STEP = (40, 52)  # tile origins: neighbouring tiles overlap by 8 and 12 px


def textured_planes(shape_yx, n_planes, *, seed=0, dtype=np.uint16, top=4000):
    """A focus stack with structure that each plane shows sharply in a different place."""
    from fstack_dask import synthetic_stack

    stack = synthetic_stack(shape_yx, n_planes, seed=seed).stack  # [M, N, P] float in [0, 1]
    planes = np.moveaxis(stack, -1, 0)
    noise = np.random.default_rng(seed).normal(0, 0.01, planes.shape)
    return np.clip(np.round((planes + noise) * top), 0, top).astype(dtype)


def write_czi_mosaic(
    path,
    *,
    grid=(3, 4),
    n_planes=5,
    n_channels=2,
    scenes=((0, 0),),
    rgb=False,
    compression=None,
    seed=0,
):
    """A CZI mosaic z-stack: per scene, ``grid`` overlapping tiles at ``scenes[k]`` (the
    scene's top-left corner), every plane and channel. Returns the scenes' full planes as
    written, ``{scene: array[c, z, y, x]}`` (or ``[z, y, x, 3]`` BGR for RGB), painted tile by
    tile in writing order (a later tile over an earlier one, as ZEN composes them)."""
    from pylibCZIrw import czi as pyczi

    (ty, tx), (sy, sx) = TILE, STEP
    height, width = sy * (grid[0] - 1) + ty, sx * (grid[1] - 1) + tx
    written = {}
    opts = {} if compression is None else {"compression_options": compression}
    with pyczi.create_czi(str(path), exist_ok=True, **opts) as w:
        for s, (oy, ox) in enumerate(scenes):
            channels = 1 if rgb else n_channels
            top = 255 if rgb else 4000
            planes = [
                textured_planes((height, width), n_planes, seed=seed + 7 * s + c, top=top,
                                dtype=np.uint8 if rgb else np.uint16)
                for c in range(channels)
            ]  # fmt: skip
            full = np.zeros((channels, n_planes, height, width, 3 if rgb else 1), planes[0].dtype)
            rng = np.random.default_rng(seed + s)
            for c in range(channels):
                for z in range(n_planes):
                    for j in range(grid[0]):
                        for i in range(grid[1]):
                            y0, x0 = j * sy, i * sx
                            tile = planes[c][z, y0 : y0 + ty, x0 : x0 + tx]
                            if rgb:  # three different samples: B, G, R in memory order
                                shift = rng.integers(0, 40, 3).astype(np.int16)
                                tile = np.clip(tile[..., None] + shift, 0, 255).astype(np.uint8)
                            else:  # tiles differ where they overlap: the later one wins
                                tile = tile + np.uint16(rng.integers(0, 3))
                                tile = tile[..., None]
                            full[c, z, y0 : y0 + ty, x0 : x0 + tx] = tile
                            plane = {"Z": z} if rgb else {"Z": z, "C": c}
                            w.write(np.ascontiguousarray(tile), location=(ox + x0, oy + y0),
                                    plane=plane, scene=s)  # fmt: skip
            written[s] = full[0] if rgb else full[..., 0]
        names = None if rgb else {c: ["DAPI", "GFP", "mCherry"][c] for c in range(n_channels)}
        display = None
        if not rgb:
            colours = [(0, 0, 255), (0, 255, 0), (255, 0, 0)]
            display = {
                c: pyczi.ChannelDisplaySettingsDataClass(
                    True, pyczi.TintingMode.Color, pyczi.Rgb8Color(*map(np.uint8, colours[c])),
                    0.0, 1.0,
                )
                for c in range(n_channels)
            }  # fmt: skip
        # CZI stores the pixel size in metres (pylibCZIrw's docstring says micrometres, but
        # ZEN, Bio-Formats and bioio-czi all read metres)
        w.write_metadata(document_name="mosaic", channel_names=names, scale_x=0.65e-6,
                         scale_y=0.65e-6, scale_z=2.5e-6, display_settings=display)  # fmt: skip
    return written
