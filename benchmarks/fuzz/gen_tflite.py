"""TFLite cases: real flatbuffers (person_detect and micro_speech int8, two float corpus models)
with one in-place edit at a table field located through the ``tflite`` package's reader (vtable
offsets), so the buffer stays a structurally valid flatbuffer that lies: tensor shapes of 0, -1 or
2^31-1, unknown tensor types, buffer / opcode / tensor indices out of range, an operator reading its
own output, unknown builtin codes, vector lengths far past the end of the file, a foreign version or
file identifier — plus byte-level damage. sqcc walks the flatbuffer before TVM does; each of these
must end as one clean error (or a build)."""
from __future__ import annotations

import struct

from . import mutate
from .assets import TFLITE_SEEDS, weighted
from .case import Case

# vtable slots (4 + 2 * field index) of the fields edited, from the TFLite schema
T_SHAPE, T_TYPE, T_BUFFER = 4, 6, 8
OP_OPCODE, OP_INPUTS, OP_OUTPUTS = 4, 6, 8
OC_DEPRECATED, OC_BUILTIN = 4, 10
M_VERSION, M_OPCODES, M_SUBGRAPHS, M_BUFFERS = 4, 6, 8, 12
SG_TENSORS, SG_INPUTS, SG_OPERATORS = 4, 6, 10
B_DATA = 4


def _seed(ctx):
    import tflite

    name, path = weighted(ctx.rng, TFLITE_SEEDS)
    buf = bytearray(ctx.assets.read(path))
    return name, buf, tflite.Model.GetRootAs(bytes(buf), 0)


def _field(obj, slot):
    """Absolute byte position of a scalar field, or None when absent (it then reads as its default)."""
    o = obj._tab.Offset(slot)
    return obj._tab.Pos + o if o else None


def _vector(obj, slot):
    """(position of the first element, length) of a vector field, or (None, 0)."""
    o = obj._tab.Offset(slot)
    if not o:
        return None, 0
    return obj._tab.Vector(o), obj._tab.VectorLen(o)


def _argv(ctx, path):
    return ["inspect", path] if ctx.rng.random() < 0.45 else ["compile", path, "-o", "out.tar"]


def _emit(ctx, name, buf, gen, what) -> Case:
    path = ctx.write(name, bytes(buf))
    return Case(f"tflite.{gen}", f"{name}: {what}", argv=_argv(ctx, path))


def _tensor(ctx, model, pred=lambda t: True):
    sg = model.Subgraphs(0)
    ts = [k for k in range(sg.TensorsLength()) if pred(sg.Tensors(k))]
    k = ctx.rng.choice(ts or list(range(sg.TensorsLength())))
    return k, sg.Tensors(k)


def _operator(ctx, model):
    sg = model.Subgraphs(0)
    k = ctx.rng.randrange(sg.OperatorsLength())
    return k, sg.Operators(k)


def bytes_(ctx) -> Case:
    """Byte-level damage of the flatbuffer."""
    name, path = weighted(ctx.rng, TFLITE_SEEDS)
    data, what = mutate.mutate(ctx.assets.read(path), ctx.rng)
    return Case("tflite.bytes", f"{name}: {what}", argv=_argv(ctx, ctx.write(name, data)))


def shape(ctx) -> Case:
    """One dimension of a tensor's shape set to 0, -1, 2^31-1 or 65536."""
    name, buf, model = _seed(ctx)
    k, t = _tensor(ctx, model, lambda t: t.ShapeLength() > 0)
    start, n = _vector(t, T_SHAPE)
    ax, v = ctx.rng.randrange(n), ctx.rng.choice([0, -1, 2**31 - 1, 65536])
    struct.pack_into("<i", buf, start + 4 * ax, v)
    return _emit(ctx, name, buf, "shape", f"tensor {k} '{t.Name().decode(errors='replace')}' shape[{ax}] = {v}")


def tensor_type(ctx) -> Case:
    """A tensor's type byte set to an unknown or mismatched type (where the field is stored)."""
    name, buf, model = _seed(ctx)
    k, t = _tensor(ctx, model, lambda t: _field(t, T_TYPE) is not None)
    pos = _field(t, T_TYPE)
    if pos is None:
        return _emit(ctx, name, buf, "tensor_type", f"tensor {k}: type field absent (unchanged)")
    v = ctx.rng.choice([5, 8, 11, 13, 99, 255])
    buf[pos] = v
    return _emit(ctx, name, buf, "tensor_type", f"tensor {k} type = {v}")


def buffer_index(ctx) -> Case:
    """A tensor's buffer index pointed past the model's buffers (or at the empty buffer 0)."""
    name, buf, model = _seed(ctx)
    k, t = _tensor(ctx, model, lambda t: _field(t, T_BUFFER) is not None)
    pos = _field(t, T_BUFFER)
    if pos is None:
        return _emit(ctx, name, buf, "buffer_index", f"tensor {k}: buffer field absent (unchanged)")
    v = ctx.rng.choice([0, model.BuffersLength(), 2**31 - 1, 2**32 - 1])
    struct.pack_into("<I", buf, pos, v)
    return _emit(ctx, name, buf, "buffer_index", f"tensor {k} buffer = {v} (model has {model.BuffersLength()})")


