"""``qdq_fold``: fold the dequantize → float conv → quantize chains of an imported int8 TFLite model
(person_detect and friends) into true integer convolutions.

TVM's TFLite importer turns each quantised CONV_2D / DEPTHWISE_CONV_2D into

    x_f = dequantize(x_q, s_x, z_x); w_f = dequantize(W_q, s_w[o], 0) [reshape]
    y   = conv2d(x_f, w_f) [+ dequantize(b_q, s_x·s_w[o], 0)]
    y_q = quantize(y, s_y, z_y) [clip(lo, hi)]           (ReLU/ReLU6 live in the output range/clip)

which computes in float. This pass rewrites it to

    x_u = uint8(x_q + 128)                      (zero point z'_x = z_x + 128; 0 for ReLU/ReLU6 outputs)
    acc = conv2d(x_u, W_q, out_dtype="int32") + (b_q − z'_x·Σ W_q[o])      (uint8 × int8 → int32)
    y_q = int8(clip(round(acc · s_x·s_w[o]/s_y) + z_y, lo, hi))

The shift by 128 gives every ReLU-range activation (z_x = −128) zero point 0, so the conv's own zero
padding is exact and no pad op is needed (a tensor with another zero point is padded explicitly with
it); the integer offset is TFLite's int32 bias minus the zero-point term. FuseOps fuses the epilogue
and the next layer's shift into one kernel. Two requantisations (``requant=``):

* ``"float"`` (default, host targets): XNNPACK's fp32 one (float multiply, round to nearest even),
  which LiteRT uses on CPU. Measured: identical to LiteRT on person_detect (0 steps on both test
  images and on random inputs).
* ``"fixed"`` (the micro target): TFLite's integer fixed-point one (:func:`fixed_point_requant`,
  ``MultiplyByQuantizedMultiplier`` with double rounding: one int32×int32→int64 multiply and shifts,
  no float), what TFLite Micro, CMSIS-NN and LiteRT's builtin int8 kernels compute. The integer
  average pool (imported as a float average rounded half away from zero) becomes an int32 window
  sum and a rounded integer division as well. Measured on person_detect: identical to LiteRT's
  builtin reference kernels (``OpResolverType.BUILTIN_REF``) on both test images and random inputs;
  up to 3 output steps from LiteRT's default XNNPACK path (no_person.bmp: 57 vs 60).

Everything else (softmax, reshapes) keeps its dequantize → op → quantize form.

Use: :func:`fold_qdq` (``mod → mod``; ``requant="float"|"fixed"``), or the registered pass
``qdq_fold`` (float).
"""
from __future__ import annotations

import numpy as np
import tvm

from . import register
from .base import LayerRecord, PassContext
from ..errors import SqccError


def _bindings(func):
    out = []
    for block in func.body.blocks:
        out.extend(block.bindings)
    return out


def _np(expr):
    from ..layers import is_const

    return expr.value.numpy() if is_const(expr) else None


def _qconsts(binds):
    """{var: (int ndarray, scale ndarray, zero-point ndarray)} -- all the same shape -- for
    dequantize(constant) and reshapes of it (the weights and biases)."""
    from ..layers import op_name

    out = {}
    for b in binds:
        v, op = b.value, op_name(b.value)
        if op == "relax.dequantize":
            q, s, z = (_np(a) for a in v.args[:3])
            if q is None or s is None or z is None:
                continue
            axis = int(v.attrs.axis)
            shape = [1] * q.ndim
            if s.size > 1:
                shape[axis if axis >= 0 else q.ndim + axis] = s.size
            s = np.broadcast_to(s.reshape(shape) if s.size > 1 else s.reshape(()), q.shape)
            z = np.broadcast_to(z.reshape(shape) if z.size > 1 else z.reshape(()), q.shape)
            out[b.var] = (q.astype(np.int64), s.astype(np.float64), z.astype(np.int64))
        elif op == "relax.reshape" and v.args[0] in out:
            shape = tuple(int(d) for d in b.var.ty.shape)
            q, s, z = out[v.args[0]]
            out[b.var] = (q.reshape(shape), s.reshape(shape), z.reshape(shape))
    return out


