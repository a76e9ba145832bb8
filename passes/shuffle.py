"""``shuffle``: turn a dense 1×1 conv C→N into a g-group 1×1 conv (ShuffleNet, Zhang et al. 2018),
choosing input/output channel permutations that keep the most energy inside the g diagonal blocks.

The partition. The 1×1 weight W (N×C) is a weighted bipartite graph between input and output
channels, edge (n, c) weighing E[n,c] = W[n,c]² (``fit=weight``) or W[n,c]²·E[x_c²] (the output energy
that edge carries, with calibration activations: ``fit=data``/``auto``). A g-group conv keeps the edges
inside g blocks of C/g inputs × N/g outputs. We look for the balanced partition that keeps the most
edge weight: recursive spectral bisection of that graph (networkx ``fiedler_vector``; each side is
split at its median, so every block gets exactly C/g inputs and N/g outputs), then an exact
alternating refinement: with the input blocks fixed, the best balanced assignment of the outputs is a
linear assignment problem (scipy ``linear_sum_assignment``), and vice versa; it never loses energy.

The fit. Off-block weights are dropped. With calibration activations the kept weights of each output
are refitted by least squares on the layer's real inputs (minimising E‖W_n x − ŵ_n x_S − δ_n‖² over
the block's inputs S and a bias correction δ_n that goes into the layer's bias), so the output error
is the smallest a block-diagonal W can have. Reported per layer: the fraction of weight energy kept,
‖W − Ŵ‖/‖W‖ and, with calibration, the output error ‖y − ŷ‖/‖y‖.

The permutations. The grouped conv reads its input in the order π and writes its output in the order
σ. Where that is exact and free they are folded into neighbouring weights:

* input π: the input tensor's producer (through per-channel ops: bias add, ReLU, pooling) is a
  dense conv whose output rows are permuted, and every *other* consumer of that tensor absorbs π into
  its input-channel axis (convs), per-channel constants (biases) are permuted, and a concat passes
  it on as a permutation of its own output (a block of it);
* output σ: every consumer of the output (through per-channel ops and concats) is a dense conv that
  absorbs σ in its input-channel axis, and the bias constant is permuted.

The networkx layer graph of :mod:`sqcc.layers` names the producer and consumers; the Relax bindings
are then checked op by op. Anything else (a concat *producing* the input — SqueezeNet's squeeze
layers —, an already grouped neighbour, the model output, a residual add) is not free: the pass then
emits the permutation as one gather, ``take(x, idx, axis=1)``. That is sqcc's canonical form of a
channel permutation; a ShuffleNet reshape→transpose→reshape is one special permutation and is
canonicalised to the same gather (:mod:`sqcc.passes.shuffle_canon`), so the pass never emits it.
"""
from __future__ import annotations

import math

import numpy as np
import tvm

from . import Param, register
from ..errors import SqccError

from .base import LayerRecord, PassContext

UNARY = {"relax.nn.relu", "relax.clip", "relax.sigmoid", "relax.tanh", "relax.nn.relu6",
         "relax.nn.leakyrelu", "relax.nn.silu", "relax.nn.gelu", "relax.nn.dropout"}
POOLS = {"relax.nn.max_pool2d", "relax.nn.avg_pool2d"}
BINARY = {"relax.add", "relax.subtract", "relax.multiply", "relax.divide"}


class NoFold(Exception):
    """A permutation cannot be moved into neighbouring weights (the message says why)."""


# ------------------------------------------------------------------------------------ IR analysis

