"""Bit-packed binary convolution kernels (TE) and their CPU schedules.

* :func:`xnor_conv2d` -- XNOR-Net: activations and weights are signs packed 32 per ``uint32`` word
  along input channels. For ±1 vectors of length L, ``dot = L − 2·popcount(x XOR w)``; padding taps
  contribute 0 (as in the float conv with zero padding), channels beyond C are 0 bits in both
  operands, so their XOR is 0. Integer results, bit-exact against a float conv on ±1 data.
* :func:`pack_signs` -- run-time packing of float activations: bit b of word k at a pixel is
  ``x[c = 32k + b] > 0``.
* :func:`bwn_conv2d` -- BinaryConnect/BWN with float activations: ``Σ x · (bit ? +1 : −1)`` read from
  the packed weights (32× fewer weight bytes; the arithmetic stays float).

Layouts: packed activations NHWK (K = words), packed weights ``[Kh, Kw, K, O]`` so the output channel
is the contiguous axis; outputs are NHWO int32 (XNOR) / NCHW float32 (BWN). Schedules: output channels
vectorised (vector popcount: ``vpopcntd`` on AVX-512 VPOPCNTDQ, NEON ``cnt``, a bit-trick sequence
elsewhere -- LLVM picks), rows × output-channel blocks in parallel.
The functions come back already scheduled and marked opaque, so FuseOps leaves them alone and the
default schedules skip them.
"""
from __future__ import annotations

import numpy as np
from tvm import te, tirx

WORD = 32


