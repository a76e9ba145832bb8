"""``poolhoist``: run a 1×1 conv whose output is only globally averaged at a lower resolution.

A 1×1 conv is linear and acts on each position alone, so it commutes with average pooling:
mean_hw(W·x_hw + b) = W·mean_hw(x) + b. SqueezeNet's classifier is ``mean_hw(relu(conv1×1(x) + b))``
(conv10: 512→1000 at 13×13, a quarter of the model's MACs); pooling x over k×k windows first and
running the conv, bias and ReLU on the pooled map costs 1/k² of the MACs. The global mean after it is
kept, weighted by each window's size where k does not divide the map (so without the ReLU the rewrite
is exact for any k). The ReLU is what makes it approximate: relu(mean(y)) ≠ mean(relu(y)) where a
channel's pre-activation changes sign inside a window. ``window=0`` pools the whole map (the conv then
runs once per image: "global average pooling first", as in Network-in-Network/MobileNet heads, which
pool before their classifier by design). No fitting: the error comes from the ReLU alone and is
reported on calibration activations (relative error of the pooled output) when they are given.

Matched: conv2d 1×1 (stride 1, no padding, constant weight) → ``add``s of per-channel constants
(none or several: a refitted conv carries a bias correction) → optional ``relu`` → ``mean`` over H
and W, each value used once. Other convs are left alone with no record; matched convs the window
would not shrink are recorded as skipped.
"""
from __future__ import annotations

import numpy as np
import tvm

from . import Param, register
from .base import LayerRecord, PassContext
from ..errors import SqccError