def opcode_index(ctx) -> Case:
    """An operator's opcode index pointed past the opcode table."""
    name, buf, model = _seed(ctx)
    k, op = _operator(ctx, model)
    pos = _field(op, OP_OPCODE)
    v = ctx.rng.choice([model.OperatorCodesLength(), 255, 2**32 - 1])
    if pos is None:
        return _emit(ctx, name, buf, "opcode_index", f"operator {k}: opcode_index absent (unchanged)")
    struct.pack_into("<I", buf, pos, v)
    return _emit(ctx, name, buf, "opcode_index", f"operator {k} opcode_index = {v}")


def operator_io(ctx) -> Case:
    """An operator input set to a tensor index out of range, -1 on a required input, or its own output."""
    name, buf, model = _seed(ctx)
    k, op = _operator(ctx, model)
    start, n = _vector(op, OP_INPUTS)
    ntensors = model.Subgraphs(0).TensorsLength()
    v = ctx.rng.choice([ntensors, -1, -7, 2**31 - 1, op.Outputs(0)])
    struct.pack_into("<i", buf, start, v)
    return _emit(ctx, name, buf, "operator_io", f"operator {k} input 0 = {v} ({ntensors} tensors)")


def builtin_code(ctx) -> Case:
    """An operator code's builtin code set to an unknown value (or CUSTOM without a custom name)."""
    name, buf, model = _seed(ctx)
    k = ctx.rng.randrange(model.OperatorCodesLength())
    oc = model.OperatorCodes(k)
    v = ctx.rng.choice([32, 126, 127, 250, 10_000])
    pos = _field(oc, OC_BUILTIN)
    if pos is not None:
        struct.pack_into("<i", buf, pos, v)
    dep = _field(oc, OC_DEPRECATED)
    if dep is not None:
        struct.pack_into("<b", buf, dep, min(v, 127))
    return _emit(ctx, name, buf, "builtin_code", f"operator code {k} builtin = {v}")


def vector_length(ctx) -> Case:
    """A vector's length prefix set far past the end of the file (buffers, tensors, a buffer's data)."""
    name, buf, model = _seed(ctx)
    which = ctx.rng.choice(["buffers", "tensors", "operators", "data"])
    if which == "data":
        ks = [k for k in range(model.BuffersLength()) if model.Buffers(k).DataLength() > 0]
        obj, slot = model.Buffers(ctx.rng.choice(ks)), B_DATA
    else:
        obj = model if which == "buffers" else model.Subgraphs(0)
        slot = {"buffers": M_BUFFERS, "tensors": SG_TENSORS, "operators": SG_OPERATORS}[which]
    start, n = _vector(obj, slot)
    v = ctx.rng.choice([n + 1, 2**31 - 1, 2**32 - 1])
    struct.pack_into("<I", buf, start - 4, v)
    return _emit(ctx, name, buf, "vector_length", f"{which} vector length {n} -> {v}")


def version(ctx) -> Case:
    """The schema version, or the 'TFL3' file identifier, changed."""
    name, buf, model = _seed(ctx)
    if ctx.rng.random() < 0.5:
        pos = _field(model, M_VERSION)
        v = ctx.rng.choice([0, 2, 4, 99])
        if pos is not None:
            struct.pack_into("<I", buf, pos, v)
        return _emit(ctx, name, buf, "version", f"model version = {v}")
    ident = ctx.rng.choice([b"TFL2", b"TFL4", b"\0\0\0\0"])
    buf[4:8] = ident
    return _emit(ctx, name, buf, "version", f"file identifier = {ident!r}")


def subgraph_io(ctx) -> Case:
    """The subgraph's input index out of range, or pointing at a constant weight tensor."""
    name, buf, model = _seed(ctx)
    sg = model.Subgraphs(0)
    start, n = _vector(sg, SG_INPUTS)
    v = ctx.rng.choice([sg.TensorsLength(), -1, 2**31 - 1, sg.Outputs(0), 1])
    struct.pack_into("<i", buf, start, v)
    return _emit(ctx, name, buf, "subgraph_io", f"subgraph input 0 = {v}")


GENERATORS = {
    "tflite.bytes": (bytes_, 3), "tflite.shape": (shape, 3), "tflite.tensor_type": (tensor_type, 1),
    "tflite.buffer_index": (buffer_index, 1), "tflite.opcode_index": (opcode_index, 1),
    "tflite.operator_io": (operator_io, 1), "tflite.builtin_code": (builtin_code, 1),
    "tflite.vector_length": (vector_length, 1), "tflite.version": (version, 1),
    "tflite.subgraph_io": (subgraph_io, 1),
}
