"""Rule for multiply-accumulate reductions: conv2d (1x1, KxK, strided, dilated, grouped, depthwise),
dense and matmul -- whatever LegalizeOps turned into one reduction block of the shape

    out[s0, ..., s_{k-1}, o] += A[...] * B[...]      (spatial s*, o; reduction r*)

in a layout where the output's innermost axis ``o`` is the contiguous one (NHWC convs after
:mod:`sqcc.schedules.layout`, HWIO weights; matmul with [K, N] weights).

The schedule is the classic direct-convolution micro-kernel:

* The outer spatial axes (N, H, W) are fused into one pixel axis ``p`` (block and buffer layout
  transforms), so a register tile never straddles an image row and tile sizes need not divide the
  odd widths CNNs have (55, 27, 13). ``o`` is split into ``oi`` = a few SIMD registers of output
  channels (vectorised), ``p`` into ``pi`` pixels (unrolled). The ``pi x oi`` tile accumulates in a
  ``local`` buffer that LLVM keeps in registers across the whole reduction (window x input
  channels), so each output is written once.
* The weights for one ``oi`` block are contiguous in HWIO: each reduction step is ``pi``
  broadcasts + ``oi/lanes`` vector loads + ``pi*oi/lanes`` FMAs.
* Tile sizes divide their extents: a predicated tail inside the unrolled/vectorised micro-kernel
  makes TVM scalarise the whole loop (measured 10-50x slower). Output channels that no vector
  multiple divides (1000 classes) are padded at graph level instead (:mod:`.layout`).
* Bias/ReLU/clip epilogues are folded into the write-back of the tile (no second pass over the
  output). Padding is materialised per parallel chunk (rows + halo), not inlined into the inner
  loop where its bounds test would sit between every FMA.
* The outer pixel chunks (and output-channel blocks when there are few pixels) run in parallel.
"""
from __future__ import annotations

from dataclasses import dataclass

from tvm import tirx
from tvm.s_tir import Schedule

from .common import (COMM_REDUCE, DATA_PAR, divisors, has_condition, inline_spatial_except,
                     iter_types, loop_extent, own_loops, parallel_fused, vectorize_innermost_own)
from .cpu import CpuInfo

MAX_PI = 16  # unrolled pixels per tile: beyond this code size grows for no more reuse

# Below this many FLOPs (~10 us on one core) a kernel runs on one thread. TVM's thread pool splits
# a parallel loop statically, so every kernel waits for its slowest thread: on a shared machine a
# worker that is descheduled stalls the kernel for a whole time slice. MobileNet's 5x5 layers
# (28 small kernels) ran 3x slower than onnxruntime at 2 threads under load for that reason.
PARALLEL_MIN_FLOPS = 2_000_000


ROW_TILE_MIN = 0.6  # row tiling while its register tile is at least this fraction of the fused one