class ChannelIR:
    """Main's bindings indexed by var name: producers, users, and the per-channel structure a
    channel permutation can travel through."""

    def __init__(self, mod):
        from tvm import relax

        from ..layers import op_name

        self.func = mod["main"]
        self.bindings = {}
        self.order = []
        self.users: dict[str, list] = {}
        self.dup = False
        for block in self.func.body.blocks:
            for b in block.bindings:
                nm = b.var.name
                if nm in self.bindings:
                    self.dup = True
                self.bindings[nm] = b
                self.order.append(nm)
                for pos, a in enumerate(self._args(b.value)):
                    for k, v in enumerate(a.fields if isinstance(a, relax.Tuple) else [a]):
                        if isinstance(v, relax.Var):
                            self.users.setdefault(v.name, []).append((nm, pos, k))
        ret = self.func.body.body
        for v in (ret.fields if isinstance(ret, relax.Tuple) else [ret]):
            if isinstance(v, relax.Var):
                self.users.setdefault(v.name, []).append(("__output__", 0, 0))
        self.params = {p.name for p in self.func.params}
        self.op = {nm: op_name(b.value) for nm, b in self.bindings.items()}

    @staticmethod
    def _args(value):
        from tvm import relax

        if isinstance(value, relax.Call):
            return list(value.args)
        if isinstance(value, relax.Tuple):
            return [value]
        if isinstance(value, relax.TupleGetItem):
            return [value.tuple_value]
        return [value]

    def value(self, name):
        return self.bindings[name].value

    def const_value(self, expr):
        """numpy value of a constant, or of a var bound to a reshape of a constant (a bias)."""
        from tvm import relax

        from ..layers import is_const

        if is_const(expr):
            return expr.value.numpy()
        if isinstance(expr, relax.Var) and expr.name in self.bindings:
            v = self.value(expr.name)
            if self.op.get(expr.name) in ("relax.reshape", "relax.expand_dims") and is_const(v.args[0]):
                shape = tuple(int(d) for d in expr.ty.shape)
                return v.args[0].value.numpy().reshape(shape)
            if is_const(v):
                return v.value.numpy()
        return None

    def channels(self, name) -> int:
        return int(self.bindings[name].var.ty.shape[1])

    def is_dense_conv(self, name) -> bool:
        from ..layers import is_const

        if self.op.get(name) != "relax.nn.conv2d":
            return False
        v = self.value(name)
        a = v.attrs
        return (is_const(v.args[1]) and int(a.groups) == 1 and str(a.data_layout) == "NCHW"
                and str(a.kernel_layout) == "OIHW" and str(a.out_layout) == "NCHW")

    def is_depthwise(self, name) -> bool:
        from ..layers import is_const

        if self.op.get(name) != "relax.nn.conv2d":
            return False
        v = self.value(name)
        a = v.attrs
        w = v.args[1]
        if not is_const(w) or str(a.data_layout) != "NCHW" or str(a.kernel_layout) != "OIHW":
            return False
        c_in = int(v.args[0].ty.shape[1])
        return int(a.groups) == c_in == int(w.ty.shape[0]) and int(w.ty.shape[1]) == 1

    def take_indices(self, name):
        """The constant 1-D indices of a ``take(x, idx, axis=1)`` binding on an NCHW tensor, or None."""
        v = self.value(name)
        if self.op.get(name) != "relax.take" or v.attrs.axis is None or int(v.attrs.axis) not in (1, -3):
            return None
        if len(v.args[0].ty.shape) != 4:
            return None
        idx = self.const_value(v.args[1])
        return idx if idx is not None and idx.ndim == 1 else None

    def channel_const_axis(self, name, c):
        """For a binary op binding with one activation and one constant operand broadcast per channel:
        (index of the constant operand, its channel axis or None if it is per-tensor, numpy value)."""
        v = self.value(name)
        vals = [self.const_value(a) for a in v.args]
        if sum(x is not None for x in vals) != 1:
            return None
        k = 0 if vals[0] is not None else 1
        arr = vals[k]
        out_rank = len(self.bindings[name].var.ty.shape)
        if arr.ndim == 0 or arr.size == 1:
            return k, None, arr
        if out_rank != 4 or arr.ndim < 3:
            return None
        ax = arr.ndim - 3
        shape = list(arr.shape)
        if shape[ax] != c or any(s != 1 for i, s in enumerate(shape) if i != ax):
            return None
        return k, ax, arr


def _emit_like(builder, var, value, name):
    """Emit ``value`` as the binding of ``var`` was: a dataflow var, an output of a dataflow block, or
    a plain binding outside any dataflow block (e.g. after calibration instrumentation)."""
    from tvm import relax

    if isinstance(var, relax.DataflowVar) or not builder.current_block_is_dataflow():
        return builder.emit(value, name)
    return builder.emit_output(value, name)


def uniquify_names(mod):
    """``mod`` with main's binding names made unique (later duplicates get ``_k`` suffixes): the
    channel analysis speaks of bindings by name. ConvertLayout, for one, reuses names."""
    from tvm.relax.expr_functor import PyExprMutator, mutator

    from ..layers import _bindings, tvm_ir_update

    names = [b.var.name for b in _bindings(mod["main"])]
    if len(set(names)) == len(names):
        return mod
    seen = set(names)
    first = set()

    @mutator
    class _Uniq(PyExprMutator):
        def visit_var_binding_(self, binding):
            nm = binding.var.name
            if nm not in first:
                first.add(nm)
                return super().visit_var_binding_(binding)
            k = 1
            while f"{nm}_{k}" in seen:
                k += 1
            new_nm = f"{nm}_{k}"
            seen.add(new_nm)
            val = self.visit_expr(binding.value)
            out = _emit_like(self.builder_, binding.var, val, new_nm)
            self.set_var_remap(binding.var, out)

    return tvm_ir_update(mod, "main", _Uniq(mod).visit_expr(mod["main"]))


