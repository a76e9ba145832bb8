"""``sqcc export PKG --tflite FILE`` / ``pkg.export_tflite(FILE)``: the rewritten graph as float TFLite.

Built operator by operator (:mod:`.tflite_ops`) in NHWC, written as a flatbuffer with the
``flatbuffers`` Builder (:mod:`.tflite_writer`), read back through the ``tflite`` package's readers,
run in LiteRT (``ai_edge_litert``) beside the package, and written atomically only when every output
is within 1e-4 of its largest magnitude. Image inputs are NHWC, as TFLite models take them; outputs
are as the package returns them. The manifest's preprocessing, passes and a report summary are
the model's ``metadata`` entries (``sqcc.*``, JSON text).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import SqccError, one_line
from ..outputs import atomic_write, check_writable
from .graph import graph_module
from .metadata import doc_string, metadata
from .onnx_export import is_int8_graph
from .onnx_ops import evaluate
from .tflite_graph import TO_NHWC, TfliteBuilder
from .tflite_ops import HANDLERS
from .tflite_writer import Writer
from .verify import compare, random_feed


def build_tflite(mod, pkg) -> bytes:
    """The flatbuffer of ``mod``'s main with ``pkg``'s input/output names and metadata."""
    if is_int8_graph(mod):
        raise SqccError("cannot export to TFLite: the package is int8, and sqcc writes float TFLite only "
                        "(export it as QDQ ONNX with --onnx)")
    func = mod["main"]
    g = TfliteBuilder(func, [s.name for s in pkg.inputs], [s.name for s in pkg.outputs])
    g.convert(HANDLERS, evaluate)
    outs = g.output_tensors(g.outputs(func.body.body))
    meta = {k: v.encode() for k, v in metadata(pkg, "float").items()}
    meta["sqcc.layout"] = b"inputs of rank 4 are NHWC (the package's NCHW inputs transposed)"
    data = Writer().serialize(list(g.tensors.values()), g.ops, g.input_names, outs, meta, doc_string(pkg, "float"))
    _read_back(data, len(g.ops))
    return data


def _read_back(data: bytes, n_ops: int) -> None:
    """The flatbuffer parses with the ``tflite`` schema package's readers; else sqcc's bug, one line."""
    import tflite

    try:
        model = tflite.Model.GetRootAs(data, 0)
        ok = model.SubgraphsLength() == 1 and model.Subgraphs(0).OperatorsLength() == n_ops
    except Exception as e:  # noqa: BLE001
        raise SqccError(f"the exported TFLite flatbuffer does not parse ({one_line(e)}); nothing written "
                        "(an sqcc exporter bug: please report it)") from e
    if not ok:
        raise SqccError("the exported TFLite flatbuffer does not read back as written; nothing written "
                        "(an sqcc exporter bug: please report it)")


class LiteRTPeer:
    """LiteRT on exported bytes; feeds in the package's layout (rank-4 inputs transposed to NHWC)."""

    name = "litert"

    def __init__(self, data: bytes, pkg, threads: int = 1):
        from ai_edge_litert.interpreter import Interpreter

        try:
            self.it = Interpreter(model_content=data, num_threads=threads)
            self.it.allocate_tensors()
        except Exception as e:  # noqa: BLE001  (LiteRT's RuntimeError / ValueError)
            raise SqccError(f"LiteRT cannot load the exported TFLite file: {one_line(e)}; nothing written") from e
        self.pkg = pkg
        self.ins = {d["name"]: d["index"] for d in self.it.get_input_details()}
        self.outs = [d["index"] for d in self.it.get_output_details()]

    def run(self, feed: dict) -> list:
        for spec in self.pkg.inputs:
            x = np.asarray(feed[spec.name], spec.dtype)
            self.it.set_tensor(self.ins[spec.name], np.ascontiguousarray(x.transpose(TO_NHWC)) if x.ndim == 4 else x)
        self.it.invoke()
        return [np.array(self.it.get_tensor(i)) for i in self.outs]


def export_tflite(pkg, path, flag: str = "--tflite", feeds=None) -> dict:
    """Write ``pkg`` as float TFLite to ``path`` after checking it in LiteRT (module docstring)."""
    path = check_writable(path, flag)
    mod = graph_module(pkg)
    data = build_tflite(mod, pkg)
    feeds = feeds if feeds is not None else [random_feed(pkg.inputs, seed=0)]
    check = compare(pkg, LiteRTPeer(data, pkg), feeds, "the exported TFLite file")
    atomic_write(path, lambda f: f.write(data), flag)
    import tflite

    model = tflite.Model.GetRootAs(data, 0)
    return {"path": str(Path(path)), "bytes": len(data), "form": "float", "nodes": model.Subgraphs(0).OperatorsLength(),
            "tensors": model.Subgraphs(0).TensorsLength(), "check": check}
