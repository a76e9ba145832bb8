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
  instead of a per-element select between two loads.
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
