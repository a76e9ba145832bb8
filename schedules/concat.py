"""Concat elimination: the producers of a concatenate write straight into their slice of its output.

SqueezeNet's fire modules end in ``concat(relu(conv1x1(s)), relu(conv3x3(s)))``. Built as TVM fuses
them, each expand conv writes its own tensor and a separate ``concatenate`` kernel copies both into
the output — one more kernel launch and a full read + write of the fire output. Here, after the
kernels are scheduled, each such concat and its producers become one kernel: producer *i*'s body is
kept as scheduled (tuned or default), only its output buffer is replaced by a strided view of the
concat output, offset by the channels before it::

    out[n, h, w, c0 + c]  =  producer_i(...)[n, h, w, c]      (NHWC: view strides (H·W·C, W·C, C, 1))

so the copy disappears and the bytes are written once. Conditions (otherwise the concat is left
alone): the concatenate kernel is a plain one (legalized ``concatenate``, nothing fused into it);
every input is the single output of a ``call_tir`` used by nothing else, in the same dataflow block;
no producer PrimFunc appears twice in one concat (its loop variables would be defined twice).

For CPU targets (llvm); GPU kernels keep their own launches.
"""
from __future__ import annotations

import tvm
from tvm import relax, tirx
from tvm.s_tir import stmt as sstmt


def _replace_var(stmt, old, new):
    """``stmt`` with the buffer variable ``old`` replaced by ``new`` everywhere (loads, stores,
    block read/write regions). Only that one variable: every other buffer keeps its identity."""
    import tvm_ffi

    return tvm_ffi.structural_map(stmt, [(tirx.Var, lambda v: new if v.same_as(old) else v)],
                                  order="post")


def _shape(buf) -> list[int]:
    return [int(s) for s in buf.ty.shape]


def _concat_axis(func: tirx.PrimFunc) -> int | None:
    """The axis of a plain legalized concatenate PrimFunc, or None when it is anything else."""
    params = list(func.params)
    if len(params) < 3:
        return None
    try:
        shapes = [_shape(p) for p in params]
    except (TypeError, ValueError):  # symbolic shapes
        return None
    out, ins = shapes[-1], shapes[:-1]
    if any(len(s) != len(out) for s in ins):
        return None
    diff = [a for a in range(len(out)) if any(s[a] != out[a] for s in ins)]
    if len(diff) != 1 or sum(s[diff[0]] for s in ins) != out[diff[0]]:
        return None
    axis = diff[0]
    if any(p.ty.dtype != params[-1].ty.dtype for p in params):
        return None
    # only the concat's own blocks: nothing else was fused into this kernel
    names = []
    _walk_blocks(func.body, names)
    return axis if all(n == "root" or n.startswith("T_concat") for n in names) else None


def _walk_blocks(stmt, names):
    import tvm_ffi

    def visit(node):
        names.append(node.name_hint)
        return node
    tvm_ffi.structural_map(stmt, [(sstmt.SBlock, visit)], order="post")


def _merge(producers: list[tirx.PrimFunc], names: list[str], axis: int, out_buf) -> tirx.PrimFunc:
    """One PrimFunc: every producer's scheduled body, writing into its slice of ``out_buf``."""
    out_shape = _shape(out_buf)
    strides, acc = [], 1
    for d in reversed(out_shape):
        strides.append(acc)
        acc *= d
    strides = strides[::-1]
    data = tirx.buffer_data(out_buf)
    params, body, offset = [], [], 0
    for func, name in zip(producers, names):
        o = func.params[-1]
        shape = _shape(o)
        dt = o.ty.shape[0].ty if hasattr(o.ty.shape[0], "ty") else "int64"
        view = tirx.decl_buffer(
            o.ty.shape, o.ty.dtype, o.name,
            strides=[tirx.const(s, dt) for s in strides],
            elem_offset=tirx.const(offset * strides[axis], dt), layout=None)
        offset += shape[axis]
        root = func.body.block if isinstance(func.body, sstmt.SBlockRealize) else None
        if root is None or root.iter_vars or root.init is not None or root.match_buffers:
            return None
        # each producer keeps its root block (and the buffers it allocates) as an inner block
        inner = sstmt.SBlock([], [], [], f"{name}_root",
                             _replace_var(root.body, o, view), alloc_buffers=root.alloc_buffers)
        body += [tirx.DeclBuffer(view, data=data), sstmt.SBlockRealize([], True, inner)]
        params += list(func.params[:-1])
    block = sstmt.SBlock([], [], [], "root", tirx.SeqStmt(body))
    realize = sstmt.SBlockRealize([], True, block)
    merged = tirx.PrimFunc(params + [out_buf], realize)
    attrs = {"tirx.is_scheduled": True, "tirx.noalias": True,
             "sqcc.schedule_rule": "concat:" + "+".join(
                 str(f.attrs.get("sqcc.schedule_rule", "?")) for f in producers)}
    for k, v in attrs.items():
        merged = merged.with_attr(k, v)
    return merged


