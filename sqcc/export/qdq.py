"""sqcc's int8 graph → QDQ ONNX: QuantizeLinear / DequantizeLinear around float ops.

What sqcc's ``int8`` pass emits, and what each becomes:

* quantise ``astype(max(min(round(x·(1/s)), hi), lo), u8|s8)`` → ``QuantizeLinear(x, s, 0)`` (a float
  ``Clip`` first where [lo, hi] is narrower than the type: symmetric int8 stops at -127);
* an integer layer ``conv2d(x_q, w_q, out_dtype=int32)`` → ``astype(f32)`` → ``·M + B`` → (requantised:
  round, clip, astype to the consumer's scale | float: ReLU/clip) → ``DequantizeLinear(x_q, s_x)``,
  ``DequantizeLinear(w_q, s_w, axis=0)`` (per output channel), ``Conv`` with a float bias, then
  ``QuantizeLinear(y, s_y)`` or the float activation;
* a requantisation ``astype(q, f32)·(s_a/s_b)`` → round/clip/astype → ``DequantizeLinear`` →
  ``QuantizeLinear``; a dequantisation ``astype(q, f32)·s`` → ``DequantizeLinear(q, s)``;
* max-pool and concat stay on the uint8/int8 tensors (exact; ONNX runs both on 8-bit types).

Scales: the graph holds only their products (``M = s_x·s_w/s_y``), so each layer's output scale is
taken from sqcc's calibration as the pass recorded it in the report ("→ out uint8 (scale 0.05178)",
4 significant digits) -- or, where the layer also has a float output, derived exactly from it -- and
the weight scales are derived from it, so that ``round(conv·s_x·s_w/s_y + b/s_y)`` is the same
integer arithmetic sqcc's build computes. The input scale is the quantise multiplier's inverse.
"""
from __future__ import annotations

import re

import numpy as np

from ..layers import op_name
from .onnx_ops import HANDLERS

_OUT_SCALE = re.compile(r"→ out u?int8 \(scale ([0-9.eE+-]+)\)")
_QTYPES = {"uint8": (0, 255), "int8": (-128, 127)}


def recorded_scales(report: dict) -> dict[str, float]:
    """{layer: output scale} of the int8 layers, from the pass records in the report."""
    out = {}
    for r in report.get("passes") or []:
        if r.get("technique") == "int8" and r.get("applied"):
            m = _OUT_SCALE.search(r.get("detail") or "")
            if m:
                out[r["layer"]] = float(m.group(1))
    return out


def _follow(g, var, ops):
    """The sole-user chain from ``var`` through ``ops`` (op names), as [(var, call)], or None."""
    chain = []
    for op in ops:
        u = g.sole_user(var)
        if u is None or op_name(u[1]) != op:
            return None
        chain.append(u)
        var = u[0]
    return chain


def _const_operand(g, call, var):
    a, b = call.args
    other = b if a.same_as(var) else a
    return g.const_of(other)


def _round_clip_cast(g, var):
    """After ``var``: round → minimum(hi) → maximum(lo) → astype(int8|uint8): (lo, hi, dtype, last
    var), else None."""
    chain = _follow(g, var, ("relax.round", "relax.minimum", "relax.maximum", "relax.astype"))
    if chain is None:
        return None
    hi = _const_operand(g, chain[1][1], chain[0][0])
    lo = _const_operand(g, chain[2][1], chain[1][0])
    dtype = str(chain[3][1].attrs.dtype)
    if hi is None or lo is None or hi.size != 1 or lo.size != 1 or dtype not in _QTYPES:
        return None
    for v, _ in chain:
        g.absorbed.add(v)
    return float(lo), float(hi), dtype, chain[3][0]


class QdqState:
    """The scale and type of every quantised ONNX tensor, and the float views made of them."""

    def __init__(self, report):
        self.scales = recorded_scales(report)
        self.q: dict[str, tuple[float, str]] = {}  # ONNX name -> (scale, dtype)
        self.deq: dict[str, str] = {}  # quantised name -> its DequantizeLinear output
        self.derived: list[str] = []  # layers whose output scale was not recorded
        self.float_steps: list[float] = []  # input scales of the layers with float outputs

    def step(self) -> float | None:
        """One quantisation step of the last 8-bit activations before a float output: what a value
        rounded the other way there moves the output by at most (ReLU, pooling, a mean do not
        enlarge it); the QDQ file is checked against the package within it."""
        return max(self.float_steps) if self.float_steps else None


def _scalar(g, value, dtype, name):
    return g.init(np.asarray(value, dtype).reshape(()), name)


