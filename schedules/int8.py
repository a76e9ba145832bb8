"""int8 convolution kernels: uint8 activations × int8 weights → int32, with the CPU's dot-product
instructions where it has them (detected from the target at build time, never assumed).

Dispatch (:func:`schedule_int8`, called first by :func:`sqcc.schedules.apply.schedule_primfunc`):

* the function's multiply-accumulate block must read an 8-bit activation and an int8 weight and
  accumulate in int32 (what ``sqcc.passes.int8`` emits: ``conv2d(x_u8, w_s8, out_dtype="int32")``
  after sqcc's NHWC layout, i.e. ``out[n,h,w,o] += i32(pad[n,h+ry,w+rx,c]) * i32(W[ry,rx,c,o])``);
* **x86 AVX-512 VNNI** (``avx512vnni``): ``vpdpbusd`` through TVM's registered tensor intrinsic
  ``dot_16x4_vnni`` -- 16 output channels × 4 input channels per instruction. Needs uint8
  activations, C % 4 == 0 and O % 16 == 0;
* **x86 AVX2** (any x86 with ``avx2``, and AVX-512 CPUs without VNNI): ``vpmaddwd`` on int16 pairs
  (``sqcc_dot_8x2_avx2``) -- 8 output channels × 2 input channels per instruction, activations
  widened to int16 in a register (a broadcast pair), weights sign-extended from int8 as they are
  loaded. Exact for full-range uint8 *and* int8 activations: each int16 product pair sums to at
  most 2·255·128 < 2³¹. (``vpmaddubsw``, which ORT's AVX2 path uses, adds u8·s8 pairs into a
  saturating int16 -- 255·127·2 > 32767 -- so it is only exact with 7-bit weights: next item.)
  Needs C % 2 == 0 and O % 8 == 0;
* **x86 without VNNI, 7-bit weights** (every weight of the kernel |w| ≤ 64, what ``int8:weight_bits=7``
  -- the default on such CPUs -- emits; :func:`annotate_weight_range` marks the kernels):
  ``vpmaddubsw`` + ``vpmaddwd`` by ones (``_dot_ubsw``), 8 (AVX2) or 16 (AVX-512BW) output channels
  × 4 input channels per pair of instructions, the VNNI kernel's layout. Needs uint8 activations,
  C % 4 == 0 and O % L == 0;
* **AArch64** ``+dotprod`` (Neoverse N1/Graviton2, Cortex-A55/A76 and later): ``sdot`` --
  4 output channels × 4 input channels per instruction -- for int8 activations (int8 TFLite models);
  ``+i8mm`` (Graviton3, Cortex-A710 and later): ``usdot`` for the uint8 post-ReLU activations sqcc's
  int8 pass emits. Needs C % 4 == 0 and O % 4 == 0;
* anything else returns None and the generic multiply-accumulate rule (:mod:`.conv2d`) schedules
  the int32 reduction portably (LLVM vectorises it for NEON without dot-product instructions, e.g.
  Cortex-A72 of the Raspberry Pi 4).

The kernel: weights are re-laid out as ``[ry, rx, C/k, O/L, L, k]`` (one ``vpdpbusd`` operand of
L=16 × k=4 bytes, or one ``vpmaddwd`` operand of L=8 × k=2, per (ry, rx, c-block, o-block)) by a
packing block that :func:`prepack_weights` runs once at build time; a register tile of ``wi`` output
pixels × ``nv`` blocks of L channels accumulates in vector registers over the whole window; the
requantisation epilogue (scale, bias, round, clip, cast) is fused into the write-back of the tile;
output rows run in parallel.
"""
from __future__ import annotations

import logging

from tvm import tirx
from tvm.s_tir import Schedule
from tvm.target import Target, codegen

from .common import COMM_REDUCE, divisors, has_condition, is_reduction, iter_types, loop_extent, root_blocks

log = logging.getLogger(__name__)

VNNI_INTRIN = "sqcc_dot_16x4_vnni"
ISA_ATTR = "sqcc.int8_isa"
AVX2_INTRIN = {"uint8": "sqcc_dot_8x2_avx2_u8", "int8": "sqcc_dot_8x2_avx2_s8"}
AVX2_U7_INTRIN = "sqcc_dot_8x4_avx2_ubsw"
AVX512_U7_INTRIN = "sqcc_dot_16x4_avx512_ubsw"
# a function attribute: the largest |w| of the constant int8 weights every call passes to a kernel
WMAX_ATTR = "sqcc.int8_weight_absmax"
UBSW_WMAX = 64  # vpmaddubsw is exact iff 2·255·|w| ≤ 32767
ARM_INTRIN = {"uint8": "sqcc_dot_4x4_usdot", "int8": "sqcc_dot_4x4_sdot"}
_registered = False


