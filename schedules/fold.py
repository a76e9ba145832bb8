"""Constant folding in numpy for the handful of ops that dominate compile time.

``relax.transform.FoldConstant`` compiles every foldable call with LLVM (~0.3-0.6 s each). The
ONNX frontend emits dozens of them per model (each Clip's ``isnan``/``where`` bound, each weight's
layout transpose after ConvertLayout): 24 s of MobileNet's build. These ops are trivial in numpy,
so they are folded here first and FoldConstant only sees what is left.
"""
from __future__ import annotations

import numpy as np
import tvm
from tvm import relax

_CONST = getattr(tvm.ir, "GenericConst", None) or getattr(relax, "Constant")

_BINARY = {
    "relax.add": np.add, "relax.subtract": np.subtract, "relax.multiply": np.multiply,
    "relax.divide": np.divide, "relax.maximum": np.maximum, "relax.minimum": np.minimum,
}
_UNARY = {"relax.isnan": np.isnan, "relax.sqrt": np.sqrt, "relax.negative": np.negative}


def _np(c):
    return c.value.numpy()


@relax.expr_functor.mutator
class _Folder(relax.PyExprMutator):
    def visit_call_(self, call):  # noqa: D401 -- mutator hook
        call = super().visit_call_(call)
        if not isinstance(call.op, tvm.ir.Op):
            return call
        name = call.op.name
        # constants usually arrive bound to vars (lv = const): look through the binding
        args = []
        for a in call.args:
            if isinstance(a, relax.Var):
                bound = self.lookup_binding(a)
                a = bound if isinstance(bound, _CONST) else a
            args.append(a)
        try:
            if name in _BINARY and len(args) == 2 and all(isinstance(a, _CONST) for a in args):
                out = _BINARY[name](_np(args[0]), _np(args[1]))
                want = str(call.ty.dtype)
                return relax.const(np.asarray(out).astype(want), want)
            if name in _UNARY and len(args) == 1 and isinstance(args[0], _CONST):
                out = _UNARY[name](_np(args[0]))
                want = str(call.ty.dtype)
                return relax.const(np.asarray(out).astype(want), want)
            if name == "relax.where" and all(isinstance(a, _CONST) for a in args):
                out = np.where(_np(args[0]), _np(args[1]), _np(args[2]))
                want = str(call.ty.dtype)
                return relax.const(np.asarray(out).astype(want), want)
            if name == "relax.permute_dims" and isinstance(args[0], _CONST):
                axes = call.attrs.axes
                arr = _np(args[0])
                perm = [int(a) for a in axes] if axes is not None else None
                return relax.const(np.ascontiguousarray(np.transpose(arr, perm)), str(arr.dtype))
            if name == "relax.reshape" and isinstance(args[0], _CONST) \
                    and isinstance(args[1], relax.ShapeExpr):
                shape = [int(v) for v in args[1].values]
                arr = _np(args[0])
                return relax.const(np.ascontiguousarray(arr.reshape(shape)), str(arr.dtype))
        except Exception:  # noqa: BLE001 -- anything unusual is left to FoldConstant
            return call
        return call


def fold_constants_numpy() -> tvm.transform.Pass:
    """Fold elementwise/transpose/reshape calls on constants with numpy."""

    @tvm.transform.module_pass(opt_level=0, name="SqccNumpyFold")
    def _pass(mod, _ctx):
        for gv, func in list(mod.functions_items()):
            if isinstance(func, relax.Function):
                mod[gv] = _Folder(mod).visit_expr(func)
        return mod

    # No FoldConstant here: on MobileNet it spends ~5 s (outside of any compilation) even when there
    # is nothing left to fold; the zero pipeline's FoldConstant after legalization catches leftovers.
    return tvm.transform.Sequential([_pass, relax.transform.CanonicalizeBindings()],
                                    name="SqccFold")