def quantize(g, st, x: str, scale: float, lo, hi, dtype, out_var, name) -> str:
    """QuantizeLinear(x, scale, 0) into ``out_var``'s name, with a float Clip where [lo, hi] is
    narrower than the type's range."""
    tmin, tmax = _QTYPES[dtype]
    if lo > tmin or hi < tmax:
        x = g.node("Clip", [x, _scalar(g, lo * scale, np.float32, f"{name}.qmin"),
                            _scalar(g, hi * scale, np.float32, f"{name}.qmax")], name=f"{name}/clip")
    out = g.node("QuantizeLinear", [x, _scalar(g, scale, np.float32, f"{name}.scale"),
                                    _scalar(g, 0, dtype, f"{name}.zero_point")], g.out_name(out_var),
                 name=f"{name}/quantize")
    g.absorb(out_var, out)
    st.q[out] = (scale, dtype)
    return out


def dequantized(g, st, q: str) -> str:
    """The float view of quantised tensor ``q`` (one DequantizeLinear per tensor)."""
    if q not in st.deq:
        scale, dtype = st.q[q]
        st.deq[q] = g.node("DequantizeLinear", [q, _scalar(g, scale, np.float32, f"{q}.scale"),
                                                _scalar(g, 0, dtype, f"{q}.zero_point")],
                           g.fresh(f"{q}.dequant"), name=f"{q}/dequantize")
    return st.deq[q]


# ------------------------------------------------------------------------------------ handlers
def _mul_add(g, var):
    """``var`` read by ``multiply(var, K)`` → ``add(·, C)``: (K, C, the add's var), else None."""
    values = g.values
    users = g.users.get(var, [])
    out = []
    for u in users:
        if u is None or op_name(values[u]) != "relax.multiply":
            return None
        k = _const_operand(g, values[u], var)
        add = g.sole_user(u)
        c = _const_operand(g, add[1], u) if add is not None and op_name(add[1]) == "relax.add" else None
        if k is None or c is None:
            return None
        out.append((u, k, c, add[0]))
    return out or None


def _layer_scales(g, st, layer, s_in, chains, n):
    """(weight scales, output scale or None, bias) of an int8 layer from its epilogues: a float
    epilogue gives s_w = K/s_x exactly; else the recorded output scale does, s_w = K·s_y/s_x."""
    floats = [ch for ch in chains if ch[4] is None]
    reqs = [ch for ch in chains if ch[4] is not None]
    if floats:
        k, c = floats[0][1].reshape(-1), floats[0][2].reshape(-1)
        s_w = np.broadcast_to(k / s_in, (n,))
        s_out = float(np.median(k / reqs[0][1].reshape(-1))) if reqs else None
        return s_w, s_out, np.broadcast_to(c, (n,))
    s_out = st.scales.get(layer)
    if s_out is None:  # not recorded: any scale gives the same integers; say so in the metadata
        s_out = s_in
        st.derived.append(layer)
    k, c = reqs[0][1].reshape(-1), reqs[0][2].reshape(-1)
    return np.broadcast_to(k * s_out / s_in, (n,)), s_out, np.broadcast_to(c * s_out, (n,))


def _epilogues(g, var):
    """The integer layer's epilogues after ``astype(acc, float32)``: [(mul var, K, C, add var,
    requantisation or None)], or None when the pattern is not sqcc's."""
    cast = g.sole_user(var)
    if cast is None or op_name(cast[1]) != "relax.astype" or str(cast[1].attrs.dtype) != "float32":
        return None, None
    chains = _mul_add(g, cast[0])
    if chains is None:
        return None, None
    return cast[0], [(m, k, c, a, _round_clip_cast(g, a)) for m, k, c, a in chains]


def int_layer(g, st, var, call, base):
    """conv2d / matmul with int32 output and its epilogues → DQ, DQ(weights), Conv/Gemm, Q."""
    out_dtype = getattr(call.attrs, "out_dtype", None)
    if out_dtype is None or not str(out_dtype).startswith("int"):
        return base(g, var, call)
    xq, wq = g.value(call.args[0]), g.const_of(call.args[1])
    cast, chains = _epilogues(g, var)
    if xq not in st.q or wq is None or chains is None:
        raise g.unsupported("an integer layer not in the form sqcc's int8 pass writes (quantised "
                            "input, constant int8 weights, astype→multiply→add epilogue)")
    conv = op_name(call) == "relax.nn.conv2d"
    n = wq.shape[0] if conv else wq.shape[1]
    layer = var.name[:-4] if var.name.endswith("_i32") else var.name
    s_w, s_out, bias = _layer_scales(g, st, layer, st.q[xq][0], chains, n)
    w = g.node("DequantizeLinear", [g.init(wq, f"{layer}.weight_quantized"),
                                    g.init(np.asarray(s_w, np.float32), f"{layer}.weight_scale"),
                                    g.init(np.zeros(n, wq.dtype), f"{layer}.weight_zero_point")],
               g.fresh(f"{layer}.weight"), name=f"{layer}.weight/dequantize", axis=0 if conv else 1)
    x = dequantized(g, st, xq)
    b = g.init(np.asarray(bias, np.float32), f"{layer}.bias")
    y = _float_layer(g, call, conv, layer, [x, w, b])
    g.value_info[y] = (tuple(int(d) for d in var.ty.shape), "float32")
    g.absorbed.add(cast)
    for m, _, _, a, req in chains:
        g.absorbed.add(m)
        if req is None:
            g.absorb(a, y)
            st.float_steps.append(float(st.q[xq][0]))
        else:
            g.absorbed.add(a)
            lo, hi, dtype, last = req
            quantize(g, st, y, s_out, lo, hi, dtype, last, layer)
    return y