class Plan:
    """Edits that move channel permutations into weights: per conv binding a list of weight
    transforms, per binary-op binding a list of constant transforms (numpy callables)."""

    def __init__(self):
        self.conv_w: dict[str, list] = {}
        self.consts: dict[str, list] = {}  # name -> [(operand index, fn)]
        self.absorbed: list[str] = []  # layer names that absorbed a permutation (for the report)
        self.input_perms: dict[str, np.ndarray] = {}  # conv layer -> perm applied to its input axis

    def merge(self, other: "Plan"):
        for k, v in other.conv_w.items():
            self.conv_w.setdefault(k, []).extend(v)
        for k, v in other.consts.items():
            self.consts.setdefault(k, []).extend(v)
        self.absorbed.extend(other.absorbed)
        for k, p in other.input_perms.items():
            q = self.input_perms.get(k)
            self.input_perms[k] = p if q is None else q[p]


def _perm_axis(axis, perm):
    perm = np.asarray(perm)
    return lambda a: np.take(a, perm, axis=axis)


def plan_down(ir: ChannelIR, var: str, perm, plan: Plan, skip=(), depth=0):
    """Make every user of tensor ``var`` correct when ``var`` becomes ``var[:, perm]``.
    Raises NoFold if some user cannot absorb it."""
    perm = np.asarray(perm)
    if depth > 200:
        raise NoFold("permutation region too deep")
    for user, pos, k in ir.users.get(var, []):
        if user in skip:
            continue
        if user == "__output__":
            raise NoFold(f"{var} is a model output")
        op = ir.op.get(user)
        if op == "relax.nn.conv2d" and pos == 0 and ir.is_dense_conv(user):
            plan.conv_w.setdefault(user, []).append(_perm_axis(1, perm))
            plan.absorbed.append(user)
            plan.input_perms[user] = perm if user not in plan.input_perms else plan.input_perms[user][perm]
        elif op == "relax.nn.conv2d" and pos == 0 and ir.is_depthwise(user):
            plan.conv_w.setdefault(user, []).append(_perm_axis(0, perm))  # per-channel: passes through
            plan.absorbed.append(user)
            plan_down(ir, user, perm, plan, skip, depth + 1)
        elif op == "relax.take" and pos == 0 and ir.take_indices(user) is not None:
            inv = np.argsort(perm)  # take(x[:, p], idx') == take(x, idx)  ⇔  idx' = p⁻¹[idx]
            plan.consts.setdefault(user, []).append((1, lambda idx, inv=inv: inv[idx].astype(idx.dtype)))
            plan.absorbed.append(user)
        elif op in UNARY and pos == 0:
            plan_down(ir, user, perm, plan, skip, depth + 1)
        elif op in POOLS and str(ir.value(user).attrs.layout) == "NCHW":
            plan_down(ir, user, perm, plan, skip, depth + 1)
        elif op in BINARY:
            cc = ir.channel_const_axis(user, len(perm))
            if cc is None:
                raise NoFold(f"{user} ({op}) combines {var} with another activation")
            ci, ax, _ = cc
            if ax is not None:
                plan.consts.setdefault(user, []).append((ci, _perm_axis(ax, perm)))
            plan_down(ir, user, perm, plan, skip, depth + 1)
        elif op == "relax.concat" and int(ir.value(user).attrs.axis) in (1, -3):
            fields = ir.value(user).args[0].fields
            off = sum(int(f.ty.shape[1]) for f in fields[:k])
            total = ir.channels(user)
            ext = np.arange(total)
            ext[off:off + len(perm)] = off + perm
            plan_down(ir, user, ext, plan, skip, depth + 1)
        else:
            raise NoFold(f"{user} ({op or type(ir.value(user)).__name__}) cannot absorb a channel permutation")


def plan_up(ir: ChannelIR, var: str, perm, skip_user: str):
    """Make tensor ``var`` arrive as ``var[:, perm]`` by permuting its producing conv's output rows
    (found through per-channel ops) and fixing every other consumer; ``skip_user`` reads it permuted."""
    perm = np.asarray(perm)
    v = var
    for _ in range(100):
        if v in ir.params:
            raise NoFold(f"{var} is a model input")
        op = ir.op.get(v)
        if ir.is_dense_conv(v):
            plan = Plan()
            plan.conv_w.setdefault(v, []).append(_perm_axis(0, perm))
            plan.absorbed.append(v)
            plan_down(ir, v, perm, plan, skip={skip_user})
            return plan, v
        val = ir.value(v)
        if op == "relax.take" and ir.take_indices(v) is not None:  # a gather: permute its indices
            plan = Plan()
            plan.consts.setdefault(v, []).append((1, lambda idx: idx[perm]))
            plan.absorbed.append(v)
            plan_down(ir, v, perm, plan, skip={skip_user})
            return plan, v
        if op in UNARY or (op in POOLS and str(val.attrs.layout) == "NCHW"):
            v = val.args[0].name
            continue
        if op in BINARY:
            cc = ir.channel_const_axis(v, len(perm))
            if cc is None:
                raise NoFold(f"{v} ({op}) combines two activations")
            v = val.args[1 - cc[0]].name
            continue
        if op == "relax.concat":
            raise NoFold(f"the input comes from concat {v}, whose parts the permutation mixes")
        if op == "relax.nn.conv2d":
            raise NoFold(f"the input comes from {v}, a grouped conv (a permutation across its groups "
                         f"is a shuffle)")
        raise NoFold(f"the input comes from {v} ({op}), which cannot absorb a permutation")
    raise NoFold("producer chain too long")


