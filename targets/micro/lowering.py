"""Lowering: Relax -> fused PrimFuncs + a linear list of kernel calls over named buffers.

The Relax module is decomposed, legalized and fused (:func:`relax_lower`); main's bindings, by then
all ``call_tir`` (or pure reshapes, which become *views*: the same bytes under another shape, no
copy kernel), are walked into a :class:`Graph` (:func:`build_graph`): one :class:`Step` per kernel
call, one :class:`Buf` per tensor, with the live interval the arena planner needs (a kernel's
outputs are born at its step; every buffer lives to its last use; model outputs to the end; a view
keeps the bytes it reinterprets alive).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from sqcc.errors import SqccError


@dataclass
class Buf:
    name: str
    shape: tuple
    dtype: str
    nbytes: int
    kind: str  # "input" | "act" | "output" | "workspace" | "const" | "view"
    start: int = 0  # first step where live (input: -1)
    end: int = 0  # last step where live
    offset: int = -1  # in the arena (or in weights.bin for consts)
    base: str | None = None  # kind "view": the buffer whose bytes this one reinterprets (no copy)


@dataclass
class Step:
    kernel: str  # PrimFunc name
    args: list  # buffer names, inputs then outputs
    n_out: int = 1
    workspace: int = 0
    ws_buf: str | None = None


@dataclass
class Graph:
    bufs: dict = field(default_factory=dict)
    steps: list = field(default_factory=list)
    inputs: list = field(default_factory=list)
    outputs: list = field(default_factory=list)
    consts: list = field(default_factory=list)  # names, in weights.bin order
    const_data: dict = field(default_factory=dict)


def nbytes(shape, dtype) -> int:
    return int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize if shape else \
        np.dtype(dtype).itemsize


def relax_lower(mod):
    import tvm
    from tvm import relax

    seq = tvm.transform.Sequential([
        relax.transform.DecomposeOpsForInference(),
        relax.transform.LegalizeOps(),
        relax.transform.AnnotateTIROpPattern(),
        relax.transform.FoldConstant(),
        relax.transform.FuseOps(),
        relax.transform.FuseTIR(),
        relax.transform.RewriteDataflowReshape(),  # pure reshapes become views: no copy kernel
        relax.transform.DeadCodeElimination(),
        relax.transform.ToNonDataflow(),
        relax.transform.CanonicalizeBindings(),
        relax.transform.AttachGlobalSymbol(),
    ])
    return seq(mod)


def _static_shape(ty, what):
    from tvm import relax
    if not isinstance(ty, relax.TensorType) or ty.shape is None:
        raise SqccError(f"micro: {what} is not a tensor of known shape ({ty})")
    try:
        shape = tuple(int(d) for d in ty.shape.values)
    except Exception:
        raise SqccError(f"micro: {what} has a dynamic shape {ty.shape}; the micro target needs "
                        "static shapes") from None
    return shape, str(ty.dtype)


def _const_types():
    import tvm
    from tvm import relax
    return tuple(t for t in (getattr(tvm.ir, "GenericConst", None), getattr(relax, "Constant", None)) if t)


class _GraphBuilder:
    """Walks main's bindings; ``env`` maps each relax Var to a buffer name (or a tuple of names)."""

    def __init__(self):
        import tvm

        self.g = Graph()
        self.env = {}
        self.const_ids = {}
        self.call_tir = tvm.ir.Op.get("relax.call_tir")
        self.reshape = tvm.ir.Op.get("relax.reshape")

    def fresh(self, name: str) -> str:
        while name in self.g.bufs:
            name += "_"
        return name

    def add_param(self, p):
        shape, dtype = _static_shape(p.ty, f"input '{p.name}'")
        self.g.bufs[p.name] = Buf(p.name, shape, dtype, nbytes(shape, dtype), "input", start=-1)
        self.g.inputs.append(p.name)
        self.env[p] = p.name

    def const_buf(self, c):
        # the same constant used twice is stored once in weights.bin
        key = c.__hash__()
        for k, name in self.const_ids.items():
            if k == key:
                return name
        arr = c.value.numpy() if hasattr(c, "value") else c.data.numpy()
        g = self.g
        name = f"c{len(g.consts)}"
        g.bufs[name] = Buf(name, tuple(arr.shape), str(arr.dtype), arr.nbytes, "const")
        g.consts.append(name)
        g.const_data[name] = np.ascontiguousarray(arr)
        self.const_ids[key] = name
        return name

    def arg_name(self, a, where):
        from tvm import relax
        if isinstance(a, _const_types()):
            return self.const_buf(a)
        if isinstance(a, relax.Var) and a in self.env and isinstance(self.env[a], str):
            return self.env[a]
        raise SqccError(f"micro: unsupported argument {type(a).__name__} in {where}")

    def bind(self, b):
        from tvm import relax
        if not isinstance(b, relax.VarBinding):
            raise SqccError(f"micro: unsupported binding {type(b).__name__} for '{b.var.name}'")
        v, env = b.value, self.env
        if isinstance(v, relax.Call) and v.op.same_as(self.call_tir):
            self.bind_call_tir(b.var, v)
        elif isinstance(v, relax.Call) and v.op.same_as(self.reshape):
            self.bind_view(b.var, v)
        elif isinstance(v, relax.Var) and v in env:
            env[b.var] = env[v]
        elif isinstance(v, relax.TupleGetItem) and isinstance(env.get(v.tuple_value), tuple):
            env[b.var] = env[v.tuple_value][v.index]
        elif isinstance(v, relax.Tuple):
            env[b.var] = tuple(self.arg_name(f, b.var.name) for f in v.fields)
        else:
            op = getattr(getattr(v, "op", None), "name", type(v).__name__)
            raise SqccError(f"micro: unsupported operation {op} at '{b.var.name}' after "
                            "legalization (only TIR kernels can run on the micro target)")

    def bind_call_tir(self, var, v):
        from tvm import relax
        gv, g = v.args[0], self.g
        if len(v.args) > 2:
            raise SqccError(f"micro: '{var.name}' calls {gv.name_hint} with symbolic "
                            "shape arguments; the micro target needs static shapes")
        args = [self.arg_name(a, gv.name_hint) for a in v.args[1].fields]
        outs = []
        if isinstance(var.ty, relax.TupleType):
            for i, f in enumerate(var.ty.fields):
                shape, dtype = _static_shape(f, f"'{var.name}'[{i}]")
                name = f"{var.name}_{i}"
                outs.append(name)
                g.bufs[name] = Buf(name, shape, dtype, nbytes(shape, dtype), "act")
            self.env[var] = tuple(outs)
        else:
            shape, dtype = _static_shape(var.ty, f"'{var.name}'")
            name = self.fresh(var.name)
            outs.append(name)
            g.bufs[name] = Buf(name, shape, dtype, nbytes(shape, dtype), "act")
            self.env[var] = name
        g.steps.append(Step(gv.name_hint, args + outs, n_out=len(outs)))

    def bind_view(self, var, v):
        g = self.g
        base = self.arg_name(v.args[0], var.name)
        shape, dtype = _static_shape(var.ty, f"'{var.name}'")
        name = self.fresh(var.name)
        root = g.bufs[base].base or base  # a view of a view reinterprets the same bytes
        g.bufs[name] = Buf(name, shape, dtype, nbytes(shape, dtype), "view", base=root)
        self.env[var] = name

    def mark_outputs(self, ret):
        from tvm import relax
        g = self.g
        if isinstance(ret, relax.Tuple):
            outs = [self.arg_name(f, "the return value") for f in ret.fields]
        else:
            r = self.env.get(ret) if isinstance(ret, relax.Var) else None
            outs = list(r) if isinstance(r, tuple) else [self.arg_name(ret, "the return value")]
        for o in outs:
            if g.bufs[o].kind == "view" and g.bufs[g.bufs[o].base].kind == "act":
                continue
            if g.bufs[o].kind != "act":
                raise SqccError(f"micro: model output '{o}' is a {g.bufs[o].kind}, not computed by a "
                                "kernel; not supported on the micro target")
            g.bufs[o].kind = "output"
        g.outputs = outs


def _set_lifetimes(g: Graph) -> None:
    """A kernel's outputs are born at its step; every buffer lives to its last use."""
    n = len(g.steps)
    for i, s in enumerate(g.steps):
        for j, a in enumerate(s.args):
            if j >= len(s.args) - s.n_out:
                g.bufs[a].start = i
            g.bufs[a].end = max(g.bufs[a].end, i)
    for o in g.outputs:
        g.bufs[o].end = n
    for b in g.bufs.values():  # a view keeps the bytes it reinterprets alive
        if b.kind == "view":
            root = g.bufs[b.base]
            root.end = max(root.end, b.end)
            if root.kind in ("act", "output") and b.start < root.start:
                b.start = root.start


def build_graph(mod) -> Graph:
    """Walk main's bindings (already lowered to call_tir) into a Graph of steps and buffers."""
    if "main" not in [gv.name_hint for gv in mod.get_global_vars()]:
        raise SqccError("micro: the module has no 'main' function")
    main = mod["main"]
    gb = _GraphBuilder()
    for p in main.params:
        gb.add_param(p)
    for block in main.body.blocks:
        for b in block.bindings:
            gb.bind(b)
    gb.mark_outputs(main.body.body)
    _set_lifetimes(gb.g)
    return gb.g
