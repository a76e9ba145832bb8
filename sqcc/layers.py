"""The layer view of a Relax model: names, a networkx dataflow graph, params, MACs and weight bytes.

Importers lose node names, so :func:`name_layers` renames main's bindings after the source nodes
(the k-th Conv of the ONNX graph is the k-th ``nn.conv2d`` Relax binding: both importers emit in
graph order; a kind whose counts differ falls back to ``conv2d_7``-style names). Every later stage —
passes, reports, ``keep=conv1`` — speaks of layers by these names.

:func:`layer_graph` folds what belongs to a layer into it (bias add, activation, constant reshapes of
weights) and keeps the rest as nodes, so a table of it reads like the network diagram.
"""
from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field

import networkx as nx
import numpy as np

# Source op → the Relax op its importer emits for it (only kinds worth naming).
ONNX_KINDS = {
    "Conv": "relax.nn.conv2d", "ConvTranspose": "relax.nn.conv2d_transpose",
    "Gemm": "relax.matmul", "MatMul": "relax.matmul", "MaxPool": "relax.nn.max_pool2d",
    "AveragePool": "relax.nn.avg_pool2d", "Concat": "relax.concat", "Softmax": "relax.nn.softmax",
}
TFLITE_KINDS = {
    "CONV_2D": "relax.nn.conv2d", "DEPTHWISE_CONV_2D": "relax.nn.conv2d",
    "FULLY_CONNECTED": "relax.matmul", "MAX_POOL_2D": "relax.nn.max_pool2d",
    "AVERAGE_POOL_2D": "relax.nn.avg_pool2d", "CONCATENATION": "relax.concat",
    "SOFTMAX": "relax.nn.softmax",
}
SHORT = {"relax.nn.conv2d": "conv", "relax.matmul": "fc", "relax.nn.max_pool2d": "maxpool",
         "relax.nn.avg_pool2d": "avgpool", "relax.concat": "concat", "relax.nn.softmax": "softmax",
         "relax.nn.conv2d_transpose": "deconv"}
WEIGHTED = ("relax.nn.conv2d", "relax.matmul", "relax.nn.conv2d_transpose", "relax.nn.dense",
            "relax.linear")
ACTIVATIONS = {"relax.nn.relu", "relax.clip", "relax.sigmoid", "relax.nn.silu", "relax.tanh",
               "relax.nn.gelu", "relax.nn.leakyrelu", "relax.nn.relu6"}
# Importers that emit an activation as an already-legalized TIR kernel (ONNX Clip → maximum, minimum).
TIR_ACTIVATIONS = {"maximum", "minimum", "clip", "relu", "relu6"}
QDQ_OPS = {"relax.quantize", "relax.dequantize"}
BIAS_OPS = {"relax.add", "relax.subtract", "relax.multiply"}


def _ident(s: str) -> str:
    s = re.sub(r"[^0-9A-Za-z_]", "_", s).strip("_") or "layer"
    return s if not s[0].isdigit() else "l_" + s


def _bindings(func):
    for block in func.body.blocks:
        yield from block.bindings


def values_and_users(func) -> tuple[dict, dict]:
    """({var: bound value}, {var: [vars of the bindings that read it]}) over ``func``'s bindings; the
    function's result counts as a reader ``None``."""
    from tvm import relax

    values, users = {}, {}

    def note(expr, user):
        if isinstance(expr, relax.Var):
            users.setdefault(expr, []).append(user)
        elif isinstance(expr, relax.Tuple):
            for f in expr.fields:
                note(f, user)
        elif isinstance(expr, relax.Call):
            for a in expr.args:
                note(a, user)

    for b in _bindings(func):
        values[b.var] = b.value
        note(b.value, b.var)
    note(func.body.body, None)
    return values, users


def const_value(expr, values: dict):
    """The numpy value of ``expr`` when it is a constant or a reshape of one (``values`` from
    :func:`values_and_users`), else None."""
    from tvm import relax

    if isinstance(expr, relax.Var) and op_name(values.get(expr)) == "relax.reshape":
        expr = values[expr].args[0]
    return expr.value.numpy() if is_const(expr) else None


def is_const(expr) -> bool:
    return type(expr).__name__ == "GenericConst"


def op_name(value) -> str | None:
    from tvm import relax
    from tvm.ir import Op

    if isinstance(value, relax.Call):
        if isinstance(value.op, Op):
            if value.op.name == "relax.call_tir":
                return "call_tir:" + value.args[0].name_hint
            return value.op.name
        return "call"
    return None


