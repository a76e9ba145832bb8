"""One ONNX emitter per Relax op (opset 17), and the numpy folding of constant-only bindings.

Each handler ``h(g, var, call) -> str`` emits the nodes for one binding through the
:class:`~sqcc.export.onnx_graph.OnnxBuilder` ``g`` and returns the ONNX name of its result. Weighted
layers name their initializers after the layer (``conv3.weight``, ``conv3.bias``; ``fc.weight``) and
absorb a following per-channel bias ``add`` (Conv's ``B``, Gemm's ``C``), as the source models do.
Only what the frontends and sqcc's rewrites emit is covered; anything else is an error naming the
binding (see ``OnnxBuilder.unsupported``).
"""
from __future__ import annotations

import numpy as np

from ..layers import op_name
from .onnx_graph import ints

ELEMENTWISE = {"relax.add": "Add", "relax.subtract": "Sub", "relax.multiply": "Mul", "relax.divide": "Div",
               "relax.maximum": "Max", "relax.minimum": "Min", "relax.power": "Pow"}
UNARY = {"relax.nn.relu": "Relu", "relax.sigmoid": "Sigmoid", "relax.tanh": "Tanh", "relax.exp": "Exp",
         "relax.sqrt": "Sqrt", "relax.negative": "Neg", "relax.abs": "Abs", "relax.round": "Round",
         "relax.floor": "Floor", "relax.ceil": "Ceil", "relax.erf": "Erf", "relax.log": "Log",
         "relax.sign": "Sign"}
# Legalized TIR kernels an importer may leave in main (ONNX Clip → maximum, minimum): their name
# without the counter, and the ONNX op of the same elementwise function.
TIR_ELEMENTWISE = {"maximum": "Max", "minimum": "Min", "add": "Add", "multiply": "Mul", "subtract": "Sub",
                   "divide": "Div"}


def _chk_layouts(g, attrs, data="NCHW", kernel="OIHW"):
    lay = str(getattr(attrs, "data_layout", getattr(attrs, "layout", data)))
    if lay != data or str(getattr(attrs, "out_layout", data)) != data:
        raise g.unsupported(f"layout {lay} (the exporter takes the NCHW graph sqcc rewrites)")
    if hasattr(attrs, "kernel_layout") and str(attrs.kernel_layout) != kernel:
        raise g.unsupported(f"kernel layout {attrs.kernel_layout} (expected {kernel})")


def _channel_bias(g, var, channels: int, axis: int):
    """The bias ``add``s that read only ``var`` (and then only each other) and a per-channel constant
    each -- a refitted layer's correction, then its bias: (the last one's var, their sum as a vector,
    the vars of all of them), else None."""
    out, total, chain = None, None, []
    while True:
        u = g.sole_user(var)
        if u is None or op_name(u[1]) != "relax.add":
            break
        a, b = u[1].args
        arr = g.const_of(b if a.same_as(var) else a)
        if arr is None or arr.size != channels or arr.dtype != np.float32:
            break
        if arr.ndim > 1 and arr.shape[axis if arr.ndim > axis else -1] != channels:
            break
        total = arr.reshape(channels) if total is None else total + arr.reshape(channels)
        var = out = u[0]
        chain.append(out)
    return (out, total, chain) if chain else None


def conv2d(g, var, call):
    a = call.attrs
    _chk_layouts(g, a)
    if a.out_dtype is not None and str(a.out_dtype) not in ("", "float32"):
        raise g.unsupported(f"conv2d with out_dtype {a.out_dtype} (an int8 graph: export it as QDQ)")
    w = g.const_of(call.args[1])
    x = g.value(call.args[0])
    w_name = g.value(call.args[1], f"{var.name}.weight") if w is not None else g.value(call.args[1])
    pad = ints(a.padding)  # relax: top, left, bottom, right = ONNX's x1_begin, x2_begin, x1_end, x2_end
    ins = [x, w_name]
    bias = _channel_bias(g, var, int(var.ty.shape[1]), 1) if w is not None else None
    if bias is not None:  # Conv's B; the output keeps the layer's name
        ins.append(g.init(bias[1], f"{var.name}.bias"))
    kshape = [int(d) for d in list(call.args[1].ty.shape)[2:]]
    out = g.node("Conv", ins, g.out_name(var), name=var.name, kernel_shape=kshape, strides=ints(a.strides),
                 pads=pad, dilations=ints(a.dilation), group=int(a.groups))
    for v in bias[2] if bias is not None else []:
        g.absorb(v, out)
    return out