def _dot_desc(adt: str, lanes: int, depth: int):
    """What every dot-product intrinsic computes: C[0:L] += Σ_k A[k]·B[0:L, k], k < depth, in int32."""
    from tvm.script import tirx as T

    @T.prim_func(s_tir=True)
    def desc(A: T.Buffer((depth,), adt, offset_factor=1), B: T.Buffer((lanes, depth), "int8", offset_factor=1),
             C: T.Buffer((lanes,), "int32", offset_factor=1, scope="local")) -> None:
        with T.sblock("root"):
            T.reads(C[0:lanes], A[0:depth], B[0:lanes, 0:depth])
            T.writes(C[0:lanes])
            for i in T.serial(0, lanes):
                for k in T.serial(0, depth):
                    with T.sblock("update"):
                        vi, vk = T.axis.remap("SR", [i, k])
                        C[vi] = C[vi] + T.cast(A[vk], "int32") * T.cast(B[vi, vk], "int32")

    return desc


def _register_intrinsics():
    """Register the VNNI 16x4 dot product (the same description and implementation as TVM's
    ``dot_16x4_vnni`` in ``tvm.s_tir.tensor_intrin.x86``; importing that package costs ~25 s)."""
    global _registered
    if _registered:
        return
    from tvm.s_tir import TensorIntrin
    from tvm.script import tirx as T

    desc = _dot_desc("uint8", 16, 4)

    @T.prim_func(s_tir=True)
    def impl(A: T.Buffer((4,), "uint8", offset_factor=1), B: T.Buffer((16, 4), "int8", offset_factor=1),
             C: T.Buffer((16,), "int32", offset_factor=1, scope="local")) -> None:
        with T.sblock("root"):
            T.reads(C[0:16], A[0:4], B[0:16, 0:4])
            T.writes(C[0:16])
            a_i32 = T.reinterpret(A.vload([0], "uint8x4"), dtype="int32")
            # LLVM 22 (apache-tvm 0.27's) types the operands as <64 x i8>
            a_u8 = T.reinterpret(T.broadcast(a_i32, 16), dtype="int8x64")
            C[T.ramp(T.int32(0), 1, 16)] = T.call_llvm_pure_intrin(
                T.llvm_lookup_intrinsic_id("llvm.x86.avx512.vpdpbusd.512"),
                C.vload([0], dtype="int32x16"), a_u8, B.vload([0, 0], dtype="int8x64"),
                dtype="int32x16")

    @T.prim_func(s_tir=True)
    def impl_old(A: T.Buffer((4,), "uint8", offset_factor=1), B: T.Buffer((16, 4), "int8", offset_factor=1),
                 C: T.Buffer((16,), "int32", offset_factor=1, scope="local")) -> None:
        with T.sblock("root"):
            T.reads(C[0:16], A[0:4], B[0:16, 0:4])
            T.writes(C[0:16])
            a_i32 = T.reinterpret(A.vload([0], "uint8x4"), dtype="int32")
            b_i32 = T.reinterpret(B.vload([0, 0], dtype="int8x64"), dtype="int32x16")
            # LLVM < 20 types the operands as <16 x i32>
            C[T.ramp(T.int32(0), 1, 16)] = T.call_llvm_pure_intrin(
                T.llvm_lookup_intrinsic_id("llvm.x86.avx512.vpdpbusd.512"),
                C.vload([0], dtype="int32x16"), T.broadcast(a_i32, 16), b_i32, dtype="int32x16")

    if codegen.llvm_version_major() < 20:
        impl = impl_old

    try:
        TensorIntrin.register(VNNI_INTRIN, desc, impl)
    except Exception:  # already registered (module reloaded)
        pass
    for adt in ("uint8", "int8"):
        for name, make in ((AVX2_INTRIN[adt], _avx2_dot_8x2), (ARM_INTRIN[adt], _arm_dot_4x4)):
            try:
                TensorIntrin.register(name, *make(adt))
            except Exception:  # already registered
                pass
    for name, lanes in ((AVX2_U7_INTRIN, 8), (AVX512_U7_INTRIN, 16)):
        try:
            TensorIntrin.register(name, *_dot_ubsw(lanes))
        except Exception:  # already registered
            pass
    _registered = True


