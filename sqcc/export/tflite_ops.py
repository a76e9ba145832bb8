"""One TFLite emitter per Relax op (float builtins), for :class:`~sqcc.export.tflite_graph.TfliteBuilder`.

Convolutions: ``CONV_2D`` (filters OHWI), ``DEPTHWISE_CONV_2D`` (groups = input channels, any channel
multiplier); other grouped convolutions are ``CONV_2D`` whose filters have C/groups input channels
(LiteRT infers the groups; TFLite Micro has no grouped convolution). A bias
``add`` and a following ReLU / ReLU6 are fused into the op, as the TFLite converter does. Padding
is SAME or VALID where Relax's explicit pads are exactly that, else an explicit PAD/PADV2 first.
"""
from __future__ import annotations

import numpy as np

from ..layers import op_name
from .onnx_graph import ints
from .onnx_ops import TIR_ELEMENTWISE, _channel_bias, _chk_layouts, _operands, _tir_why
from .tflite_graph import nhwc_shape

ACT = {None: 0, "relu": 1, "relu6": 3}
BINARY = {"Add": ("ADD", "AddOptions"), "Sub": ("SUB", "SubOptions"), "Mul": ("MUL", "MulOptions"),
          "Div": ("DIV", "DivOptions"), "Max": ("MAXIMUM", "MaximumMinimumOptions"),
          "Min": ("MINIMUM", "MaximumMinimumOptions")}
RELAX_BINARY = {"relax.add": "Add", "relax.subtract": "Sub", "relax.multiply": "Mul", "relax.divide": "Div",
                "relax.maximum": "Max", "relax.minimum": "Min"}
UNARY = {"relax.nn.relu": "RELU", "relax.sigmoid": "LOGISTIC", "relax.tanh": "TANH", "relax.exp": "EXP",
         "relax.sqrt": "SQRT", "relax.negative": "NEG", "relax.abs": "ABS", "relax.nn.relu6": "RELU6"}


def _scalar_const(g, expr):
    arr = g.const_of(expr)
    return float(arr.reshape(())) if arr is not None and arr.size == 1 else None


def _is(op, names):
    base = (op or "").rstrip("0123456789").rstrip("_")
    return op in names or base in names


def _relu_like(g, var):
    """A ReLU or ReLU6 reading only ``var``: (its name in ACT, the var it defines, vars absorbed)."""
    u = g.sole_user(var)
    if u is None:
        return None
    op = op_name(u[1])
    if op == "relax.nn.relu":
        return "relu", u[0], [u[0]]
    if op == "relax.nn.relu6" or (op == "relax.clip" and [float(getattr(a, "value", a)) for a in u[1].args[1:]]
                                  == [0.0, 6.0]):
        return "relu6", u[0], [u[0]]
    if _is(op, ("relax.maximum", "call_tir:maximum")) and _scalar_const(g, _operands(u[1])[1]) == 0.0:
        v = g.sole_user(u[0])
        if v is not None and _is(op_name(v[1]), ("relax.minimum", "call_tir:minimum")) \
                and _scalar_const(g, _operands(v[1])[1]) == 6.0:
            return "relu6", v[0], [u[0], v[0]]
        return "relu", u[0], [u[0]]
    return None


def _epilogue(g, var, channels):
    """Bias and activation fused into a conv / FC writing ``var``: (bias or None, act, out var,
    absorbed vars)."""
    out_var, absorbed, bias = var, [], None
    b = _channel_bias(g, var, channels, 1)
    if b is not None:
        out_var, bias, fused = b
        absorbed += fused
    act = _relu_like(g, out_var)
    name = None
    if act is not None:
        name, out_var, more = act
        absorbed += more
    return bias, name, out_var, absorbed


