"""A TFLite model (schema v3) written with the ``flatbuffers`` Builder.

The field slots are those of TFLite's ``schema.fbs`` as the ``tflite`` package's generated readers
use them (vtable offset 4 + 2·slot); a unit test reads every table written here back through those
readers. Enum values (operators, option types, tensor types, padding, activations) come from the
``tflite`` package itself. Constant data is 16-byte aligned, as XNNPACK prefers.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

# table → {field: slot}
SLOTS = {
    "Model": {"version": 0, "operator_codes": 1, "subgraphs": 2, "description": 3, "buffers": 4,
              "metadata": 6},
    "SubGraph": {"tensors": 0, "inputs": 1, "outputs": 2, "operators": 3, "name": 4},
    "Tensor": {"shape": 0, "type": 1, "buffer": 2, "name": 3},
    "Operator": {"opcode_index": 0, "inputs": 1, "outputs": 2, "builtin_options_type": 3,
                 "builtin_options": 4},
    "OperatorCode": {"deprecated_builtin_code": 0, "version": 2, "builtin_code": 3},
    "Buffer": {"data": 0},
    "Metadata": {"name": 0, "buffer": 1},
}
# options table → [(field, slot, kind)], kind: the Builder's Prepend<kind>Slot
OPTIONS = {
    "Conv2DOptions": [("padding", 0, "Int8"), ("stride_w", 1, "Int32"), ("stride_h", 2, "Int32"),
                      ("fused_activation_function", 3, "Int8"), ("dilation_w_factor", 4, "Int32"),
                      ("dilation_h_factor", 5, "Int32")],
    "DepthwiseConv2DOptions": [("padding", 0, "Int8"), ("stride_w", 1, "Int32"), ("stride_h", 2, "Int32"),
                               ("depth_multiplier", 3, "Int32"), ("fused_activation_function", 4, "Int8"),
                               ("dilation_w_factor", 5, "Int32"), ("dilation_h_factor", 6, "Int32")],
    "Pool2DOptions": [("padding", 0, "Int8"), ("stride_w", 1, "Int32"), ("stride_h", 2, "Int32"),
                      ("filter_width", 3, "Int32"), ("filter_height", 4, "Int32"),
                      ("fused_activation_function", 5, "Int8")],
    "ConcatenationOptions": [("axis", 0, "Int32"), ("fused_activation_function", 1, "Int8")],
    "ReducerOptions": [("keep_dims", 0, "Bool")],
    "FullyConnectedOptions": [("fused_activation_function", 0, "Int8"), ("keep_num_dims", 2, "Bool")],
    "SoftmaxOptions": [("beta", 0, "Float32")],
    "GatherOptions": [("axis", 0, "Int32"), ("batch_dims", 1, "Int32")],
    "AddOptions": [("fused_activation_function", 0, "Int8")],
    "SubOptions": [("fused_activation_function", 0, "Int8")],
    "MulOptions": [("fused_activation_function", 0, "Int8")],
    "DivOptions": [("fused_activation_function", 0, "Int8")],
    "SplitOptions": [("num_splits", 0, "Int32")],
    "ReshapeOptions": [], "TransposeOptions": [], "PadV2Options": [], "PadOptions": [],
    "MaximumMinimumOptions": [],
}


@dataclass
class Tensor:
    name: str
    shape: tuple
    dtype: str
    data: np.ndarray | None = None  # constant contents


@dataclass
class Op:
    code: str  # BuiltinOperator name, e.g. "CONV_2D"
    inputs: list
    outputs: list
    options: str | None = None  # e.g. "Conv2DOptions"
    values: dict = field(default_factory=dict)


def _enum(cls_name: str, member: str) -> int:
    import importlib

    mod = importlib.import_module(f"tflite.{cls_name}")
    return int(getattr(getattr(mod, cls_name), member))


TYPES = {"float32": "FLOAT32", "int32": "INT32", "int64": "INT64", "int8": "INT8", "uint8": "UINT8",
         "bool": "BOOL", "int16": "INT16"}


class Writer:
    """Serialises tensors, operators and metadata into one TFLite flatbuffer (see module docstring)."""

    def __init__(self):
        import flatbuffers

        self.b = flatbuffers.Builder(1 << 20)
        self.b.ForceDefaults(True)

    def _table(self, slots: dict, values: dict, prepend: dict | None = None) -> int:
        b = self.b
        b.StartObject(max(slots.values()) + 1)
        for name, value in values.items():
            kind = (prepend or {}).get(name, "UOffsetTRelative")
            getattr(b, f"Prepend{kind}Slot")(slots[name], value, 0)
        return b.EndObject()

    def _vector_of_offsets(self, offsets: list[int]) -> int:
        b = self.b
        b.StartVector(4, len(offsets), 4)
        for off in reversed(offsets):
            b.PrependUOffsetTRelative(off)
        return b.EndVector()

    def _ints(self, values, dtype=np.int32) -> int:
        return self.b.CreateNumpyVector(np.asarray(list(values), dtype))

    def _bytes(self, payload: bytes, align: int = 16) -> int:
        b = self.b
        b.StartVector(1, len(payload), align)
        b.head = b.head - len(payload)
        b.Bytes[b.head:b.head + len(payload)] = payload
        b.vectorNumElems = len(payload)
        return b.EndVector()

    def _buffer(self, payload: bytes | None) -> int:
        if payload is None:
            return self._table(SLOTS["Buffer"], {})
        return self._table(SLOTS["Buffer"], {"data": self._bytes(payload)})

    def _options(self, op: Op) -> int:
        spec = OPTIONS[op.options]
        b = self.b
        b.StartObject(max((s for _, s, _ in spec), default=-1) + 1)
        for name, slot, kind in spec:
            if name in op.values:
                getattr(b, f"Prepend{kind}Slot")(slot, op.values[name], 0)
        return b.EndObject()

    def _tensor(self, t: Tensor, buffer: int) -> int:
        name = self.b.CreateString(t.name)
        shape = self._ints(t.shape)
        return self._table(SLOTS["Tensor"], {"shape": shape, "type": _enum("TensorType", TYPES[t.dtype]),
                                             "buffer": buffer, "name": name},
                           {"type": "Int8", "buffer": "Uint32"})

    def _operator(self, op: Op, opcode: int, index: dict) -> int:
        ins = self._ints([index[n] if n else -1 for n in op.inputs])
        outs = self._ints([index[n] for n in op.outputs])
        values = {"opcode_index": opcode, "inputs": ins, "outputs": outs}
        kinds = {"opcode_index": "Uint32", "builtin_options_type": "Uint8"}
        if op.options:
            values["builtin_options"] = self._options(op)
            values["builtin_options_type"] = _enum("BuiltinOptions", op.options)
        return self._table(SLOTS["Operator"], values, kinds)

    def _opcode(self, code: str) -> int:
        value = _enum("BuiltinOperator", code)
        return self._table(SLOTS["OperatorCode"], {"deprecated_builtin_code": min(value, 127), "version": 1,
                                                   "builtin_code": value},
                           {"deprecated_builtin_code": "Int8", "version": "Int32", "builtin_code": "Int32"})

    def serialize(self, tensors: list[Tensor], ops: list[Op], inputs: list[str], outputs: list[str],
                  metadata: dict[str, bytes], description: str) -> bytes:
        """The finished flatbuffer (file identifier TFL3)."""
        b = self.b
        payloads = [None] + [t.data.tobytes() for t in tensors if t.data is not None] + list(metadata.values())
        buffers = [self._buffer(p) for p in payloads]
        index, tens, k = {}, [], 1
        for i, t in enumerate(tensors):
            index[t.name] = i
            tens.append(self._tensor(t, k if t.data is not None else 0))
            k += t.data is not None
        codes = sorted({op.code for op in ops})
        operators = [self._operator(op, codes.index(op.code), index) for op in ops]
        sub = self._table(SLOTS["SubGraph"], {
            "tensors": self._vector_of_offsets(tens), "inputs": self._ints(index[n] for n in inputs),
            "outputs": self._ints(index[n] for n in outputs), "operators": self._vector_of_offsets(operators),
            "name": b.CreateString("main")})
        opcodes = [self._opcode(c) for c in codes]
        metas = [self._table(SLOTS["Metadata"], {"name": b.CreateString(name), "buffer": k + j},
                             {"buffer": "Uint32"}) for j, name in enumerate(metadata)]
        model = self._table(SLOTS["Model"], {
            "version": 3, "operator_codes": self._vector_of_offsets(opcodes),
            "subgraphs": self._vector_of_offsets([sub]), "description": b.CreateString(description),
            "buffers": self._vector_of_offsets(buffers), "metadata": self._vector_of_offsets(metas)},
            {"version": "Uint32"})
        b.Finish(model, file_identifier=b"TFL3")
        return bytes(b.Output())
