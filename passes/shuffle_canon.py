"""Canonicalise channel shuffles: ShuffleNet's reshape → transpose → reshape, as imported from ONNX,
becomes one channel permutation, which is then

1. folded away when the consumers can absorb it exactly (dense convs permute their input-channel
   axis, depthwise convs / biases / ReLU / pooling pass it on, a later gather composes with it), or
2. moved into the producer's weights (a dense conv's output rows) when the producers' other
   consumers can absorb it, or
3. lowered as a single gather ``take(x, idx, axis=1)`` with a constant index (no 5-D transpose).

``canonicalize_shuffles(mod)`` returns (mod, [description per shuffle]); the registered pass
``shuffle-canon`` does the same and logs to ``PassContext.records``. It is meant to run by default
right after import (before the user's passes).

:func:`gather_to_nhwc` is a build-time clean-up for after ``ConvertLayout(NHWC)``: ConvertLayout does
not know ``take``, so it wraps each channel gather in NHWC→NCHW→NHWC transposes; this pass turns
``permute_dims(x,[0,3,1,2]) → take(axis=1) → permute_dims([0,2,3,1])`` back into one
``take(x, idx, axis=3)``.
"""
from __future__ import annotations

import numpy as np
import tvm

from . import register
from .base import LayerRecord, PassContext


def shuffle_index(a: int, b: int) -> np.ndarray:
    """y = reshape(transpose(reshape(x, [N,a,b,H,W]), [0,2,1,3,4]), [N,C,H,W]) is ``x[:, idx]``."""
    return np.arange(a * b).reshape(a, b).T.reshape(-1)


def find_shuffles(ir):
    """[(r2 name, x expr, r1 name, idx)] for each reshape→permute_dims→reshape channel shuffle."""
    from tvm import relax

    out = []
    for r2 in ir.order:
        if ir.op.get(r2) != "relax.reshape":
            continue
        t = ir.value(r2).args[0]
        if not isinstance(t, relax.Var) or ir.op.get(t.name) != "relax.permute_dims":
            continue
        tv = ir.value(t.name)
        axes = [int(a) for a in tv.attrs.axes] if tv.attrs.axes is not None else None
        if axes != [0, 2, 1, 3, 4]:
            continue
        r1 = tv.args[0]
        if not isinstance(r1, relax.Var) or ir.op.get(r1.name) != "relax.reshape":
            continue
        x = ir.value(r1.name).args[0]
        try:
            xs = [int(d) for d in x.ty.shape]
            s1 = [int(d) for d in r1.ty.shape]
            s2 = [int(d) for d in ir.bindings[r2].var.ty.shape]
        except Exception:
            continue
        if len(xs) != 4 or len(s1) != 5 or s2 != xs or s1[0] != xs[0] or s1[3:] != xs[2:] \
                or s1[1] * s1[2] != xs[1]:
            continue
        if len(ir.users.get(r1.name, [])) != 1 or len(ir.users.get(t.name, [])) != 1:
            continue
        out.append((r2, x, r1.name, shuffle_index(s1[1], s1[2])))
    return out


def canonicalize_shuffles(mod):
    """Fold or gather every channel shuffle of ``main``; returns (mod, [str])."""
    from .shuffle import ChannelIR, NoFold, Plan, apply_plan, plan_down, plan_up

    from .shuffle import uniquify_names

    mod = uniquify_names(mod)
    notes = []
    done = set()
    for _ in range(1000):
        ir = ChannelIR(mod)
        found = [f for f in find_shuffles(ir) if f[0] not in done]
        if not found:
            break
        r2, x, r1, idx = found[0]
        inv = np.argsort(idx)
        if ir.dup:
            plan, how = None, "gather (duplicate binding names)"
        else:
            plan, how = None, None
            try:  # consumers absorb y' = y[:, inv] = x
                p = Plan()
                plan_down(ir, r2, inv, p)
                plan, how = p, "folded into " + ", ".join(p.absorbed)
            except NoFold as e1:
                try:  # the producer makes x' = x[:, idx] = y
                    p, root = plan_up(ir, x.name, idx, r1)
                    plan, how = p, f"folded into {root} (and " + ", ".join(p.absorbed[1:] or ["no other"]) + ")"
                except NoFold as e2:
                    how = f"gather (consumers: {e1}; producer: {e2})"
        if plan is not None:
            mod = apply_plan(mod, plan, remap={r2: x})
        else:
            from tvm import relax

            def emit(builder, _ir, visit, x=x, idx=idx):
                return relax.op.take(visit(x), relax.const(idx.astype("int64")), axis=1, mode="clip")

            mod = apply_plan(mod, Plan(), replace={r2: emit})
            done.add(r2)
        notes.append(f"channel shuffle {r2} ({len(idx)} channels): {how}")
    return mod, notes


@register("shuffle-canon", "recognise ShuffleNet channel shuffles (reshape→transpose→reshape) and fold "
          "them into neighbouring weights or lower them as one gather (run by default after import)")
@tvm.transform.module_pass(opt_level=0, name="sqcc.shuffle_canon")
class ShuffleCanon:
    def __init__(self, context=None):
        self.context = context if context is not None else PassContext()

    def transform_module(self, mod, ctx):
        mod, notes = canonicalize_shuffles(mod)
        for n in notes:
            name = n.split()[2]
            self.context.records.append(LayerRecord(name, "shuffle-canon", True, n))
        return mod


# ------------------------------------------------------------------------------- NHWC clean-up

def _gather_to_nhwc(mod):
    from tvm import relax

    from .shuffle import ChannelIR, Plan, apply_plan, uniquify_names

    mod = uniquify_names(mod)
    ir = ChannelIR(mod)
    replace, remap = {}, {}
    for t in ir.order:
        if ir.op.get(t) != "relax.take":
            continue
        tv = ir.value(t)
        if tv.attrs.axis is None or int(tv.attrs.axis) != 1:
            continue
        src = tv.args[0]
        if not isinstance(src, relax.Var) or ir.op.get(src.name) != "relax.permute_dims":
            continue
        pv = ir.value(src.name)
        if pv.attrs.axes is None or [int(a) for a in pv.attrs.axes] != [0, 3, 1, 2]:
            continue
        users = ir.users.get(t, [])
        if len(users) != 1 or ir.op.get(users[0][0]) != "relax.permute_dims":
            continue
        back = users[0][0]
        bv = ir.value(back)
        if bv.attrs.axes is None or [int(a) for a in bv.attrs.axes] != [0, 2, 3, 1]:
            continue
        if len(ir.users.get(src.name, [])) != 1:
            continue
        x, idx = pv.args[0], tv.args[1]

        def emit(builder, _ir, visit, x=x, idx=idx, mode=str(tv.attrs.mode)):
            return relax.op.take(visit(x), visit(idx), axis=3, mode=mode)

        replace[back] = emit
    if not replace:
        return mod
    return apply_plan(mod, Plan(), replace=replace, remap=remap)


@tvm.transform.module_pass(opt_level=0, name="sqcc.gather_to_nhwc")
class GatherToNHWC:
    """After ConvertLayout(NHWC): fuse transpose→take(axis=1)→transpose into take(axis=3)."""

    def transform_module(self, mod, ctx):
        return _gather_to_nhwc(mod)


def gather_to_nhwc():
    return GatherToNHWC()
