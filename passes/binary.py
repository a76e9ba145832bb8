"""``binary``: BinaryConnect/BWN and XNOR-Net lowering to bit-packed popcount kernels.

* ``mode=weights`` (BWN, Rastegari 2016 / BinaryConnect): W ≈ α[o]·sign(W), α = mean|W[o]|; float
  activations. The weights are stored as packed sign bits (uint32 words, 32× fewer bytes) and the
  kernel adds or subtracts each input according to its bit (:func:`sqcc.schedules.binary.bwn_conv2d`).
* ``mode=xnor`` (XNOR-Net): activations are binarised too, x ≈ β·sign(x) with β = mean over channels
  of |x| per pixel, averaged over each conv window (XNOR-Net's K = avg_pool(β)); the conv is
  ``α[o] · K · (C − 2·popcount(x_bits XOR w_bits))`` summed over taps
  (:func:`sqcc.schedules.binary.xnor_conv2d`), exact integers on ±1 data.
* ``skip=first,last`` (default) leaves the first and last conv float (as XNOR-Net does); layer names
  may be listed too; ``skip=none`` binarises every conv.

A model trained in float **collapses** when binarised without retraining (agreement near chance):
the pass records the weight error per layer so the report can say so; the point of the lowering is
the kernels and the size, which are exact and 32× smaller.
Grouped/depthwise convs cannot be lowered by these kernels: naming one (or leaving one selected)
is an error that says which layer and how to skip it.
"""
from __future__ import annotations

import numpy as np
import tvm

from . import Param, register
from .base import LayerRecord, PassContext, make_conv_rewriter, rel_error
from ..layers import tvm_ir_update
from ..errors import SqccError

MODES = ("weights", "xnor")


def binarize_weights(w: np.ndarray):
    """(sign ±1 float32, α per output channel)."""
    alpha = np.abs(w.reshape(w.shape[0], -1)).mean(axis=1).astype(np.float32)
    sign = np.where(w >= 0, 1.0, -1.0).astype(np.float32)
    return sign, alpha


def _add(bb, func, name):
    """Add a kernel under a unique name (create_prim_func names every function 'main')."""
    name = bb.get_unique_name(name)
    return bb.add_func(func.with_attr("global_symbol", name), name)


def _prim(fn_builder, placeholders):
    from tvm import te

    out = fn_builder(*placeholders)
    return te.create_prim_func(list(placeholders) + [out]), out