def _float_layer(g, call, conv, layer, ins):
    if not conv:
        return g.node("Gemm", ins, g.fresh(layer), name=layer)
    a = call.attrs
    from .onnx_graph import ints

    kshape = [int(d) for d in list(call.args[1].ty.shape)[2:]]
    return g.node("Conv", ins, g.fresh(layer), name=layer, kernel_shape=kshape, strides=ints(a.strides),
                  pads=ints(a.padding), dilations=ints(a.dilation), group=int(a.groups))


def quantize_op(g, st, var, call, base):
    """``multiply(x, 1/s)`` → round/clip/astype: QuantizeLinear(x, s); other multiplies as usual."""
    x, c = call.args
    k = g.const_of(c)
    if k is None or k.size != 1 or g.const_of(x) is not None or not str(x.ty.dtype).startswith("float"):
        return base(g, var, call)
    req = _round_clip_cast(g, var)
    if req is None:
        return base(g, var, call)
    lo, hi, dtype, last = req
    return quantize(g, st, g.value(x), 1.0 / float(k.reshape(())), lo, hi, dtype, last, var.name)


def astype_op(g, st, var, call, base):
    """``astype(q, float32)`` then ``·r`` (→ round/clip/astype: requantisation to s/r; else a
    dequantisation with scale r)."""
    src = g.value(call.args[0])
    if src not in st.q or str(call.attrs.dtype) != "float32":
        return base(g, var, call)
    users = g.users.get(var, [])
    if not users or any(u is None or op_name(g.values[u]) != "relax.multiply" for u in users):
        return base(g, var, call)
    scale, _ = st.q[src]
    for u in users:
        r = _const_operand(g, g.values[u], var)
        if r is None or r.size != 1:
            raise g.unsupported("a dequantisation by a non-scalar factor")
        r = float(r.reshape(()))
        req = _round_clip_cast(g, u)
        if req is None:  # a float consumer: the dequantised tensor itself
            out = g.node("DequantizeLinear", [src, _scalar(g, r, np.float32, f"{u.name}.scale"),
                                              _scalar(g, 0, st.q[src][1], f"{u.name}.zero_point")],
                         g.out_name(u), name=f"{u.name}/dequantize")
            g.absorb(u, out)
            continue
        g.absorbed.add(u)
        lo, hi, dtype, last = req
        quantize(g, st, dequantized(g, st, src), scale / r, lo, hi, dtype, last, u.name)
    return src


def keep_scale(g, st, var, call, base):
    """max-pool / concat: on 8-bit tensors they stay 8-bit, with their input's scale."""
    out = base(g, var, call)
    args = list(call.args[0].fields) if hasattr(call.args[0], "fields") else [call.args[0]]
    names = [g.names.get(a) for a in args]
    qs = {st.q[n] for n in names if isinstance(n, str) and n in st.q}
    if len(qs) > 1:
        raise g.unsupported("concatenates 8-bit tensors of different scales")
    if qs:
        st.q[out] = qs.pop()
    return out


def qdq_handlers(pkg) -> dict:
    """The ONNX handlers with sqcc's int8 patterns turned into QDQ (see the module docstring)."""
    st = QdqState(pkg.report or {})

    def wrap(fn, op):
        base = HANDLERS[op]
        return lambda g, var, call: fn(g, st, var, call, base)

    h = dict(HANDLERS)
    for op, fn in (("relax.nn.conv2d", int_layer), ("relax.matmul", int_layer), ("relax.multiply", quantize_op),
                   ("relax.astype", astype_op), ("relax.nn.max_pool2d", keep_scale), ("relax.concat", keep_scale)):
        h[op] = wrap(fn, op)
    h["__qdq_state__"] = st
    return h
