"""Kernels: every fused PrimFunc built with TVM's ``c`` target, its C source exported.

Kernels are scheduled (:func:`inline_schedule`) so that a fused conv keeps its int32 accumulator in
a local (no workspace) and writes 8-bit outputs. The few TVM runtime symbols the generated C needs
are stubbed by ``model.c`` (see ``templates/runtime_stubs.c``); what workspace a kernel still asks
``TVMBackendAllocWorkspace`` for is read from its source and becomes a planned arena slot.
"""
from __future__ import annotations

import re

from sqcc.errors import SqccError, one_line, text_of

from .arena import align_up


def inline_schedule(func):
    """Cheap schedule so fused kernels need little workspace: inline injective producers (pad_temp),
    and compute elementwise epilogues (bias, relu) right after each output element of a reduction."""
    from tvm import s_tir

    try:
        sch = s_tir.Schedule(func)
        root = sch.get_sblock("root")
        _inline_producers(sch, root)
        _epilogues_after_reductions(sch, root)
        return sch.mod["main"]
    except Exception:  # noqa: BLE001 - scheduling is an optimisation only
        return func


def _inline_producers(sch, root):
    for _ in range(len(sch.get_child_blocks(root)) + 1):  # until nothing more inlines
        changed = False
        outs = {sch.get(b).name_hint for b in sch.get_output_blocks(root)}
        for blk in sch.get_child_blocks(root):
            name = sch.get(blk).name_hint
            if name in outs:
                continue
            try:
                sch.compute_inline(blk)
                changed = True
                break
            except Exception:  # noqa: BLE001 - reductions etc. cannot be inlined
                pass
        if not changed:
            break


def _epilogues_after_reductions(sch, root):
    for blk in sch.get_child_blocks(root):
        b = sch.get(blk)
        red = [iv for iv in b.iter_vars if iv.iter_type == 2]  # CommReduce
        if not red:
            continue
        cons = sch.get_consumers(blk)
        if len(cons) != 1:
            continue
        nsp = len(b.iter_vars) - len(red)
        loops = sch.get_loops(blk)
        if nsp < 1 or len(loops) < nsp:
            continue
        try:
            sch.reverse_compute_at(cons[0], loops[nsp - 1])
        except Exception:  # noqa: BLE001
            pass


_C_INTRINSICS_REGISTERED = False


def register_c_intrinsics():
    """TVM 0.27's ``c`` target has no lowering rule for some math intrinsics that LLVM lowers
    itself (``tirx.fabs``: an integer TFLite average pool's round-half-away-from-zero emits it), and
    codegen stops with "Unresolved call". Lower them to the C library (fabsf/fabs), as the llvm
    target's rule does with its intrinsic. Registered for target ``c`` only."""
    global _C_INTRINSICS_REGISTERED
    if _C_INTRINSICS_REGISTERED:
        return
    import tvm
    from tvm.tirx.op import register_intrin_lowering

    def libm(name32, name64):
        def lower(op):
            dt = str(getattr(op, "dtype", None) or op.ty)
            if dt not in ("float32", "float64"):
                return op  # no rule: codegen reports it (turned into an SqccError by the caller)
            return tvm.tirx.call_pure_extern(dt, name32 if dt == "float32" else name64, *op.args)
        return lower

    for op, (n32, n64) in {"tirx.fabs": ("fabsf", "fabs")}.items():
        try:
            register_intrin_lowering(op, target="c", f=libm(n32, n64), level=10)
        except Exception:  # noqa: BLE001 -- already registered (module reloaded)
            pass
    _C_INTRINSICS_REGISTERED = True


def build_kernels(mod, schedule: bool = True):
    """Build every PrimFunc with target c; returns (C source, {kernel: workspace bytes},
    {kernel: the PrimFunc as built})."""
    import tvm

    register_c_intrinsics()
    funcs = {}
    for gv, f in mod.functions.items():
        if isinstance(f, tvm.tirx.PrimFunc):
            if schedule:
                f = inline_schedule(f.with_attr("global_symbol", gv.name_hint))
            funcs[gv] = f.with_attr("global_symbol", gv.name_hint)
    tir = tvm.IRModule(funcs)
    try:
        with tvm.transform.PassContext(opt_level=3, config={"tirx.disable_assert": True}):
            lib = tvm.tirx.build(tir, target="c")
    except Exception as e:  # noqa: BLE001 -- a TVM codegen gap: name the kernel and the operation
        raise SqccError(codegen_error(e, funcs)) from e
    src = lib.inspect_source()
    ws = {gv.name_hint: _workspace_bytes(src, gv.name_hint) for gv in funcs}
    return src, ws, {gv.name_hint: f for gv, f in funcs.items()}


def _workspace_bytes(src: str, name: str) -> int:
    """The workspace kernel ``name`` allocates (sum of its TVMBackendAllocWorkspace calls, each aligned)."""
    m = re.search(r"TVM_DLL int32_t __tvm_ffi_%s\(void\* self_handle[^)]*\) \{" % re.escape(name), src)
    if m is None:
        raise SqccError(f"micro: TVM's c codegen emitted no function for kernel {name}")
    nxt = re.search(r"\nTVM_DLL int32_t __tvm_ffi_\w+\(void\* self_handle[^)]*\) \{", src[m.end():])
    body = src[m.end(): m.end() + nxt.start()] if nxt else src[m.end():]
    total = 0
    for call in re.finditer(r"TVMBackendAllocWorkspace\(([^;]*)\);", body):
        sz = re.search(r"\(uint64_t\)(\d+)ULL", call.group(1))
        if sz is None:
            raise SqccError(f"micro: kernel {name} allocates a workspace of non-constant size")
        total += align_up(int(sz.group(1)))
    return total


def codegen_error(e: Exception, funcs: dict) -> str:
    """A readable message for a failure of TVM's c codegen: which intrinsic, in which kernels."""
    text = text_of(e)
    m = re.search(r'name="([\w.]+)"', text)
    if m is not None and "Unresolved call" in text:
        op = m.group(1)
        short = op.split(".")[-1]
        users = [gv.name_hint for gv, f in funcs.items() if re.search(r"\b%s\(" % re.escape(short), str(f))]
        where = f" (used by kernel{'s' if len(users) > 1 else ''} {', '.join(users[:3])}" \
                f"{' …' if len(users) > 3 else ''})" if users else ""
        return (f"micro: TVM's C code generator cannot lower the operation {op}{where}; the micro "
                "target builds kernels with TVM's 'c' target, which has no rule for it. This is a gap "
                "in sqcc's micro target, not a problem with the model: please report it")
    return f"micro: TVM's C code generator failed: {one_line(e)[:300]}"
