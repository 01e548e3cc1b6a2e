"""A wave of halo exchange as it runs: its strips of columns (one per task slot), what each
strip submits next (decodes of the rows ahead, then the fuses of each row once it and its
neighbour strips have decoded the rows around it), and the decodes no fuse reads any more.
The driver that admits waves and collects their tasks is :mod:`.exchange`'s.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .halo import decode_rows, neighbours
from .plan import Plan
from .waves import Across, Wave, block_ranges, blocks_of, grid_of, handed_band, placed

__all__: list[str] = []

Block = tuple[int, ...]


@dataclass
class _Strip:
    cols: tuple[int, int]
    slot: Any
    lead: tuple[int, ...] = ()
    wave: tuple[int, int] = (0, 0)  # its wave's columns (its row segments share them)
    last_column: int | None = None  # the wave's last fused column, if this strip has it
    decoded: dict[int, Any] = field(default_factory=dict)  # finished decodes: row -> handle
    # positions in the wave's order (:meth:`Wave.order`)
    next_decode: int = 0
    next_fuse: int = 0  # rows before it are fused
    fusing: set[int] = field(default_factory=set)  # positions being fused
    fused: set[int] = field(default_factory=set)  # positions fused after next_fuse
    # rows whose decodes it lends to other row segments, with the sides they go to
    lends: dict[int, list[str]] = field(default_factory=dict)
    parts: dict[int, int] = field(default_factory=dict)  # position -> its fuses running


@dataclass
class _WaveState:
    wave: Wave
    grid: Plan | Across  # the grid the driver goes over (:func:`.waves.oriented`)
    strips: list[_Strip]
    strip_of: dict[int, int]  # column -> strip index
    depth: int = 1  # rows a strip decodes ahead of its first row not fused
    order: list[int] = field(default_factory=list)  # the wave's rows, as its strips go

    def __post_init__(self) -> None:
        self.order = self.wave.order()

    def fused(self, plan: Plan, done: set[str], block: Block) -> bool:
        *_, j, i = block
        return (
            self.wave.cols[0] <= i < self.wave.cols[1]
            and self.wave.fuse_rows[0] <= j < self.wave.fuse_rows[1]
            and plan.name(block) not in done
        )

    def finished(self) -> bool:
        return all(s.next_fuse >= len(self.order) for s in self.strips)


def _fused(strip: _Strip, position: int) -> None:
    strip.fusing.discard(position)
    strip.fused.add(position)
    while strip.next_fuse in strip.fused:
        strip.fused.discard(strip.next_fuse)
        strip.next_fuse += 1


def _submit_ready(job, runner, state: _WaveState, dones, running, carry, lent, task_args) -> bool:
    """Submit what can run now; returns whether a strip moved on (submitted, or skipped a
    row with nothing to do). ``dones``: the names of the cells done, and of the blocks."""
    done, blocks_done = dones
    plan, wave, strips, order = state.grid, state.wave, state.strips, state.order
    moved = False

    def slot_of(block: Block) -> Any:
        return strips[state.strip_of[block[-1]]].slot

    def parts(cell: Block) -> int:
        """Fuses that read a cell's core: one per row of its blocks left to fuse."""
        if grid_of(job) is job.plan:
            return 1
        if not blocks_done:  # every row of the cell's blocks, without listing them (10^10)
            return len(block_ranges(job, placed(plan, cell))[isinstance(plan, Across)])
        return len({placed(plan, b)[-2] for b in _left(job, placed(plan, cell), blocks_done)})

    for k, strip in enumerate(strips):
        # decode ahead of the first row not fused (one row, or more where memory allows)
        while strip.next_decode < len(order) and strip.next_decode <= strip.next_fuse + state.depth:
            row = order[strip.next_decode]
            strip.next_decode += 1
            moved = True
            if wave.borrowed(row):
                continue  # the next segment decodes it and lends its bands
            blocks = [(*wave.lead, row, i) for i in range(*strip.cols)]
            readers = {b: [n for n in neighbours(plan, b) if state.fused(plan, done, n)]
                       for b in blocks}  # fmt: skip
            borrowers = {b: row in strip.lends and _borrowed_by(plan, wave, done, b)
                         for b in blocks}  # fmt: skip
            needed = [b for b in blocks
                      if state.fused(plan, done, b) or readers[b] or borrowers[b]]  # fmt: skip
            if not needed:
                strip.decoded[row] = None
                for side in strip.lends.get(row, ()):
                    lent.setdefault((wave.lead, wave.cols, row, side), []).append(
                        (strip.cols, None)
                    )
                continue
            keep = [parts(b) if state.fused(plan, done, b) else 0 for b in needed]
            uses = [sum(parts(n) for n in readers[b] if slot_of(n) == strip.slot) for b in needed]
            export = [
                any(slot_of(n) != strip.slot for n in readers[b])
                or borrowers[b]
                or (handed_band(plan) if _next_wave_reads(plan, wave, done, b) else False)
                for b in needed
            ]
            handle = runner.submit(strip.slot, decode_rows, job, [placed(plan, b) for b in needed],
                                   keep, uses, export, *task_args)  # fmt: skip
            running[handle] = ("decode", strip, row)
        # fuse each row once it and its neighbour strips have decoded the rows around it
        around = strips[max(0, k - 1) : k + 2]
        c0, c1 = max(strip.cols[0], wave.cols[0]), min(strip.cols[1], wave.cols[1])
        for position in range(strip.next_fuse, min(len(order), strip.next_decode)):
            if position in strip.fusing or position in strip.fused:
                continue
            row = order[position]
            if wave.borrowed(row):  # the next segment's to fuse
                _fused(strip, position)
                moved = True
                continue
            rows = range(max(wave.rows[0], row - 1), min(wave.rows[1], row + 2))
            own = [r for r in rows if not wave.borrowed(r)]
            if not all(r in s.decoded for s in around for r in own):
                continue
            lenders = _lenders(plan, wave, rows, lent, (c0, c1))
            if lenders is None:  # the next segment has not decoded a border row yet
                continue
            blocks = [(*wave.lead, row, i) for i in range(c0, c1)]
            blocks = [b for b in blocks if state.fused(plan, done, b)]
            moved = True
            if not blocks:
                _fused(strip, position)
                continue
            remote = [runner.handed(s.decoded[r]) for s in around if s.slot != strip.slot
                      for r in own if s.decoded[r] is not None]  # fmt: skip
            remote += [runner.handed(h) for _, h in lenders if h is not None]
            if wave.carried and k == 0:  # the bands the wave before left of its last column
                left = wave.cols[0] - 1
                remote += [runner.handed(carry[(wave.lead, left, r)]) for r in rows
                           if (wave.lead, left, r) in carry]  # fmt: skip
            strip.fusing.add(position)
            for part in _block_rows(job, plan, blocks, blocks_done):
                handle = runner.submit_fuse(strip.slot, job, part, remote, task_args)
                strip.parts[position] = strip.parts.get(position, 0) + 1
                running[handle] = ("fuse", strip, position)
    return moved