def name_layers(mod, source_nodes, fmt: str):
    """Rename ``main``'s bindings after the source graph's nodes ``[(name, op_type), ...]``."""
    from tvm import relax
    from tvm.relax.expr_functor import PyExprMutator, mutator

    kinds = ONNX_KINDS if fmt == "onnx" else TFLITE_KINDS
    func = mod["main"]
    by_kind: dict[str, list] = {}
    for b in _bindings(func):
        op = op_name(b.value)
        if op in SHORT:
            by_kind.setdefault(op, []).append(b.var)
    src_by_kind: dict[str, list] = {}
    for name, op_type in source_nodes:
        if op_type in kinds:
            src_by_kind.setdefault(kinds[op_type], []).append(name)
    names, used = {}, set()
    for kind, vars_ in by_kind.items():
        src = src_by_kind.get(kind, [])
        for k, v in enumerate(vars_):
            base = _ident(src[k]) if len(src) == len(vars_) and src[k] else f"{SHORT[kind]}{k}"
            nm, j = base, 1
            while nm in used:
                nm, j = f"{base}_{j}", j + 1
            used.add(nm)
            names[v.name] = nm

    @mutator
    class _Renamer(PyExprMutator):
        def visit_var_binding_(self, binding):
            value = self.visit_expr(binding.value)
            nm = names.get(binding.var.name)
            if nm is None:
                return super().visit_var_binding_(binding)
            if isinstance(binding.var, relax.DataflowVar):
                new = self.builder_.emit(value, nm)
            else:
                new = self.builder_.emit_output(value, nm)
            self.set_var_remap(binding.var, new)

    new_main = _Renamer(mod).visit_expr(func)
    out = tvm_ir_update(mod, "main", new_main)
    return out


def tvm_ir_update(mod, name, func):
    """A copy of ``mod`` with function ``name`` replaced."""
    import tvm

    funcs = {gv: f for gv, f in mod.functions.items()}
    gv = mod.get_global_var(name)
    funcs[gv] = func
    new = tvm.IRModule(funcs, attrs=mod.attrs)
    return new


# ------------------------------------------------------------------------------------- layer graph

@dataclass
class Layer:
    name: str
    op: str
    in_shape: tuple = ()
    out_shape: tuple = ()
    params: int = 0
    macs: int = 0
    weight_bytes: int = 0
    attrs: dict = field(default_factory=dict)
    fused: list = field(default_factory=list)

    def to_json(self):
        d = asdict(self)
        d["in_shape"], d["out_shape"] = list(self.in_shape), list(self.out_shape)
        return d


def _shape(expr):
    t = expr.ty
    try:
        return tuple(int(d) for d in t.shape)
    except Exception:
        return ()


def _const_info(expr, const_vars):
    """(elements, bytes) of the constant data behind expr, or None if it is not constant."""
    from tvm import relax

    if is_const(expr):
        arr = expr.value
        return int(np.prod(arr.shape)), int(np.prod(arr.shape)) * np.dtype(str(arr.dtype)).itemsize
    if isinstance(expr, relax.Var) and expr in const_vars:
        return const_vars[expr]
    return None


def weight_arrays(mod):
    """{layer name: weight ndarray} for conv/matmul layers with inline constant weights."""
    out = {}
    for b in _bindings(mod["main"]):
        op = op_name(b.value)
        if op in WEIGHTED and len(b.value.args) > 1:
            w = b.value.args[1]
            if is_const(w):
                out[b.var.name] = w.value.numpy()
    return out


