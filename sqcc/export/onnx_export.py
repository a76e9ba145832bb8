"""``sqcc export PKG --onnx FILE`` / ``pkg.export_onnx(FILE)``: the package's rewritten graph as ONNX.

Float graphs become plain opset-17 ONNX (Conv with its bias, Gemm, pools, Concat, Gather for channel
gathers and shuffles, ...); an int8 graph (sqcc's ``int8`` pass) becomes QDQ ONNX -- QuantizeLinear /
DequantizeLinear around float ops, per-channel int8 weights, the scales sqcc calibrated (see
:mod:`sqcc.export.qdq`). The file is checked with ``onnx.checker.check_model(full_check=True)``, then
run in onnxruntime beside the package on a random input; only a file that matches is written
(atomically, after ``check_writable`` said before any work that it can be).
"""
from __future__ import annotations

from pathlib import Path

from ..errors import SqccError, one_line
from ..outputs import atomic_write, check_writable
from .graph import graph_module
from .metadata import doc_string, metadata
from .onnx_graph import OnnxBuilder, to_model_proto
from .onnx_ops import HANDLERS, evaluate
from .verify import compare, onnx_session, random_feed


def is_int8_graph(mod) -> bool:
    """Does main hold integer convolutions or matmuls (sqcc's int8 pass, folded int8 TFLite)?"""
    from ..layers import op_name

    for block in mod["main"].body.blocks:
        for b in block.bindings:
            if op_name(b.value) in ("relax.nn.conv2d", "relax.matmul"):
                out = getattr(b.value.attrs, "out_dtype", None)
                if out is not None and str(out).startswith("int"):
                    return True
    return False


def build_onnx(mod, pkg, qdq: bool | None = None):
    """(the checked ModelProto of ``mod``'s main with ``pkg``'s input/output names and metadata,
    the QDQ state or None)."""
    func = mod["main"]
    qdq = is_int8_graph(mod) if qdq is None else qdq
    form = "int8 QDQ" if qdq else "float"
    handlers, state = HANDLERS, None
    if qdq:
        from .qdq import qdq_handlers

        handlers = qdq_handlers(pkg)
        state = handlers.pop("__qdq_state__")
    g = OnnxBuilder(func, [s.name for s in pkg.inputs], [s.name for s in pkg.outputs])
    g.convert(handlers, evaluate)
    g.rename_outputs(g.outputs(func.body.body))
    meta = metadata(pkg, form)
    if state is not None:
        meta["sqcc.qdq"] = _qdq_note(state)
    model = to_model_proto(g, func, pkg.manifest["model"]["name"], meta, doc_string(pkg, form))
    model.producer_version = str(pkg.manifest.get("versions", {}).get("sqcc", ""))
    check_model(model)
    return model, state


def _qdq_note(state) -> str:
    note = ("activation scales as sqcc calibrated them (the report's 4 significant digits); weight "
            "scales per output channel, derived so the integer arithmetic is sqcc's")
    if state.derived:
        note += f"; output scales not recorded, chosen freely (same integers): {', '.join(state.derived)}"
    return note


def check_model(model) -> None:
    """onnx's full check (types, shapes inferred against the declared ones); a failure is sqcc's bug,
    said in one line."""
    import onnx

    try:
        onnx.checker.check_model(model, full_check=True)
    except Exception as e:  # noqa: BLE001  (onnx raises ValidationError, InferenceError, ...)
        raise SqccError(f"the exported ONNX graph fails onnx's checker ({one_line(e, first=True)}); "
                        "nothing written (an sqcc exporter bug: please report it)") from e


def tolerance_for(state):
    """Verification limits: 1e-4 of each output's largest magnitude (float); for QDQ, one quantisation
    step of the last 8-bit activations before the output (onnxruntime's fused integer kernels round
    the bias and the requantisation differently, so a value here and there rounds the other way)."""
    step = state.step() if state is not None else None
    if step is None:
        return None
    return lambda k: (step, "= one quantisation step of the last int8 activations", "max_abs")


def export_onnx(pkg, path, flag: str = "--onnx", feeds=None) -> dict:
    """Write ``pkg`` as ONNX to ``path`` after checking it (see the module docstring); what was
    written and how well it matched."""
    path = check_writable(path, flag)
    mod = graph_module(pkg)
    qdq = is_int8_graph(mod)
    model, state = build_onnx(mod, pkg, qdq)
    data = model.SerializeToString()
    feeds = feeds if feeds is not None else [random_feed(pkg.inputs, seed=0)]
    check = compare(pkg, onnx_session(data, pkg), feeds, "the exported ONNX file", tolerance_for(state))
    atomic_write(path, lambda f: f.write(data), flag)
    ops = sorted({n.op_type for n in model.graph.node})
    return {"path": str(Path(path)), "bytes": len(data), "form": "int8 QDQ" if qdq else "float",
            "opset": model.opset_import[0].version, "nodes": len(model.graph.node), "ops": ops,
            "initializers": len(model.graph.initializer), "check": check}