def matmul(g, var, call):
    if call.attrs.out_dtype is not None and str(call.attrs.out_dtype) not in ("", "float32"):
        raise g.unsupported(f"matmul with out_dtype {call.attrs.out_dtype} (an int8 graph: export it as QDQ)")
    xa, wa = call.args
    w = g.const_of(wa)
    x = g.value(xa)
    if w is None or w.ndim != 2 or len(xa.ty.shape) != 2:
        return g.node("MatMul", [x, g.value(wa)], g.out_name(var), name=var.name)
    ins = [x, g.init(w, f"{var.name}.weight")]
    bias = _channel_bias(g, var, w.shape[1], 1)
    if bias is not None:
        ins.append(g.init(bias[1], f"{var.name}.bias"))
    out = g.node("Gemm", ins, g.out_name(var), name=var.name)
    for v in bias[2] if bias is not None else []:
        g.absorb(v, out)
    return out


def elementwise(g, var, call):
    op = ELEMENTWISE[op_name(call)]
    return _binary(g, var, op, call.args[0], call.args[1])


def _binary(g, var, op, a, b):
    if op in ("Max", "Min"):
        clip = _clip_pair(g, var, op, a, b)
        if clip is not None:
            return clip
    names = [g.value(x, f"{var.name}.{k}") for k, x in (("a", a), ("b", b))]
    return g.node(op, names, g.out_name(var), name=var.name)


def _clip_pair(g, var, op, a, b):
    """max(x, lo) read only by min(·, hi) (or the reverse), with scalar constants: one Clip."""
    lo = g.const_of(b)
    u = g.sole_user(var)
    if lo is None or lo.size != 1 or u is None or g.const_of(a) is not None:
        return None
    uop = op_name(u[1])
    want = {"Max": ("relax.minimum", "call_tir:minimum"), "Min": ("relax.maximum", "call_tir:maximum")}[op]
    if not (uop in want or (uop or "").rstrip("0123456789") in want):
        return None
    uargs = _operands(u[1])
    hi = g.const_of(uargs[1]) if uargs[0].same_as(var) else None
    if hi is None or hi.size != 1:
        return None
    lo_v, hi_v = (lo, hi) if op == "Max" else (hi, lo)
    dt = lo.dtype
    ins = [g.value(a), g.init(np.asarray(lo_v, dt).reshape(()), f"{var.name}.min"),
           g.init(np.asarray(hi_v, dt).reshape(()), f"{var.name}.max")]
    out = g.node("Clip", ins, g.out_name(u[0]), name=var.name)
    g.absorb(u[0], out)
    return out


def _operands(call):
    """A call's tensor operands (call_tir: the fields of its argument tuple)."""
    if (op_name(call) or "").startswith("call_tir:"):
        args = call.args[1]
        return list(args.fields) if hasattr(args, "fields") else [args]
    return list(call.args)


def tir_elementwise(g, var, call):
    kernel = op_name(call).split(":", 1)[1]
    base = kernel.rstrip("0123456789").rstrip("_")
    args = _operands(call)
    if base not in TIR_ELEMENTWISE or len(args) != 2:
        raise g.unsupported(_tir_why(kernel, "standard ONNX op"))
    return _binary(g, var, TIR_ELEMENTWISE[base], args[0], args[1])


def _tir_why(kernel: str, what: str) -> str:
    binary = any(k in kernel for k in ("xnor", "bwn", "popcount", "bitpack", "binar"))
    if binary:
        return (f"binary layer kernel '{kernel}' has no {what} (XNOR/bit-packed layers cannot be exported; "
                "compile without the binary pass)")
    return (f"TIR kernel '{kernel}' (already lowered by the importer or a pass) has no {what} in sqcc's "
            "exporter")