def pack_weights(sign_w: np.ndarray) -> np.ndarray:
    """±1 (or any sign) OIHW weights → uint32 ``[Kh, Kw, ceil(C/32), O]`` (bit set ⇔ w > 0)."""
    o, c, kh, kw = sign_w.shape
    nw = -(-c // WORD)
    bits = np.zeros((o, nw * WORD, kh, kw), np.uint64)
    bits[:, :c] = (sign_w > 0)
    bits = bits.reshape(o, nw, WORD, kh, kw)
    shifts = (np.uint64(1) << np.arange(WORD, dtype=np.uint64)).reshape(1, 1, WORD, 1, 1)
    words = (bits * shifts).sum(axis=2).astype(np.uint32)  # o, nw, kh, kw
    return np.ascontiguousarray(words.transpose(2, 3, 1, 0))


def pack_signs_numpy(x: np.ndarray) -> np.ndarray:
    """NCHW float → NHWK uint32 (reference for :func:`pack_signs`)."""
    n, c, h, w = x.shape
    nw = -(-c // WORD)
    bits = np.zeros((n, nw * WORD, h, w), np.uint64)
    bits[:, :c] = x > 0
    bits = bits.reshape(n, nw, WORD, h, w)
    shifts = (np.uint64(1) << np.arange(WORD, dtype=np.uint64)).reshape(1, 1, WORD, 1, 1)
    return np.ascontiguousarray((bits * shifts).sum(axis=2).astype(np.uint32).transpose(0, 2, 3, 1))


def pack_signs(x: te.Tensor) -> te.Tensor:
    """TE: NCHW float activations → NHWK uint32 sign words."""
    n, c, h, w = (int(d) for d in x.shape)
    nw = -(-c // WORD)
    b = te.reduce_axis((0, WORD), name="b")

    def bit(nn, hh, ww, k, bb):
        ch = k * WORD + bb
        return tirx.if_then_else(
            tirx.all(ch < c, x[nn, tirx.min(ch, c - 1), hh, ww] > tirx.const(0, x.dtype)),
            tirx.shift_left(tirx.const(1, "uint32"), bb.astype("uint32")), tirx.const(0, "uint32"))

    return te.compute((n, h, w, nw), lambda nn, hh, ww, k: te.sum(bit(nn, hh, ww, k, b), axis=b),
                      name="pack_signs")


def xnor_conv2d(xb: te.Tensor, wb: te.Tensor, channels: int, strides=(1, 1), padding=(0, 0, 0, 0),
                dilation=(1, 1)) -> te.Tensor:
    """TE: Σ over valid taps of (C − 2·popcount(x ^ w)); NHWO int32."""
    n, h, w, nw = (int(d) for d in xb.shape)
    kh, kw, nw2, o = (int(d) for d in wb.shape)
    assert nw == nw2
    pt, pl, pb, pr = padding
    sh, sw = strides
    dh, dw = dilation
    ho = (h + pt + pb - dh * (kh - 1) - 1) // sh + 1
    wo = (w + pl + pr - dw * (kw - 1) - 1) // sw + 1
    counts = [min(WORD, channels - k * WORD) for k in range(nw)]
    ry, rx, rk = te.reduce_axis((0, kh), "ry"), te.reduce_axis((0, kw), "rx"), te.reduce_axis((0, nw), "rk")

    def body(nn, i, j, oo):
        y = i * sh + ry * dh - pt
        xx = j * sw + rx * dw - pl
        valid = tirx.all(y >= 0, y < h, xx >= 0, xx < w)
        word = xb[nn, tirx.max(tirx.min(y, h - 1), 0), tirx.max(tirx.min(xx, w - 1), 0), rk]
        pc = tirx.popcount(tirx.bitwise_xor(word, wb[ry, rx, rk, oo])).astype("int32")
        if all(cnt == WORD for cnt in counts):
            cnt = tirx.const(WORD, "int32")
        else:
            cnt = tirx.if_then_else(rk < nw - 1, tirx.const(WORD, "int32"),
                                    tirx.const(counts[-1], "int32"))
        return te.sum(tirx.if_then_else(valid, cnt - 2 * pc, tirx.const(0, "int32")), axis=[ry, rx, rk])

    return te.compute((n, ho, wo, o), body, name="xnor_conv")


def bwn_conv2d(x: te.Tensor, wb: te.Tensor, channels: int, strides=(1, 1), padding=(0, 0, 0, 0),
               dilation=(1, 1)) -> te.Tensor:
    """TE: float NCHW activations × packed sign weights → NCHW float32 Σ x·sign(w)."""
    n, c, h, w = (int(d) for d in x.shape)
    kh, kw, nw, o = (int(d) for d in wb.shape)
    pt, pl, pb, pr = padding
    sh, sw = strides
    dh, dw = dilation
    ho = (h + pt + pb - dh * (kh - 1) - 1) // sh + 1
    wo = (w + pl + pr - dw * (kw - 1) - 1) // sw + 1
    rc, ry, rx = te.reduce_axis((0, c), "rc"), te.reduce_axis((0, kh), "ry"), te.reduce_axis((0, kw), "rx")

    def body(nn, oo, i, j):
        y = i * sh + ry * dh - pt
        xx = j * sw + rx * dw - pl
        valid = tirx.all(y >= 0, y < h, xx >= 0, xx < w)
        v = x[nn, rc, tirx.max(tirx.min(y, h - 1), 0), tirx.max(tirx.min(xx, w - 1), 0)]
        bit = tirx.bitwise_and(tirx.shift_right(wb[ry, rx, rc // WORD, oo],
                                                (rc % WORD).astype("uint32")), tirx.const(1, "uint32"))
        signed = tirx.if_then_else(bit == tirx.const(1, "uint32"), v, -v)
        return te.sum(tirx.if_then_else(valid, signed, tirx.const(0, x.dtype)), axis=[rc, ry, rx])

    return te.compute((n, o, ho, wo), body, name="bwn_conv")


# ------------------------------------------------------------------------------------------ schedules

def _lanes(o: int) -> int:
    for v in (16, 8, 4, 2):
        if o % v == 0:
            return v
    return 1


def _finish(func: tirx.PrimFunc) -> tirx.PrimFunc:
    return func.with_attr("tirx.is_scheduled", True).with_attr("op_pattern", 8).with_attr(
        "sqcc.schedule_rule", "binary")


def schedule_xnor(func: tirx.PrimFunc) -> tirx.PrimFunc:
    """xnor_conv: register tile of output channels (vector popcount), parallel over rows × channel
    blocks. Falls back to the plain function if a step does not apply."""
    from tvm.s_tir import Schedule

    sch = Schedule(func)
    try:
        blk = sch.get_sblock("xnor_conv")
        n, i, j, o, ry, rx, rk = sch.get_loops(blk)
        o_ext = int(sch.get(o).extent)
        v = _lanes(o_ext)
        nv = 4 if (o_ext // v) % 4 == 0 else (2 if (o_ext // v) % 2 == 0 else 1)
        oo, ov, oi = sch.split(o, [None, nv, v])
        j_ext = int(sch.get(j).extent)
        wi_f = next(d for d in (4, 2, 1) if j_ext % d == 0)
        jo, ji = sch.split(j, [None, wi_f])
        sch.reorder(n, i, oo, jo, ry, rx, rk, ji, ov, oi)
        acc = sch.cache_write(blk, 0, "local")
        sch.reverse_compute_at(acc, jo, preserve_unit_loops=True)
        par = sch.fuse(n, i, oo)
        sch.parallel(par)
        sch.vectorize(oi)
        sch.unroll(ov)
        sch.unroll(ji)
        sch.vectorize(sch.get_loops(acc)[-1])
        init = sch.decompose_reduction(blk, ry)
        sch.vectorize(sch.get_loops(init)[-1])
        for b in list(sch.get_child_blocks(sch.get_sblock("root"))):
            if sch.get(b).name_hint.startswith("pack_signs"):
                lp = sch.get_loops(b)
                sch.parallel(sch.fuse(*lp[:2]))
        return _finish(sch.mod["main"])
    except Exception:  # noqa: BLE001
        return _finish(func)


def schedule_pack(func: tirx.PrimFunc) -> tirx.PrimFunc:
    from tvm.s_tir import Schedule

    sch = Schedule(func)
    try:
        blk = sch.get_sblock("pack_signs")
        lp = sch.get_loops(blk)
        sch.parallel(sch.fuse(*lp[:2]))
        sch.unroll(lp[-1])
        return _finish(sch.mod["main"])
    except Exception:  # noqa: BLE001
        return _finish(func)


def schedule_bwn(func: tirx.PrimFunc) -> tirx.PrimFunc:
    from tvm.s_tir import Schedule

    sch = Schedule(func)
    try:
        blk = sch.get_sblock("bwn_conv")
        n, o, i, j, rc, ry, rx = sch.get_loops(blk)
        par = sch.fuse(n, o)
        sch.parallel(par)
        acc = sch.cache_write(blk, 0, "local")
        sch.reverse_compute_at(acc, i, preserve_unit_loops=True)
        # one output row accumulates in registers; the sign bit of a weight is loop-invariant
        # over the row, so the inner loop is a vector add or subtract of a contiguous input row
        sch.reorder(rc, ry, rx, j)
        if int(sch.get(j).extent) <= 64:
            sch.vectorize(j)
            sch.vectorize(sch.get_loops(acc)[-1])
        init = sch.decompose_reduction(blk, rc)
        if int(sch.get(sch.get_loops(init)[-1]).extent) <= 64:
            sch.vectorize(sch.get_loops(init)[-1])
        return _finish(sch.mod["main"])
    except Exception:  # noqa: BLE001
        return _finish(func)


def build_te(fn, args, target="llvm"):
    """Build one TE kernel (for tests/benchmarks): returns a callable module."""
    func = te.create_prim_func(list(args) + [fn])
    return func
