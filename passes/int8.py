"""``int8``: calibrated post-training quantisation to true integer arithmetic.

What the pass does to ``main`` (NCHW conv2d / matmul with constant weights, as the frontends emit):

* **Weights**: per output channel, symmetric int8: ``w_q = clip(round(W / s_w[o]), -127, 127)`` with
  ``s_w[o] = max|W[o]| / 127``.
* **Activations**: one scale per tensor, zero point 0. A tensor that calibration shows non-negative
  (post-ReLU, max-pool or concat of such) is **uint8** (``s = r/255``); any other tensor is int8
  (``s = r/127``). Zero points of 0 keep zero padding exact and need no correction terms, and
  uint8×int8 is exactly what x86 VNNI ``vpdpbusd`` multiplies.
  The range ``r`` comes from the calibration activations by ``calibration=minmax|percentile|
  entropy|mse`` (see :func:`calibrate_range`).
* **A layer** = conv2d (or matmul) + its bias add + ReLU/clip (each used only by the next) becomes
  ``conv2d(x_q, w_q, out_dtype="int32")`` followed by its epilogue: either the requantisation to the
  consumer's scale (``round(acc·M[o] + B[o])`` clipped to the output range -- ReLU *is* that clip),
  when every consumer takes int8, or the float output ``acc·s_x·s_w[o] + b[o]`` (+ ReLU) for float
  consumers. FuseOps fuses the epilogue into the conv kernel.
* **Chains stay int8**: a tensor produced by a quantised layer and consumed by quantised layers never
  exists in float -- there is no dequantize→quantize pair between consecutive int8 layers.
  Max-pool runs on the int8 tensor (exact: rounding and clipping are monotone, so they commute with
  max); a concat's producers requantise straight to the concat's scale, so the concat is a copy.
* **Bias correction** (``bias_correction=true``): the bias absorbs the mean output error the
  quantised weights and the quantised input cause on calibration data,
  ``Σ_c,k (W·E[x_c] − Ŵ·E[x̂_c])``.
* ``keep=conv0,conv25`` leaves those layers float (an unknown name is an error listing valid ones).

Calibration activations: ``PassContext.extra["calibration_feeds"]`` (model inputs; activations of the
module *as the pass receives it* are then collected, so the pass also works after other rewrites), or
``PassContext.activations`` ({layer: input activations} of the original model, from sqcc.calibrate).

:func:`sensitivity` (agreement loss when only one layer is quantised) is for the CLI / report.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import tvm

from . import Param, register
from .base import LayerRecord, PassContext, rel_error
from ..errors import SqccError

METHODS = ("minmax", "percentile", "entropy", "mse")


# -------------------------------------------------------------------------------------- calibration

def _hist(x: np.ndarray, bins: int = 2048):
    a = np.abs(np.asarray(x, np.float32).reshape(-1))
    amax = float(a.max()) if a.size else 0.0
    if amax <= 0:
        return None, 0.0
    h, edges = np.histogram(a, bins=bins, range=(0.0, amax))
    return h.astype(np.float64), amax


def _kl_threshold(hist: np.ndarray, amax: float, levels: int) -> float:
    """TensorRT's entropy calibration: the clipping threshold whose ``levels``-bin quantised
    distribution has the smallest KL divergence to the (clipped) reference histogram."""
    bins = len(hist)
    if bins <= levels:
        return amax
    best, best_i = np.inf, bins
    total = hist.sum()
    for i in range(levels, bins + 1, max(1, (bins - levels) // 256)):
        p = hist[:i].copy()
        p[i - 1] += hist[i:].sum()  # outliers clipped into the last bin
        nz = p > 0
        # quantise the first i bins into `levels` groups, spread each group's mass over its
        # non-empty bins
        idx = (np.arange(i) * levels) // i
        sums = np.bincount(idx, weights=hist[:i], minlength=levels)
        cnts = np.bincount(idx, weights=(hist[:i] > 0).astype(np.float64), minlength=levels)
        q = np.where(hist[:i] > 0, sums[idx] / np.maximum(cnts[idx], 1), 0.0)
        ps, qs = p[nz] / total, q[nz]
        if qs.sum() <= 0 or np.any(qs <= 0):
            qs = np.maximum(qs, 1e-12)
        qs = qs / qs.sum()
        ps = ps / ps.sum()
        kl = float(np.sum(ps * np.log(ps / qs)))
        if kl < best:
            best, best_i = kl, i
    return (best_i + 0.5) * amax / bins


def _mse_threshold(hist: np.ndarray, amax: float, levels: int) -> float:
    """Clipping threshold minimising the expected squared quantise-dequantise error (histogram)."""
    bins = len(hist)
    centres = (np.arange(bins) + 0.5) * amax / bins
    best, best_r = np.inf, amax
    for frac in np.linspace(0.2, 1.0, 161):
        r = frac * amax
        s = r / levels
        q = np.minimum(np.round(centres / s), levels) * s
        err = float(np.sum(hist * (centres - q) ** 2))
        if err < best:
            best, best_r = err, r
    return best_r


def calibrate_range(x: np.ndarray, method: str = "entropy", unsigned: bool = False,
                    percentile: float = 99.99) -> float:
    """Clipping range r > 0 of a tensor from calibration samples ``x`` (|x| for signed tensors)."""
    x = np.asarray(x, np.float32)
    if unsigned:
        x = np.maximum(x, 0)
    levels = 255 if unsigned else 127
    amax = float(np.abs(x).max()) if x.size else 0.0
    if amax <= 0:
        return 1e-6
    if method == "minmax":
        return amax
    if method == "percentile":
        a = np.abs(x).reshape(-1)
        if a.size > 4_000_000:
            a = a[np.random.default_rng(0).choice(a.size, 4_000_000, replace=False)]
        return max(float(np.percentile(a, percentile)), 1e-6)
    hist, amax = _hist(x)
    if unsigned:
        hist[0] = 0.0  # post-ReLU zeros are exact in any range; they would drag KL's range down
    if method == "entropy":
        return max(_kl_threshold(hist, amax, levels + 1), 1e-6)
    if method == "mse":
        return max(_mse_threshold(hist, amax, levels), 1e-6)
    raise SqccError(f"int8: unknown calibration method '{method}' (one of {', '.join(METHODS)})")


@dataclass(frozen=True)
class QParams:
    scale: float
    dtype: str  # "uint8" | "int8"

    @property
    def lo(self):
        return 0 if self.dtype == "uint8" else -127

    @property
    def hi(self):
        return 255 if self.dtype == "uint8" else 127


# |w_q| bound per weight_bits: 8 → ±127; 7 → ±64, the most that keeps AVX2 vpmaddubsw exact
# (a uint8 activation pair times ±64 sums to at most 2·255·64 = 32640 ≤ 32767, no int16 saturation)
WEIGHT_QMAX = {8: 127, 7: 64}


def quantize_weight(w: np.ndarray, qmax: int = 127):
    """Per-output-channel symmetric int8, |w_q| ≤ qmax: (w_q int8, scale per channel)."""
    w = np.asarray(w, np.float32)
    amax = np.abs(w.reshape(w.shape[0], -1)).max(axis=1)
    s = np.where(amax > 0, amax / float(qmax), 1.0).astype(np.float32)
    q = np.clip(np.round(w / s.reshape((-1,) + (1,) * (w.ndim - 1))), -qmax, qmax).astype(np.int8)
    return q, s


def fake_quant(x: np.ndarray, qp: QParams) -> np.ndarray:
    return np.clip(np.round(x / qp.scale), qp.lo, qp.hi) * qp.scale


# ------------------------------------------------------------------------------------ graph analysis

@dataclass
class Unit:
    """conv2d / matmul + bias + activation, quantised as one int8 layer."""

    name: str
    kind: str  # "conv" | "matmul"
    binding: object
    data: object  # relax var of the input
    weight: np.ndarray  # OIHW (conv) or K×N (matmul)
    bias: np.ndarray | None = None
    act: tuple | None = None  # (lo, hi) float bounds of a ReLU/clip, None for none
    members: list = field(default_factory=list)  # vars folded in (bias add, activation)
    out: object = None  # var holding the unit's final float output


def _bindings(func):
    out = []
    for block in func.body.blocks:
        out.extend(block.bindings)
    return out


def _const_value(expr, consts):
    from tvm import relax

    from ..layers import is_const

    if is_const(expr):
        return expr.value.numpy()
    if isinstance(expr, relax.Var) and expr in consts:
        return consts[expr]
    return None


def _fold_consts(binds):
    """{var: ndarray} for bindings that only reshape / transpose / cast constants."""
    from tvm import relax

    from ..layers import op_name

    consts = {}
    for b in binds:
        v = b.value
        op = op_name(v)
        if op in ("relax.reshape", "relax.permute_dims", "relax.astype", "relax.expand_dims",
                  "relax.squeeze") and isinstance(v, relax.Call):
            a = _const_value(v.args[0], consts)
            if a is None:
                continue
            try:
                shape = tuple(int(d) for d in b.var.ty.shape)
            except Exception:
                continue
            if op == "relax.permute_dims":
                axes = v.attrs.axes
                a = np.transpose(a, [int(x) for x in axes] if axes is not None else None)
            elif op == "relax.astype":
                a = a.astype(str(v.attrs.dtype))
            consts[b.var] = np.ascontiguousarray(a.reshape(shape))
    return consts


def find_units(func):
    """[Unit] of conv2d/matmul layers with constant weights, their bias add and activation folded."""
    from tvm import relax

    from ..layers import op_name
    from .base import conv_calls_supported

    binds = _bindings(func)
    consts = _fold_consts(binds)
    users: dict = {}
    for b in binds:
        for v in relax.analysis.free_vars(b.value):
            users.setdefault(v, []).append(b)
    ret_vars = set(relax.analysis.free_vars(func.body.body))

    def sole_user(var):
        us = users.get(var, [])
        if len(us) == 1 and var not in ret_vars:
            return us[0]
        return None

    units = []
    for b in binds:
        op = op_name(b.value)
        if op == "relax.nn.conv2d":
            w = _const_value(b.value.args[1], consts)
            if w is None or conv_calls_supported(b.value) is not None:
                continue
            if not str(b.var.ty.dtype).startswith("float") or not isinstance(b.value.args[0], relax.Var):
                continue
            u = Unit(b.var.name, "conv", b, b.value.args[0], w.astype(np.float32))
            nout = w.shape[0]
        elif op == "relax.matmul":
            w = _const_value(b.value.args[1], consts)
            if w is None or w.ndim != 2 or not isinstance(b.value.args[0], relax.Var):
                continue
            if len(b.value.args[0].ty.shape) != 2 or not str(b.var.ty.dtype).startswith("float"):
                continue
            u = Unit(b.var.name, "matmul", b, b.value.args[0], w.astype(np.float32))
            nout = w.shape[1]
        else:
            continue
        cur = b.var
        nxt = sole_user(cur)
        if nxt is not None and op_name(nxt.value) == "relax.add":
            a0, a1 = nxt.value.args
            other = a1 if a0.same_as(cur) else a0
            bias = _const_value(other, consts)
            if bias is not None and bias.size == nout and tuple(nxt.var.ty.shape) == tuple(b.var.ty.shape):
                u.bias = bias.reshape(-1).astype(np.float32)
                u.members.append(nxt.var)
                cur = nxt.var
                nxt = sole_user(cur)
        if nxt is not None:
            nop = op_name(nxt.value)
            if nop == "relax.nn.relu":
                u.act = (0.0, None)
            elif nop == "relax.nn.relu6":
                u.act = (0.0, 6.0)
            elif nop == "relax.clip":
                try:
                    lo, hi = float(nxt.value.args[1].value), float(nxt.value.args[2].value)
                    u.act = (lo, hi)
                except Exception:
                    pass
            if u.act is not None:
                u.members.append(nxt.var)
                cur = nxt.var
        u.out = cur
        units.append(u)
    return units


def layer_names(mod) -> list[str]:
    return [u.name for u in find_units(mod["main"])]


# --------------------------------------------------------------------------------------------- pass

def _f32(x):
    return tvm.relax.const(np.asarray(x, np.float32))


def _clip(bb, x, lo, hi):
    """clip as maximum(minimum(x, hi), lo) with scalar constants: unlike relax clip these are
    layout-agnostic elementwise ops, so they stay fused into the conv epilogue after NHWC."""
    from tvm import relax

    return relax.op.maximum(relax.op.minimum(x, _f32(hi)), _f32(lo))


def _quantize_expr(x_float, qp: QParams):
    from tvm import relax

    y = relax.op.round(relax.op.multiply(x_float, _f32(1.0 / qp.scale)))
    return relax.op.astype(_clip(None, y, qp.lo, qp.hi), qp.dtype)


def _dequantize_expr(xq, scale):
    from tvm import relax

    return relax.op.multiply(relax.op.astype(xq, "float32"), _f32(scale))


def _int8_call(unit: Unit, xq, wq):
    from tvm import relax

    if unit.kind == "conv":
        a = unit.binding.value.attrs
        return relax.op.nn.conv2d(xq, relax.const(wq), strides=[int(s) for s in a.strides],
                                  padding=[int(p) for p in a.padding],
                                  dilation=[int(d) for d in a.dilation], groups=int(a.groups),
                                  out_dtype="int32")
    return relax.op.matmul(xq, relax.const(wq), out_dtype="int32")


def _chan_shape(unit: Unit, n):
    return (1, n, 1, 1) if unit.kind == "conv" else (1, n)


def _mean_per_channel(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float64)
    return x.mean(axis=(0, 2, 3)) if x.ndim == 4 else x.mean(axis=0)


def _bias_correction(unit: Unit, w_dq: np.ndarray, acts: np.ndarray, qin: QParams) -> np.ndarray:
    """Mean output shift E[conv(x, W)] − E[conv(x̂, Ŵ)] per output channel (linear in the means)."""
    mx = _mean_per_channel(acts)
    mxq = _mean_per_channel(fake_quant(acts, qin))
    w = unit.weight.astype(np.float64)
    if unit.kind == "matmul":  # K×N
        return (mx @ w - mxq @ w_dq.astype(np.float64)).astype(np.float32)
    o, cg = w.shape[:2]
    groups = int(unit.binding.value.attrs.groups)
    ws, wqs = w.sum(axis=(2, 3)), w_dq.astype(np.float64).sum(axis=(2, 3))  # O × Cg
    og = o // groups
    out = np.empty(o, np.float64)
    for g in range(groups):
        sl = slice(g * og, (g + 1) * og)
        cs = slice(g * cg, (g + 1) * cg)
        out[sl] = ws[sl] @ mx[cs] - wqs[sl] @ mxq[cs]
    return out.astype(np.float32)


def quantize_module(mod, activations: dict, method: str = "entropy", keep=(), percentile: float = 99.99,
                    bias_correction: bool = True, records: list | None = None, weight_bits: int = 8):
    """The int8 rewrite of ``mod``'s main (see the module docstring). ``activations``:
    {layer name: float input activations of that layer on calibration data}."""
    from tvm import relax

    from ..layers import tvm_ir_update

    func = mod["main"]
    units = _quantisable_units(func, keep, activations)
    binds = _bindings(func)
    need, src_acts = _activation_scales(units, binds, activations, method, percentile)
    users: dict = {}
    for b in binds:
        for v in relax.analysis.free_vars(b.value):
            users.setdefault(v, []).append(b)
    plan = _QuantPlan(unit_of={u.binding.var: u for u in units}, member={v for u in units for v in u.members},
                      need=need, src_acts=src_acts, activations=activations, users=users,
                      ret_vars=set(relax.analysis.free_vars(func.body.body)), weight_bits=weight_bits,
                      bias_correction=bias_correction, records=records if records is not None else [])
    new_main = _quantizer_class()(mod, plan).visit_expr(func)
    out = tvm_ir_update(mod, "main", new_main)
    for k in keep:
        plan.records.append(LayerRecord(k, "int8", False, "kept float (keep=)"))
    return relax.transform.Normalize()(out)


def _quantisable_units(func, keep, activations) -> list:
    units = find_units(func)
    names = [u.name for u in units]
    unknown = [k for k in keep if k not in names]
    if unknown:
        raise SqccError(f"int8: keep= names unknown layer(s) {', '.join(unknown)}; quantisable layers: "
                        f"{', '.join(names)}")
    units = [u for u in units if u.name not in set(keep)]
    missing = [u.name for u in units if u.name not in activations]
    if missing:
        raise SqccError(f"int8: no calibration activations for layer(s) {', '.join(missing)}; "
                        "give calibration data (--calibration DIR)")
    return units


def _activation_scales(units, binds, activations, method, percentile):
    """({var: QParams} every quantised layer's input needs, from its calibration activations, then
    backwards through max-pool and concat, whose inputs share their output's scale; {var: acts})."""
    from tvm import relax

    from ..layers import op_name

    need: dict = {}
    src_acts: dict = {}
    for u in units:
        if u.data in need:
            continue
        acts = activations[u.name]
        unsigned = bool(np.min(acts) >= 0)
        r = calibrate_range(acts, method, unsigned, percentile)
        need[u.data] = QParams(r / (255.0 if unsigned else 127.0), "uint8" if unsigned else "int8")
        src_acts[u.data] = acts
    for b in reversed(binds):
        if b.var not in need:
            continue
        op = op_name(b.value)
        if op == "relax.nn.max_pool2d" and isinstance(b.value.args[0], relax.Var):
            need.setdefault(b.value.args[0], need[b.var])
        elif op == "relax.concat" and isinstance(b.value.args[0], relax.Tuple):
            for f in b.value.args[0].fields:
                if isinstance(f, relax.Var):
                    need.setdefault(f, need[b.var])
    return need, src_acts


@dataclass
class _QuantPlan:
    """What the quantising mutator reads: the units, the scales each tensor is wanted at, who uses
    what; and where it writes its records."""

    unit_of: dict  # conv/matmul binding var -> Unit
    member: set  # vars folded into a unit (its bias add, activation)
    need: dict  # var -> QParams it is consumed at in int8
    src_acts: dict
    activations: dict
    users: dict  # var -> bindings that read it
    ret_vars: set
    weight_bits: int
    bias_correction: bool
    records: list

    def q_consumer(self, var, b) -> bool:
        """Does binding b consume ``var`` as an int8 tensor? (a max-pool / concat whose output is
        wanted in int8 runs in int8: its inputs are quantised or requantised to its scale)"""
        from ..layers import op_name

        u = self.unit_of.get(b.var)
        if u is not None and u.data.same_as(var):
            return True
        return op_name(b.value) in ("relax.nn.max_pool2d", "relax.concat") and b.var in self.need

    def needs_float(self, var) -> bool:
        return var in self.ret_vars or any(not self.q_consumer(var, b) for b in self.users.get(var, []))


def _quantized_weight(u: Unit, weight_bits: int):
    """(int8 weight in the unit's layout, its dequantised float weight, per-channel scales)."""
    wq, sw = quantize_weight(u.weight if u.kind == "conv" else u.weight.T, WEIGHT_QMAX[weight_bits])
    if u.kind == "matmul":
        return np.ascontiguousarray(wq.T), (wq.astype(np.float32) * sw[:, None]).T, sw
    return wq, wq.astype(np.float32) * sw[:, None, None, None], sw


def _requantize(accf, deq, bias, shape, outq: QParams, act):
    """int32 accumulator → the next layer's int8 input: scale, bias, round, clip (the fused
    activation's bounds narrowed onto the int8 range)."""
    from tvm import relax

    lo, hi = outq.lo, outq.hi
    lo_f, hi_f = act if act is not None else (None, None)
    if lo_f is not None:
        lo = max(lo, int(np.ceil(lo_f / outq.scale - 0.5)))
    if hi_f is not None:
        hi = min(hi, int(np.floor(hi_f / outq.scale + 0.5)))
    y = relax.op.add(relax.op.multiply(accf, _f32((deq / outq.scale).reshape(shape))),
                     _f32((bias / outq.scale).reshape(shape)))
    return relax.op.astype(_clip(None, relax.op.round(y), lo, hi), outq.dtype)


def _dequantize_output(accf, deq, bias, shape, act):
    """int32 accumulator → float output, with the unit's fused ReLU / clip."""
    from tvm import relax

    lo_f, hi_f = act if act is not None else (None, None)
    y = relax.op.add(relax.op.multiply(accf, _f32(deq.reshape(shape))), _f32(bias.reshape(shape)))
    if lo_f == 0.0 and hi_f is None:
        return relax.op.nn.relu(y)
    if lo_f is not None or hi_f is not None:
        return _clip(None, y, lo_f if lo_f is not None else -3.4e38, hi_f if hi_f is not None else 3.4e38)
    return y


def _rescale_int8(src, src_qp: QParams, qp: QParams):
    """An int8 tensor at ``src_qp``'s scale, requantised to ``qp``'s."""
    from tvm import relax

    y = relax.op.round(relax.op.multiply(relax.op.astype(src, "float32"), _f32(src_qp.scale / qp.scale)))
    return relax.op.astype(_clip(None, y, qp.lo, qp.hi), qp.dtype)


def _quantizer_class():
    from tvm import relax
    from tvm.relax.expr_functor import PyExprMutator, mutator

    from ..layers import op_name

    @mutator
    class _Quantizer(PyExprMutator):
        def __init__(self, m, plan: _QuantPlan):
            super().__init__(m)
            self.plan = plan
            self.q = {}  # old var -> {QParams: new int8 var}

        def emit(self, expr, var=None):
            if var is not None and not isinstance(var, relax.DataflowVar):
                return self.builder_.emit_output(expr, var.name)
            return self.builder_.emit(expr, var.name if var is not None else None)

        def get_q(self, var, qp: QParams):
            have = self.q.setdefault(var, {})
            if qp in have:
                return have[qp]
            if have:  # requantise an int8 version (no float tensor in between)
                out = self.builder_.emit(_rescale_int8(*next(iter(have.items()))[::-1], qp))
            else:
                out = self.builder_.emit(_quantize_expr(self.visit_expr(var), qp))
            have[qp] = out
            return out

        def visit_var_binding_(self, binding):
            v, plan = binding.var, self.plan
            if v in plan.member:
                return  # folded into its unit (emitted there)
            if v in plan.unit_of:
                return self.emit_unit(plan.unit_of[v])
            op = op_name(binding.value)
            if v in plan.need and op in ("relax.nn.max_pool2d", "relax.concat"):
                qp = plan.need[v]
                if op == "relax.nn.max_pool2d":
                    arg = self.get_q(binding.value.args[0], qp)
                else:
                    arg = relax.Tuple([self.get_q(f, qp) for f in binding.value.args[0].fields])
                out = self.builder_.emit(relax.Call(binding.value.op, [arg], binding.value.attrs))
                self.q.setdefault(v, {})[qp] = out
                if plan.needs_float(v):
                    self.set_var_remap(v, self.emit(_dequantize_expr(out, qp.scale), v))
                return
            return super().visit_var_binding_(binding)

        def emit_unit(self, u: Unit):
            plan = self.plan
            qin = plan.need[u.data]
            wq, w_dq, sw = _quantized_weight(u, plan.weight_bits)
            n = len(sw)
            bias = u.bias if u.bias is not None else np.zeros(n, np.float32)
            corr = np.zeros(n, np.float32)
            if plan.bias_correction:
                corr = _bias_correction(u, w_dq, plan.src_acts.get(u.data, plan.activations[u.name]), qin)
                bias = bias + corr
            acc = self.builder_.emit(_int8_call(u, self.get_q(u.data, qin), wq), u.name + "_i32")
            accf = relax.op.astype(acc, "float32")
            deq, shape = (qin.scale * sw).astype(np.float32), _chan_shape(u, n)
            outq = plan.need.get(u.out)
            detail = f"in {qin.dtype} (scale {qin.scale:.4g})" + (
                f", weights |w| ≤ {WEIGHT_QMAX[plan.weight_bits]}" if plan.weight_bits != 8 else "")
            if outq is not None:
                qv = self.builder_.emit(_requantize(accf, deq, bias, shape, outq, u.act), u.name + "_q")
                self.q.setdefault(u.out, {})[outq] = qv
                detail += f" → out {outq.dtype} (scale {outq.scale:.4g})"
            if outq is None or plan.needs_float(u.out):
                self.set_var_remap(u.out, self.emit(_dequantize_output(accf, deq, bias, shape, u.act), u.out))
                detail += " → out float32"
            if plan.bias_correction:
                detail += f"; bias corrected (mean |shift| {float(np.abs(corr).mean()):.3g})"
            params, macs = int(u.weight.size) + n, _macs(u)
            plan.records.append(LayerRecord(u.name, "int8", True, detail, params, params, macs, macs,
                                            rel_error(u.weight, w_dq)))

    return _Quantizer


def _macs(u: Unit) -> int:
    shape = tuple(int(d) for d in u.binding.var.ty.shape)
    if u.kind == "conv":
        return int(np.prod(shape) * np.prod(u.weight.shape[1:]))
    return int(np.prod(shape) * u.weight.shape[0])


# ------------------------------------------------------------------------------------ calibration

def activations_for(mod, context: PassContext) -> dict:
    """Input activations of every quantisable layer of ``mod`` on the context's calibration data."""
    feeds = context.extra.get("calibration_feeds")
    names = layer_names(mod)
    if feeds:
        from ..calibrate import collect_activations

        return collect_activations(mod, feeds, layers=names)
    acts = context.activations or {}
    if not acts:
        raise SqccError("int8: needs calibration data to choose activation ranges: give "
                        "--calibration DIR (a folder of images the model can read)")
    return acts


@register("int8", "calibrated int8 quantisation: per-channel int8 weights, uint8/int8 activations, "
          "int8×int8→int32 convs with fused requantisation",
          params=[
              Param("calibration", str, "activation range method", METHODS),
              Param("keep", list, "layers left in float (e.g. keep=conv0,conv25)"),
              Param("percentile", float, "percentile for calibration=percentile"),
              Param("bias_correction", bool, "shift biases by the mean quantisation error"),
              Param("weight_bits", str, "8 (|w|≤127), 7 (|w|≤64: exact with "
                    "vpmaddubsw), or auto: 7 on x86 CPUs with AVX2/AVX-512 but no VNNI, else 8",
                    ("auto", "8", "7")),
          ])
@tvm.transform.module_pass(opt_level=0, name="sqcc.int8")
class Int8:
    def __init__(self, context=None, calibration="entropy", keep=(), percentile=99.99,
                 bias_correction=True, weight_bits="auto"):
        if calibration not in METHODS:
            raise SqccError(f"int8: calibration={calibration}: expected one of {', '.join(METHODS)}")
        if not 0 < float(percentile) <= 100:
            raise SqccError(f"int8: percentile={percentile}: expected a number in (0, 100]")
        self.context = context if context is not None else PassContext()
        self.calibration = calibration
        self.keep = [str(k) for k in (keep or [])]
        self.percentile = float(percentile)
        self.bias_correction = bool(bias_correction)
        if str(weight_bits) not in ("auto", "7", "8"):
            raise SqccError(f"int8: weight_bits={weight_bits}: expected auto, 7 or 8")
        if str(weight_bits) == "auto":
            # the compile target's int8 path (sqcc.api puts it in the context): x86 without VNNI
            # (AVX2, AVX-512BW) multiplies u8×s8 pairs into int16 (vpmaddubsw), exact only with |w| ≤ 64
            weight_bits = 7 if self.context.extra.get("int8_isa") in ("avx2", "avx512") else 8
        self.weight_bits = int(weight_bits)

    def transform_module(self, mod, _ctx):
        names = layer_names(mod)
        unknown = [k for k in self.keep if k not in names]
        if unknown:  # before any calibration work
            raise SqccError(f"int8: keep= names unknown layer(s) {', '.join(unknown)}; quantisable "
                            f"layers: {', '.join(names)}")
        acts = activations_for(mod, self.context)
        return quantize_module(mod, acts, self.calibration, self.keep, self.percentile,
                               self.bias_correction, self.context.records, self.weight_bits)


# ------------------------------------------------------------------------------------ sensitivity

def sensitivity(mod, feeds: list, activations: dict | None = None, method: str = "entropy",
                layers=None, target="llvm", progress=None) -> list[dict]:
    """Per layer: top-1 agreement and relative L2 error of the outputs when *only that layer* is
    quantised (all others kept float), on ``feeds`` ([{input: array}]). Sorted worst first."""
    import tvm as _tvm
    from tvm import relax

    from ..build import build
    from ..calibrate import collect_activations

    names = layer_names(mod)
    if activations is None:
        activations = collect_activations(mod, feeds, layers=names)
    params = [p.name for p in mod["main"].params]

    def run(m):
        vm = relax.VirtualMachine(build(m, target), _tvm.cpu())
        outs = []
        for f in feeds:
            r = vm["main"](*[_tvm.runtime.tensor(np.asarray(f[p]), _tvm.cpu()) for p in params])
            r = r if hasattr(r, "numpy") else r[0]  # first output of a tuple
            outs.append(r.numpy().reshape(-1))
        return outs

    ref = run(mod)
    out = []
    for k, name in enumerate(layers or names):
        if progress:
            progress(f"sensitivity {k + 1}/{len(layers or names)}: {name}")
        q = quantize_module(mod, activations, method, keep=[n for n in names if n != name])
        ys = run(q)
        agree = sum(int(np.argmax(a) == np.argmax(b)) for a, b in zip(ys, ref))
        l2 = float(np.sqrt(sum(np.sum((a - b) ** 2) for a, b in zip(ys, ref)) /
                           max(sum(np.sum(b ** 2) for b in ref), 1e-30)))
        out.append({"layer": name, "top1_agreement": agree / len(feeds),
                    "agreement_loss": 1 - agree / len(feeds), "rel_l2": l2})
    return sorted(out, key=lambda d: (-d["agreement_loss"], -d["rel_l2"]))
