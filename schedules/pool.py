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
    if vf < min(8, info.lanes) and c_ext > 2 * info.lanes:
        # e.g. 1001 classes: no vector width divides the channels, and a predicated vector loop
        # runs scalar (mean over 13x13x1001: 50 us, vs 9 us for 1008). Split the channel loop into
        # a part of whole vectors and a short scalar tail, each its own block; the epilogue stays a
        # plain loop at the root, which LLVM vectorises. Outer loops (above the parts) run in
        # parallel when there is work enough in them, else the main part's channel blocks do.
        outer = [lp for lp in s_loops[:-1] if (loop_extent(sch, lp) or 0) != 1]
        outer_ext = 1
        for lp in outer:
            outer_ext *= loop_extent(sch, lp) or 1
        if outer and outer_ext >= 8 * info.num_cores:
            parallel_fused(sch, outer, None)
        parts = sch.loop_partition(s_loops[-1], [c_ext - c_ext % info.lanes, None])
        main = sch.get_child_blocks(parts[0])[0]
        inner = sch.get_loops(main)[-1 - len(r_loops):]  # its channel loop, then the window loops
        _schedule_vectors(sch, main, [], inner[0], inner[1:], info.lanes, info, epilogue=False,
                          parallel_channels=not (outer and outer_ext >= 8 * info.num_cores))
        return
    _schedule_vectors(sch, main, s_loops[:-1], s_loops[-1], r_loops, vf, info, epilogue=True)


def _schedule_vectors(sch: Schedule, main, outer, c_loop, r_loops, vf: int, info: CpuInfo,
                      epilogue: bool, parallel_channels: bool = True) -> None:
    """Channels (``c_loop``) in vectors of ``vf`` innermost, the window reduction around them, the
    ``outer`` spatial loops (and the channel blocks when those are few) in parallel."""
    co, ci = sch.split(c_loop, [None, vf])
    sch.reorder(*outer, co, *r_loops, ci)
    # Epilogue (mean's division, a following relu): computed per channel block, vectorised.
    for c in (sch.get_consumers(main) if epilogue else []):
        if not _same_extent(sch, main, c):
            # e.g. a channel pad to the vector width: its extra channels read no pool output, so
            # computed per pool channel block they would never be written (garbage, not zeros)
            continue
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
    par = list(outer) + ([co] if outer_ext < 8 * info.num_cores and parallel_channels else [])
    if work < PARALLEL_MIN_ELEMENTS:
        par = []  # too small to pay for a fork/join (see conv2d.PARALLEL_MIN_FLOPS)
    anchor = parallel_fused(sch, par, co)
    if r_loops:  # last: see conv2d.schedule_conv
        init = sch.decompose_reduction(main, r_loops[0])
        vectorize_innermost_own(sch, init, anchor)


def _same_extent(sch: Schedule, producer, consumer) -> bool:
    """Whether ``consumer`` writes a buffer of the shape ``producer`` writes (an elementwise epilogue)."""
    def shape(block):
        return [int(d) for d in sch.get(block).writes[0].buffer.shape]

    return shape(producer) == shape(consumer)
