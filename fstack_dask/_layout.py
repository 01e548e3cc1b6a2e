"""How a source's axes map onto the images a run fuses and the blocks it cuts them into.

Shared by the plan (``_runs.plan``), which cuts the images into blocks, and the writer
(``_outputs.write``), which lays out the output's arrays: one description, at the top of the
package, so that neither part imports the other.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Layout"]


@dataclass(frozen=True)
class Layout:
    """How a source's axes map onto images and blocks.

    ``lead_axes`` are the axes fused index by index (batch axes in source order, then ``c``
    when the channels are fused independently); the image axes of the output are the lead
    axes, ``c`` for RGB, then ``y`` and ``x`` (NGFF order is checked by the writer).
    """

    axes: str
    shape: tuple[int, ...]
    rgb: bool

    @property
    def lead_axes(self) -> str:
        batch = "".join(a for a in self.axes if a not in "czyx")
        return batch + ("c" if "c" in self.axes and not self.rgb else "")

    @property
    def lead_shape(self) -> tuple[int, ...]:
        return tuple(self.size(a) for a in self.lead_axes)

    @property
    def image_axes(self) -> str:
        batch = "".join(a for a in self.axes if a not in "czyx")
        return batch + ("c" if "c" in self.axes else "") + "yx"

    @property
    def map_axes(self) -> str:
        """Axes of the depth and selectivity maps (no colour axis for RGB)."""
        return self.image_axes.replace("c", "") if self.rgb else self.image_axes

    def size(self, letter: str) -> int:
        return self.shape[self.axes.index(letter)]

    @property
    def n_planes(self) -> int:
        return self.size("z")

    @property
    def n_channels(self) -> int:
        """Channels one kernel call fuses together (3 for RGB, else 1)."""
        return self.size("c") if self.rgb else 1

    @property
    def shape_yx(self) -> tuple[int, int]:
        return self.size("y"), self.size("x")
