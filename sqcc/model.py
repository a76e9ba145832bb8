"""What an imported model is, whichever frontend made it: :class:`Model` (a Relax module plus its
inputs, outputs, source and image recipe) and :class:`TensorSpec`; and the helpers both the ONNX
and the TFLite frontend use to fill them in. Imports nothing of sqcc but errors and models, so
``sqcc.frontend`` and ``sqcc.tflite_frontend`` both build on it without importing each other.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from .models import Preprocess


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
    notes: list = field(default_factory=list)  # what the import decided for the user (batch 1, ...)

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.source).hexdigest()


def batch_one(name: str, dims: list, notes: list) -> list:
    """``dims`` with a dynamic batch (axis 0 of a rank ≥ 2 input) set to 1, said in ``notes``.

    A symbolic batch (torch.onnx dynamic axes, tf2onnx, Keras' None) is what most exports have and
    the reference runtimes run as it is, so batch 1 is the default, not an error; other dynamic
    axes stay errors that name the flag."""
    if len(dims) < 2 or isinstance(dims[0], int):
        return dims
    notes.append(f"input '{name}': dynamic batch dimension '{dims[0]}' set to 1 "
                 f"(--input-shape {name}:N,... for another batch)")
    return [1] + list(dims[1:])


def fmt_dims(dims):
    return "[" + ",".join(str(d) for d in dims) + "]"


def relax_outputs(mod, names):
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