def _arm_dot_4x4(adt: str):
    """(desc, impl) of C[0:4] += Σ_k A[k]·B[0:4, k], k < 4: ``sdot`` (int8 A) or ``usdot`` (uint8 A)."""
    from tvm.script import tirx as T

    adt_x4 = f"{adt}x4"
    instr = "llvm.aarch64.neon.sdot.v4i32.v16i8" if adt == "int8" else "llvm.aarch64.neon.usdot.v4i32.v16i8"

    @T.prim_func(s_tir=True)
    def impl(A: T.Buffer((4,), adt, offset_factor=1), B: T.Buffer((4, 4), "int8", offset_factor=1),
             C: T.Buffer((4,), "int32", offset_factor=1, scope="local")) -> None:
        with T.sblock("root"):
            T.reads(C[0:4], A[0:4], B[0:4, 0:4])
            T.writes(C[0:4])
            a = T.reinterpret(T.broadcast(T.reinterpret(A.vload([0], adt_x4), dtype="int32"), 4),
                              dtype="int8x16")  # LLVM types both operands <16 x i8>
            C[T.ramp(T.int32(0), 1, 4)] = T.call_llvm_pure_intrin(
                T.llvm_lookup_intrinsic_id(instr), C.vload([0], dtype="int32x4"), a,
                B.vload([0, 0], dtype="int8x16"), dtype="int32x4")

    return _dot_desc(adt, 4, 4), impl


def _avx2_dot_8x2(adt: str):
    """(desc, impl) of C[0:8] += Σ_k A[k]·B[0:8, k], k < 2, with ``vpmaddwd`` on int16 lanes."""
    from tvm.script import tirx as T

    @T.prim_func(s_tir=True)
    def impl(A: T.Buffer((2,), adt, offset_factor=1), B: T.Buffer((8, 2), "int8", offset_factor=1),
             C: T.Buffer((8,), "int32", offset_factor=1, scope="local")) -> None:
        with T.sblock("root"):
            T.reads(C[0:8], A[0:2], B[0:8, 0:2])
            T.writes(C[0:8])
            # the two activations as one int32 holding two int16 lanes, broadcast to 8 lanes
            pair = T.bitwise_or(T.bitwise_and(T.cast(A[0], "int32"), 0xFFFF),
                                T.shift_left(T.cast(A[1], "int32"), 16))
            a16 = T.reinterpret(T.broadcast(pair, 8), dtype="int16x16")
            b16 = T.cast(B.vload([0, 0], dtype="int8x16"), "int16x16")
            C[T.ramp(T.int32(0), 1, 8)] = C.vload([0], dtype="int32x8") + T.call_llvm_pure_intrin(
                T.llvm_lookup_intrinsic_id("llvm.x86.avx2.pmadd.wd"), a16, b16, dtype="int32x8")

    return _dot_desc(adt, 8, 2), impl


def _dot_ubsw(lanes: int):
    """(desc, impl) of C[0:L] += Σ_k A[k]·B[0:L, k], k < 4, A uint8, |B| ≤ 64: ``vpmaddubsw`` (u8·s8
    pairs into int16 -- exact for |B| ≤ 64, see :data:`UBSW_WMAX`) then ``vpmaddwd`` by ones (pairs of
    int16 into int32): 4L MACs in two instructions, vs 2L in three for the int16 route. L = 8 (AVX2,
    ymm) or 16 (AVX-512BW, zmm: CPUs with AVX-512 but no VNNI, e.g. Skylake-SP)."""
    from tvm.script import tirx as T

    nb = 4 * lanes
    ubsw, wd = (("llvm.x86.avx2.pmadd.ub.sw", "llvm.x86.avx2.pmadd.wd") if lanes == 8 else
                ("llvm.x86.avx512.pmaddubs.w.512", "llvm.x86.avx512.pmaddw.d.512"))

    @T.prim_func(s_tir=True)
    def impl(A: T.Buffer((4,), "uint8", offset_factor=1), B: T.Buffer((lanes, 4), "int8", offset_factor=1),
             C: T.Buffer((lanes,), "int32", offset_factor=1, scope="local")) -> None:
        with T.sblock("root"):
            T.reads(C[0:lanes], A[0:4], B[0:lanes, 0:4])
            T.writes(C[0:lanes])
            a = T.reinterpret(T.broadcast(T.reinterpret(A.vload([0], "uint8x4"), dtype="int32"), lanes),
                              dtype=f"int8x{nb}")  # LLVM types both operands <4L x i8>
            pairs = T.call_llvm_pure_intrin(T.llvm_lookup_intrinsic_id(ubsw), a,
                                            B.vload([0, 0], dtype=f"int8x{nb}"), dtype=f"int16x{2 * lanes}")
            C[T.ramp(T.int32(0), 1, lanes)] = C.vload([0], dtype=f"int32x{lanes}") + T.call_llvm_pure_intrin(
                T.llvm_lookup_intrinsic_id(wd), pairs, T.broadcast(T.int16(1), 2 * lanes),
                dtype=f"int32x{lanes}")

    return _dot_desc("uint8", lanes, 4), impl