def _windows(h: int, w: int, k: int):
    """(kh, kw, pooled H, pooled W, window sizes (pooled H × pooled W)) for kh×kw windows at stride
    (kh, kw), k clipped to the map; the last row/column of windows is cut short where k does not
    divide the map (k = 0: the whole map)."""
    kh = h if k == 0 else min(k, h)
    kw = w if k == 0 else min(k, w)
    hh, ww = -(-h // kh), -(-w // kw)
    rows = np.minimum(kh, h - kh * np.arange(hh))
    cols = np.minimum(kw, w - kw * np.arange(ww))
    return kh, kw, hh, ww, np.outer(rows, cols).astype(np.float64)


def hoisted_reference(x, weight, bias, k: int, relu: bool = True):
    """numpy: mean over the map of act(W·avgpool_k(x) + b), windows weighted by their size (N, O) —
    what the rewritten graph computes; ``k = 1`` is the original mean_hw(act(W·x + b))."""
    x = np.asarray(x, np.float64)
    n, c, h, w = x.shape
    kh, kw, hh, ww, cnt = _windows(h, w, k)
    pad = np.zeros((n, c, hh * kh, ww * kw))
    pad[:, :, :h, :w] = x
    pooled = pad.reshape(n, c, hh, kh, ww, kw).sum((3, 5)) / cnt
    y = np.einsum("oc,nchw->nohw", np.asarray(weight, np.float64).reshape(len(weight), -1), pooled)
    y = y + np.asarray(bias, np.float64).reshape(1, -1, 1, 1)
    if relu:
        y = np.maximum(y, 0)
    return (y * cnt).sum((2, 3)) / cnt.sum()


def find_hoistable(func) -> dict:
    """{conv var name: (summed bias or None, relu?, mean var name)} for the 1×1 convs whose output only
    reaches a mean over H, W (through per-channel constant adds and an optional ReLU)."""
    from ..layers import const_value, is_const, op_name, values_and_users

    values, users = values_and_users(func)

    def only_user(var):
        u = users.get(var, [])
        return u[0] if len(u) == 1 and u[0] is not None else None

    out = {}
    for var, val in values.items():
        if op_name(val) != "relax.nn.conv2d" or not is_const(val.args[1]):
            continue
        a = val.attrs
        wshape = [int(d) for d in val.args[1].ty.shape]
        if (wshape[2:] != [1, 1] or [int(s) for s in a.strides] != [1, 1] or any(int(p) for p in a.padding)
                or str(a.data_layout) != "NCHW" or str(a.kernel_layout) != "OIHW" or int(a.groups) != 1):
            continue
        n = wshape[0]
        cur, bias, relu = var, None, False
        nxt = only_user(cur)
        # one or more per-channel constant adds (a refitted conv carries its bias correction too)
        while nxt is not None and op_name(values.get(nxt)) == "relax.add":
            add = values[nxt]
            other = add.args[1] if add.args[0].same_as(cur) else add.args[0]
            b = const_value(other, values)
            if b is None or b.size != n:  # not a per-channel constant: the add is not a bias
                break
            b = b.reshape(-1).astype(np.float64)
            bias = b if bias is None else bias + b
            cur, nxt = nxt, only_user(nxt)
        if nxt is not None and op_name(values.get(nxt)) == "relax.add":
            continue
        if nxt is not None and op_name(values.get(nxt)) == "relax.nn.relu":
            relu = True
            cur, nxt = nxt, only_user(nxt)
        if nxt is None or op_name(values.get(nxt)) != "relax.mean":
            continue
        axes = values[nxt].attrs.axis
        if axes is None or sorted(int(x) % 4 for x in axes) != [2, 3]:
            continue
        out[var.name] = (bias, relu, nxt.name)
    return out


@register("poolhoist", "run a 1×1 conv whose output is only globally averaged (after an optional bias "
          "and ReLU) on k×k average-pooled input: 1/k² of its MACs, exact without the ReLU",
          params=[Param("window", int, "pooling window k (stride k); 0: the whole map (global "
                        "average pooling before the conv)"),
                  Param("layers", list, "only these layers (default: all that match)")])
@tvm.transform.module_pass(opt_level=0, name="sqcc.poolhoist")
class PoolHoist:
    """Average-pool before a 1×1 conv that is only globally pooled (see the module docstring)."""

    technique = "poolhoist"

    def __init__(self, context=None, window=0, layers=()):
        self.context = context if context is not None else PassContext()
        if int(window) < 0:
            raise SqccError(f"--pass poolhoist: window={window} out of range: must be ≥ 0 (0: the whole map)")
        self.window = int(window)
        self.layers = set(layers or [])

    def _wanted(self, name: str) -> bool:
        # a compensated (refitted) conv keeps its layer name as a prefix: conv25__rf0
        return not self.layers or name in self.layers or name.split("__")[0] in self.layers

    def transform_module(self, mod, ctx):
        from tvm import relax
        from tvm.relax.expr_functor import PyExprMutator, mutator

        from ..layers import op_name, tvm_ir_update
        from .base import emit_as

        found = {k: v for k, v in find_hoistable(mod["main"]).items() if self._wanted(k)}
        if not found:
            return mod
        means = {}  # mean var name → window-size weights (None: windows all equal)
        pass_ = self
        records = self.context.records
        acts = self.context.activations

        @mutator
        class _Hoist(PyExprMutator):
            def visit_var_binding_(self, binding):
                name = binding.var.name
                val = binding.value
                if name in found and op_name(val) == "relax.nn.conv2d":
                    bias, relu, mean_name = found[name]
                    _, c, h, w = [int(d) for d in val.args[0].ty.shape]
                    o = int(val.args[1].ty.shape[0])
                    kh, kw, hh, ww, cnt = _windows(h, w, pass_.window)
                    macs = h * w * o * c
                    layer = name.split("__")[0]
                    if hh * ww == h * w:
                        records.append(LayerRecord(layer, "poolhoist", False,
                                                   f"window {pass_.window}: the {h}×{w} map would not shrink",
                                                   o * c, o * c, macs, macs))
                        return super().visit_var_binding_(binding)
                    data = self.visit_expr(val.args[0])
                    pooled = self.builder_.emit(relax.op.nn.avg_pool2d(
                        data, pool_size=(kh, kw), strides=(kh, kw),
                        padding=(0, 0, hh * kh - h, ww * kw - w), count_include_pad=False), f"{name}__ph0")
                    new = relax.op.nn.conv2d(pooled, val.args[1], strides=[1, 1], padding=[0, 0, 0, 0],
                                             dilation=[1, 1], groups=1, out_dtype=val.attrs.out_dtype)
                    self.set_var_remap(binding.var, emit_as(self.builder_, binding.var, new))
                    means[mean_name] = None if np.all(cnt == cnt[0, 0]) else cnt * cnt.size / cnt.sum()
                    err = None
                    x = acts.get(layer) if acts is not None else None
                    if x is not None and tuple(x.shape[1:]) == (c, h, w):
                        wt = val.args[1].value.numpy()
                        b = bias if bias is not None else np.zeros(o)
                        ref = hoisted_reference(x, wt, b, 1, relu)
                        got = hoisted_reference(x, wt, b, pass_.window, relu)
                        err = float(np.linalg.norm(ref - got) / max(np.linalg.norm(ref), 1e-30))
                    where = "the whole map" if pass_.window == 0 else f"{kh}×{kw} windows"
                    detail = (f"average-pooled over {where} ({h}×{w} → {hh}×{ww}) before the 1×1 conv"
                              + (", then bias and ReLU" if relu else "")
                              + ("; exact (no ReLU)" if not relu else
                                 "; error of the pooled output from the ReLU" if err is not None else ""))
                    records.append(LayerRecord(layer, "poolhoist", True, detail, o * c, o * c, macs,
                                               hh * ww * o * c, None, err))
                    pass_.context.extra.setdefault("rewritten", {})[layer] = "poolhoist"
                    return
                if name in means and op_name(val) == "relax.mean" and means[name] is not None:
                    arg = self.visit_expr(val.args[0])
                    wmap = relax.const(means[name].reshape(1, 1, *means[name].shape).astype(np.float32))
                    weighted = self.builder_.emit(relax.op.multiply(arg, wmap), f"{name}__phw")
                    new = relax.op.mean(weighted, axis=[int(a) for a in val.attrs.axis],
                                        keepdims=bool(val.attrs.keepdims))
                    self.set_var_remap(binding.var, emit_as(self.builder_, binding.var, new))
                    return
                return super().visit_var_binding_(binding)

        new_main = _Hoist(mod).visit_expr(mod["main"])
        return tvm_ir_update(mod, "main", new_main)