def _scalar(expr):
    a = _np(expr)
    if a is None or a.size != 1:
        return None
    return float(a.reshape(()))


REQUANT_MODES = ("float", "fixed")


def quantize_multiplier(m: float) -> tuple[int, int]:
    """TFLite's ``QuantizeMultiplier``: ``m ≈ q · 2^(shift − 31)`` with q in [2^30, 2^31)."""
    if m == 0.0:
        return 0, 0
    frac, shift = np.frexp(float(m))
    q = int(round(frac * (1 << 31)))  # round half away from zero (std::round); frac > 0
    if q == (1 << 31):
        q //= 2
        shift += 1
    if shift < -31:
        return 0, 0
    return q, int(shift)


def fixed_point_requant(acc, m, shape):
    """Integer-only requantisation of an int32 accumulator ``acc`` by the real multipliers ``m``
    (one per output channel, broadcast with ``shape``), exactly as TFLite's
    ``MultiplyByQuantizedMultiplier`` (TFLite Micro's reference kernels, CMSIS-NN and LiteRT's
    builtin int8 kernels; double rounding):

        x    = acc · 2^max(shift, 0)
        high = SaturatingRoundingDoublingHighMul(x, q) = (x·q + 2^30) >> 31        (int64 product)
        out  = RoundingDivideByPOT(high, e = max(−shift, 0))
             = (high + 2^(e−1) − [high < 0]) >> e     (e ≥ 1; round half away from zero)
             = (((high − [high < 0]) >> (e−1)) + 1) >> 1          (the form emitted when all e ≥ 1)

    The high-mul's nudge (2^30 or 1 − 2^30) and C's truncating division combine to one floor
    shift of x·q + 2^30 for either sign. No float arithmetic: a Cortex-M without (or with) an FPU
    runs it with one ``smull`` and a few shifts. Returns an int32 Relax expression."""
    from tvm import relax

    qs = np.zeros(len(m), np.int64)
    sh = np.zeros(len(m), np.int64)
    for i, v in enumerate(np.asarray(m, np.float64)):
        qs[i], sh[i] = quantize_multiplier(v)
    left = np.maximum(sh, 0)
    right = np.maximum(-sh, 0)
    if right.max() > 31:
        right = np.minimum(right, 31)
    x = acc
    if left.any():
        x = relax.op.multiply(x, relax.const((np.int64(1) << left).astype(np.int32).reshape(shape)))
    prod = relax.op.multiply(relax.op.astype(x, "int64"), relax.const(qs.reshape(shape), "int64"))
    high = relax.op.astype(relax.op.right_shift(
        relax.op.add(prod, relax.const(np.int64(1 << 30), "int64")), relax.const(np.int64(31), "int64")),
        "int32")  # (relax.const turns int64 numpy data into int32 unless told the dtype)
    if not right.any():
        return high
    neg = relax.op.right_shift(high, relax.const(np.int32(31)))  # −1 where high < 0, else 0
    if right.all():
        # (n + 2^(e−1)) >> e == ((n >> (e−1)) + 1) >> 1 for e ≥ 1: one per-channel constant, not two
        y = relax.op.right_shift(relax.op.add(high, neg), relax.const((right - 1).astype(np.int32).reshape(shape)))
        return relax.op.right_shift(relax.op.add(y, relax.const(np.int32(1))), relax.const(np.int32(1)))
    # some channels have e = 0: they take neither the rounding term nor the sign term
    neg = relax.op.bitwise_and(neg, relax.const(np.where(right > 0, -1, 0).astype(np.int32).reshape(shape)))
    rnd = np.where(right > 0, np.int64(1) << np.maximum(right - 1, 0), 0).astype(np.int32)
    y = relax.op.add(relax.op.add(high, relax.const(rnd.reshape(shape))), neg)
    return relax.op.right_shift(y, relax.const(right.astype(np.int32).reshape(shape)))


