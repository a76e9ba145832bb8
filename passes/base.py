"""What every rewrite pass shares: the context it reads (calibration activations, forced layers) and
writes (per-layer records), and :class:`ConvRewriter`, a mutator that offers each conv2d/matmul with a
constant weight to a ``rewrite`` callback and re-emits everything else unchanged.

Passes never build or run code: calibration activations are collected beforehand (sqcc.calibrate)
and handed in through the context.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np


@dataclass
class LayerRecord:
    """One line of a pass's report."""

    layer: str
    technique: str
    applied: bool
    detail: str = ""  # rank / multiplier / groups, or why it was skipped
    params_before: int = 0
    params_after: int = 0
    macs_before: int = 0
    macs_after: int = 0
    weight_error: float | None = None  # ‖W − Ŵ‖/‖W‖ (reconstructed as a dense conv)
    output_error: float | None = None  # ‖y − ŷ‖/‖y‖ on calibration activations

    def to_json(self):
        return asdict(self)


@dataclass
class PassContext:
    """Shared by the passes of one compile.

    ``activations``: {layer name: input activations, an ndarray N×C×H×W (or N×K for matmul)} of the
    original model on calibration inputs, or None without calibration. ``force``: rewrite even when
    MACs do not drop. ``records``: appended to by every pass.
    """

    activations: dict | None = None
    force: bool = False
    records: list = field(default_factory=list)
    extra: dict = field(default_factory=dict)

    def inputs_of(self, layer: str):
        if self.activations is None:
            return None
        return self.activations.get(layer)


@dataclass
class ConvCall:
    """A conv2d binding as a rewrite sees it (NCHW data, OIHW weight)."""

    name: str
    data: object  # relax expr of the input activation
    weight: np.ndarray
    strides: tuple
    padding: tuple  # (top, left, bottom, right)
    dilation: tuple
    groups: int
    in_shape: tuple
    out_shape: tuple
    out_dtype: str

    @property
    def macs(self) -> int:
        n, o, h, w = self.out_shape
        return int(n * o * h * w * np.prod(self.weight.shape[1:]))


def conv_calls_supported(call) -> str | None:
    """Why a conv2d call cannot be rewritten (None when it can)."""
    a = call.attrs
    if str(a.data_layout) != "NCHW" or str(a.kernel_layout) != "OIHW":
        return f"layout {a.data_layout}/{a.kernel_layout} (NCHW/OIHW only)"
    return None


def emit_as(builder, var, expr):
    """Emit ``expr`` under ``var``'s name, as a dataflow var or an output like ``var``; return the new var."""
    from tvm import relax

    if isinstance(var, relax.DataflowVar):
        return builder.emit(expr, var.name)
    return builder.emit_output(expr, var.name)


def make_conv_rewriter(rewrite_conv, rewrite_matmul=None):
    """A PyExprMutator class that calls ``rewrite_conv(builder, conv: ConvCall)`` for each conv2d with
    a constant OIHW weight; the callback emits its replacement with ``builder.emit`` and returns the
    final expr, or returns None to keep the original. ``rewrite_matmul(builder, name, x, W)`` likewise
    for matmul with a constant 2-D weight."""
    from tvm.relax.expr_functor import PyExprMutator, mutator

    from ..layers import is_const, op_name

    @mutator
    class _Rewriter(PyExprMutator):
        def visit_var_binding_(self, binding):
            val = binding.value
            op = op_name(val)
            new = None
            if op == "relax.nn.conv2d" and is_const(val.args[1]) and conv_calls_supported(val) is None:
                a = val.attrs
                conv = ConvCall(
                    name=binding.var.name, data=self.visit_expr(val.args[0]),
                    weight=val.args[1].value.numpy(), strides=tuple(int(s) for s in a.strides),
                    padding=tuple(int(p) for p in a.padding), dilation=tuple(int(d) for d in a.dilation),
                    groups=int(a.groups), in_shape=tuple(int(d) for d in val.args[0].ty.shape),
                    out_shape=tuple(int(d) for d in binding.var.ty.shape),
                    out_dtype=str(binding.var.ty.dtype))
                new = rewrite_conv(self.builder_, conv)
            elif (op == "relax.matmul" and rewrite_matmul is not None and is_const(val.args[1])
                  and len(val.args[1].ty.shape) == 2):
                new = rewrite_matmul(self.builder_, binding.var.name, self.visit_expr(val.args[0]),
                                     val.args[1].value.numpy())
            if new is None:
                return super().visit_var_binding_(binding)
            # Keep the layer's name on the expr that now produces its output.
            self.set_var_remap(binding.var, emit_as(self.builder_, binding.var, new))

    return _Rewriter


def apply_rewriter(mod, rewriter_cls):
    """Run a rewriter over ``main`` and return the new module (other functions unchanged)."""
    from ..layers import tvm_ir_update

    new_main = rewriter_cls(mod).visit_expr(mod["main"])
    return tvm_ir_update(mod, "main", new_main)


def conv2d(builder, data, weight: np.ndarray, strides=(1, 1), padding=(0, 0, 0, 0), dilation=(1, 1),
           groups=1, name=None):
    """Emit an NCHW/OIHW conv2d with a constant weight and return its var."""
    from tvm import relax

    w = relax.const(np.ascontiguousarray(weight, dtype=np.float32))
    expr = relax.op.nn.conv2d(data, w, strides=list(strides), padding=list(padding),
                              dilation=list(dilation), groups=groups)
    return builder.emit(expr, name) if name else builder.emit(expr)


def rel_error(ref: np.ndarray, approx: np.ndarray) -> float:
    d = float(np.linalg.norm(ref.astype(np.float64)))
    return float(np.linalg.norm((ref - approx).astype(np.float64))) / (d if d > 0 else 1.0)