def _ceil(a: int, b: int) -> int:
    return -(-a // b)


def choose_tile(p: int, o: int, info: CpuInfo, allow_tail: bool = False,
                group_width: int | None = None) -> tuple[int, int]:
    """Register tile (pi, oi) for ``p`` pixels x ``o`` output channels.

    Score = accumulator registers used (more reuse of each loaded weight/broadcast) x fraction of
    useful work. ``oi`` is a whole number of vectors, or a power-of-two part of one when ``o``
    allows nothing else. Ties go to larger ``pi``. ``group_width``: output channels per group of a
    grouped conv -- a tile must not straddle two groups (its lanes would read different input
    channels: a gather instead of one broadcast, measured 5x slower than the dense conv).
    """
    lanes = info.lanes
    if group_width:
        o = group_width  # tiles are chosen within one group; o % group_width == 0
    # Whole vectors in powers of two: LLVM legalises a <48 x float> (3 zmm) tile into spills and
    # shuffles -- measured 100x slower than a 32-wide tile on SqueezeNet 1.0's fire7.
    oi_opts = {nv * lanes for nv in (1, 2, 4, 8) if nv * lanes <= max(o, lanes)}
    # Partial vectors only as powers of two (xmm/ymm halves): LLVM splits a <24 x float> into
    # shuffles and spills, measured 100x slower than two whole tiles.
    oi_opts |= {d for d in (4, 8, 16, 32) if d < lanes and o % d == 0}
    if o < lanes:
        oi_opts.add(o)
    best, best_key = (1, min(o, lanes)), None
    for oi in sorted(oi_opts):
        nv = _ceil(oi, lanes)
        o_eff = o / (_ceil(o, oi) * oi) * (oi / (nv * lanes))
        if not allow_tail and o % oi:
            continue
        for pi in range(1, min(MAX_PI, p) + 1):
            if not allow_tail and p % pi:
                continue
            regs = pi * nv
            if regs > info.acc_regs or (nv > 4 and pi > 1):
                continue
            p_eff = p / (_ceil(p, pi) * pi)
            # a tail tile is a second, predicated copy of the micro-kernel: small penalty
            tail_pen = (0.97 if p % pi else 1.0) * (0.97 if o % oi else 1.0)
            key = (round(regs * o_eff * p_eff * tail_pen, 3), pi, oi)
            if best_key is None or key > best_key:
                best, best_key = (pi, oi), key
    return best


def tile_score(p: int, o: int, info: CpuInfo) -> float:
    """Useful accumulator registers of :func:`choose_tile`'s tile (to compare tilings)."""
    pi, oi = choose_tile(p, o, info)
    nv = _ceil(oi, info.lanes)
    return pi * nv * (oi / (nv * info.lanes))


def _index_map(ndim: int, fuse: int, extents: list[int]):
    """IndexMap fusing the first ``fuse`` of ``ndim`` indices (row-major) into one."""
    def fn(*idx):
        fused = idx[0]
        for i in range(1, fuse):
            fused = fused * extents[i] + idx[i]
        return [fused, *idx[fuse:]]
    return tirx.IndexMap.from_func(fn, ndim=ndim)


def _fuse_pixels(sch: Schedule, main, nsp: int) -> None:
    """Make ``main`` (and its epilogue) iterate over one fused pixel axis.

    The output buffer must be internal to transform its layout, so a function whose conv writes the
    output directly first gets a global write cache (the copy becomes the epilogue).
    """
    blk = sch.get(main)
    extents = [int(iv.dom.extent) for iv in blk.iter_vars]
    write = blk.writes[0]
    ivars = [iv.var for iv in blk.iter_vars[:nsp]]
    idx = list(write.region)
    if len(idx) != nsp or any(not (isinstance(r.min, tirx.Var) and r.min.same_as(v))
                              for r, v in zip(idx, ivars)):
        raise ValueError("output not indexed by the spatial iterators in order")
    root = sch.get(sch.get_sblock("root"))
    if not any(b.same_as(write.source) for b in root.alloc_buffers):
        sch.cache_write(main, 0, "global")
    consumers = sch.get_consumers(main)
    if len(consumers) != 1:
        raise ValueError("expected one epilogue")
    epi = consumers[0]
    sp_ext = extents[:nsp]
    sch.transform_layout(main, ("write", 0), _index_map(nsp, nsp - 1, sp_ext))
    sch.transform_block_layout(main, _index_map(len(extents), nsp - 1, extents))
    epi_ext = [int(iv.dom.extent) for iv in sch.get(epi).iter_vars]
    if epi_ext[:-1] != sp_ext[:-1] or epi_ext[-1] > sp_ext[-1]:
        raise ValueError("epilogue iterates differently")
    # (a smaller last extent is the slice that drops padded output channels)
    sch.transform_block_layout(epi, _index_map(nsp, nsp - 1, epi_ext))


def schedule_conv(func: tirx.PrimFunc, info: CpuInfo) -> Schedule:
    """Schedule a function holding one multiply-accumulate block (raises if it does not fit).

    Tries the fused-pixel form first and falls back to tiling the innermost spatial axis only
    (when the block or its epilogue resists the layout transforms).
    """
    err = None
    order = (True, False)
    try:
        # Tiling the image row (no pixel fusion) needs no div/mod per pixel address; it wins by
        # 5-25% (measured) whenever the row width allows as good a register tile, and still by 32%
        # with 2/3 of the fused form's accumulators (SqueezeNet 1.1 conv1: 111 = 3 x 37 wide,
        # 3 x 64 tile vs 9 x 32; 212 vs 280 us). Below ROW_TILE_MIN of them, fusion wins.
        blk = Schedule(func)
        main = _main_block(blk)
        ivs = blk.get(main).iter_vars
        sp = [int(iv.dom.extent) for iv in ivs if int(iv.iter_type) == DATA_PAR]
        if len(sp) > 2:
            pixels = 1
            for e in sp[:-1]:
                pixels *= e
            if tile_score(sp[-2], sp[-1], info) >= ROW_TILE_MIN * tile_score(pixels, sp[-1], info):
                order = (False, True)
    except Exception:  # noqa: BLE001
        pass
    for fuse in order:
        try:
            return _schedule_conv(func, info, fuse)
        except Exception as e:  # noqa: BLE001
            err = e
    raise err


def _main_block(sch: Schedule):
    from .common import root_blocks, is_reduction
    reds = [b for b in root_blocks(sch) if is_reduction(sch, b)]
    if len(reds) != 1:
        raise ValueError("expected one reduction block")
    return reds[0]


def _group_width(sch: Schedule, main, o_ext: int) -> int | None:
    """Output channels per group when ``main`` is a grouped (not depthwise) NHWC conv with HWIO
    weights [KH, KW, C/g, O] reading C input channels; else None."""
    blk = sch.get(main)
    out = blk.writes[0].source
    reads = [r for r in blk.reads if not r.source.same_as(out)]
    if len(reads) != 2 or any(len(r.source.shape) != 4 for r in reads):
        return None
    sp = [iv.var for iv in blk.iter_vars if int(iv.iter_type) == DATA_PAR][:-1]  # pixel iterators

    def uses_pixels(region) -> bool:
        used = [v for rng in region.region for v in tirx.analysis.undefined_vars(rng.min, [])]
        return any(u.same_as(v) for u in used for v in sp)

    weights = [r.source for r in reads if not uses_pixels(r)]
    datas = [r.source for r in reads if uses_pixels(r)]
    if len(weights) != 1 or len(datas) != 1:
        return None
    c, cg, o = int(datas[0].shape[-1]), int(weights[0].shape[2]), int(weights[0].shape[3])
    if o != o_ext or cg <= 1 or c == cg or c % cg:
        return None
    groups = c // cg
    return o // groups if o % groups == 0 else None


def _schedule_pad_whole(sch: Schedule, pad, info: CpuInfo) -> None:
    """Padding as its own pass over the input: outer loops parallel, channels vectorised."""
    loops = sch.get_loops(pad)
    c = loop_extent(sch, loops[-1]) or 1
    vf = next((f for f in (info.lanes, 8, 4) if c % f == 0), 1)
    if vf > 1:
        lo, li = sch.split(loops[-1], [None, vf])
        sch.vectorize(li)
        loops = list(loops[:-1]) + [lo]
    sch.parallel(sch.fuse(*loops[:-1]) if len(loops) > 2 else loops[0])


def _schedule_conv(func: tirx.PrimFunc, info: CpuInfo, fuse: bool) -> Schedule:
    sch = Schedule(func)
    main = _main_block(sch)
    pads = [p for p in sch.get_producers(main) if has_condition(sch, p)
            and all(t == DATA_PAR for t in iter_types(sch, p))]
    inline_spatial_except(sch, [main, *pads])
    s_loops, r_loops = _split_loops(sch, main, fuse)
    t = _tile(sch, main, s_loops, bool(pads), info)
    sch.reorder(*t.outer, *r_loops, *t.inner)
    tile_loop = t.outer[-1]
    par_loops = _parallel_prefix(sch, main, t.outer, info)
    pad_whole = t.pad_whole or any(lp.same_as(t.oo) for lp in par_loops)  # else recomputed per block
    _fuse_epilogue(sch, main, tile_loop)
    pad_at = par_loops[-1] if par_loops and not pad_whole else None
    for p in pads:
        try:
            if pad_at is None:
                _schedule_pad_whole(sch, p, info)
            else:
                sch.compute_at(p, pad_at, preserve_unit_loops=True)
                vectorize_innermost_own(sch, p, pad_at)
        except Exception:  # noqa: BLE001
            sch.compute_inline(p)
    anchor = parallel_fused(sch, par_loops, tile_loop)
    sch.vectorize(t.oi)
    if t.pi is not None:
        sch.unroll(t.pi)
    # Last: parallel/vectorize check the block is a complete reduction, which it no longer is once
    # its init is split off.
    if r_loops:
        init = sch.decompose_reduction(main, r_loops[0])
        init_loops = own_loops(sch, init, anchor)
        if init_loops:
            sch.vectorize(init_loops[-1])
        if t.pi is not None and len(init_loops) >= 2:
            sch.unroll(init_loops[-2])
    return sch


def _split_loops(sch: Schedule, main, fuse: bool):
    """(spatial loops, reduction loops) of the conv block, output pixels fused into one loop when
    ``fuse``; ValueError for a shape the template does not handle."""
    types = iter_types(sch, main)
    nsp = types.index(COMM_REDUCE) if COMM_REDUCE in types else len(types)
    if any(t != COMM_REDUCE for t in types[nsp:]) or nsp < 1:
        raise ValueError("reduction loops are not innermost")
    if fuse and nsp > 2:
        _fuse_pixels(sch, main, nsp)
        nsp = 2
    loops = sch.get_loops(main)
    if len(loops) != len(iter_types(sch, main)):
        raise ValueError("loops do not map 1:1 to block iterators")
    return list(loops[:nsp]), list(loops[nsp:])


@dataclass
class _Tiles:
    outer: list  # loops outside the reduction, outermost first
    inner: list  # the register tile: [pixels, channels] or [channels]
    oo: object  # the channel-block loop
    oi: object  # channels within a block (vectorised)
    pi: object  # pixels within a tile (unrolled), or None
    pad_whole: bool  # materialise the padding up front instead of per chunk


def _tile(sch: Schedule, main, s_loops, has_pads: bool, info: CpuInfo) -> _Tiles:
    """Split pixels and output channels into the register tile and order the outer loops."""
    nsp = len(s_loops)
    o_ext = loop_extent(sch, s_loops[-1])
    p_ext = loop_extent(sch, s_loops[-2]) if nsp >= 2 else 1
    if o_ext is None or p_ext is None:
        raise ValueError("dynamic shape")
    pi_f, oi_f = choose_tile(p_ext, o_ext, info, group_width=_group_width(sch, main, o_ext))
    oo, oi = sch.split(s_loops[-1], [None, oi_f])
    if nsp < 2:
        return _Tiles([oo], [oi], oo, oi, None, False)
    n_ptiles = p_ext // pi_f
    # Loop order: keep the bigger operand in cache. Weights (K x O) bigger than the input
    # (P x K), e.g. a 1x1 conv to 1000 classes on 13x13 pixels: channel blocks outermost so a
    # weight slab is reused by every pixel tile. Otherwise pixel tiles outermost so the input
    # rows (and their padding) are reused by every channel block.
    if o_ext > p_ext:
        po, pi = sch.split(s_loops[-2], [None, pi_f])
        return _Tiles([oo, *s_loops[:-2], po], [pi, oi], oo, oi, pi, True)  # channel blocks outermost
    # pixel tiles -> [chunks, tiles per chunk, pi]; a chunk is the unit padding is materialised
    # for: a few rows, a few chunks per core, dividing the tile count (see choose_tile) and a
    # multiple of the core count; failing that, pad the input up front.
    chunks, pad_whole = n_ptiles, False
    if has_pads and n_ptiles > 4 * info.num_cores:
        want = 4 * info.num_cores
        good = [d for d in divisors(n_ptiles) if d % info.num_cores == 0 and d <= 2 * want]
        if good:
            chunks = max(good)
        else:
            pad_whole = True
    pc, ps, pi = sch.split(s_loops[-2], [chunks, n_ptiles // chunks, pi_f])
    return _Tiles(list(s_loops[:-2]) + [pc, ps, oo], [pi, oi], oo, oi, pi, pad_whole)


def _parallel_prefix(sch: Schedule, main, outer, info: CpuInfo) -> list:
    """The shortest prefix of the outer loops that gives every core several iterations -- none when
    the whole kernel is too small to pay for a fork/join (see PARALLEL_MIN_FLOPS)."""
    par_loops, ext = [], 1
    work = 2
    for iv in sch.get(main).iter_vars:
        work *= int(iv.dom.extent)
    for lp in (outer if work >= PARALLEL_MIN_FLOPS else []):
        if ext >= 8 * info.num_cores:
            break
        par_loops.append(lp)
        ext *= loop_extent(sch, lp) or 1
    return par_loops


def _fuse_epilogue(sch: Schedule, main, tile_loop) -> None:
    """Accumulate the register tile in 'local' and write it back once, with the epilogue fused in."""
    wb = sch.cache_write(main, 0, "local")
    sch.reverse_compute_at(wb, tile_loop, preserve_unit_loops=True)
    for c in sch.get_consumers(wb):
        try:
            sch.reverse_compute_inline(c)
        except Exception:  # noqa: BLE001 -- a non-elementwise epilogue: computed per tile instead
            sch.reverse_compute_at(c, tile_loop)
    vectorize_innermost_own(sch, wb, tile_loop)  # before fuse() invalidates tile_loop