def _int_avg_pools(binds, by_var) -> dict:
    """Integer average pools imported as astype(float32) → avg_pool2d → sign·floor(|·| + 0.5) →
    astype(int32) (sqcc.tflite_frontend's TFLite rule, in float): {the astype(int32) var: plan}.
    Only unpadded windows (a constant divisor), 8-bit sources, NHWC or NCHW."""
    from ..layers import op_name

    def bind(expr, op):
        b = by_var.get(expr)
        return b if b is not None and op_name(b.value) == op else None

    out = {}
    for b in binds:
        if op_name(b.value) != "relax.astype" or str(b.var.ty.dtype) != "int32":
            continue
        r = bind(b.value.args[0], "relax.multiply")
        if r is None:
            continue
        sb, fb = (bind(a, "relax.sign") for a in r.value.args)
        if sb is None:
            sb, fb = (bind(a, "relax.sign") for a in reversed(r.value.args))
            fb = bind(r.value.args[0], "relax.floor")
        else:
            fb = bind(r.value.args[1], "relax.floor")
        if sb is None or fb is None:
            continue
        pool = sb.value.args[0]
        hb = bind(fb.value.args[0], "relax.add")
        if hb is None or _scalar(hb.value.args[1]) != 0.5:
            continue
        ab = bind(hb.value.args[0], "relax.abs")
        pb = bind(pool, "relax.nn.avg_pool2d")
        if ab is None or pb is None or not ab.value.args[0].same_as(pool):
            continue
        a = pb.value.attrs
        lay = str(a.layout)
        if lay not in ("NHWC", "NCHW") or str(a.out_layout) != lay or any(int(t) for t in a.padding) \
                or any(int(d) != 1 for d in a.dilation) or bool(a.ceil_mode):
            continue
        cb = bind(pb.value.args[0], "relax.astype")
        if cb is None:
            continue
        src = cb.value.args[0]
        inner = bind(src, "relax.astype")
        if inner is not None and str(inner.value.args[0].ty.dtype) in ("int8", "uint8"):
            src = inner.value.args[0]
        if str(src.ty.dtype) not in ("int8", "uint8"):
            continue
        out[b.var] = dict(x=src, layout=lay, pool=[int(k) for k in a.pool_size],
                          strides=[int(t) for t in a.strides])
    return out


def fold_qdq(mod, records: list | None = None, requant: str = "float"):
    """Rewrite every foldable quantised conv of ``mod``'s main into int8 × int8 → int32 (see module doc).

    ``requant``: ``"float"`` (default) -- XNNPACK's fp32 requantisation, bit-exact with LiteRT's
    default CPU path; ``"fixed"`` -- TFLite's integer fixed-point requantisation
    (:func:`fixed_point_requant`: no float at all, what TFLite Micro / CMSIS-NN compute; the
    micro target uses it)."""
    if requant not in REQUANT_MODES:
        raise SqccError(f"qdq_fold: requant must be one of {', '.join(REQUANT_MODES)}, not {requant!r}")
    from tvm import relax

    from ..layers import op_name, tvm_ir_update

    func = mod["main"]
    g = _Graph(func)
    plans = {b.var: p for b in g.binds if op_name(b.value) == "relax.nn.conv2d"
             for p in [_match_conv(b, g)] if p is not None}
    pools = _int_avg_pools(g.binds, g.by_var) if requant == "fixed" else {}
    if not plans and not pools:
        return mod
    folder = _folder_class()(mod, plans, pools, requant, records if records is not None else [])
    out = tvm_ir_update(mod, "main", folder.visit_expr(func))
    out = relax.transform.DeadCodeElimination(["main"])(out)
    return relax.transform.Normalize()(out)