def apply_plan(mod, plan: Plan, replace: dict | None = None, remap: dict | None = None):
    """Rewrite main: apply the plan's weight/constant edits; ``replace[name](builder, ir, visit)``
    returns the expr that now produces binding ``name``; ``remap[name] = other`` makes users of
    ``name`` read the (original) var ``other`` instead (the binding itself is then dead)."""
    from tvm import relax
    from tvm.relax.expr_functor import PyExprMutator, mutator

    from ..layers import tvm_ir_update

    ir = ChannelIR(mod)
    replace = replace or {}
    remap = remap or {}

    @mutator
    class _Apply(PyExprMutator):
        def visit_var_binding_(self, binding):
            nm = binding.var.name
            val = binding.value
            new = None
            if nm in remap:
                self.set_var_remap(binding.var, self.visit_expr(remap[nm]))
                return
            if nm in replace:
                new = replace[nm](self.builder_, ir, self.visit_expr)
            elif nm in plan.conv_w:
                w = val.args[1].value.numpy()
                for fn in plan.conv_w[nm]:
                    w = fn(w)
                a = val.attrs
                kw = {}
                if str(a.out_dtype) not in ("", "void", "None"):
                    kw["out_dtype"] = str(a.out_dtype)
                new = relax.op.nn.conv2d(self.visit_expr(val.args[0]),
                                         relax.const(np.ascontiguousarray(w, dtype=w.dtype)),
                                         strides=[int(s) for s in a.strides],
                                         padding=[int(p) for p in a.padding],
                                         dilation=[int(d) for d in a.dilation], groups=int(a.groups),
                                         data_layout=str(a.data_layout), kernel_layout=str(a.kernel_layout),
                                         out_layout=str(a.out_layout), **kw)
            elif nm in plan.consts:
                args = [self.visit_expr(x) for x in val.args]
                by_idx: dict[int, np.ndarray] = {}
                for ci, fn in plan.consts[nm]:
                    arr = by_idx.get(ci)
                    if arr is None:
                        arr = ir.const_value(val.args[ci])
                    by_idx[ci] = fn(arr)
                for ci, arr in by_idx.items():
                    args[ci] = relax.const(np.ascontiguousarray(arr))
                new = relax.Call(val.op, args, val.attrs)
            if new is None:
                return super().visit_var_binding_(binding)
            out = _emit_like(self.builder_, binding.var, new, nm)
            self.set_var_remap(binding.var, out)

    new_main = _Apply(mod).visit_expr(mod["main"])
    out = tvm_ir_update(mod, "main", new_main)
    out = relax.transform.DeadCodeElimination()(out) if remap or replace else out
    return out


def take_channels(builder, x, idx, name=None):
    """Emit ``take(x, idx, axis=1)``: the canonical channel permutation (one gather)."""
    from tvm import relax

    expr = relax.op.take(x, relax.const(np.asarray(idx, dtype="int64")), axis=1, mode="clip")
    return builder.emit(expr, name) if name else builder.emit(expr)


# ------------------------------------------------------------------------------------- partition

def _bisect_spectral(e: np.ndarray, n_left_in: int, n_left_out: int, seed: int = 0):
    """Spectral bisection of the bipartite graph with edge weights e (outputs × inputs): returns
    boolean masks (inputs on the left, outputs on the left) of the prescribed sizes."""
    import networkx as nx

    n_out, n_in = e.shape
    g = nx.Graph()
    g.add_nodes_from([("i", c) for c in range(n_in)] + [("o", n) for n in range(n_out)])
    scale = float(e.max()) if e.size and e.max() > 0 else 1.0
    w = e / scale + 1e-9  # keep the graph connected (fiedler_vector needs it)
    rows, cols = np.nonzero(w > 0)
    g.add_weighted_edges_from(((("o", int(r)), ("i", int(c)), float(w[r, c])) for r, c in zip(rows, cols)))
    try:
        f = nx.fiedler_vector(g, weight="weight", normalized=True, method="tracemin_lu", seed=seed)
    except Exception:  # degenerate spectra: fall back to the node order
        f = np.arange(n_in + n_out, dtype=float)
    nodes = list(g.nodes)
    val = dict(zip(nodes, f))
    fin = np.array([val[("i", c)] for c in range(n_in)])
    fout = np.array([val[("o", n)] for n in range(n_out)])
    left_in = np.zeros(n_in, bool)
    left_in[np.argsort(fin, kind="stable")[:n_left_in]] = True
    left_out = np.zeros(n_out, bool)
    left_out[np.argsort(fout, kind="stable")[:n_left_out]] = True
    return left_in, left_out


