"""Rule for functions without reductions: elementwise ops, transposes, layout transforms, concat,
reshape, padding.

Everything is inlined into the blocks that write the function's outputs. For each of those:

* the outer loops run in parallel -- as few of them as give every core several iterations, so each
  iteration copies a whole row rather than one vector (index arithmetic and the thread pool's
  per-iteration cost stay out of the copy loop); nothing runs in parallel below
  ``PARALLEL_MIN_ELEMENTS``, where waking the pool costs more than the copy;
* the innermost loop is vectorised by the SIMD width when it divides;
* a concatenation along the innermost axis (NHWC channel concat, the fire modules' output) is
  partitioned at the input boundaries, so that each part is a plain vector copy from one input
  instead of a per-element select between two loads;
* a transpose that moves the innermost axis (NHWC ↔ NCHW) is tiled: an output-row loop and the
  loop that walks the input's contiguous axis are split into a small 2-D tile, so both the reads
  and the writes of a tile stay in a few cache lines (a row-by-row NHWC→NCHW copy of 256×28×28
  int32 read every element from a different line: 119 us).
"""
from __future__ import annotations

from tvm import tirx
from tvm.sym.analyzer import Analyzer
from tvm.s_tir import Schedule

from .common import inline_spatial_except, is_spatial, loop_extent, root_blocks
from .cpu import CpuInfo

# Below this many elements a parallel launch (a few microseconds) costs more than the copy itself.
# (A copy of 64K floats takes ~10 us on one core; see conv2d.PARALLEL_MIN_FLOPS for why small
# kernels stay on one thread.)
PARALLEL_MIN_ELEMENTS = 1 << 16


def _concat_offsets(sch: Schedule, blk) -> list[int] | None:
    """Start offsets of the inputs along the innermost axis if ``blk`` concatenates on it."""
    b = sch.get(blk)
    if len(b.reads) < 2 or not b.iter_vars:
        return None
    last = b.iter_vars[-1].var
    ana = Analyzer()
    offs = set()
    for r in b.reads:
        e = r.region[-1].min
        d = ana.simplify(last - e)
        if not isinstance(d, tirx.IntImm):
            return None
        offs.add(int(d.value))
    if len(offs) < 2 or 0 not in offs:
        return None
    return sorted(offs)


def _transpose_loops(sch: Schedule, blk) -> tuple[int, int] | None:
    """(index of the block loop that walks the input's innermost axis, of the output's innermost)
    when ``blk`` copies one input through a permutation that moves the innermost axis, else None."""
    b = sch.get(blk)
    if len(b.reads) != 1 or len(b.writes) != 1 or len(b.iter_vars) < 2:
        return None
    from tvm.ir.expr import TensorLoad  # what tirx.BufferLoad(...) builds
    from tvm.tirx.stmt import BufferStore

    if not isinstance(b.body, BufferStore) or not isinstance(b.body.value, TensorLoad):
        return None
    ivs = [iv.var for iv in b.iter_vars]

    def pos(idx):
        return next((k for k, v in enumerate(ivs) if isinstance(idx, tirx.Var) and idx.same_as(v)),
                    None)

    src_last, dst_last = pos(b.body.value.indices[-1]), pos(b.body.indices[-1])
    if src_last is None or dst_last is None or src_last == dst_last:
        return None
    return src_last, dst_last


def _schedule_transpose(sch: Schedule, blk, axes, parallel: bool) -> None:
    loops = sch.get_loops(blk)
    src, dst = axes
    exts = [loop_extent(sch, lp) for lp in loops]
    ts = next((f for f in (16, 8, 4) if exts[src] % f == 0), None)
    td = next((f for f in (16, 14, 8, 7, 4) if exts[dst] % f == 0), None)
    if ts is None or td is None:
        raise ValueError("no tile divides the transposed axes")
    so, si = sch.split(loops[src], [None, ts])
    do, di = sch.split(loops[dst], [None, td])
    outer = [lp for k, lp in enumerate(loops) if k not in (src, dst)]
    sch.reorder(*outer, so, do, si, di)
    if parallel:
        sch.parallel(sch.fuse(*outer, so))
    sch.vectorize(di)


def _vectorize_inner(sch: Schedule, loop, lanes: int) -> None:
    ext = loop_extent(sch, loop)
    if ext is None:
        return
    vf = next((f for f in (lanes, 8, 4) if ext % f == 0), 1)
    if vf == ext:
        sch.vectorize(loop)
    elif vf > 1:
        try:
            _, li = sch.split(loop, [None, vf])
            sch.vectorize(li)
        except Exception:  # noqa: BLE001 -- a partition loop (nonzero start) cannot be split:
            if ext <= 8 * lanes:  # a short one becomes one wide vector op (LLVM splits it)
                sch.vectorize(loop)


def schedule_injective(sch: Schedule, info: CpuInfo) -> None:
    inline_spatial_except(sch, [])
    for blk in root_blocks(sch):
        if not is_spatial(sch, blk):
            raise ValueError("not injective")
        loops = sch.get_loops(blk)
        if not loops:
            continue
        exts = [loop_extent(sch, lp) for lp in loops]
        if any(e is None for e in exts):
            raise ValueError("dynamic shape")
        total = 1
        for e in exts:
            total *= e
        axes = _transpose_loops(sch, blk)
        if axes is not None:
            try:
                _schedule_transpose(sch, blk, axes, total >= PARALLEL_MIN_ELEMENTS)
                continue
            except Exception:  # noqa: BLE001 -- the row-by-row schedule below
                pass
        # parallel prefix (never the innermost loop, which is the copy / vector loop)
        par, n = [], 1
        if total >= PARALLEL_MIN_ELEMENTS:
            for lp, e in zip(loops[:-1], exts[:-1]):
                if n >= 4 * info.num_cores:
                    break
                par.append(lp)
                n *= e
        offsets = _concat_offsets(sch, blk)
        if par:
            sch.parallel(sch.fuse(*par) if len(par) > 1 else par[0])
        if offsets is not None and exts[-1] is not None:
            bounds = offsets[1:] + [exts[-1]]
            sizes = [b - a for a, b in zip(offsets, bounds)]
            if all(s > 0 for s in sizes):
                parts = sch.loop_partition(sch.get_loops(blk)[-1], [*sizes[:-1], None])
                for part in parts:
                    _vectorize_inner(sch, part, info.lanes)
                continue
        _vectorize_inner(sch, sch.get_loops(blk)[-1], info.lanes)