def _same_pads(in_hw, k_eff, strides):
    out, pads = [], []
    for n, k, s in zip(in_hw, k_eff, strides):
        o = -(-n // s)
        total = max((o - 1) * s + k - n, 0)
        out.append(o)
        pads.append((total // 2, total - total // 2))
    return out, pads


def _padding(g, x, pads, in_hw, k_eff, strides, out_hw, value=0.0):
    """(TFLite padding, input) for Relax's explicit ``pads`` [top, left, bottom, right]."""
    if not any(pads):
        return _enum_padding("VALID"), x
    same_out, same = _same_pads(in_hw, k_eff, strides)
    if list(out_hw) == same_out and [pads[0], pads[2]] == list(same[0]) and [pads[1], pads[3]] == list(same[1]):
        return _enum_padding("SAME"), x
    n, h, w, c = g.tensors[x].shape
    widths = np.asarray([[0, 0], [pads[0], pads[2]], [pads[1], pads[3]], [0, 0]], np.int32)
    out = g.act(f"{x}.pad", (n, h + pads[0] + pads[2], w + pads[1] + pads[3], c), nhwc=True)
    if value == 0.0:
        g.op("PAD", [x, g.init(widths, f"{out}.widths")], out, "PadOptions")
    else:
        g.op("PADV2", [x, g.init(widths, f"{out}.widths"), g.init(np.asarray([value], np.float32),
                                                                    f"{out}.value")], out, "PadV2Options")
    return _enum_padding("VALID"), out


def _enum_padding(name):
    from .tflite_writer import _enum

    return _enum("Padding", name)


def conv2d(g, var, call):
    a = call.attrs
    _chk_layouts(g, a)
    w = g.const_of(call.args[1])
    if w is None:
        raise g.unsupported("a convolution with computed weights (TFLite filters are constants here)")
    x = g.nhwc_of(g.value(call.args[0]))
    out_shape = [int(d) for d in var.ty.shape]
    o, i, kh, kw = w.shape
    groups, dil, strides = int(a.groups), ints(a.dilation), ints(a.strides)
    k_eff = [(kh - 1) * dil[0] + 1, (kw - 1) * dil[1] + 1]
    padding, x = _padding(g, x, ints(a.padding), g.shape(x)[2:], k_eff, strides, out_shape[2:])
    bias, act, out_var, absorbed = _epilogue(g, var, o)
    bias = bias if bias is not None else np.zeros(o, np.float32)
    out = g.act(out_var.name, nhwc_shape(out_shape), nhwc=True)
    opts = dict(padding=padding, stride_w=strides[1], stride_h=strides[0], dilation_w_factor=dil[1],
                dilation_h_factor=dil[0], fused_activation_function=ACT[act])
    c_in = g.shape(x)[1]
    if groups == c_in and i == 1 and groups > 1:
        g.op("DEPTHWISE_CONV_2D", [x, g.init(w.transpose(1, 2, 3, 0), f"{var.name}.weight"),
                                   g.init(bias.astype(np.float32), f"{var.name}.bias")], out,
             "DepthwiseConv2DOptions", depth_multiplier=o // c_in, **opts)
    else:  # grouped: the filters' input depth is C/groups (LiteRT reads the groups from it)
        g.op("CONV_2D", [x, g.init(w.transpose(0, 2, 3, 1), f"{var.name}.weight"),
                         g.init(bias.astype(np.float32), f"{var.name}.bias")], out, "Conv2DOptions", **opts)
    for v in absorbed:
        g.absorb(v, out)
    return out


def pool2d(g, var, call):
    a = call.attrs
    _chk_layouts(g, a)
    x = g.nhwc_of(g.value(call.args[0]))
    out_shape = [int(d) for d in var.ty.shape]
    k, strides, dil = ints(a.pool_size), ints(a.strides), ints(a.dilation)
    if any(d != 1 for d in dil):
        raise g.unsupported("pooling with dilation (TFLite pools have none)")
    is_max = op_name(call) == "relax.nn.max_pool2d"
    pads = list(ints(a.padding))
    if a.ceil_mode:  # the extra rows/columns ceil mode reads: padding at the end
        for d in range(2):
            need = (out_shape[2 + d] - 1) * strides[d] + k[d] - (g.shape(x)[2 + d] + pads[d] + pads[d + 2])
            pads[d + 2] += max(need, 0)
    if not is_max and any(pads) and a.count_include_pad:
        padding, x = _padding(g, x, pads, [0, 0], k, strides, [-1, -1])  # explicit zeros, counted
    else:
        padding, x = _padding(g, x, pads, g.shape(x)[2:], k, strides, out_shape[2:],
                              value=-3.4e38 if is_max else 0.0)
    rescale = not is_max and padding == _enum_padding("VALID") and any(pads) and not a.count_include_pad
    out = g.act(var.name + (".counted" if rescale else ""), nhwc_shape(out_shape), nhwc=True)
    g.op("MAX_POOL_2D" if is_max else "AVERAGE_POOL_2D", [x], out, "Pool2DOptions", padding=padding,
         stride_w=strides[1], stride_h=strides[0], filter_width=k[1], filter_height=k[0],
         fused_activation_function=0)
    if not rescale:
        return out
    # padding excluded, but not TFLite's SAME: average over the zero-padded window, then scale each
    # position by window size / its in-bounds count
    in_hw = [d - pads[i] - pads[i + 2] for i, d in enumerate(g.shape(x)[2:])]
    counts = [np.asarray([min(o * s + kk, pads[i] + n) - max(o * s, pads[i]) for o in range(out_shape[2 + i])])
              for i, (n, kk, s) in enumerate(zip(in_hw, k, strides))]
    factor = (k[0] * k[1] / np.outer(counts[0], counts[1])).astype(np.float32)[None, :, :, None]
    return g.op("MUL", [out, g.init(factor, f"{var.name}.count_scale")], g.act(var.name, nhwc_shape(out_shape),
                nhwc=True), "MulOptions", fused_activation_function=0)


def _like(g, x: str, var, nhwc: bool) -> str:
    shape = [int(d) for d in var.ty.shape]
    return g.act(var.name, nhwc_shape(shape) if nhwc else shape, str(var.ty.dtype), nhwc)


def binary(g, var, op, a, b):
    code, opts = BINARY[op]
    ca, cb = g.const_of(a), g.const_of(b)
    if ca is not None and cb is not None:
        raise g.unsupported("an elementwise op on constants only")
    if ca is None and cb is None:
        x, y = g.value(a), g.value(b)
        nhwc = x in g.nhwc or y in g.nhwc
        if nhwc:
            x, y = g.nhwc_of(x), g.nhwc_of(y)
    else:
        t = g.value(a if ca is None else b)
        c = g.const_like(cb if ca is None else ca, t, f"{var.name}.const")
        x, y = (t, c) if ca is None else (c, t)
        nhwc = t in g.nhwc
    out = _like(g, x, var, nhwc and len(var.ty.shape) == 4)
    extra = {} if opts == "MaximumMinimumOptions" else {"fused_activation_function": 0}
    return g.op(code, [x, y], out, opts, **extra)


def elementwise(g, var, call):
    if op_name(call) == "relax.maximum":
        out = _clamp(g, var, call.args)
        if out is not None:
            return out
    return binary(g, var, RELAX_BINARY[op_name(call)], call.args[0], call.args[1])


def _clamp(g, var, args):
    """``max(x, 0)``, and ``min(·, 6)`` reading only it: RELU, RELU6."""
    if _scalar_const(g, args[1]) != 0.0 or g.const_of(args[0]) is not None:
        return None
    x = g.value(args[0])
    u = g.sole_user(var)
    if u is not None and _is(op_name(u[1]), ("relax.minimum", "call_tir:minimum")) \
            and _operands(u[1])[0].same_as(var) and _scalar_const(g, _operands(u[1])[1]) == 6.0:
        out = g.op("RELU6", [x], _like(g, x, u[0], x in g.nhwc))
        g.absorb(u[0], out)
        return out
    return g.op("RELU", [x], _like(g, x, var, x in g.nhwc))


def tir_elementwise(g, var, call):
    kernel = op_name(call).split(":", 1)[1]
    base = kernel.rstrip("0123456789").rstrip("_")
    args = _operands(call)
    if base not in TIR_ELEMENTWISE or len(args) != 2:
        raise g.unsupported(_tir_why(kernel, "TFLite builtin"))
    if base == "maximum":
        out = _clamp(g, var, args)
        if out is not None:
            return out
    return binary(g, var, TIR_ELEMENTWISE[base], args[0], args[1])


def unary(g, var, call):
    x = g.value(call.args[0])
    return g.op(UNARY[op_name(call)], [x], _like(g, x, var, x in g.nhwc))


def clip(g, var, call):
    lo, hi = (float(getattr(v, "value", v)) for v in call.args[1:])
    x = g.value(call.args[0])
    if (lo, hi) == (0.0, 6.0):
        return g.op("RELU6", [x], _like(g, x, var, x in g.nhwc))
    mid = g.act(f"{var.name}.max", g.tensors[x].shape, nhwc=x in g.nhwc)
    g.op("MAXIMUM", [x, g.init(np.asarray(lo, np.float32), f"{var.name}.min")], mid, "MaximumMinimumOptions")
    return g.op("MINIMUM", [mid, g.init(np.asarray(hi, np.float32), f"{var.name}.max")],
                _like(g, x, var, x in g.nhwc), "MaximumMinimumOptions")


def concat(g, var, call):
    from .onnx_ops import _tuple_fields

    names = [g.value(f, f"{var.name}.part") for f in _tuple_fields(g, call.args[0])]
    axis = int(call.attrs.axis) % len(var.ty.shape)
    nhwc = len(var.ty.shape) == 4 and any(n in g.nhwc for n in names)
    if nhwc:
        names, axis = [g.nhwc_of(n) for n in names], (0, 3, 1, 2)[axis]
    return g.op("CONCATENATION", names, _like(g, names[0], var, nhwc), "ConcatenationOptions", axis=axis,
                fused_activation_function=0)


def mean(g, var, call):
    x = g.value(call.args[0])
    rank = len(call.args[0].ty.shape)
    axes = sorted(int(d) % rank for d in call.attrs.axis) if call.attrs.axis is not None else list(range(rank))
    keep = bool(call.attrs.keepdims)
    nhwc = x in g.nhwc
    if nhwc and not keep and axes != [2, 3]:
        x, nhwc = g.plain_of(x), False
    if nhwc:
        axes = [(0, 3, 1, 2)[a] for a in axes]
    ax = g.init(np.asarray(axes, np.int32), f"{var.name}.axes")
    return g.op("MEAN", [x, ax], _like(g, x, var, nhwc and keep), "ReducerOptions", keep_dims=keep)


def reshape(g, var, call):
    from .tflite_graph import same_bytes

    x = g.value(call.args[0])
    shape = [int(d) for d in var.ty.shape]
    if x in g.nhwc and not same_bytes(g.shape(x)):
        x = g.plain_of(x)
    nhwc = len(shape) == 4 and same_bytes(shape)
    target = nhwc_shape(shape) if nhwc else shape
    out = g.act(var.name, target, str(var.ty.dtype), nhwc)
    return g.op("RESHAPE", [x, g.init(np.asarray(target, np.int32), f"{var.name}.shape")], out, "ReshapeOptions")


def take(g, var, call):
    x, idx = g.value(call.args[0]), g.const_of(call.args[1])
    if idx is None or call.attrs.axis is None:
        raise g.unsupported("a gather without constant indices and an axis")
    axis = int(call.attrs.axis) % len(call.args[0].ty.shape)
    dim = g.shape(x)[axis]
    if idx.size and (idx.min() < 0 or idx.max() >= dim):
        raise g.unsupported(f"gather indices outside [0, {dim})")
    nhwc = x in g.nhwc
    ind = g.init(idx.astype(np.int32), f"{var.name}.indices")
    return g.op("GATHER", [x, ind], _like(g, x, var, nhwc), "GatherOptions",
                axis=(0, 3, 1, 2)[axis] if nhwc else axis, batch_dims=0)


def matmul(g, var, call):
    w = g.const_of(call.args[1])
    x = g.plain_of(g.value(call.args[0]))
    if w is None or w.ndim != 2 or len(call.args[0].ty.shape) != 2:
        raise g.unsupported("a matmul that is not (1, K) × constant (K, N)")
    bias, act, out_var, absorbed = _epilogue(g, var, w.shape[1])
    bias = bias if bias is not None else np.zeros(w.shape[1], np.float32)
    out = g.act(out_var.name, [int(d) for d in var.ty.shape])
    g.op("FULLY_CONNECTED", [x, g.init(np.ascontiguousarray(w.T), f"{var.name}.weight"),
                             g.init(bias.astype(np.float32), f"{var.name}.bias")], out, "FullyConnectedOptions",
         fused_activation_function=ACT[act], keep_num_dims=False)
    for v in absorbed:
        g.absorb(v, out)
    return out


def softmax(g, var, call):
    x = g.plain_of(g.value(call.args[0]))
    if int(call.attrs.axis) % len(var.ty.shape) != len(var.ty.shape) - 1:
        raise g.unsupported("softmax over an axis other than the last")
    return g.op("SOFTMAX", [x], _like(g, x, var, False), "SoftmaxOptions", beta=1.0)


def astype(g, var, call):
    if str(call.attrs.dtype) != str(call.args[0].ty.dtype):
        raise g.unsupported(f"a cast to {call.attrs.dtype} (float TFLite export)")
    return g.value(call.args[0])


HANDLERS = {
    "relax.nn.conv2d": conv2d, "relax.nn.max_pool2d": pool2d, "relax.nn.avg_pool2d": pool2d,
    "relax.clip": clip, "relax.concat": concat, "relax.mean": mean, "relax.reshape": reshape,
    "relax.flatten": reshape, "relax.take": take, "relax.matmul": matmul, "relax.nn.softmax": softmax,
    "relax.astype": astype, "call_tir:": tir_elementwise,
    **{op: elementwise for op in RELAX_BINARY}, **{op: unary for op in UNARY},
}