def _assign(score: np.ndarray, g: int) -> np.ndarray:
    """Best balanced assignment of rows to g blocks (each block len(score)/g rows) maximising the
    summed score[row, block]: a linear assignment problem."""
    from scipy.optimize import linear_sum_assignment

    n = score.shape[0]
    per = n // g
    cost = -np.repeat(score, per, axis=1)  # n × (g·per) slots
    r, c = linear_sum_assignment(cost)
    out = np.empty(n, int)
    out[r] = c // per
    return out


def kept_energy(e, in_blk, out_blk):
    return float(e[out_blk[:, None] == in_blk[None, :]].sum())


def balanced_partition(e: np.ndarray, g: int, refine_iters: int = 20, seed: int = 0):
    """Block ids (inputs: length C, outputs: length N) of a balanced g-way partition of the bipartite
    channel graph with edge weights ``e`` (N×C, non-negative) keeping the most weight on the blocks."""
    n_out, n_in = e.shape
    if g == 1:
        return np.zeros(n_in, int), np.zeros(n_out, int)
    cg, ng = n_in // g, n_out // g
    in_blk = np.zeros(n_in, int)
    out_blk = np.zeros(n_out, int)

    def split(ins, outs, first, k):
        if k == 1:
            in_blk[ins] = first
            out_blk[outs] = first
            return
        k1 = k // 2
        li, lo = _bisect_spectral(e[np.ix_(outs, ins)], k1 * cg, k1 * ng, seed)
        split(ins[li], outs[lo], first, k1)
        split(ins[~li], outs[~lo], first + k1, k - k1)

    split(np.arange(n_in), np.arange(n_out), 0, g)
    best = kept_energy(e, in_blk, out_blk)
    for _ in range(refine_iters):
        onehot_in = np.eye(g)[in_blk]  # C × g
        new_out = _assign(e @ onehot_in, g)
        onehot_out = np.eye(g)[new_out]
        new_in = _assign(e.T @ onehot_out, g)
        k = kept_energy(e, new_in, new_out)
        if k <= best * (1 + 1e-12):
            break
        in_blk, out_blk, best = new_in, new_out, k
    return in_blk, out_blk


def block_perms(in_blk, out_blk, g):
    """(π, σ): channel orders that put block 0's channels first, then block 1's, …"""
    pi = np.concatenate([np.flatnonzero(in_blk == b) for b in range(g)])
    sigma = np.concatenate([np.flatnonzero(out_blk == b) for b in range(g)])
    return pi, sigma


# ------------------------------------------------------------------------------------------- fit

def fit_blocks(w2: np.ndarray, in_blk, out_blk, stats=None, ridge=1e-6):
    """Block-diagonal approximation Ŵ (N×C, original order, zero off-block) and bias correction δ
    (N,). Without ``stats`` Ŵ keeps W's on-block entries; with ``stats = (Σ, μ)`` (second moments and
    means of the input) each row is refitted by least squares on its block's inputs."""
    n, c = w2.shape
    mask = out_blk[:, None] == in_blk[None, :]
    w_hat = np.where(mask, w2, 0.0).astype(np.float64)
    delta = np.zeros(n)
    if stats is None:
        return w_hat, delta
    sigma, mu = stats
    g = int(max(in_blk.max(), out_blk.max())) + 1
    w64 = w2.astype(np.float64)
    for b in range(g):
        s = np.flatnonzero(in_blk == b)
        rows = np.flatnonzero(out_blk == b)
        k = len(s)
        a = np.empty((k + 1, k + 1))
        a[:k, :k] = sigma[np.ix_(s, s)]
        a[:k, k] = a[k, :k] = mu[s]
        a[k, k] = 1.0
        lam = ridge * max(float(np.trace(a)) / (k + 1), 1e-30)
        rhs = np.empty((k + 1, len(rows)))
        rhs[:k] = sigma[s] @ w64[rows].T
        rhs[k] = w64[rows] @ mu
        sol = np.linalg.solve(a + lam * np.eye(k + 1), rhs)
        w_hat[np.ix_(rows, s)] = sol[:k].T
        delta[rows] = sol[k]
    return w_hat, delta