def annotate_weight_range(mod):
    """Mark every kernel whose calls all pass constant int8 weights with the largest |w| among them
    (:data:`WMAX_ATTR`), so :func:`schedule_int8` can tell when ``vpmaddubsw`` is exact."""
    import numpy as np
    import tvm
    from tvm import relax

    from ..layers import is_const

    call_tir = tvm.ir.Op.get("relax.call_tir")
    wmax: dict = {}

    def visit(e):
        if not (isinstance(e, relax.Call) and e.op.same_as(call_tir)):
            return
        gv, args = e.args[0], getattr(e.args[1], "fields", [])
        # only the int8 constants are copied out (not every float weight of the model, every build)
        consts = [a.value.numpy() for a in args if is_const(a) and str(a.value.dtype) == "int8"]
        m = max((int(np.abs(c.astype(np.int32)).max()) for c in consts if c.size), default=None)
        prev = wmax.get(gv.name_hint, 0)
        wmax[gv.name_hint] = None if m is None or prev is None else max(prev, m)

    for gv, func in mod.functions.items():
        if isinstance(func, relax.Function):
            relax.analysis.post_order_visit(func, visit)
    for gv in list(mod.get_global_vars()):
        m = wmax.get(gv.name_hint)
        func = mod[gv]
        if m is not None and isinstance(func, tirx.PrimFunc) and is_int8_function(func):
            mod[gv] = func.with_attr(WMAX_ATTR, m)
    return mod


def _has(features, target) -> bool:
    try:
        return bool(codegen.llvm_cpu_has_features(features, target))
    except Exception:
        return False


def int8_isa(target: Target | None = None) -> str:
    """The best int8 dot-product path for ``target`` (the current target by default):
    ``"vnni"``, ``"avx512"`` (AVX-512BW without VNNI), ``"avx2"``, ``"i8mm"``, ``"dotprod"`` or
    ``"portable"``."""
    target = target or Target.current(allow_none=True)
    if target is None or target.kind.name != "llvm":
        return "portable"
    triple = str(target.attrs.get("mtriple", "") or "") or codegen.llvm_get_system_triple()
    if triple.startswith(("x86_64", "i686")):
        if _has(["avx512vnni"], target):
            return "vnni"
        if _has(["avx512bw"], target):
            return "avx512"
        if _has(["avx2"], target):
            return "avx2"
    if triple.startswith(("aarch64", "arm64")):
        if _has(["i8mm"], target):
            return "i8mm"
        if _has(["dotprod"], target):
            return "dotprod"
    return "portable"


def _int8_mac_block(sch: Schedule):
    """The single reduction block if it is an 8-bit × int8 → int32 multiply-accumulate, else None."""
    reds = [b for b in root_blocks(sch) if is_reduction(sch, b)]
    if len(reds) != 1:
        return None
    blk = sch.get(reds[0])
    if len(blk.reads) != 3 and len(blk.reads) != 2:
        return None
    if len(blk.writes) != 1 or str(blk.writes[0].source.dtype) != "int32":
        return None
    dts = sorted(str(r.source.dtype) for r in blk.reads if r.source != blk.writes[0].source)
    if dts not in (["int8", "uint8"], ["int8", "int8"]):
        return None
    return reds[0]


def is_int8_function(func: tirx.PrimFunc) -> bool:
    try:
        return _int8_mac_block(Schedule(func)) is not None
    except Exception:
        return False


