"""Frontends: an ONNX or TFLite file (or an onnx.ModelProto) → :class:`Model`, a Relax IRModule with
the weights inline as constants and every layer binding named after its source node.

Input shapes come from the model; ``input_shapes`` overrides them, and a dynamic dimension without an
override is an error that names the input and the axis. Problems a user can cause (missing file, not a
model, truncated file, unsupported operators, bad shapes) raise :class:`SqccError` with one line.
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from .errors import SqccError, UnsupportedOpsError, one_line, quiet_when_refused, release_frames
from .model import Model, TensorSpec, batch_one, fmt_dims, relax_outputs  # noqa: F401  (re-exported)
from .models import ModelEntry, resolve

TFLITE_MAGIC = b"TFL3"


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
    check_tensor_sizes(m, shown)
    return m


def _fmt_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if n < 1024 or unit == "PiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} EiB"


def _tensor_sizes(mod):
    """(bytes, name, shape, dtype) of every statically shaped tensor main's parameters and bindings
    hold (tuple results element by element)."""
    from tvm import relax

    def walk(name, ty):
        if isinstance(ty, relax.TupleType):
            for k, f in enumerate(ty.fields):
                yield from walk(f"{name}[{k}]", f)
        elif isinstance(ty, relax.TensorType) and ty.shape is not None and ty.dtype:
            try:
                dims = tuple(int(d) for d in ty.shape)
            except (TypeError, ValueError):  # a symbolic dim: sized at run time, not here
                return
            dtype = str(ty.dtype)
            yield int(np.prod(dims, dtype=object)) * np.dtype(dtype).itemsize, name, dims, dtype

    func = mod["main"]
    for v in func.params:
        yield from walk(v.name, v.ty)
    for block in getattr(func.body, "blocks", []):
        for b in block.bindings:
            yield from walk(b.var.name, b.var.ty)


def check_tensor_sizes(m: Model, shown: str, memory: int | None = None) -> None:
    """Refuse a model one of whose tensors cannot fit in this machine's memory, before anything
    plans, lowers or schedules for shapes that large (loops over 2^31 tiles take hours): every
    compile runs the model here, in its reference runtime, to check it."""
    import psutil

    memory = memory or psutil.virtual_memory().total
    largest = max(_tensor_sizes(m.mod), default=None)
    if largest is not None and largest[0] > memory:
        nbytes, name, shape, dtype = largest
        given = ", ".join(f"'{t.name}' {tuple(t.shape)}" for t in m.inputs)
        raise SqccError(f"{shown}: tensor '{name}' of shape {shape} ({dtype}) needs {_fmt_bytes(nbytes)}, this "
                        f"machine has {_fmt_bytes(memory)} of memory (input shapes: {given})")


# ----------------------------------------------------------------------------------------------- ONNX

def _input_dtype(vi, shown: str) -> str:
    from onnx import helper

    elem = vi.type.tensor_type.elem_type
    try:
        dtype = helper.tensor_dtype_to_np_dtype(elem)
    except (KeyError, ValueError, TypeError):
        dtype = None
    if dtype is None or dtype.kind not in "biuf":
        raise SqccError(f"{shown}: input '{vi.name}' has element type {elem}, not a numeric tensor type")
    return dtype.name


def _onnx_dims(vi):
    t = vi.type.tensor_type
    if not t.HasField("shape"):
        return None
    return [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else (d.dim_param or "?")
            for d in t.shape.dim]


def _load_onnx(data: bytes, shown: str, input_shapes: dict) -> Model:
    import onnx

    try:
        proto = onnx.load_from_string(data)
    except Exception as e:  # DecodeError and friends
        raise SqccError(f"{shown}: not a valid ONNX model (truncated or corrupt: {type(e).__name__})") from e
    if len(proto.graph.node) == 0:
        raise SqccError(f"{shown}: not a valid ONNX model (the graph has no nodes)")
    try:
        onnx.checker.check_model(proto)
    except Exception as e:
        raise SqccError(f"{shown}: ONNX checker rejected the model: {one_line(e, first=True)}") from e

    if len(proto.graph.output) == 0:
        raise SqccError(f"{shown}: not a usable ONNX model (the graph declares no outputs)")
    inits = {i.name for i in proto.graph.initializer}
    graph_inputs = [i for i in proto.graph.input if i.name not in inits]
    unknown = set(input_shapes) - {i.name for i in graph_inputs}
    if unknown:
        raise SqccError(f"--input-shape names {', '.join(sorted(unknown))}, but the model's inputs are "
                        f"{', '.join(i.name for i in graph_inputs)}")
    shape_dict, dtype_dict, inputs, notes = {}, {}, [], []
    for vi in graph_inputs:
        dims = _onnx_dims(vi)
        dtype = _input_dtype(vi, shown)
        zero = [k for k, d in enumerate(vi.type.tensor_type.shape.dim) if d.HasField("dim_value") and d.dim_value == 0]
        if zero:  # onnxruntime holds the model to it; an empty tensor is not an input to compile for
            raise SqccError(f"{shown}: input '{vi.name}' declares axis {zero[0]} of size 0 (an empty tensor)")
        if vi.name in input_shapes:
            shape = tuple(input_shapes[vi.name])
            if dims is not None and len(dims) != len(shape):
                raise SqccError(f"--input-shape {vi.name}: rank {len(shape)} given, the model's input has "
                                f"rank {len(dims)} ({fmt_dims(dims)})")
            for ax, (d, s) in enumerate(zip(dims or [], shape)):
                if isinstance(d, int) and d != s:
                    raise SqccError(f"--input-shape {vi.name}: axis {ax} is fixed to {d} in the model, "
                                    f"{s} given")
        else:
            if dims is None:
                raise SqccError(f"{shown}: input '{vi.name}' has no shape; give --input-shape {vi.name}:D1,D2,...")
            dyn = [(ax, d) for ax, d in enumerate(dims) if not isinstance(d, int)]
            dims = batch_one(vi.name, dims, notes)
            dyn = [(ax, d) for ax, d in enumerate(dims) if not isinstance(d, int)]
            if dyn:
                where = ", ".join(f"axis {ax} ('{d}')" for ax, d in dyn)
                raise SqccError(f"{shown}: input '{vi.name}' has dynamic dimension(s) at {where} "
                                f"({fmt_dims(dims)}); give --input-shape {vi.name}:"
                                f"{','.join(str(d) if isinstance(d, int) else 'N' for d in dims)}")
            shape = tuple(dims)
        shape_dict[vi.name] = list(shape)
        dtype_dict[vi.name] = dtype
        inputs.append(TensorSpec(vi.name, shape, dtype))

    from tvm.relax.frontend.onnx import onnx_frontend

    proto, canon = canonicalize_onnx(proto)
    notes += canon
    supported = set(onnx_frontend._get_convert_map())
    bad = [(n.name or f"#{k}", n.op_type) for k, n in enumerate(proto.graph.node)
           if n.domain not in ("", "ai.onnx") or n.op_type not in supported]
    if bad:
        raise UnsupportedOpsError(shown, bad)

    with quiet_when_refused():
        mod, proto = _import_onnx(proto, shape_dict, dtype_dict, shown, notes)

    from .layers import name_layers

    mod = name_layers(mod, [(n.name, n.op_type) for n in proto.graph.node], "onnx")
    outputs = relax_outputs(mod, [o.name for o in proto.graph.output])
    return Model(mod=mod, inputs=inputs, outputs=outputs, format="onnx", source=data, name=shown,
                 notes=notes)


def _import_onnx(proto, shape_dict, dtype_dict, shown, notes):
    """(Relax module, the ONNX graph it came from): TVM's importer, and once more on the graph
    onnxruntime constant-folds where the first attempt fails."""
    from tvm.relax.frontend.onnx import onnx_frontend

    try:
        return onnx_frontend.from_onnx(proto, shape_dict, dtype_dict, keep_params_in_input=False), proto
    except Exception as e:
        at = _failing_onnx_node(e)
        folded, _ = canonicalize_onnx(_fold_shapes_with_onnxruntime(proto, shape_dict))
        try:  # shape arithmetic (Shape → Concat → Reshape) TVM cannot follow, folded by onnxruntime
            mod = onnx_frontend.from_onnx(folded, shape_dict, dtype_dict, keep_params_in_input=False)
        except Exception as e2:  # noqa: BLE001 -- the first error is the one that names the user's node
            release_frames(e2)
            release_frames(e)
            raise SqccError(f"{shown}: TVM's ONNX importer failed{at}: {one_line(e)}") from e
        notes.append(f"import: TVM's importer failed{at}; imported the graph onnxruntime "
                     f"constant-folds at the input shapes ({one_line(e)[:100]})")
        return mod, folded


def canonicalize_onnx(proto):
    """Rewrite the inference-time no-ops TVM's importer mishandles, in the ONNX graph itself.

    ``Dropout`` is the identity at inference, but TVM imports it as an (output, mask) tuple that its
    build then rejects; ``Sum`` of n inputs is a chain of n−1 broadcasting ``Add``s (TVM's ``Sum``
    leaves a layout its own passes cannot convert). Returns (the model, one note per kind rewritten);
    the source bytes kept for the reference runtime are untouched."""
    from onnx import helper

    used = {i for n in proto.graph.node for i in n.input} | {o.name for o in proto.graph.output}
    empty = {t.name for t in proto.graph.initializer if 0 in t.dims}
    nodes, counts = [], {}
    for n in proto.graph.node:
        if n.op_type == "Dropout" and n.domain in ("", "ai.onnx") and (
                len(n.output) < 2 or not n.output[1] or n.output[1] not in used):
            nodes.append(helper.make_node("Identity", [n.input[0]], [n.output[0]], name=n.name))
        elif n.op_type == "Sum" and n.domain in ("", "ai.onnx") and len(n.input) != 2:
            nodes += _sum_as_adds(n)
        elif n.op_type == "Resize" and len(n.input) >= 4 and n.input[3] and n.input[2] in empty:
            # an empty `scales` tensor beside `sizes` means "no scales"; TVM reads it as both given
            r = type(n)()
            r.CopyFrom(n)
            r.input[2] = ""
            nodes.append(r)
        else:
            nodes.append(n)
            continue
        counts[n.op_type] = counts.get(n.op_type, 0) + 1
    if not counts:
        return proto, []
    out = type(proto)()
    out.CopyFrom(proto)
    del out.graph.node[:]
    out.graph.node.extend(nodes)
    what = {"Dropout": "Dropout → Identity (inference)", "Sum": "Sum → chain of Add",
            "Resize": "Resize's empty scales dropped (sizes given)"}
    return out, [f"import: {c} {what[op]}" for op, c in sorted(counts.items())]


def _sum_as_adds(node):
    from onnx import helper

    ins = list(node.input)
    if len(ins) == 1:
        return [helper.make_node("Identity", ins, [node.output[0]], name=node.name)]
    out, acc = [], ins[0]
    for k, x in enumerate(ins[1:], start=1):
        last = k == len(ins) - 1
        y = node.output[0] if last else f"{node.output[0]}__sum{k}"
        out.append(helper.make_node("Add", [acc, x], [y], name=node.name if last else f"{node.name}__sum{k}"))
        acc = y
    return out


def _fold_shapes_with_onnxruntime(proto, shape_dict):
    """The model as onnxruntime's basic (semantics-preserving) optimisations leave it, at static
    input shapes: shape computations become constants, only standard ONNX ops remain."""
    import os
    import tempfile

    import onnx
    import onnxruntime as ort

    fixed = type(proto)()
    fixed.CopyFrom(proto)
    for vi in fixed.graph.input:
        if vi.name in shape_dict:
            for d, n in zip(vi.type.tensor_type.shape.dim, shape_dict[vi.name]):
                d.ClearField("dim_param")
                d.dim_value = int(n)
    with tempfile.TemporaryDirectory(prefix="sqcc-fold-") as tmp:
        out = os.path.join(tmp, "folded.onnx")
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        so.optimized_model_filepath = out
        try:
            ort.InferenceSession(fixed.SerializeToString(), so, providers=["CPUExecutionProvider"])
            return onnx.load(out)
        except Exception:  # noqa: BLE001 -- then there is nothing better to import
            return proto


def _failing_onnx_node(err: BaseException) -> str:
    """' at node NAME (OP)' for the ONNX node TVM's importer was converting when it raised.

    TVM's ``GraphProto._construct_nodes`` holds the node in a local named ``node``; the traceback
    still has its frame."""
    tb, found = err.__traceback__, None
    while tb is not None:
        node = tb.tb_frame.f_locals.get("node")
        if hasattr(node, "op_type") and hasattr(node, "input"):
            found = node
        tb = tb.tb_next
    if found is None:
        return ""
    name = found.name or (f"(unnamed, output '{found.output[0]}')" if found.output else "(unnamed)")
    return f" at node '{name}' ({found.op_type})" if found.name else f" at node {name} ({found.op_type})"


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


def check_feed(inputs, feed, where: str) -> dict:
    """``feed`` (input name → array) with every one of ``inputs`` (TensorSpecs) present, none unknown,
    each at its shape and cast to its dtype (contiguous); SqccError prefixed with ``where``."""
    if not isinstance(feed, dict):
        raise SqccError(f"{where}: a feed is a dict of input name → array, got {type(feed).__name__}")
    names = [s.name for s in inputs]
    missing = [n for n in names if n not in feed]
    extra = [str(n) for n in feed if n not in names]
    if missing or extra:
        raise SqccError(f"{where}: the model's inputs are {', '.join(names)}; missing "
                        f"{', '.join(missing) or '-'}, unknown {', '.join(extra) or '-'}")
    out = {}
    for spec in inputs:
        x = np.asarray(feed[spec.name])
        if tuple(x.shape) != tuple(spec.shape):
            raise SqccError(f"{where}: input '{spec.name}' has shape {list(x.shape)}, the model "
                            f"expects {list(spec.shape)}")
        out[spec.name] = np.ascontiguousarray(x, dtype=spec.dtype)
    return out


def read_tensor_file(path) -> np.ndarray:
    """An array from a ``.npy`` file or an ONNX TensorProto ``.pb`` (never a pickle)."""
    path = Path(path)
    if path.suffix not in (".npy", ".pb"):
        raise SqccError(f"{path}: expected a .npy file or an ONNX TensorProto .pb")
    try:
        if path.suffix == ".npy":
            arr = np.load(path, allow_pickle=False)
        else:
            from onnx import TensorProto, numpy_helper

            t = TensorProto()
            t.ParseFromString(path.read_bytes())
            arr = numpy_helper.to_array(t)
    except FileNotFoundError:
        raise SqccError(f"{path}: no such file") from None
    except Exception as e:  # noqa: BLE001 -- a corrupt file is the user's to fix: name it
        raise SqccError(f"{path}: cannot read a tensor ({type(e).__name__})") from None
    if arr.dtype.kind not in "biuf":
        raise SqccError(f"{path}: holds {arr.dtype} values, not a numeric tensor")
    return arr