def output_error(w2, w_hat, delta, stats):
    """‖(W x + b) − (Ŵ x + b + δ)‖/‖W x‖ over the calibration inputs (from Σ, μ)."""
    if stats is None:
        return None
    sigma, mu = stats
    d = w2.astype(np.float64) - w_hat
    num = np.einsum("ij,jk,ik->", d, sigma, d) - 2 * float(delta @ (d @ mu)) + float(delta @ delta)
    w64 = w2.astype(np.float64)
    den = np.einsum("ij,jk,ik->", w64, sigma, w64)
    return math.sqrt(max(num, 0.0) / den) if den > 0 else 0.0


def input_stats(act: np.ndarray, max_positions: int = 50000, seed: int = 0):
    """(Σ, μ) of the channels of N×C×H×W activations."""
    x = np.asarray(act, np.float32)
    p = x.transpose(0, 2, 3, 1).reshape(-1, x.shape[1]).astype(np.float64)
    if len(p) > max_positions:
        p = p[np.random.default_rng(seed).choice(len(p), max_positions, replace=False)]
    return p.T @ p / len(p), p.mean(0)


# ---------------------------------------------------------------------------------- layer choice

def fire_roles(mod) -> dict:
    """{layer: role} for 1×1 convs from the networkx layer graph: ``squeeze`` (feeds several convs),
    ``expand1x1`` (feeds a concat), ``pointwise`` otherwise."""
    from ..layers import layer_graph

    g = layer_graph(mod)
    roles = {}
    for n in g.nodes:
        lay = g.nodes[n]["layer"]
        if lay.op != "relax.nn.conv2d" or lay.attrs.get("kernel") != [1, 1]:
            continue
        succ = [g.nodes[s]["layer"].op for s in g.successors(n)]
        if len(succ) >= 2 and all(s == "relax.nn.conv2d" for s in succ):
            roles[n] = "squeeze"
        elif succ and all(s == "relax.concat" for s in succ):
            roles[n] = "expand1x1"
        else:
            roles[n] = "pointwise"
    return roles


def select_layers(mod, names) -> list[str]:
    """1×1 dense convs named (or selected by role ``squeeze`` / ``expand1x1`` / ``pointwise`` /
    ``all``) in ``names``; all 1×1 dense convs when ``names`` is empty."""
    roles = fire_roles(mod)
    ir = ChannelIR(mod)
    convs = [n for n in ir.order if ir.op.get(n) == "relax.nn.conv2d"]
    if not names:
        return [n for n in convs if n in roles]
    out = []
    for nm in names:
        if nm in ("squeeze", "expand1x1", "pointwise"):
            out.extend(n for n in convs if roles.get(n) == nm)
        elif nm == "all":
            out.extend(n for n in convs if n in roles)
        elif nm in ir.bindings and ir.op.get(nm) == "relax.nn.conv2d":
            w = ir.value(nm).args[1]
            k = [int(d) for d in list(w.ty.shape)[2:]]
            if k != [1, 1]:
                raise SqccError(f"--pass shuffle: layer {nm} is a {'×'.join(map(str, k))} conv; "
                                f"shuffle groups 1×1 convs")
            out.append(nm)
        else:
            known = ", ".join(convs[:8]) + (" …" if len(convs) > 8 else "")
            raise SqccError(f"--pass shuffle: layers={nm}: no conv layer of that name (convs: {known}; "
                            f"or squeeze, expand1x1, pointwise, all)")
    seen = set()
    return [n for n in out if not (n in seen or seen.add(n))]


# ---------------------------------------------------------------------------------- rewriting

def permute_layer(mod, layer, in_perm=None, out_perm=None, weight=None, groups=1, delta=None,
                  fold=True):
    """Replace 1×1 conv ``layer`` by a ``groups``-group conv whose input is ``x[:, in_perm]`` and whose
    output is ``y[:, out_perm]`` of the original, with weight ``weight`` (already in that order,
    shape N × C/groups × 1 × 1; default: the layer's own weight permuted, groups=1) and bias correction
    ``delta`` (original output order). Permutations are folded into neighbours when ``fold`` and
    possible, otherwise emitted as gathers. Returns (mod, info dict)."""
    mod = uniquify_names(mod)
    ir = ChannelIR(mod)
    if layer not in ir.bindings or ir.op.get(layer) != "relax.nn.conv2d":
        raise SqccError(f"no conv layer named {layer}")
    val = ir.value(layer)
    w = val.args[1].value.numpy()
    n, c = w.shape[0], int(val.args[0].ty.shape[1])
    pi = np.arange(c) if in_perm is None else np.asarray(in_perm)
    sigma = np.arange(n) if out_perm is None else np.asarray(out_perm)
    if weight is None:
        weight = w[sigma][:, pi]
    info = {"input": "identity", "output": "identity", "absorbed": []}
    plan = Plan()
    fold = fold and not ir.dup
    in_fold = not np.array_equal(pi, np.arange(c)) and _fold_input(ir, val.args[0].name, pi, layer, fold, plan, info)
    delta = _fold_bias_correction(ir, layer, n, delta, plan)
    out_fold = not np.array_equal(sigma, np.arange(n)) and _fold_output(ir, layer, sigma, fold, plan, info)
    emit = _grouped_conv(val, layer, pi, sigma, weight, groups, delta, in_fold, out_fold)
    out = apply_plan(mod, plan, replace={layer: emit})
    info["input_perms"] = plan.input_perms
    return out, info


