"""Relax ``main`` → an ONNX graph, binding by binding.

:class:`OnnxBuilder` walks the dataflow bindings of the rewritten Relax function in order and asks
the handler of each binding's op (:data:`sqcc.export.onnx_ops.HANDLERS`) to emit ONNX nodes. It keeps
what the handlers share: the ONNX tensor name of every Relax variable, the numpy value of every
variable that computes on constants only (a bias reshape, an importer's ``where(isnan(c), ...)``), the
initializers (named after the layer that owns them: ``conv3.weight``, ``conv3.bias``), and which
bindings a handler absorbed into its node (a bias ``add`` into ``Conv``, ``minimum`` into ``Clip``).
An op without a handler is one :class:`SqccError` naming the binding and the op.
"""
from __future__ import annotations

import numpy as np

from ..errors import SqccError
from ..layers import is_const, op_name, values_and_users

OPSET = 17


def _contiguous(arr) -> np.ndarray:
    """A C-contiguous array of ``arr``, scalars kept 0-d (np.ascontiguousarray makes them 1-d)."""
    arr = np.asarray(arr)
    return arr if arr.flags.c_contiguous else arr.copy(order="C")


def tensor_type(ty) -> tuple[tuple[int, ...], str] | None:
    """(shape, dtype) of a static Relax tensor type, else None."""
    try:
        return tuple(int(d) for d in ty.shape), str(ty.dtype)
    except Exception:  # noqa: BLE001  (tuples, dynamic shapes, objects)
        return None


def ints(x) -> list[int]:
    """Python ints from a Relax Tuple of PrimValues, a ShapeExpr, or an array of IntImm."""
    if x is None:
        return []
    for attr in ("fields", "values"):
        if hasattr(x, attr):
            x = getattr(x, attr)
            break
    return [int(getattr(getattr(v, "value", v), "value", getattr(v, "value", v))) for v in x]