class _Graph:
    """main's bindings with what matching needs: who produces and who uses each var, the
    quantised constants, the returned vars."""

    def __init__(self, func):
        from tvm import relax

        self.binds = _bindings(func)
        self.by_var = {b.var: b for b in self.binds}
        self.users: dict = {}
        for b in self.binds:
            for v in relax.analysis.free_vars(b.value):
                self.users.setdefault(v, []).append(b)
        self.ret_vars = set(relax.analysis.free_vars(func.body.body))
        self.qc = _qconsts(self.binds)

    def sole(self, var):
        """The one binding that uses ``var`` (None if several, none, or it is returned)."""
        us = self.users.get(var, [])
        return us[0] if len(us) == 1 and var not in self.ret_vars else None


def _match_conv(b, g: _Graph) -> dict | None:
    """match → check: a conv2d binding fed by a dequantised int8 input and per-output-channel int8
    weights, then an optional constant bias add, a quantize to int8 and an optional clip; its
    fold plan, or None where any piece does not fit."""
    from ..layers import op_name

    d, wv = b.value.args
    db = g.by_var.get(d)
    if db is None or op_name(db.value) != "relax.dequantize" or wv not in g.qc:
        return None
    s_x, z_x, x_q = _scalar(db.value.args[1]), _scalar(db.value.args[2]), db.value.args[0]
    if s_x is None or z_x is None or str(x_q.ty.dtype) != "int8":
        return None
    wq, ws, wz = g.qc[wv]
    a = b.value.attrs
    oax = str(a.kernel_layout).index("O")
    o = wq.shape[oax]
    s_w_all = np.moveaxis(ws, oax, 0).reshape(o, -1)
    if np.any(wz != 0) or wq.min() < -128 or wq.max() > 127 or not np.allclose(s_w_all, s_w_all[:, :1]):
        return None
    s_w = s_w_all[:, 0]
    members, cur = [], b.var
    bias, bias_int, exact_bias, cur = _match_bias(g, cur, o, s_x * s_w, members)
    out = _match_output(g, cur, members)
    if out is None:
        return None
    s_y, z_y, lo, hi, cur = out
    m = s_x * s_w / s_y
    z_x += 128  # the kernel reads x + 128 as uint8 (see _Folder.shifted)
    wsum = np.moveaxis(wq, oax, 0).reshape(o, -1).sum(axis=1)
    if exact_bias:
        # TFLite's arithmetic: integer offset (bias − z_x·ΣW) added to the int32 accumulator,
        # then one multiply and round-half-away-from-zero, then the output zero point
        koff, add = (bias_int - int(z_x) * wsum).astype(np.int32), None
    else:
        koff, add = None, (bias - z_x * s_x * s_w * wsum) / s_y
    return dict(x_q=x_q, z_x=z_x, wq=wq.astype(np.int8), attrs=a, m=m, add=add, koff=koff, z_y=z_y, lo=lo,
                hi=hi, out=cur, members=members, olay=str(a.out_layout), o=o)


def _match_bias(g: _Graph, cur, o: int, s_acc, members: list):
    """(float bias, int32 bias in units of s_x·s_w — TFLite's, whether those units hold, the var
    after it) for a constant per-channel add right after the conv; zeros when there is none."""
    from ..layers import op_name

    nxt = g.sole(cur)
    if nxt is not None and op_name(nxt.value) == "relax.add":
        other = nxt.value.args[1] if nxt.value.args[0].same_as(cur) else nxt.value.args[0]
        if other in g.qc and g.qc[other][0].size == o:
            bq, bs, bz = g.qc[other]
            members.append(nxt.var)
            return (((bq - bz) * bs).reshape(-1), (bq - bz).reshape(-1),
                    np.allclose(bs.reshape(-1), s_acc, rtol=1e-5), nxt.var)
    return np.zeros(o), np.zeros(o, np.int64), True, cur