def _fold_input(ir, x_name, pi, layer, fold, plan, info) -> bool:
    """Fold the input permutation into the producers upstream; False (a gather) where it cannot."""
    try:
        if not fold:
            raise NoFold("folding disabled")
        p, root = plan_up(ir, x_name, pi, layer)
    except NoFold as e:
        info["input"] = f"gather ({e})"
        return False
    plan.merge(p)
    info["input"] = f"folded into {root}"
    info["absorbed"] += p.absorbed
    return True


def _fold_output(ir, layer, sigma, fold, plan, info) -> bool:
    """Fold the output permutation into the consumers downstream; False (a gather) where it cannot."""
    try:
        if not fold:
            raise NoFold("folding disabled")
        p = Plan()
        plan_down(ir, layer, sigma, p)
    except NoFold as e:
        info["output"] = f"gather ({e})"
        return False
    plan.merge(p)
    info["output"] = "folded into " + ", ".join(p.absorbed)
    info["absorbed"] += p.absorbed
    return True


def _fold_bias_correction(ir, layer, n, delta, plan):
    """Add ``delta`` to the constant bias right after the conv (its only user), if there is one;
    returns what is left to add (None when folded)."""
    users = ir.users.get(layer, [])
    if delta is None or not np.any(delta != 0) or len(users) != 1 or ir.op.get(users[0][0]) != "relax.add":
        return delta
    cc = ir.channel_const_axis(users[0][0], n)
    if cc is None or cc[1] is None:
        return delta
    d = np.asarray(delta, np.float32)
    plan.consts.setdefault(users[0][0], []).insert(0, (cc[0], lambda a, d=d, ax=cc[1]: a + d.reshape(
        [-1 if i == ax else 1 for i in range(a.ndim)]).astype(a.dtype)))
    return None


def _grouped_conv(val, layer, pi, sigma, weight, groups, delta, in_fold, out_fold):
    """The replacement's emitter: gather in (unless folded), the grouped conv, gather out (unless
    folded), the bias correction not folded into a bias."""
    from tvm import relax

    ident_in, ident_out = np.array_equal(pi, np.arange(len(pi))), np.array_equal(sigma, np.arange(len(sigma)))
    inv_sigma = np.argsort(sigma)

    def emit(builder, _ir, visit):
        x = visit(val.args[0])
        if not ident_in and not in_fold:
            x = take_channels(builder, x, pi, f"{layer}__perm_in")
        a = val.attrs
        y = relax.op.nn.conv2d(x, relax.const(np.ascontiguousarray(weight, dtype=np.float32)),
                               strides=[int(s) for s in a.strides], padding=[int(q) for q in a.padding],
                               dilation=[int(d) for d in a.dilation], groups=int(groups))
        if not ident_out and not out_fold:
            y = relax.op.take(builder.emit(y, f"{layer}__grouped"),
                              relax.const(inv_sigma.astype("int64")), axis=1, mode="clip")
        if delta is not None and np.any(delta != 0):
            d = np.asarray(delta, np.float32)[sigma if out_fold else np.arange(len(sigma))]
            y = relax.op.add(builder.emit(y, f"{layer}__nobias"), relax.const(d.reshape(1, -1, 1, 1)))
        return y

    return emit


# ------------------------------------------------------------------------------------------ pass

FITS = ("auto", "data", "weight")


def check_groups(groups):
    if not isinstance(groups, (int, np.integer)) or isinstance(groups, bool) or groups < 1:
        raise SqccError(f"--pass shuffle: groups={groups}: must be a positive integer")


@register("shuffle", "group 1×1 convs (ShuffleNet): balanced bipartite channel partition keeping the most "
          "(output) energy on g diagonal blocks; permutations folded into neighbours or gathered",
          params=[Param("groups", int, "number of groups g (must divide the layer's input and output "
                        "channels)"),
                  Param("layers", list, "layers to group: names, or squeeze / expand1x1 / pointwise / "
                        "all (default: every dense 1×1 conv)"),
                  Param("fit", str, "auto (data-aware when calibrated) | data | weight", FITS),
                  Param("fold", bool, "fold permutations into neighbouring weights where exact")])