class OnnxBuilder:
    """The ONNX graph being built from one Relax function (see the module docstring)."""

    FORMAT = "ONNX"

    def __init__(self, func, input_names, output_names):
        from tvm import relax

        self.relax = relax
        self.func = func
        self.values, self.users = values_and_users(func)
        self.names: dict = {}  # relax Var -> ONNX tensor name
        self.consts: dict = {}  # relax Var -> numpy value (computed on constants only)
        self.absorbed: set = set()  # binding vars emitted as part of an earlier node
        self.nodes: list = []
        self.inits: dict = {}  # name -> numpy array
        self.value_info: dict = {}  # name -> (shape, dtype)
        self.taken: set = set(input_names) | set(output_names)  # tensor names
        self.node_names: set = set()
        self.input_names, self.output_names = list(input_names), list(output_names)
        self.notes: list[str] = []
        self.binding = None  # the binding being converted (for error messages and names)
        for p, name in zip(func.params, input_names):
            self.names[p] = name

    # ------------------------------------------------------------------------------------ names
    def fresh(self, base: str) -> str:
        name, k = base, 1
        while name in self.taken:
            name, k = f"{base}_{k}", k + 1
        self.taken.add(name)
        return name

    def _node_name(self, base: str) -> str:
        name, k = base, 1
        while name in self.node_names:
            name, k = f"{base}_{k}", k + 1
        self.node_names.add(name)
        return name

    def init(self, arr, name: str) -> str:
        """An initializer holding ``arr`` named ``name`` (made unique); its name."""
        name = self.fresh(name)
        self.inits[name] = _contiguous(arr)
        return name

    def out_name(self, var) -> str:
        return self.fresh(var.name)

    # ----------------------------------------------------------------------------------- values
    def const_of(self, expr):
        """The numpy value of a constant argument (inline, or a variable computed on constants)."""
        if is_const(expr):
            return expr.value.numpy()
        if isinstance(expr, self.relax.Var) and expr in self.consts:
            return self.consts[expr]
        if type(expr).__name__ in ("IntImm", "FloatImm"):
            return np.asarray(expr.value)
        return None

    def value(self, expr, hint: str | None = None) -> str:
        """The ONNX tensor name of an argument; constants become initializers named ``hint``."""
        if isinstance(expr, self.relax.Var) and expr in self.names:
            return self.names[expr]
        arr = self.const_of(expr)
        if arr is not None:
            name = self.init(arr, hint or f"{self.binding.var.name}.const")
            if isinstance(expr, self.relax.Var):  # a folded variable read twice: one initializer
                self.names[expr] = name
            return name
        raise self.unsupported(f"argument {type(expr).__name__} is neither a tensor nor a constant")

    def node(self, op_type: str, inputs, output: str | None = None, name: str | None = None, **attrs) -> str:
        """Append one node; returns its (first) output name."""
        from onnx import helper

        output = output or self.fresh(f"{self.binding.var.name}.{op_type.lower()}")
        node_name = self._node_name(name or f"{self.binding.var.name}/{op_type}")
        self.nodes.append(helper.make_node(op_type, list(inputs), [output], name=node_name,
                                           **{k: v for k, v in attrs.items() if v is not None}))
        return output

    # -------------------------------------------------------------------------------- structure
    def sole_user(self, var):
        """(var, Call) of the only binding reading ``var``, or None (several readers, the result)."""
        users = self.users.get(var, [])
        if len(users) != 1 or users[0] is None:
            return None
        return users[0], self.values[users[0]]

    def absorb(self, var, name: str) -> None:
        """``var``'s binding is computed by the node just emitted, whose output is ``name``."""
        self.absorbed.add(var)
        self.names[var] = name
        ty = tensor_type(var.ty)
        if ty is not None:
            self.value_info[name] = ty

    def unsupported(self, why: str) -> SqccError:
        b = self.binding
        op = op_name(b.value) if b is not None else None
        where = f"binding '{b.var.name}' ({op or type(b.value).__name__})" if b is not None else "graph"
        return SqccError(f"cannot export to {self.FORMAT}: {where}: {why}")

    # ------------------------------------------------------------------------------------- walk
    def convert(self, handlers, evaluate) -> None:
        """Every binding in order: folded when it computes on constants (``evaluate``), aliased
        when it is a variable or a tuple, else emitted by ``handlers[op]``."""
        relax = self.relax
        bindings = [b for block in self.func.body.blocks for b in block.bindings]
        for b in bindings:  # constants first: a bias reshape comes after the conv that adds it
            self.binding = b
            if isinstance(b.value, relax.Call):
                folded = evaluate(self, op_name(b.value), b.value)
                if folded is not None:
                    self.consts[b.var] = folded
        for b in bindings:
            self.binding = b
            v = b.value
            if b.var in self.absorbed or b.var in self.consts:
                continue
            if isinstance(v, relax.Var):
                self._alias(b.var, v)
                continue
            if isinstance(v, (relax.Tuple, relax.TupleGetItem)):
                self.names[b.var] = v  # resolved by the consumer (concat, split)
                continue
            self._emit(handlers, b)
        self.binding = None

    def _emit(self, handlers, b) -> None:
        op = op_name(b.value)
        handler = handlers.get(op) or handlers.get((op or "").split(":")[0] + ":")
        if handler is None:
            raise self.unsupported(f"no {self.FORMAT} equivalent in sqcc's exporter")
        out = handler(self, b.var, b.value)
        self.names[b.var] = out
        ty = tensor_type(b.var.ty)
        if ty is not None and isinstance(out, str):
            self.value_info.setdefault(out, ty)  # an absorbed binding's type stands

    def _alias(self, var, src) -> None:
        if src in self.consts:
            self.consts[var] = self.consts[src]
        elif src in self.names:
            self.names[var] = self.names[src]
        else:
            raise self.unsupported("aliases an unknown variable")

    def results(self, body) -> list:
        """The function's result expressions (a tuple, or a variable bound to one, spread out)."""
        relax = self.relax
        if isinstance(body, relax.Var) and isinstance(self.names.get(body), relax.Tuple):
            body = self.names[body]
        return list(body.fields) if isinstance(body, relax.Tuple) else [body]

    def outputs(self, body) -> list[str]:
        """The ONNX names of the function's results, in order."""
        relax = self.relax
        fields = self.results(body)
        out = []
        for f in fields:
            name = self.names.get(f) if isinstance(f, relax.Var) else None
            if not isinstance(name, str):
                raise self.unsupported("a result is not a tensor the graph computes")
            out.append(name)
        return out

    def rename_outputs(self, produced: list[str]) -> None:
        """Give the result tensors the model's output names (an Identity where a result is a graph
        input, an initializer, or one tensor returned twice)."""
        renamed: dict[str, str] = {}
        for old, new in zip(produced, self.output_names):
            if old in renamed or old == new or old in self.input_names or not any(old in n.output for n in self.nodes):
                if old != new:
                    self.nodes.append(_identity(renamed.get(old, old), new))
                renamed.setdefault(old, new)
                continue
            for n in self.nodes:
                n.input[:] = [new if i == old else i for i in n.input]
                n.output[:] = [new if o == old else o for o in n.output]
            if old in self.value_info:
                self.value_info[new] = self.value_info.pop(old)
            renamed[old] = new


def _identity(src: str, dst: str):
    from onnx import helper

    return helper.make_node("Identity", [src], [dst], name=f"{dst}/Identity")


def to_model_proto(g: OnnxBuilder, func, name: str, metadata: dict, doc: str, opset: int = OPSET):
    """The ModelProto of a converted graph: typed inputs/outputs, value_info for every intermediate
    tensor (Netron shows shapes), initializers, ``metadata_props``."""
    from onnx import helper, numpy_helper

    def vi(name, ty):
        shape, dtype = ty
        return helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(np.dtype(dtype)), list(shape))

    ins = [vi(n, tensor_type(p.ty)) for n, p in zip(g.input_names, func.params)]
    outs = []
    for n, r in zip(g.output_names, g.results(func.body.body)):
        outs.append(vi(n, tensor_type(r.ty)))
    skip = set(g.input_names) | set(g.output_names) | set(g.inits)
    infos = [vi(n, t) for n, t in g.value_info.items() if n not in skip]
    inits = [numpy_helper.from_array(a, n) for n, a in g.inits.items()]
    graph = helper.make_graph(g.nodes, name, ins, outs, initializer=inits, value_info=infos, doc_string=doc)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="sqcc",
                              doc_string=doc)
    model.ir_version = 8  # opset 17's IR: what onnxruntime ≥ 1.13, TensorRT 8.6, OpenVINO read
    helper.set_model_props(model, {k: str(v) for k, v in metadata.items()})
    return model
