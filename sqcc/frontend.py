"""Frontends: an ONNX or TFLite file (or an onnx.ModelProto) → :class:`Model`, a Relax IRModule with
the weights inline as constants and every layer binding named after its source node.

Input shapes come from the model; ``input_shapes`` overrides them, and a dynamic dimension without an
override is an error that names the input and the axis. Problems a user can cause (missing file, not a
model, truncated file, unsupported operators, bad shapes) raise :class:`SqccError` with one line.
"""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import SqccError, UnsupportedOpsError
from .models import ModelEntry, Preprocess, resolve

TFLITE_MAGIC = b"TFL3"


@dataclass
class TensorSpec:
    name: str
    shape: tuple
    dtype: str = "float32"

    def to_json(self):
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}

    @classmethod
    def from_json(cls, d):
        return cls(d["name"], tuple(d["shape"]), d["dtype"])


@dataclass
class Model:
    """An imported model: the Relax module plus what is needed to feed, name and check it."""

    mod: object  # tvm.IRModule; main's bindings are named after source layers
    inputs: list
    outputs: list
    format: str  # "onnx" | "tflite"
    source: bytes  # the original file, for the reference runtime and the package's sha256
    name: str
    path: str | None = None
    preprocess: Preprocess | None = None
    quant: dict = field(default_factory=dict)  # tflite int8 input/output (scale, zero_point)

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.source).hexdigest()


def parse_input_shapes(text: str | None) -> dict:
    """``"data:1,3,224,224;mask:1,10"`` (or a list of such items) → ``{"data": (1,3,224,224), ...}``."""
    if not text:
        return {}
    items = text if isinstance(text, (list, tuple)) else re.split(r"[;\s]+", text.strip())
    shapes = {}
    for item in items:
        if not item:
            continue
        name, sep, dims = item.rpartition(":")
        if not sep or not name or not dims:
            raise SqccError(f"--input-shape '{item}': expected NAME:D1,D2,... (e.g. data:1,3,224,224)")
        try:
            shape = tuple(int(d) for d in dims.split(","))
        except ValueError:
            raise SqccError(f"--input-shape '{item}': dimensions must be positive integers") from None
        if any(d <= 0 for d in shape):
            raise SqccError(f"--input-shape '{item}': dimensions must be positive integers")
        shapes[name] = shape
    return shapes


def load(model, input_shapes: dict | str | None = None, name: str | None = None) -> Model:
    """Import ``model`` (registry name, path, or onnx.ModelProto) into a :class:`Model`."""
    if isinstance(input_shapes, str):
        input_shapes = parse_input_shapes(input_shapes)
    input_shapes = dict(input_shapes or {})
    entry: ModelEntry | None = None
    path = None
    if hasattr(model, "SerializeToString"):  # onnx.ModelProto
        data = model.SerializeToString()
        label = name or (model.graph.name or "model")
    else:
        path, entry = resolve(model)
        try:
            data = path.read_bytes()
        except OSError as e:
            raise SqccError(f"{path}: cannot read ({e.strerror})") from e
        label = name or (entry.name if entry else path.stem)
    shown = str(path) if path else label
    if len(data) == 0:
        raise SqccError(f"{shown}: file is empty")
    if data[4:8] == TFLITE_MAGIC:
        from .tflite_frontend import load_tflite

        m = load_tflite(data, shown, input_shapes)
    elif path is not None and path.suffix.lower() == ".tflite":
        raise SqccError(f"{shown}: not a TFLite flatbuffer (no 'TFL3' identifier); truncated or not a model")
    else:
        m = _load_onnx(data, shown, input_shapes)
    m.name = label
    m.path = str(path) if path else None
    m.preprocess = entry.preprocess if entry else None
    return m


# ----------------------------------------------------------------------------------------------- ONNX

def _onnx_dims(vi):
    t = vi.type.tensor_type
    if not t.HasField("shape"):
        return None
    return [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else (d.dim_param or "?")
            for d in t.shape.dim]


