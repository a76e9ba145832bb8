"""Relax ``main`` → TFLite tensors and operators, with the layout TFLite wants.

:class:`TfliteBuilder` walks the bindings as the ONNX builder does (it is one, with TFLite's nodes
and initializers). TFLite convolutions and pools are NHWC; the Relax graph is NCHW. Every 4-D tensor
is therefore held in one of two layouts -- NHWC (``nhwc`` set) or as Relax has it -- and each
handler asks for the one it needs (:meth:`nhwc_of`, :meth:`plain_of`), which inserts a TRANSPOSE
only where a tensor really changes layout (never where C = 1 or H·W = 1: the bytes are the same).
Inputs of rank 4 are NHWC, as TFLite models take images; outputs are in the package's layout.
"""
from __future__ import annotations

import numpy as np

from .onnx_graph import OnnxBuilder, _contiguous, tensor_type
from .tflite_writer import Op, Tensor

TO_NHWC = (0, 2, 3, 1)
TO_NCHW = (0, 3, 1, 2)


def nhwc_shape(shape) -> tuple:
    return tuple(shape[i] for i in TO_NHWC)


def same_bytes(shape) -> bool:
    """Does an NCHW tensor of ``shape`` hold its values in NHWC order already?"""
    return len(shape) == 4 and (shape[1] == 1 or shape[2] * shape[3] == 1)


class TfliteBuilder(OnnxBuilder):
    FORMAT = "TFLite"

    def __init__(self, func, input_names, output_names):
        super().__init__(func, input_names, output_names)
        self.tensors: dict[str, Tensor] = {}
        self.ops: list[Op] = []
        self.nhwc: set[str] = set()
        self._views: dict = {}  # (name, layout) -> converted tensor
        for p, name in zip(func.params, input_names):
            shape, dtype = tensor_type(p.ty)
            if len(shape) == 4:
                self.tensors[name] = Tensor(name, nhwc_shape(shape), dtype)
                self.nhwc.add(name)
            else:
                self.tensors[name] = Tensor(name, shape, dtype)

    # ---------------------------------------------------------------------------------- tensors
    def init(self, arr, name: str) -> str:
        arr = _contiguous(arr)
        name = self.fresh(name)
        self.tensors[name] = Tensor(name, tuple(arr.shape), str(arr.dtype), arr)
        return name

    def act(self, name: str, shape, dtype="float32", nhwc: bool = False) -> str:
        """A new activation tensor (``shape`` as TFLite holds it)."""
        name = self.fresh(name)
        self.tensors[name] = Tensor(name, tuple(int(d) for d in shape), dtype)
        if nhwc:
            self.nhwc.add(name)
        return name

    def op(self, code: str, inputs, output: str, options: str | None = None, **values) -> str:
        self.ops.append(Op(code, list(inputs), [output], options, values))
        return output

    def shape(self, name: str) -> tuple:
        """A tensor's shape in Relax's (NCHW) terms."""
        s = self.tensors[name].shape
        return tuple(s[i] for i in TO_NCHW) if name in self.nhwc else s

    # ----------------------------------------------------------------------------------- layout
    def nhwc_of(self, name: str) -> str:
        if name in self.nhwc:
            return name
        return self._relayout(name, TO_NHWC, True)

    def plain_of(self, name: str) -> str:
        if name not in self.nhwc:
            return name
        return self._relayout(name, TO_NCHW, False)

    def _relayout(self, name, perm, nhwc: bool) -> str:
        key = (name, nhwc)
        if key in self._views:
            return self._views[key]
        t = self.tensors[name]
        if t.data is not None:
            out = self.init(t.data.transpose(perm), f"{name}.{'nhwc' if nhwc else 'nchw'}")
        elif same_bytes(self.shape(name)):
            out = self.act(f"{name}.{'nhwc' if nhwc else 'nchw'}", tuple(t.shape[i] for i in perm), t.dtype, nhwc)
            self.op("RESHAPE", [name, self.init(np.asarray(self.tensors[out].shape, np.int32),
                                                f"{out}.shape")], out, "ReshapeOptions")
        else:
            out = self.act(f"{name}.{'nhwc' if nhwc else 'nchw'}", tuple(t.shape[i] for i in perm), t.dtype, nhwc)
            self.op("TRANSPOSE", [name, self.init(np.asarray(perm, np.int32), f"{out}.perm")], out,
                    "TransposeOptions")
        if nhwc:
            self.nhwc.add(out)
        self._views[key] = out
        return out

    def const_like(self, arr, other: str, name: str) -> str:
        """A constant operand of an elementwise op with tensor ``other``: laid out as ``other``."""
        arr = np.asarray(arr)
        if other in self.nhwc and arr.ndim >= 1:
            arr = arr.reshape((1,) * (4 - arr.ndim) + arr.shape).transpose(TO_NHWC)
        return self.init(arr, name)

    def output_tensors(self, names: list[str]) -> list[str]:
        """The results in the package's layout, under the model's output names."""
        renamed: dict[str, str] = {}
        for name, want in zip(names, self.output_names):
            name = self.plain_of(name)
            src = renamed.get(name, name)
            t = self.tensors[src]
            if name in renamed or name in self.input_names or t.data is not None:
                self.tensors[want] = Tensor(want, t.shape, t.dtype)
                self.op("RESHAPE", [src, self.init(np.asarray(t.shape, np.int32), f"{want}.shape")], want,
                        "ReshapeOptions")
            elif name != want:
                self.tensors[want] = Tensor(want, t.shape, t.dtype)
                del self.tensors[name]
                for op in self.ops:
                    op.inputs = [want if i == name else i for i in op.inputs]
                    op.outputs = [want if o == name else o for o in op.outputs]
            renamed.setdefault(name, want)
        return list(self.output_names)