@tvm.transform.module_pass(opt_level=0, name="sqcc.shuffle")
class Shuffle:
    """The ``shuffle`` pass (see the module docstring)."""

    technique = "shuffle"

    def __init__(self, context=None, groups=2, layers=(), fit="auto", fold=True):
        check_groups(groups)
        if fit not in FITS:
            raise SqccError(f"--pass shuffle: fit={fit}: expected one of {', '.join(FITS)}")
        self.context = context if context is not None else PassContext()
        self.groups = int(groups)
        self.layers = list(layers or [])
        self.fit = fit
        self.fold = bool(fold)

    def _stats(self, name, c, act_perm, for_fit=True):
        if self.fit == "weight" and for_fit:
            return None
        act = self.context.inputs_of(name)
        if act is None or np.asarray(act).ndim != 4 or np.asarray(act).shape[1] != c:
            return None
        cache = self.context.extra.setdefault("shuffle_stats", {})
        if name not in cache:
            cache[name] = input_stats(act)
        sigma, mu = cache[name]
        p = act_perm.get(name)
        if p is not None:  # this layer's input was permuted by an earlier fold
            sigma, mu = sigma[np.ix_(p, p)], mu[p]
        return sigma, mu

    def transform_module(self, mod, ctx):
        names = select_layers(mod, self.layers)
        g = self.groups
        ir = ChannelIR(mod)
        from ..layers import is_const

        names = [nm for nm in names if is_const(ir.value(nm).args[1])]  # constant weights only
        for nm in names:  # validate everything before rewriting anything
            v = ir.value(nm)
            n, c = int(v.args[1].ty.shape[0]), int(v.args[0].ty.shape[1])
            if n % g or c % g:
                raise SqccError(f"--pass shuffle: groups={g} does not divide layer {nm}'s channels "
                                f"({c} in, {n} out); choose a common divisor or name other layers "
                                f"with layers=")
        act_perm = self.context.extra.setdefault("act_perm", {})
        for nm in names:
            mod = self._one(mod, nm, act_perm)
        return mod

    def _one(self, mod, nm, act_perm):
        g = self.groups
        ir = ChannelIR(mod)
        v = ir.value(nm)
        w = v.args[1].value.numpy()
        n, c = w.shape[0], int(v.args[0].ty.shape[1])
        macs = int(np.prod([int(d) for d in ir.bindings[nm].var.ty.shape])) * c
        if int(v.attrs.groups) != 1:
            self.context.records.append(LayerRecord(nm, "shuffle", False, f"already grouped "
                                                    f"(groups={int(v.attrs.groups)})", w.size, w.size,
                                                    macs, macs))
            return mod
        w2 = w.reshape(n, c).astype(np.float64)
        stats = self._stats(nm, c, act_perm)
        e = w2 ** 2
        if stats is not None:
            e = e * np.clip(np.diag(stats[0]), 0, None)[None, :]
        in_blk, out_blk = balanced_partition(e, g)
        pi, sigma = block_perms(in_blk, out_blk, g)
        w_hat, delta = fit_blocks(w2, in_blk, out_blk, stats)
        cg, ng = c // g, n // g
        wg = np.empty((n, cg), np.float32)
        for b in range(g):
            wg[b * ng:(b + 1) * ng] = w_hat[np.ix_(sigma[b * ng:(b + 1) * ng], pi[b * cg:(b + 1) * cg])]
        tot = float((w2 ** 2).sum())
        kept_w = float((np.where(out_blk[:, None] == in_blk[None, :], w2, 0) ** 2).sum()) / (tot or 1)
        werr = float(np.linalg.norm(w2 - w_hat) / (np.linalg.norm(w2) or 1))
        # the output error is reported whenever calibration activations exist (also for fit=weight)
        oerr = output_error(w2, w_hat, delta, stats if stats is not None else
                            self._stats(nm, c, act_perm, for_fit=False))
        new, info = permute_layer(mod, nm, pi, sigma, wg[:, :, None, None], g,
                                  delta if stats is not None else None, self.fold)
        for layer, p in info["input_perms"].items():  # later layers see permuted inputs
            q = act_perm.get(layer)
            act_perm[layer] = p if q is None else q[p]
        mode = "data-aware (output energy, LS refit)" if stats is not None else "weights only"
        if self.fit == "data" and stats is None:
            mode = "weights only (no calibration activations for this layer)"
        detail = (f"groups {g}; kept {100 * kept_w:.1f}% of weight energy, dropped {100 * (1 - kept_w):.1f}%; "
                  f"{mode}; input perm: {info['input']}; output perm: {info['output']}")
        self.context.records.append(LayerRecord(nm, "shuffle", True, detail, int(w.size), int(wg.size),
                                                macs, macs // g, werr, oerr))
        self.context.extra.setdefault("shuffle", {})[nm] = {
            "groups": g, "kept_weight_energy": kept_w, "weight_error": werr, "output_error": oerr,
            "input": info["input"], "output": info["output"]}
        return new