def _match_output(g: _Graph, cur, members: list):
    """(s_y, z_y, lo, hi, last var) for the quantize to int8 (and an optional clip) that must
    follow; None without one."""
    from ..layers import op_name

    nxt = g.sole(cur)
    if nxt is None or op_name(nxt.value) != "relax.quantize":
        return None
    s_y, z_y = _scalar(nxt.value.args[1]), _scalar(nxt.value.args[2])
    if s_y is None or z_y is None or str(nxt.var.ty.dtype) != "int8":
        return None
    members.append(nxt.var)
    cur, lo, hi = nxt.var, -128.0, 127.0
    nxt = g.sole(cur)
    if nxt is not None and op_name(nxt.value) == "relax.clip":
        try:
            lo = max(lo, float(nxt.value.args[1].value))
            hi = min(hi, float(nxt.value.args[2].value))
            members.append(nxt.var)
            cur = nxt.var
        except Exception:  # noqa: BLE001 -- a clip with non-constant bounds stays as it is
            pass
    return s_y, z_y, lo, hi, cur


def _requant_fixed(acc, p, shape):
    """int32 accumulator → int8 by TFLite's integer arithmetic (offset, fixed-point multiply,
    zero point, clamp)."""
    from tvm import relax

    koff = p["koff"]
    if koff is None:  # float bias not in TFLite's int32 units: nearest integer offset
        koff = np.round(p["add"] / p["m"]).astype(np.int32)
    y = fixed_point_requant(relax.op.add(acc, relax.const(koff.reshape(shape))), p["m"], shape)
    y = relax.op.add(y, relax.const(np.int32(p["z_y"])))
    y = relax.op.maximum(relax.op.minimum(y, relax.const(np.int32(p["hi"]))), relax.const(np.int32(p["lo"])))
    return relax.op.astype(y, "int8")


def _requant_float(acc, p, shape):
    """int32 accumulator → int8 as XNNPACK does it (LiteRT's CPU path): fp32 multiply, round to
    nearest even, zero point, clamp."""
    from tvm import relax

    if p["koff"] is not None:
        acc = relax.op.add(acc, relax.const(p["koff"].reshape(shape)))
    y = relax.op.multiply(relax.op.astype(acc, "float32"), relax.const(p["m"].astype(np.float32).reshape(shape)))
    if p["add"] is not None:
        y = relax.op.add(y, relax.const(p["add"].astype(np.float32).reshape(shape)))
    y = relax.op.add(relax.op.round(y), relax.const(np.float32(p["z_y"])))
    y = relax.op.maximum(relax.op.minimum(y, relax.const(np.float32(p["hi"]))), relax.const(np.float32(p["lo"])))
    return relax.op.astype(y, "int8")


