"""The integer reference a micro build of an int8 TFLite model is checked against (``sqcc run``)."""
from __future__ import annotations

import numpy as np


class IntegerReference:
    """LiteRT with its builtin reference int8 kernels (``OpResolverType.BUILTIN_REF``, no XNNPACK):
    TFLite's integer fixed-point requantisation, which TFLite Micro computes and which a micro build
    of an int8 TFLite model reproduces. LiteRT's default path (XNNPACK) requantises in fp32 and can
    differ from it by a few output steps."""

    name = "LiteRT builtin int8 reference kernels (TFLite Micro's integer arithmetic)"

    def __init__(self, content: bytes):
        from ai_edge_litert.interpreter import Interpreter, OpResolverType

        self.interp = Interpreter(model_content=content,
                                  experimental_op_resolver_type=OpResolverType.BUILTIN_REF)
        self.interp.allocate_tensors()
        self.inputs = [d["index"] for d in self.interp.get_input_details()]
        self.outputs = [d["index"] for d in self.interp.get_output_details()]

    def run(self, *xs) -> list:
        for i, x in zip(self.inputs, xs):
            self.interp.set_tensor(i, np.ascontiguousarray(x))
        self.interp.invoke()
        return [np.array(self.interp.get_tensor(o)) for o in self.outputs]


def integer_reference(pkg):
    """An :class:`IntegerReference` for a micro package of an int8 TFLite model, else None."""
    model = (getattr(pkg, "manifest", None) or {}).get("model", {})
    if model.get("format") != "tflite" or not (pkg.manifest.get("quant") or {}) or pkg.source is None:
        return None
    try:
        from sqcc.tflite_frontend import normalize_tflite

        return IntegerReference(normalize_tflite(pkg.source))
    except Exception:  # noqa: BLE001 -- an extra check only (LiteRT missing or refusing the file)
        return None