@tvm.transform.module_pass(opt_level=0, name="sqcc.EliminateConcat")
class EliminateConcat:
    """Fuse each plain concatenate with its producer kernels (they write into their slices)."""

    def __init__(self):
        self.merged = 0

    def transform_module(self, mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        main = mod["main"]
        body = main.body
        if not isinstance(body, relax.SeqExpr):
            return mod
        call_tir = tvm.ir.Op.get("relax.call_tir")
        uses: dict = {}

        def count(e):
            if isinstance(e, relax.Var):
                uses[e] = uses.get(e, 0) + 1
        for blk in body.blocks:  # uses only: the values bound, and the function's result
            for b in blk.bindings:
                relax.analysis.post_order_visit(b.value, count)
        relax.analysis.post_order_visit(body.body, count)
        bb = relax.BlockBuilder(mod)  # gives the new kernels typed GlobalVars
        new_blocks, changed = [], False
        for blk in body.blocks:
            # single-tensor call_tir results (no symbolic-shape tir_vars argument)
            producer = {b.var: b for b in blk.bindings
                        if isinstance(b.value, relax.Call) and b.value.op.same_as(call_tir)
                        and len(b.value.args) == 2 and isinstance(b.value.ty, relax.TensorType)}
            drop, replace = set(), {}
            for b in blk.bindings:
                v = b.value
                if not (isinstance(v, relax.Call) and v.op.same_as(call_tir) and len(v.args) == 2):
                    continue
                cat_func = mod[v.args[0]]
                if not isinstance(cat_func, tirx.PrimFunc) or \
                        "concatenate" not in v.args[0].name_hint:
                    continue
                axis = _concat_axis(cat_func)
                ins = list(v.args[1].fields) if hasattr(v.args[1], "fields") else None
                if axis is None or not ins or not all(
                        isinstance(x, relax.Var) and x in producer and uses.get(x, 0) == 1
                        for x in ins):
                    continue
                gvs = [producer[x].value.args[0] for x in ins]
                if len({gv.name_hint for gv in gvs}) != len(gvs) or not all(
                        isinstance(mod[gv], tirx.PrimFunc) and
                        len(mod[gv].params) == len(producer[x].value.args[1].fields) + 1
                        for gv, x in zip(gvs, ins)):
                    continue
                merged = _merge([mod[gv] for gv in gvs], [gv.name_hint for gv in gvs], axis,
                                cat_func.params[-1])
                if merged is None:
                    continue
                name = "concat_" + "_".join(gv.name_hint for gv in gvs)
                gv_new = bb.add_func(merged.with_attr("global_symbol", name), name)
                args = [a for x in ins for a in producer[x].value.args[1].fields]
                replace[b.var] = relax.VarBinding(b.var, relax.call_tir(
                    gv_new, relax.Tuple(args), v.ty))
                drop.update(ins)
                self.merged += 1
            if not replace:
                new_blocks.append(blk)
                continue
            changed = True
            bindings = [replace.get(b.var, b) for b in blk.bindings if b.var not in drop]
            new_blocks.append(relax.DataflowBlock(bindings) if isinstance(blk, relax.DataflowBlock)
                              else relax.BindingBlock(bindings))
        if not changed:
            return mod
        mod = bb.get()
        mod["main"] = relax.Function(main.params, relax.SeqExpr(new_blocks, body.body),
                                     main.ret_ty, main.is_pure, main.attrs, main.span)
        # the producers and concats now called by nobody
        entries = [gv.name_hint for gv, f in mod.functions_items() if isinstance(f, relax.Function)]
        return relax.transform.DeadCodeElimination(entries)(mod)