def _int_avg_pool_expr(x, p):
    """TFLite's integer average pool: window sum in int32 (a depthwise conv with ones), then
    (sum ± n/2) / n truncated, i.e. round half away from zero. No float. (sum, result)."""
    from tvm import relax

    lay = p["layout"]
    c = int(x.ty.shape[lay.index("C")])
    kh, kw = p["pool"]
    ones = np.ones((kh, kw, 1, c) if lay == "NHWC" else (c, 1, kh, kw), np.int8)
    acc = relax.op.nn.conv2d(x, relax.const(ones), strides=p["strides"], padding=[0, 0, 0, 0], groups=c,
                             data_layout=lay, kernel_layout="HWIO" if lay == "NHWC" else "OIHW", out_dtype="int32")
    return acc, (kh * kw, (kh * kw) // 2)


def _folder_class():
    from tvm import relax
    from tvm.relax.expr_functor import PyExprMutator, mutator

    @mutator
    class _Folder(PyExprMutator):
        def __init__(self, m, plans, pools, requant, recs):
            super().__init__(m)
            self.plans, self.pools, self.requant, self.recs = plans, pools, requant, recs
            self.members = {v for p in plans.values() for v in p["members"]}
            self.u8 = {}

        def shifted(self, var):
            """int8 x (zero point z) as uint8 x + 128 (zero point z + 128): the same numbers, but
            activations with z = −128 (every ReLU/ReLU6 output) get zero point 0, so zero padding
            is exact without a pad op, and uint8 × int8 is what VNNI multiplies."""
            if var not in self.u8:
                x = self.visit_expr(var)
                self.u8[var] = self.builder_.emit(relax.op.astype(relax.op.add(
                    relax.op.astype(x, "int32"), relax.const(np.int32(128))), "uint8"))
            return self.u8[var]

        def visit_var_binding_(self, binding):
            v = binding.var
            if v in self.members:
                return
            if v in self.pools:
                return self._int_avg_pool(v, self.pools[v])
            p = self.plans.get(v)
            if p is None:
                return super().visit_var_binding_(binding)
            acc = self.builder_.emit(self._int8_conv(p), v.name + "_i32")
            shape = [1, 1, 1, 1]
            shape[p["olay"].index("C")] = p["o"]
            if self.requant == "fixed":
                return self._emit_out(p, v, _requant_fixed(acc, p, shape), "fixed-point")
            self._emit_out(p, v, _requant_float(acc, p, shape), "fp32")

        def _int8_conv(self, p):
            a = p["attrs"]
            x, zx = self.shifted(p["x_q"]), int(p["z_x"])
            pad, dl = [int(t) for t in a.padding], str(a.data_layout)
            if any(pad) and zx != 0:  # pad with the zero point explicitly (a real 0)
                pt, pl, pb, pr = pad
                width = []
                for ax in dl:
                    width += [pt, pb] if ax == "H" else [pl, pr] if ax == "W" else [0, 0]
                x = self.builder_.emit(relax.op.nn.pad(x, width, pad_value=float(zx)))
                pad = [0, 0, 0, 0]
            return relax.op.nn.conv2d(
                x, relax.const(p["wq"]), strides=[int(s) for s in a.strides], padding=pad,
                dilation=[int(d) for d in a.dilation], groups=int(a.groups), data_layout=dl,
                kernel_layout=str(a.kernel_layout), out_layout=p["olay"], out_dtype="int32")

        def _int_avg_pool(self, v, p):
            sum_expr, (n, half) = _int_avg_pool_expr(self.visit_expr(p["x"]), p)
            acc = self.builder_.emit(sum_expr, v.name + "_sum")
            pos = relax.op.floor_divide(relax.op.add(acc, relax.const(np.int32(half))), relax.const(np.int32(n)))
            neg = relax.op.negative(relax.op.floor_divide(
                relax.op.subtract(relax.const(np.int32(half)), acc), relax.const(np.int32(n))))
            out = relax.op.where(relax.op.greater_equal(acc, relax.const(np.int32(0))), pos, neg)
            new = self.builder_.emit(out, v.name) if isinstance(v, relax.DataflowVar) else \
                self.builder_.emit_output(out, v.name)
            self.set_var_remap(v, new)
            kh, kw = p["pool"]
            self.recs.append(LayerRecord(v.name, "qdq_fold", True,
                                         f"integer average pool {kh}×{kw} (int32 sum, rounded division)"))

        def _emit_out(self, p, v, out, how):
            o_var = p["out"]
            if isinstance(o_var, relax.DataflowVar):
                new = self.builder_.emit(out, o_var.name)
            else:
                new = self.builder_.emit_output(out, o_var.name)
            self.set_var_remap(o_var, new)
            self.recs.append(LayerRecord(v.name, "qdq_fold", True,
                                         f"int8×int8→int32, groups={int(p['attrs'].groups)}, zero point "
                                         f"{int(p['z_x'])}, {how} requantisation"))

    return _Folder


def is_int8_tflite(model) -> bool:
    """Whether a frontend.Model is a quantised TFLite model (what fold_qdq is for)."""
    return getattr(model, "format", None) == "tflite" and bool(getattr(model, "quant", None))


@register("qdq_fold", "fold imported dequantize→conv→quantize chains (int8 TFLite) into int8×int8→int32 convs")
@tvm.transform.module_pass(opt_level=0, name="sqcc.qdq_fold")
class QdqFold:
    def __init__(self, context=None):
        self.context = context if context is not None else PassContext()

    def transform_module(self, mod, _ctx):
        try:
            return fold_qdq(mod, self.context.records)
        except SqccError:
            raise