# isa -> (output lanes L, reduction depth k, accumulator registers, tensor intrinsic by activation dtype)
KERNELS = {
    "vnni": (16, 4, 24, {"uint8": VNNI_INTRIN}),  # 32 zmm: 24 accumulators
    "avx2": (8, 2, 12, AVX2_INTRIN),  # 16 ymm: 12 accumulators, weights, broadcast, temporaries
    "avx2_ubsw": (8, 4, 12, {"uint8": AVX2_U7_INTRIN}),  # the same registers; |w| ≤ 64 only
    "avx512_ubsw": (16, 4, 24, {"uint8": AVX512_U7_INTRIN}),  # 32 zmm; |w| ≤ 64 only
    "i8mm": (4, 4, 24, ARM_INTRIN),  # 32 NEON registers: usdot (uint8) and sdot (int8)
    "dotprod": (4, 4, 24, {"int8": ARM_INTRIN["int8"]}),  # sdot only
}


def _tile(w: int, nblocks: int, max_regs: int = 24):
    """(wi, nv): wi output pixels × nv L-channel blocks of int32 accumulators (≤ max_regs)."""
    best = (0, 1, 1)
    for nv in (d for d in divisors(nblocks) if d <= 4):
        for wi in (d for d in divisors(w) if d <= 16):
            regs = wi * nv
            if regs > max_regs:
                continue
            key = (regs, wi)
            if key > best[:2]:
                best = (regs, wi, nv)
    return best[1], best[2]


def schedule_vnni_conv(sch: Schedule, main) -> None:
    """VNNI schedule for an NHWC uint8 conv with [KH, KW, C, O] int8 weights (raises if it does not fit)."""
    schedule_dot_conv(sch, main, "vnni")


