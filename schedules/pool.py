"""Rule for reductions without weights: max/avg pooling, global average pooling (mean), sums.

In NHWC the reduced window (or the whole H x W plane) is outside the channel axis, so the channel
axis -- innermost and contiguous in both input and output -- is vectorised and the reduction loops
run around it: one vector max/add per window element, no horizontal reductions. Outer spatial
loops run in parallel. Padding (-inf for max pool) is inlined: its bounds test depends only on the
window position, not on the vectorised channel, so it costs one branch per window element.
"""
from __future__ import annotations

from tvm.s_tir import Schedule

from .common import (COMM_REDUCE, inline_spatial_except, iter_types, loop_extent,
                     parallel_fused, vectorize_innermost_own)
from .cpu import CpuInfo
from .injective import PARALLEL_MIN_ELEMENTS


def _vec_factor(n: int, lanes: int) -> int:
    for f in (4 * lanes, 2 * lanes, lanes, 8, 4):
        if n % f == 0 and f <= n:
            return f
    return 1


def schedule_pool(sch: Schedule, main, info: CpuInfo) -> None:
    inline_spatial_except(sch, [main])
    loops = sch.get_loops(main)
    types = iter_types(sch, main)
    if len(loops) != len(types):
        raise ValueError("loops do not map 1:1 to block iterators")
    s_loops = [lp for lp, t in zip(loops, types) if t != COMM_REDUCE]
    r_loops = [lp for lp, t in zip(loops, types) if t == COMM_REDUCE]
    if not s_loops:
        raise ValueError("full reduction: left to the fallback")
    c_ext = loop_extent(sch, s_loops[-1])
    if c_ext is None:
        raise ValueError("dynamic shape")
    vf = _vec_factor(c_ext, info.lanes)
    co, ci = sch.split(s_loops[-1], [None, vf])
    outer = list(s_loops[:-1])
    sch.reorder(*outer, co, *r_loops, ci)
    # Epilogue (mean's division, a following relu): computed per channel block, vectorised.
    for c in sch.get_consumers(main):
        try:
            sch.reverse_compute_at(c, co, preserve_unit_loops=True)
            vectorize_innermost_own(sch, c, co)
        except Exception:
            pass
    if vf > 1:
        sch.vectorize(ci)
    outer_ext = 1
    for lp in outer:
        outer_ext *= loop_extent(sch, lp) or 1
    work = 1
    for iv in sch.get(main).iter_vars:
        work *= int(iv.dom.extent)
    par = outer + ([co] if outer_ext < 8 * info.num_cores else [])
    if work < PARALLEL_MIN_ELEMENTS:
        par = []  # too small to pay for a fork/join (see conv2d.PARALLEL_MIN_FLOPS)
    anchor = parallel_fused(sch, par, co)
    if r_loops:  # last: see conv2d.schedule_conv
        init = sch.decompose_reduction(main, r_loops[0])
        vectorize_innermost_own(sch, init, anchor)
