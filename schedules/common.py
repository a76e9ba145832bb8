"""Helpers shared by the schedule rules: block analysis, inlining, tile-size choice."""
from __future__ import annotations

from tvm import tirx
from tvm.s_tir import Schedule

# IterVar.iter_type codes (tirx.IterVar.DataPar / CommReduce)
DATA_PAR = 0
COMM_REDUCE = 2


def iter_types(sch: Schedule, block) -> list[int]:
    return [int(iv.iter_type) for iv in sch.get(block).iter_vars]


def is_reduction(sch: Schedule, block) -> bool:
    return any(t == COMM_REDUCE for t in iter_types(sch, block))


def is_spatial(sch: Schedule, block) -> bool:
    return all(t == DATA_PAR for t in iter_types(sch, block))


def root_blocks(sch: Schedule):
    """The blocks directly under the root block, in program order."""
    root = sch.get_sblock("root")
    return list(sch.get_child_blocks(root))


def has_condition(sch: Schedule, block) -> bool:
    """Whether a block's body is conditional (padding): such producers are cheaper computed per
    tile than inlined into a micro-kernel's inner loop. (No TIR visitor is exposed to Python in
    0.27, so this reads the printed block.)"""
    text = str(sch.get(block))
    return "if_then_else" in text or "T.Select" in text


def inline_spatial_except(sch: Schedule, keep) -> None:
    """Inline every spatial block other than ``keep`` (and the function outputs that cannot be).

    Producers (padding, bias broadcast, reshapes) are inlined into their consumers; chains of
    elementwise epilogues (add -> relu) collapse into their last block, which is the one that writes
    the function's output. Blocks that refuse (non-injective, multiple consumers) are left alone.
    """
    keep_srefs = {sch.get_sref(b) for b in keep}
    changed = True
    while changed:
        changed = False
        for b in root_blocks(sch):
            if sch.get_sref(b) in keep_srefs or not is_spatial(sch, b):
                continue
            try:
                sch.compute_inline(b)
                changed = True
                break
            except Exception:  # not inlinable (writes an output, reads non-trivially...)
                continue


def divisors(n: int) -> list[int]:
    """The divisors of ``n`` in increasing order (O(sqrt n): extents can be 2^31)."""
    small = [d for d in range(1, int(n ** 0.5) + 1) if n % d == 0]
    return small + [n // d for d in reversed(small) if d * d != n]


def loop_extent(sch: Schedule, loop) -> int | None:
    ext = sch.get(loop).extent
    return int(ext) if isinstance(ext, tirx.IntImm) else None


def own_loops(sch: Schedule, block, anchor) -> list:
    """The loops of ``block`` nested strictly inside loop ``anchor`` (the block's own loops after
    a compute_at / decompose_reduction there). Vectorising ``get_loops(block)[-1]`` blindly would
    hit ``anchor`` itself when the block has no loop of its own -- and vectorise the reduction
    nested in it (wrong results, not an error)."""
    loops = list(sch.get_loops(block))
    anchor_sref = sch.get_sref(anchor)
    for i, lp in enumerate(loops):
        if sch.get_sref(lp).same_as(anchor_sref):
            return loops[i + 1:]
    return []


def vectorize_innermost_own(sch: Schedule, block, anchor) -> None:
    """Vectorise ``block``'s innermost own loop under ``anchor`` if it has one."""
    own = own_loops(sch, block, anchor)
    if own:
        sch.vectorize(own[-1])


def parallel_fused(sch: Schedule, loops: list, anchor):
    """Fuse ``loops`` and run them in parallel; returns the loop to put inner work at afterwards:
    the fused loop when ``anchor`` was one of them, else ``anchor``."""
    if not loops:
        return anchor
    fused = sch.fuse(*loops) if len(loops) > 1 else loops[0]
    sch.parallel(fused)
    return fused if any(lp.same_as(anchor) for lp in loops) else anchor