def layer_graph(mod) -> nx.DiGraph:
    """A DiGraph of layers (node attr ``layer``: :class:`Layer`) in topological order of ``main``."""
    from tvm import relax

    func = mod["main"]
    g = nx.DiGraph()
    owner = {}  # relax var -> layer name producing it
    const_vars = {}  # relax var -> (elements, bytes) of constant-only computations
    for p in func.params:
        g.add_node(p.name, layer=Layer(p.name, "input", out_shape=_shape(p)))
        owner[p] = p.name
    for b in _bindings(func):
        v, val = b.var, b.value
        op = op_name(val)
        flat = _flat_args(val, op)
        infos = [_const_info(a, const_vars) for a in flat]
        acts = [a for a, i in zip(flat, infos) if i is None and isinstance(a, relax.Var) and a in owner]
        if not acts:  # computes on constants only (a weight reshape, a dequantize of weights)
            n = sum(i[0] for i in infos if i) if infos else 0
            nb = sum(i[1] for i in infos if i) if infos else 0
            const_vars[v] = (_shape(v) and int(np.prod(_shape(v)))) or n, nb
            continue
        if isinstance(val, (relax.TupleGetItem, relax.Tuple)) and len(acts) == 1:
            owner[v] = owner[acts[0]]
            continue
        src = owner[acts[0]]
        src_layer = g.nodes[src]["layer"]
        single = len(acts) == 1 and g.out_degree(src) == 0 and src_layer.op in WEIGHTED + (
            "relax.nn.max_pool2d", "relax.concat", "relax.nn.avg_pool2d")
        if (op in QDQ_OPS and len(acts) == 1 and src_layer.op != "input"
                and g.out_degree(src) == 0):
            # quantize/dequantize of activations belong to the layer they wrap (int8 models)
            tag = op.split(".")[-1]
            if not src_layer.fused or src_layer.fused[-1] != tag:
                src_layer.fused.append(tag)
            owner[v] = src
            continue
        act = op in ACTIVATIONS or (op or "").split(":")[-1].rstrip("0123456789_") in TIR_ACTIVATIONS
        if single and (act or (op in BIAS_OPS and any(infos))):
            # bias add / activation fused into the producing layer; an activation's scalar bounds
            # (Clip's 0 and 6) are not weights
            if not act:
                _add_weights(src_layer, infos)
            src_layer.fused.append(op.split(".")[-1].split(":")[-1].rstrip("0123456789_") if act else "bias")
            src_layer.out_shape = _shape(v)
            owner[v] = src
            continue
        name, k = v.name, 1
        while name in g:  # rewrites may reuse a layer's name on several bindings
            name, k = f"{v.name}_{k}", k + 1
        layer = Layer(name, op or type(val).__name__, in_shape=_shape(acts[0]), out_shape=_shape(v))
        _add_weights(layer, infos)
        _add_compute(layer, op, val, flat)
        g.add_node(name, layer=layer)
        for a in acts:
            g.add_edge(owner[a], name)
        owner[v] = name
    g.graph["output"] = owner.get(func.body.body) if isinstance(func.body.body, relax.Var) else None
    return g


def _flat_args(val, op) -> list:
    """A binding's arguments, tuples flattened (concat takes one), a call_tir's tensor arguments."""
    from tvm import relax

    args = list(val.args) if isinstance(val, relax.Call) else (
        list(val.fields) if isinstance(val, relax.Tuple) else
        [val.tuple_value] if isinstance(val, relax.TupleGetItem) else [val])
    if op and op.startswith("call_tir:"):
        args = list(args[1].fields) if isinstance(args[1], relax.Tuple) else [args[1]]
    flat = []
    for a in args:
        flat.extend(a.fields if isinstance(a, relax.Tuple) else [a])
    return flat


def _add_weights(layer: Layer, infos) -> None:
    for i in infos:
        if i:
            layer.params += i[0]
            layer.weight_bytes += i[1]


def _add_compute(layer: Layer, op, val, flat) -> None:
    """MACs (and, for convs, kernel/stride/padding/groups/channels) of a conv or matmul layer."""
    if op in ("relax.nn.conv2d", "relax.nn.conv2d_transpose"):
        a = val.attrs
        wshape = _shape(flat[1])
        kdim = {c: wshape[k] for k, c in enumerate(str(a.kernel_layout))}
        out = dict(zip(str(a.out_layout), layer.out_shape))
        layer.macs = (out["N"] * out["C"] * out["H"] * out["W"] * kdim["I"] * kdim["H"] * kdim["W"])
        if op == "relax.nn.conv2d_transpose":
            layer.macs = int(np.prod(layer.in_shape)) * kdim["O"] * kdim["H"] * kdim["W"]
        layer.attrs = {"kernel": [kdim["H"], kdim["W"]], "strides": [int(s) for s in a.strides],
                       "padding": [int(p) for p in a.padding],
                       "dilation": [int(d) for d in a.dilation], "groups": int(a.groups),
                       "channels": [int(dict(zip(str(a.data_layout), layer.in_shape))["C"]), out["C"]]}
    elif op == "relax.matmul" and len(flat) == 2:
        k = _shape(flat[0])[-1] if _shape(flat[0]) else 0
        layer.macs = int(np.prod(layer.out_shape)) * k


def layers(mod) -> list[Layer]:
    g = layer_graph(mod)
    return [g.nodes[n]["layer"] for n in nx.topological_sort(g) if g.nodes[n]["layer"].op != "input"]


def totals(layer_list) -> dict:
    return {"params": int(sum(l.params for l in layer_list)),
            "macs": int(sum(l.macs for l in layer_list)),
            "weight_bytes": int(sum(l.weight_bytes for l in layer_list)),
            "layers": len(layer_list),
            "conv_layers": sum(1 for l in layer_list if l.op == "relax.nn.conv2d")}