def unary(g, var, call):
    return g.node(UNARY[op_name(call)], [g.value(call.args[0])], g.out_name(var), name=var.name)


def clip(g, var, call):
    x, lo, hi = call.args
    vals = [float(getattr(v, "value", v)) for v in (lo, hi)]
    dt = str(var.ty.dtype)
    ins = [g.value(x)] + [g.init(np.asarray(v, dt), f"{var.name}.{k}") for v, k in zip(vals, ("min", "max"))]
    return g.node("Clip", ins, g.out_name(var), name=var.name)


def relu6(g, var, call):
    dt = str(var.ty.dtype)
    ins = [g.value(call.args[0]), g.init(np.asarray(0, dt), f"{var.name}.min"),
           g.init(np.asarray(6, dt), f"{var.name}.max")]
    return g.node("Clip", ins, g.out_name(var), name=var.name)


def leakyrelu(g, var, call):
    return g.node("LeakyRelu", [g.value(call.args[0])], g.out_name(var), name=var.name,
                  alpha=float(call.attrs.alpha))


def silu(g, var, call):
    x = g.value(call.args[0])
    s = g.node("Sigmoid", [x])
    return g.node("Mul", [x, s], g.out_name(var), name=var.name)


def gelu(g, var, call):
    """0.5·x·(1 + erf(x/√2)), as relax computes it (opset 17 has no Gelu)."""
    x = g.value(call.args[0])
    dt = str(var.ty.dtype)
    t = g.node("Mul", [x, g.init(np.asarray(1 / np.sqrt(2), dt), f"{var.name}.rsqrt2")])
    e = g.node("Erf", [t])
    p = g.node("Add", [e, g.init(np.asarray(1, dt), f"{var.name}.one")])
    h = g.node("Mul", [x, g.init(np.asarray(0.5, dt), f"{var.name}.half")])
    return g.node("Mul", [h, p], g.out_name(var), name=var.name)


def pool2d(g, var, call):
    a = call.attrs
    _chk_layouts(g, a)
    op = "MaxPool" if op_name(call) == "relax.nn.max_pool2d" else "AveragePool"
    kw = dict(kernel_shape=ints(a.pool_size), strides=ints(a.strides), pads=ints(a.padding),
              ceil_mode=int(bool(a.ceil_mode)))
    dil = ints(a.dilation)
    if op == "MaxPool":
        kw["dilations"] = dil
    else:
        if any(d != 1 for d in dil):
            raise g.unsupported("average pooling with dilation (opset 17 has none)")
        kw["count_include_pad"] = int(bool(a.count_include_pad))
    return g.node(op, [g.value(call.args[0])], g.out_name(var), name=var.name, **kw)


def adaptive_avg_pool2d(g, var, call):
    a = call.attrs
    _chk_layouts(g, a)
    size = ints(a.output_size) if a.output_size is not None else None
    if size not in ([1, 1], [1]):
        raise g.unsupported(f"adaptive average pooling to {size} (only global pooling exports)")
    return g.node("GlobalAveragePool", [g.value(call.args[0])], g.out_name(var), name=var.name)


def reduce(g, var, call):
    a = call.attrs
    x = call.args[0]
    rank = len(x.ty.shape)
    axes = sorted(int(d) % rank for d in a.axis) if a.axis is not None else list(range(rank))
    keep = int(bool(a.keepdims))
    op = {"relax.mean": "ReduceMean", "relax.sum": "ReduceSum", "relax.max": "ReduceMax",
          "relax.min": "ReduceMin"}[op_name(call)]
    if op == "ReduceMean" and rank == 4 and axes == [2, 3] and keep:
        return g.node("GlobalAveragePool", [g.value(x)], g.out_name(var), name=var.name)
    if op == "ReduceSum":  # opset 13+: axes is an input
        ax = g.init(np.asarray(axes, np.int64), f"{var.name}.axes")
        return g.node(op, [g.value(x), ax], g.out_name(var), name=var.name, keepdims=keep)
    return g.node(op, [g.value(x)], g.out_name(var), name=var.name, axes=axes, keepdims=keep)