def _block_rows(
    job: Any, grid: Plan | Across, cells: list[Block], blocks_done: set[str]
) -> list[list[Block]]:
    """The fuses of a row of ``grid``'s cells: one per row of the plan's blocks in them (so
    that a cell's blocks are fused by several threads at once), each with the blocks left to
    fuse; a row of blocks is one fuse. The plan's blocks (rows, columns across)."""
    if grid_of(job) is job.plan:
        return [[placed(grid, c) for c in cells]]
    rows: dict[int, list[Block]] = {}
    for cell in cells:
        for block in _left(job, placed(grid, cell), blocks_done):
            rows.setdefault(placed(grid, block)[-2], []).append(block)
    return list(rows.values())


def _left(job: Any, cell: Block, blocks_done: set[str]) -> list[Block]:
    """A cell's blocks left to fuse."""
    return [b for b in blocks_of(job, cell) if job.plan.name(b) not in blocks_done]


def _borrowed_by(plan: Plan, wave: Wave, done: set[str], block: Block) -> bool:
    """Whether a block the next segment fuses is beside ``block`` (on its border row)."""
    return any(wave.borrowed(n[-2]) and plan.name(n) not in done for n in neighbours(plan, block))


def _lenders(plan: Plan, wave: Wave, rows: range, lent: dict[tuple, list],
             cols: tuple[int, int]) -> list | None:  # fmt: skip
    """The next segment's decodes of the border rows among ``rows`` over the columns
    ``cols`` and one on each side (the fused blocks' neighbours there), or None while one
    of those is not decoded yet. Only the wave's decoded columns are lent: the column left
    of a carried wave comes from the wave before (its bands, handed over)."""
    lo, hi = max(wave.decode_cols[0], cols[0] - 1), min(wave.decode_cols[1], cols[1] + 1)
    found = []
    for r in rows:
        if not wave.borrowed(r):
            continue
        lenders = [(c, h) for c, h in lent.get((wave.lead, wave.cols, r, wave.lender(r)), [])
                   if c[0] < hi and c[1] > lo]  # fmt: skip
        if sum(min(hi, c1) - max(lo, c0) for (c0, c1), _ in lenders) < hi - lo:
            return None
        found += lenders
    return found


def _next_wave_reads(plan: Plan, wave: Wave, done: set[str], block: Block) -> bool:
    """Whether ``block``, in the wave's last column, is a left neighbour of a block the next
    wave fuses (which then reads its right band, handed over, not decoded again)."""
    *lead, j, i = block
    ny, nx = plan.grid
    if i != wave.cols[1] - 1 or i + 1 >= nx:
        return False
    return any(
        plan.name((*lead, r, i + 1)) not in done for r in range(max(0, j - 1), min(ny, j + 2))
    )


def _prune(state: _WaveState) -> None:
    """Forget decodes no fuse will read any more: a row once this strip and its neighbours
    have fused the row after it (in the wave's order)."""
    strips, position = state.strips, {row: k for k, row in enumerate(state.order)}
    for k, strip in enumerate(strips):
        around = strips[max(0, k - 1) : k + 2]
        fused_to = min(s.next_fuse for s in around)
        for row in [r for r in strip.decoded if position[r] + 1 < fused_to]:
            del strip.decoded[row]
