"""int8 convolution kernels: uint8 activations × int8 weights → int32, with the CPU's dot-product
instructions where it has them (detected from the target at build time, never assumed).

Dispatch (:func:`schedule_int8`, called first by :func:`sqcc.schedules.apply.schedule_primfunc`):

* the function's multiply-accumulate block must read an 8-bit activation and an int8 weight and
  accumulate in int32 (what ``sqcc.passes.int8`` emits: ``conv2d(x_u8, w_s8, out_dtype="int32")``
  after sqcc's NHWC layout, i.e. ``out[n,h,w,o] += i32(pad[n,h+ry,w+rx,c]) * i32(W[ry,rx,c,o])``);
* **x86 AVX-512 VNNI** (``avx512vnni``): ``vpdpbusd`` through TVM's registered tensor intrinsic
  ``dot_16x4_vnni`` -- 16 output channels × 4 input channels per instruction. Needs uint8
  activations, C % 4 == 0 and O % 16 == 0;
* anything else returns None and the generic multiply-accumulate rule (:mod:`.conv2d`) schedules
  the int32 reduction portably (LLVM vectorises it for AVX2, NEON, ...). AVX2 ``vpmaddubsw`` and
  ARM ``sdot`` paths are not implemented yet: ``vpmaddubsw`` saturates int16 pairs (255·127·2 >
  32767) so it is not bit-exact on full-range uint8, and ``sdot`` multiplies int8×int8 while the
  pass emits uint8 post-ReLU activations.

The kernel: weights are re-laid out as ``[ry, rx, C/4, O/16, 16, 4]`` (one 64-byte ``vpdpbusd``
operand per (ry, rx, c-block, o-block)) by a packing block at the start of the kernel; a register
tile of ``wi`` output pixels × ``nv`` blocks of 16 channels accumulates in zmm registers over the
whole window; the requantisation epilogue (scale, bias, round, clip, cast to uint8) is fused into the
write-back of the tile; output rows run in parallel.
"""
from __future__ import annotations

import logging

from tvm import tirx
from tvm.s_tir import Schedule
from tvm.target import Target, codegen

from .common import COMM_REDUCE, divisors, has_condition, is_reduction, iter_types, loop_extent, root_blocks

log = logging.getLogger(__name__)

VNNI_INTRIN = "sqcc_dot_16x4_vnni"
_registered = False


def _register_intrinsics():
    """Register the VNNI 16x4 dot product (the same description and implementation as TVM's
    ``dot_16x4_vnni`` in ``tvm.s_tir.tensor_intrin.x86``; importing that package costs ~25 s)."""
    global _registered
    if _registered:
        return
    from tvm.s_tir import TensorIntrin
    from tvm.script import tirx as T

    @T.prim_func(s_tir=True)
    def desc(A: T.Buffer((4,), "uint8", offset_factor=1), B: T.Buffer((16, 4), "int8", offset_factor=1),
             C: T.Buffer((16,), "int32", offset_factor=1, scope="local")) -> None:
        with T.sblock("root"):
            T.reads(C[0:16], A[0:4], B[0:16, 0:4])
            T.writes(C[0:16])
            for i in T.serial(0, 16):
                for k in T.serial(0, 4):
                    with T.sblock("update"):
                        vi, vk = T.axis.remap("SR", [i, k])
                        C[vi] = C[vi] + T.cast(A[vk], "int32") * T.cast(B[vi, vk], "int32")

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
    _registered = True


def _has(features, target) -> bool:
    try:
        return bool(codegen.llvm_cpu_has_features(features, target))
    except Exception:
        return False


def int8_isa(target: Target | None = None) -> str:
    """The best int8 dot-product path for ``target`` (the current target by default):
    ``"vnni"`` or ``"portable"``."""
    target = target or Target.current(allow_none=True)
    if target is None or target.kind.name != "llvm":
        return "portable"
    triple = str(target.attrs.get("mtriple", "") or "") or codegen.llvm_get_system_triple()
    if triple.startswith(("x86_64", "i686")) and _has(["avx512vnni"], target):
        return "vnni"
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


def _tile(w: int, nblocks: int):
    """(wi, nv): wi output pixels × nv 16-channel blocks of int32 accumulators (≤ 24 zmm)."""
    best = (0, 1, 1)
    for nv in (d for d in divisors(nblocks) if d <= 4):
        for wi in (d for d in divisors(w) if d <= 16):
            regs = wi * nv
            if regs > 24:
                continue
            key = (regs, wi)
            if key > best[:2]:
                best = (regs, wi, nv)
    return best[1], best[2]


def schedule_vnni_conv(sch: Schedule, main) -> None:
    """VNNI schedule for an NHWC uint8 conv with [KH, KW, C, O] int8 weights (raises if it does not fit)."""
    blk = sch.get(main)
    types = iter_types(sch, main)
    if types != [0, 0, 0, 0, COMM_REDUCE, COMM_REDUCE, COMM_REDUCE]:
        raise ValueError("not an NHWC conv2d block")
    out_buf = blk.writes[0].source
    reads = [r.source for r in blk.reads if r.source != out_buf]
    data = next(b for b in reads if str(b.dtype) == "uint8")
    weight = next(b for b in reads if str(b.dtype) == "int8")
    if len(weight.shape) != 4:
        raise ValueError("weight is not KH×KW×C×O")
    kh, kw, c, o = (int(d) for d in weight.shape)
    if c % 4 or o % 16:
        raise ValueError("channels do not fit 16×4 VNNI blocks")
    data_idx = [i for i, r in enumerate(blk.reads) if r.source == data][0]
    w_idx = [i for i, r in enumerate(blk.reads) if r.source == weight][0]

    pads = [p for p in sch.get_producers(main) if has_condition(sch, p)]
    # Inline the epilogue chain into its last block.
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

    # Weight packing: [ry, rx, c, o] -> [ry, rx, c/4, o/16, 16, 4]
    wpack = sch.cache_read(main, w_idx, "global")
    sch.transform_layout(wpack, ("write", 0),
                         lambda ry, rx, cc, oo: (ry, rx, cc // 4, oo // 16, oo % 16, cc % 4))
    # Marked as a layout-rewrite preprocess: relax.transform.SplitLayoutRewritePreproc moves it
    # out of the kernel and FoldConstant then packs the (constant) weights once, at build time.
    # Without those passes the packing simply runs at the start of every call.
    sch.annotate(wpack, "meta_schedule.layout_rewrite_preproc", True)

    n, h, w, f, ry, rx, rc = sch.get_loops(main)
    w_ext = loop_extent(sch, w)
    wi_f, nv = _tile(w_ext, o // 16)
    fo, fv, f16 = sch.split(f, [None, nv, 16])
    wo, wi = sch.split(w, [None, wi_f])
    rco, rc4 = sch.split(rc, [None, 4])
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
    sch.tensorize(f16, VNNI_INTRIN)
    sch.vectorize(sch.get_loops(acc)[-1])
    del data_idx


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
    if isa != "vnni":
        return None
    try:
        _register_intrinsics()

        schedule_vnni_conv(sch, main)
        return sch.mod["main"]
    except Exception as err:  # noqa: BLE001 -- not this shape; the generic rule takes it
        log.debug("VNNI int8 schedule not applicable: %s", err)
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


def build_int8(mod, target="host"):
    """``sqcc.build.build`` with :func:`prepack_weights` in between (until build.py calls it)."""
    from tvm import relax

    from ..build import as_target, schedule

    target = as_target(target)
    return relax.build(prepack_weights(schedule(mod, target), target), target)