def concat(g, var, call):
    fields = _tuple_fields(g, call.args[0])
    return g.node("Concat", [g.value(f, f"{var.name}.part") for f in fields], g.out_name(var), name=var.name,
                  axis=int(call.attrs.axis))


def _tuple_fields(g, expr):
    if isinstance(expr, g.relax.Var) and isinstance(g.names.get(expr), g.relax.Tuple):
        expr = g.names[expr]
    if not isinstance(expr, g.relax.Tuple):
        raise g.unsupported("expects a tuple of tensors")
    return list(expr.fields)


def reshape(g, var, call):
    shape = [int(d) for d in var.ty.shape]
    s = g.init(np.asarray(shape, np.int64), f"{var.name}.shape")
    return g.node("Reshape", [g.value(call.args[0]), s], g.out_name(var), name=var.name)


def permute_dims(g, var, call):
    rank = len(call.args[0].ty.shape)
    axes = ints(call.attrs.axes) if call.attrs.axes is not None else list(reversed(range(rank)))
    return g.node("Transpose", [g.value(call.args[0])], g.out_name(var), name=var.name, perm=axes)


def take(g, var, call):
    """Gather with constant indices (a channel gather or shuffle); checked in range, where
    relax's clip/fast modes and ONNX's Gather agree."""
    x, idx = call.args
    arr = g.const_of(idx)
    axis = int(call.attrs.axis) if call.attrs.axis is not None else None
    if axis is None:
        raise g.unsupported("take without an axis (flattened gather)")
    if arr is not None:
        dim = int(x.ty.shape[axis])
        if arr.size and (arr.min() < 0 or arr.max() >= dim):
            raise g.unsupported(f"gather indices outside [0, {dim})")
        ind = g.init(arr.astype(np.int64), f"{var.name}.indices")
    else:
        ind = g.value(idx)
    return g.node("Gather", [g.value(x), ind], g.out_name(var), name=var.name, axis=axis)


def softmax(g, var, call):
    op = "Softmax" if op_name(call) == "relax.nn.softmax" else "LogSoftmax"
    return g.node(op, [g.value(call.args[0])], g.out_name(var), name=var.name, axis=int(call.attrs.axis))


def strided_slice(g, var, call):
    x, axes, begin, end = call.args[:4]
    strides = ints(call.args[4]) if len(call.args) > 4 else [1] * len(ints(axes))
    ins = [g.value(x)] + [g.init(np.asarray(v, np.int64), f"{var.name}.{k}") for v, k in
                          ((ints(begin), "starts"), (ints(end), "ends"), (ints(axes), "axes"),
                           (strides, "steps"))]
    return g.node("Slice", ins, g.out_name(var), name=var.name)


def squeeze_like(g, var, call):
    op = "Squeeze" if op_name(call) == "relax.squeeze" else "Unsqueeze"
    rank = len((call.args[0] if op == "Squeeze" else var).ty.shape)
    if call.attrs.axis is None:
        axes = [k for k, d in enumerate(call.args[0].ty.shape) if int(d) == 1]
    else:
        axes = [int(d) % rank for d in call.attrs.axis]
    ax = g.init(np.asarray(axes, np.int64), f"{var.name}.axes")
    return g.node(op, [g.value(call.args[0]), ax], g.out_name(var), name=var.name)


def flatten(g, var, call):
    return reshape(g, var, call)


def pad(g, var, call):
    a = call.attrs
    if str(a.pad_mode) != "constant":
        raise g.unsupported(f"pad mode {a.pad_mode}")
    w = ints(a.pad_width)
    pads = np.asarray(w[0::2] + w[1::2], np.int64)  # relax: (before, after) per axis; ONNX: befores, afters
    dt = str(var.ty.dtype)
    ins = [g.value(call.args[0]), g.init(pads, f"{var.name}.pads"),
           g.init(np.asarray(float(a.pad_value), dt), f"{var.name}.value")]
    return g.node("Pad", ins, g.out_name(var), name=var.name, mode="constant")