def emit_xnor_conv(bb, x, sign_w: np.ndarray, strides, padding, dilation, name="xnor"):
    """Emit pack → xnor popcount conv for ±1 weights ``sign_w`` (OIHW); returns the int32 NCHW dot
    products (before any scaling) as a relax expr."""
    from tvm import relax, te

    from ..schedules import binary as kb

    n, c, h, w = (int(d) for d in x.ty.shape)
    o, _, kh, kw = sign_w.shape
    nw = -(-c // kb.WORD)
    xp = te.placeholder((n, c, h, w), str(x.ty.dtype), name="x")
    pack_f, packed = _prim(kb.pack_signs, [xp])
    pack_gv = _add(bb, kb.schedule_pack(pack_f), f"{name}_pack")
    xb = bb.emit(relax.op.call_tir(pack_gv, [x], relax.TensorType((n, h, w, nw), "uint32")))
    xbp = te.placeholder((n, h, w, nw), "uint32", name="xb")
    wbp = te.placeholder((kh, kw, nw, o), "uint32", name="wb")
    conv_f, out = _prim(lambda a, b: kb.xnor_conv2d(a, b, c, strides, padding, dilation), [xbp, wbp])
    conv_gv = _add(bb, kb.schedule_xnor(conv_f), f"{name}_conv")
    wb = relax.const(kb.pack_weights(sign_w))
    shape = tuple(int(d) for d in out.shape)
    dot = bb.emit(relax.op.call_tir(conv_gv, [xb, wb], relax.TensorType(shape, "int32")))
    return bb.emit(relax.op.permute_dims(dot, [0, 3, 1, 2]))


def emit_bwn_conv(bb, x, sign_w: np.ndarray, strides, padding, dilation, name="bwn"):
    from tvm import relax, te

    from ..schedules import binary as kb

    n, c, h, w = (int(d) for d in x.ty.shape)
    o, _, kh, kw = sign_w.shape
    nw = -(-c // kb.WORD)
    xp = te.placeholder((n, c, h, w), str(x.ty.dtype), name="x")
    wbp = te.placeholder((kh, kw, nw, o), "uint32", name="wb")
    f, out = _prim(lambda a, b: kb.bwn_conv2d(a, b, c, strides, padding, dilation), [xp, wbp])
    gv = _add(bb, kb.schedule_bwn(f), f"{name}_conv")
    shape = tuple(int(d) for d in out.shape)
    return bb.emit(relax.op.call_tir(gv, [x, relax.const(kb.pack_weights(sign_w))],
                                     relax.TensorType(shape, str(x.ty.dtype))))


@register("binary", "binary weights (BWN, mode=weights) or XNOR-Net (mode=xnor) with bit-packed "
          "popcount kernels; first/last conv skipped by default",
          params=[
              Param("mode", str, "weights: W≈α·sign(W); xnor: activations binarised too", MODES),
              Param("skip", list, "layers left float: first, last, layer names, none"),
          ])
@tvm.transform.module_pass(opt_level=0, name="sqcc.binary")
class Binary:
    def __init__(self, context=None, mode="weights", skip=("first", "last")):
        if mode not in MODES:
            raise SqccError(f"binary: mode={mode}: expected one of {', '.join(MODES)}")
        self.context = context if context is not None else PassContext()
        self.mode = mode
        self.skip = [str(s) for s in (skip or [])]

    def _selected(self, mod):
        from .int8 import find_units

        units = [u for u in find_units(mod["main"]) if u.kind == "conv"]
        names = [u.name for u in units]
        skip = set()
        for s in self.skip:
            if s == "none":
                continue
            if s == "first":
                skip.update(names[:1])
            elif s == "last":
                skip.update(names[-1:])
            elif s in names:
                skip.add(s)
            else:
                raise SqccError(f"binary: skip= names unknown layer '{s}'; conv layers: {', '.join(names)} "
                                "(or first, last, none)")
        chosen = [u for u in units if u.name not in skip]
        for u in chosen:
            g = int(u.binding.value.attrs.groups)
            if g != 1:
                raise SqccError(f"binary: layer {u.name} is a grouped conv (groups={g}); the bit-packed "
                                f"kernels need groups=1: add skip={u.name} (or skip=first,last,{u.name})")
        return {u.name for u in chosen}, skip

    def transform_module(self, mod, _ctx):
        chosen, skipped = self._selected(mod)
        ctx = self.context

        def rewrite(bb, conv):
            from tvm import relax

            if conv.name not in chosen:
                return None
            sign, alpha = binarize_weights(conv.weight)
            w_hat = sign * alpha[:, None, None, None]
            o = conv.weight.shape[0]
            packed_bytes = o * conv.weight.shape[2] * conv.weight.shape[3] * -(-conv.weight.shape[1] // 32) * 4
            args = (conv.strides, conv.padding, conv.dilation)
            if self.mode == "weights":
                y = emit_bwn_conv(bb, conv.data, sign, *args, name=f"{conv.name}_bwn")
                out = relax.op.multiply(y, relax.const(alpha.reshape(1, o, 1, 1)))
            else:
                dot = emit_xnor_conv(bb, conv.data, sign, *args, name=f"{conv.name}_xnor")
                kh, kw = conv.weight.shape[2:]
                beta = bb.emit(relax.op.mean(relax.op.abs(conv.data), axis=[1], keepdims=True))
                k = bb.emit(relax.op.nn.avg_pool2d(beta, (kh, kw), conv.strides, conv.padding,
                                                   conv.dilation, count_include_pad=False))
                scaled = bb.emit(relax.op.multiply(relax.op.astype(dot, "float32"), k))
                out = relax.op.multiply(scaled, relax.const(alpha.reshape(1, o, 1, 1)))
            ctx.records.append(LayerRecord(
                conv.name, f"binary:{self.mode}", True,
                f"{'BWN' if self.mode == 'weights' else 'XNOR'}; weights {conv.weight.nbytes} → "
                f"{packed_bytes + 4 * o} bytes (packed bits + α)",
                int(conv.weight.size), int(conv.weight.size), conv.macs, conv.macs,
                rel_error(conv.weight, w_hat)))
            return out

        rw = make_conv_rewriter(rewrite)(mod)
        new_main = rw.visit_expr(mod["main"])
        new = rw.builder_.get()  # the original functions plus the kernels added by the rewrite
        new = tvm_ir_update(new, "main", new_main)
        for s in sorted(skipped):
            ctx.records.append(LayerRecord(s, f"binary:{self.mode}", False, "skipped (skip=)"))
        return new


def packed_weight_bytes(mod) -> int:
    """Bytes of uint32 constants (packed sign words) in ``mod``'s main."""
    from ..layers import is_const

    total = 0
    for block in mod["main"].body.blocks:
        for b in block.bindings:
            v = b.value
            for a in getattr(v, "args", []):
                for x in (a.fields if hasattr(a, "fields") else [a]):
                    if is_const(x) and str(x.value.dtype) == "uint32":
                        total += x.value.numpy().nbytes
    return total