def _load_onnx(data: bytes, shown: str, input_shapes: dict) -> Model:
    import onnx
    from onnx import helper

    try:
        proto = onnx.load_from_string(data)
    except Exception as e:  # DecodeError and friends
        raise SqccError(f"{shown}: not a valid ONNX model (truncated or corrupt: {type(e).__name__})") from e
    if len(proto.graph.node) == 0:
        raise SqccError(f"{shown}: not a valid ONNX model (the graph has no nodes)")
    try:
        onnx.checker.check_model(proto)
    except Exception as e:
        raise SqccError(f"{shown}: ONNX checker rejected the model: {str(e).splitlines()[0]}") from e

    inits = {i.name for i in proto.graph.initializer}
    graph_inputs = [i for i in proto.graph.input if i.name not in inits]
    unknown = set(input_shapes) - {i.name for i in graph_inputs}
    if unknown:
        raise SqccError(f"--input-shape names {', '.join(sorted(unknown))}, but the model's inputs are "
                        f"{', '.join(i.name for i in graph_inputs)}")
    shape_dict, dtype_dict, inputs = {}, {}, []
    for vi in graph_inputs:
        dims = _onnx_dims(vi)
        dtype = helper.tensor_dtype_to_np_dtype(vi.type.tensor_type.elem_type).name
        if vi.name in input_shapes:
            shape = tuple(input_shapes[vi.name])
            if dims is not None and len(dims) != len(shape):
                raise SqccError(f"--input-shape {vi.name}: rank {len(shape)} given, the model's input has "
                                f"rank {len(dims)} ({_fmt_dims(dims)})")
            for ax, (d, s) in enumerate(zip(dims or [], shape)):
                if isinstance(d, int) and d != s:
                    raise SqccError(f"--input-shape {vi.name}: axis {ax} is fixed to {d} in the model, "
                                    f"{s} given")
        else:
            if dims is None:
                raise SqccError(f"{shown}: input '{vi.name}' has no shape; give --input-shape {vi.name}:D1,D2,...")
            dyn = [(ax, d) for ax, d in enumerate(dims) if not isinstance(d, int)]
            if dyn:
                where = ", ".join(f"axis {ax} ('{d}')" for ax, d in dyn)
                raise SqccError(f"{shown}: input '{vi.name}' has dynamic dimension(s) at {where} "
                                f"({_fmt_dims(dims)}); give --input-shape {vi.name}:"
                                f"{','.join(str(d) if isinstance(d, int) else 'N' for d in dims)}")
            shape = tuple(dims)
        shape_dict[vi.name] = list(shape)
        dtype_dict[vi.name] = dtype
        inputs.append(TensorSpec(vi.name, shape, dtype))

    from tvm.relax.frontend.onnx import onnx_frontend

    supported = set(onnx_frontend._get_convert_map())
    bad = [(n.name or f"#{k}", n.op_type) for k, n in enumerate(proto.graph.node)
           if n.domain not in ("", "ai.onnx") or n.op_type not in supported]
    if bad:
        raise UnsupportedOpsError(shown, bad)

    try:
        mod = onnx_frontend.from_onnx(proto, shape_dict, dtype_dict, keep_params_in_input=False)
    except Exception as e:
        msg = str(e).strip().splitlines()
        raise SqccError(f"{shown}: TVM's ONNX importer failed: {msg[-1] if msg else type(e).__name__}") from e

    from .layers import name_layers

    mod = name_layers(mod, [(n.name, n.op_type) for n in proto.graph.node], "onnx")
    outputs = _relax_outputs(mod, [o.name for o in proto.graph.output])
    return Model(mod=mod, inputs=inputs, outputs=outputs, format="onnx", source=data, name=shown)


def _fmt_dims(dims):
    return "[" + ",".join(str(d) for d in dims) + "]"


def _relax_outputs(mod, names):
    """Output specs from main's return type (a tensor, or a tuple of tensors)."""
    from tvm import relax

    ret = mod["main"].body.body
    ty = ret.ty
    tys = list(ty.fields) if isinstance(ty, relax.TupleType) else [ty]
    outs = []
    for k, t in enumerate(tys):
        nm = names[k] if k < len(names) else f"output_{k}"
        outs.append(TensorSpec(nm, tuple(int(d) for d in t.shape), str(t.dtype)))
    return outs


def random_inputs(model: Model, seed: int = 0) -> dict:
    """Deterministic random inputs for a model (uniform [0,1) floats; full-range ints)."""
    rng = np.random.default_rng(seed)
    out = {}
    for spec in model.inputs:
        if spec.dtype.startswith("float"):
            out[spec.name] = rng.random(spec.shape, dtype=np.float32).astype(spec.dtype)
        else:
            info = np.iinfo(spec.dtype)
            out[spec.name] = rng.integers(info.min, info.max + 1, spec.shape).astype(spec.dtype)
    return out