def astype(g, var, call):
    from onnx import helper

    src, dst = str(call.args[0].ty.dtype), str(call.attrs.dtype)
    x = g.value(call.args[0])
    if src == dst:
        return g.node("Identity", [x], g.out_name(var), name=var.name)
    return g.node("Cast", [x], g.out_name(var), name=var.name,
                  to=helper.np_dtype_to_tensor_dtype(np.dtype(dst)))


def resize2d(g, var, call):
    a = call.attrs
    _chk_layouts(g, a)
    method = {"nearest_neighbor": "nearest", "linear": "linear", "cubic": "cubic"}.get(str(a.method))
    if method is None:
        raise g.unsupported(f"resize method {a.method}")
    size = [int(d) for d in var.ty.shape]
    kw = dict(mode=method, coordinate_transformation_mode=str(a.coordinate_transformation_mode))
    if method == "nearest":
        kw["nearest_mode"] = {"round": "round_prefer_ceil", "floor": "floor", "ceil": "ceil",
                              "round_prefer_floor": "round_prefer_floor",
                              "round_prefer_ceil": "round_prefer_ceil"}.get(str(a.rounding_method), "round_prefer_ceil")
    if method == "cubic":
        kw.update(cubic_coeff_a=float(a.cubic_alpha), exclude_outside=int(a.cubic_exclude))
    ins = [g.value(call.args[0]), "", "", g.init(np.asarray(size, np.int64), f"{var.name}.sizes")]
    return g.node("Resize", ins, g.out_name(var), name=var.name, **kw)


HANDLERS = {
    "relax.nn.conv2d": conv2d, "relax.matmul": matmul, "relax.clip": clip, "relax.nn.relu6": relu6,
    "relax.nn.leakyrelu": leakyrelu, "relax.nn.silu": silu, "relax.nn.gelu": gelu,
    "relax.nn.max_pool2d": pool2d, "relax.nn.avg_pool2d": pool2d,
    "relax.nn.adaptive_avg_pool2d": adaptive_avg_pool2d,
    "relax.mean": reduce, "relax.sum": reduce, "relax.max": reduce, "relax.min": reduce,
    "relax.concat": concat, "relax.reshape": reshape, "relax.flatten": flatten,
    "relax.permute_dims": permute_dims, "relax.take": take, "relax.nn.softmax": softmax,
    "relax.nn.log_softmax": softmax, "relax.strided_slice": strided_slice,
    "relax.squeeze": squeeze_like, "relax.expand_dims": squeeze_like, "relax.nn.pad": pad,
    "relax.astype": astype, "relax.image.resize2d": resize2d, "call_tir:": tir_elementwise,
    **{op: elementwise for op in ELEMENTWISE}, **{op: unary for op in UNARY},
}


# ------------------------------------------------------------------------------ constant folding
_NUMPY = {
    "relax.add": np.add, "relax.subtract": np.subtract, "relax.multiply": np.multiply,
    "relax.divide": np.divide, "relax.maximum": np.maximum, "relax.minimum": np.minimum,
    "relax.negative": np.negative, "relax.isnan": np.isnan, "relax.where": np.where,
    "relax.sqrt": np.sqrt, "relax.exp": np.exp,
}


def evaluate(g, op, call):
    """The numpy value of a binding whose operands are all constants (reshape, astype, permute and
    elementwise ops: what importers and rewrites leave on weights), else None."""
    if op is None or op.startswith("call_tir") or not call.args:
        return None
    vals = [g.const_of(a) for a in call.args if not isinstance(a, g.relax.ShapeExpr)]
    if not vals or any(v is None for v in vals):
        return None
    dt = str(call.ty.dtype) if hasattr(call.ty, "dtype") else None
    try:
        if op == "relax.reshape":
            out = vals[0].reshape([int(d) for d in call.ty.shape])
        elif op == "relax.astype":
            out = vals[0].astype(str(call.attrs.dtype))
        elif op == "relax.permute_dims":
            out = np.transpose(vals[0], ints(call.attrs.axes) if call.attrs.axes is not None else None)
        elif op in _NUMPY:
            out = _NUMPY[op](*vals)
        else:
            return None
    except (ValueError, TypeError):
        return None
    out = np.asarray(out)
    return out.astype(dt) if dt and dt != "void" and out.dtype != np.dtype(dt) else out
