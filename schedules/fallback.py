"""Last resort for functions no rule recognises (several reductions, softmax, layer norm...):
keep the legalized loop nests but run each block's outer data-parallel loops in parallel. Anything
that fails leaves the function exactly as legalized -- slow but correct."""
from __future__ import annotations

from tvm.s_tir import Schedule

from .common import DATA_PAR, iter_types, loop_extent, root_blocks


def schedule_fallback(sch: Schedule) -> None:
    for blk in root_blocks(sch):
        loops = sch.get_loops(blk)
        types = iter_types(sch, blk)
        if len(loops) != len(types):
            continue
        outer = []
        for lp, t in zip(loops, types):
            if t != DATA_PAR or loop_extent(sch, lp) is None:
                break
            outer.append(lp)
        if len(outer) > 1:
            outer = [sch.fuse(*outer)]
        if outer and (loop_extent(sch, outer[0]) or 0) > 1:
            try:
                sch.parallel(outer[0])
            except Exception:
                pass