def schedule_dot_conv(sch: Schedule, main, isa: str) -> None:
    """Dot-product schedule (``isa`` in :data:`KERNELS`) for an NHWC 8-bit conv with [KH, KW, C, O]
    int8 weights (raises if it does not fit)."""
    lanes, depth, max_regs, intrins = KERNELS[isa]
    data, weight, w_idx = _dot_operands(sch, main, isa)
    o = int(weight.shape[3])
    pads = [p for p in sch.get_producers(main) if has_condition(sch, p)]
    _inline_epilogue_chain(sch, main, pads)
    wpack = _pack_weights(sch, main, w_idx, depth, lanes)

    n, h, w, f, ry, rx, rc = sch.get_loops(main)
    wi_f, nv = _tile(loop_extent(sch, w), o // lanes, max_regs)
    fo, fv, f16 = sch.split(f, [None, nv, lanes])
    wo, wi = sch.split(w, [None, wi_f])
    rco, rc4 = sch.split(rc, [None, depth])
    sch.reorder(n, h, wo, fo, ry, rx, rco, wi, fv, f16, rc4)

    acc = sch.cache_write(main, 0, "local")
    sch.reverse_compute_at(acc, fo, preserve_unit_loops=True)
    for cons in sch.get_consumers(acc):
        try:
            sch.reverse_compute_inline(cons)
        except Exception:
            try:
                sch.reverse_compute_at(cons, fo)
            except Exception:
                pass

    par = sch.fuse(n, h, wo)
    for p in pads:
        try:
            sch.compute_at(p, par, preserve_unit_loops=True)
        except Exception:
            pass
    sch.parallel(par)
    # packing loop nest in parallel too
    wl = sch.get_loops(wpack)
    sch.parallel(sch.fuse(*wl[:2]))
    init = sch.decompose_reduction(main, ry)
    sch.vectorize(sch.get_loops(init)[-1])
    sch.tensorize(f16, intrins[str(data.dtype)])
    sch.vectorize(sch.get_loops(acc)[-1])


def _dot_operands(sch: Schedule, main, isa: str):
    """(activation buffer, weight buffer, the weight's read index) of an NHWC conv block the
    ``isa`` kernel can take; ValueError saying why not otherwise."""
    lanes, depth, _, intrins = KERNELS[isa]
    blk = sch.get(main)
    if iter_types(sch, main) != [0, 0, 0, 0, COMM_REDUCE, COMM_REDUCE, COMM_REDUCE]:
        raise ValueError("not an NHWC conv2d block")
    out_buf = blk.writes[0].source
    reads = [r.source for r in blk.reads if r.source != out_buf]
    if len(reads) != 2:
        raise ValueError("not a two-operand multiply-accumulate")
    # uint8 × int8: the weight is the int8 operand; int8 × int8: topi reads data first, weight second
    data, weight = (reads[1], reads[0]) if str(reads[0].dtype) == "int8" and \
        str(reads[1].dtype) == "uint8" else (reads[0], reads[1])
    if str(data.dtype) not in intrins:
        raise ValueError(f"{isa} kernel cannot take {data.dtype} activations")
    if len(weight.shape) != 4:
        raise ValueError("weight is not KH×KW×C×O")
    _, _, c, o = (int(d) for d in weight.shape)
    if c % depth or o % lanes:
        raise ValueError(f"channels do not fit {lanes}×{depth} blocks")
    return data, weight, [i for i, r in enumerate(blk.reads) if r.source == weight][0]


def _inline_epilogue_chain(sch: Schedule, main, pads) -> None:
    """Inline every elementwise block but the conv and its padding, until none is left."""
    changed = True
    while changed:
        changed = False
        for b in root_blocks(sch):
            if b == main or any(sch.get_sref(b) == sch.get_sref(p) for p in pads):
                continue
            if is_reduction(sch, b):
                continue
            try:
                sch.compute_inline(b)
                changed = True
                break
            except Exception:
                continue


def _pack_weights(sch: Schedule, main, w_idx: int, depth: int, lanes: int):
    """Weight packing: [ry, rx, c, o] -> [ry, rx, c/k, o/L, L, k], marked as a layout-rewrite
    preprocess: relax.transform.SplitLayoutRewritePreproc moves it out of the kernel and
    FoldConstant then packs the (constant) weights once, at build time. Without those passes the
    packing simply runs at the start of every call."""
    wpack = sch.cache_read(main, w_idx, "global")
    sch.transform_layout(wpack, ("write", 0),
                         lambda ry, rx, cc, oo: (ry, rx, cc // depth, oo // lanes, oo % lanes, cc % depth))
    sch.annotate(wpack, "meta_schedule.layout_rewrite_preproc", True)
    return wpack


def schedule_int8(func: tirx.PrimFunc, info=None, target: Target | None = None):
    """The function scheduled with the CPU's int8 dot-product instructions, or None when it is not
    an int8 conv or this CPU/shape has no fast path (the generic rules then handle it)."""
    try:
        sch = Schedule(func)
        main = _int8_mac_block(sch)
    except Exception:
        return None
    if main is None:
        return None
    isa = int8_isa(target)
    wmax = func.attrs.get(WMAX_ATTR) if func.attrs is not None else None
    exact7 = wmax is not None and int(wmax) <= UBSW_WMAX  # vpmaddubsw cannot saturate
    # a VNNI CPU also has AVX2: its vpmaddwd kernel takes what vpdpbusd cannot (int8 activations)
    for kernel in {"vnni": ("vnni", "avx2"),
                   "avx512": (("avx512_ubsw", "avx2_ubsw") if exact7 else ()) + ("avx2",),
                   "avx2": (("avx2_ubsw",) if exact7 else ()) + ("avx2",),
                   "i8mm": ("i8mm",), "dotprod": ("dotprod",)}.get(isa, ()):
        try:
            _register_intrinsics()
            sch = Schedule(func)
            schedule_dot_conv(sch, _int8_mac_block(sch), kernel)
            return sch.mod["main"].with_attr(ISA_ATTR, kernel)
        except Exception as err:  # noqa: BLE001 -- not this shape; the next kernel or the generic rule
            log.debug("%s int8 schedule not applicable: %s", kernel, err)
    return None


def prepack_weights(mod, target):
    """Move the VNNI kernels' weight packing out of the kernels and run it once at build time:
    ``SplitLayoutRewritePreproc`` splits every block annotated ``meta_schedule.layout_rewrite_preproc``
    into its own function, ``FoldConstant`` evaluates it on the constant weights. Call on the
    scheduled module (after :class:`DefaultSchedules`), before ``relax.build``. Bit-identical
    outputs; SqueezeNet 1.1 int8 4.5 → 3.1 ms (2 threads, AVX-512 VNNI host)."""
    from tvm import relax

    with target:
        mod = relax.transform.SplitLayoutRewritePreproc()(mod)
        return relax.transform.FoldConstant()(mod)
