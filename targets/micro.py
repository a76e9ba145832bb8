"""Cortex-M microcontroller target (issue 7): no microTVM in TVM 0.27, so sqcc builds its own.

Kernels come from TVM's ``c`` target (the Relax module is legalized and fused, its PrimFuncs are built
with target ``c`` and their C source exported). sqcc generates everything else:

* ``model.c``   -- a driver that calls the kernels in topological order over ONE statically planned
                    arena (greedy placement over lifetime intervals, workspaces of fused kernels
                    included; a kernel's output may be written over an input it finishes reading
                    where its TIR access order allows -- :func:`_overlap_limit`),
                    weights as ``const`` data in flash (``weights.bin`` pulled in by ``.incbin``), no
                    heap, no TVM runtime (the three runtime symbols the kernels need are stubbed:
                    ``TVMBackendAllocWorkspace`` / ``TVMBackendFreeWorkspace`` hand out the planned
                    workspace slot, ``TVMFFIErrorSetRaisedFromCStrParts`` records the failure);
* ``main.c``    -- vector table, reset handler, ARM semihosting (no newlib stdio): reads the inputs
                    from a host file, runs the model once, writes the outputs to a host file, and
                    prints the instruction count (SysTick under ``qemu -icount shift=0``, calibrated
                    against a loop of known length) and the stack high-water mark;
* ``link.ld``, ``Makefile`` and the ELF, built with ``arm-none-eabi-gcc``.

Kernels are scheduled so that a fused conv keeps its int32 accumulator in a local (no workspace)
and writes 8-bit outputs; int8 TFLite models arrive with integer fixed-point requantisation
(``passes/qdq_fold.py``, ``requant="fixed"``), so no int32 or float tensor is materialised between
kernels. The stack is sized from the measured high-water mark (+512 B) after a first run.
RAM = .data + .bss + arena (inputs, outputs, activations, workspaces) + stack; ``micro.json``
has the plan, the arena's fullest step (``arena_peak``) and ``ram_breakdown``.

The cost figure is **instructions executed by the inference call**, measured under
``qemu-system-arm -icount shift=0`` (every instruction advances virtual time by 1 ns; SysTick counts
processor-clock ticks of that virtual time; the count is converted to instructions with a calibration
loop of 2,000,000 instructions run just before). QEMU is not cycle-accurate: this is an instruction
count, deterministic from run to run, not a cycle count of real silicon.

Public API: :func:`compile_micro`, :func:`run_micro`, :func:`bench_micro`, :func:`spec` (the
TargetSpec for ``micro:PRESET``), :func:`is_micro_build`, :data:`PRESETS`, :func:`get_preset`,
:func:`plan_arena`, :func:`check_plan`, :func:`check_toolchain`, :func:`integer_reference`.

Debian packages: gcc-arm-none-eabi (brings binutils-arm-none-eabi), libnewlib-arm-none-eabi,
qemu-system-arm.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field

import numpy as np

from sqcc.errors import SqccError

KiB = 1024
MiB = 1024 * 1024
ALIGN = 16
DEFAULT_STACK = 16 * KiB  # first link (and the budget check); then the measured need + STACK_MARGIN
STACK_MARGIN = 512
CALIB_ITERS = 1_000_000  # calibration loop: 2 instructions per iteration (subs + bne)
QEMU_TIMEOUT_S = 900

# --------------------------------------------------------------------------------------------------
# Presets. Memory sizes are those of the boards (Arm MPS2/MPS3 FPGA images) that qemu emulates.
# MPS2 boards have no flash: code runs from 4 MB ZBT SSRAM1 at 0x0 (the "flash" of these images) and
# data lives in 4 MB ZBT SSRAM2/3 at 0x20000000. MPS3 AN547 (SSE-300): 8 MB QSPI flash (XIP), 512 KB
# ITCM (vector table), 4 MB internal SRAM (ISRAM0/1) for data; the secure aliases are used because
# the core resets in the Secure state.
# --------------------------------------------------------------------------------------------------
PRESETS = {
    "cortex-m4": {
        "cpu": "Cortex-M4F",
        "board": "Arm MPS2+ AN386",
        "machine": "mps2-an386",
        "cflags": ["-mcpu=cortex-m4", "-mthumb", "-mfpu=fpv4-sp-d16", "-mfloat-abi=hard"],
        "vectors": None,  # vector table at the start of flash
        "flash": {"name": "ZBT SSRAM1 (code)", "origin": 0x00000000, "size": 4 * MiB},
        "ram": {"name": "ZBT SSRAM2/3 (data)", "origin": 0x20000000, "size": 4 * MiB},
        "clock_hz": 25_000_000,
    },
    "cortex-m7": {
        "cpu": "Cortex-M7 (double-precision FPU)",
        "board": "Arm MPS2+ AN500",
        "machine": "mps2-an500",
        "cflags": ["-mcpu=cortex-m7", "-mthumb", "-mfpu=fpv5-d16", "-mfloat-abi=hard"],
        "vectors": None,
        "flash": {"name": "ZBT SSRAM1 (code)", "origin": 0x00000000, "size": 4 * MiB},
        "ram": {"name": "ZBT SSRAM2/3 (data)", "origin": 0x20000000, "size": 4 * MiB},
        "clock_hz": 25_000_000,
    },
    "cortex-m55": {
        "cpu": "Cortex-M55 (Helium/MVE, FPU)",
        "board": "Arm MPS3 AN547 (Corstone SSE-300)",
        "machine": "mps3-an547",
        "cflags": ["-mcpu=cortex-m55", "-mthumb", "-mfpu=auto", "-mfloat-abi=hard"],
        "vectors": {"name": "ITCM (vector table)", "origin": 0x10000000, "size": 512 * KiB},
        "flash": {"name": "QSPI flash (XIP)", "origin": 0x38000000, "size": 8 * MiB},
        "ram": {"name": "ISRAM0/1", "origin": 0x31000000, "size": 4 * MiB},
        "clock_hz": 32_000_000,
    },
}

APT_PACKAGES = {
    "arm-none-eabi-gcc": "gcc-arm-none-eabi",
    "arm-none-eabi-size": "binutils-arm-none-eabi",
    "newlib": "libnewlib-arm-none-eabi",
    "qemu-system-arm": "qemu-system-arm",
}


def get_preset(preset: str) -> dict:
    name = preset.split(":", 1)[1] if preset.startswith("micro:") else preset
    if name not in PRESETS:
        raise SqccError(f"unknown micro preset '{preset}': choose one of {', '.join(sorted(PRESETS))}")
    p = dict(PRESETS[name])
    p["name"] = name
    return p


# --------------------------------------------------------------------------------------------------
# Toolchain
# --------------------------------------------------------------------------------------------------
def _which(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        pkg = APT_PACKAGES.get(tool, tool)
        raise SqccError(f"{tool} not found on PATH: install the Debian package {pkg} "
                        f"(apt-get install -y {pkg})")
    return path


def check_toolchain(preset: dict | None = None, need_qemu: bool = False) -> dict:
    """Find arm-none-eabi-gcc (+ newlib for the preset's multilib) and, if asked, qemu-system-arm."""
    tools = {"gcc": _which("arm-none-eabi-gcc")}
    size = shutil.which("arm-none-eabi-size")
    if size is None:
        raise SqccError("arm-none-eabi-size not found on PATH: install the Debian package "
                        "binutils-arm-none-eabi (comes with gcc-arm-none-eabi)")
    tools["size"] = size
    cflags = (preset or PRESETS["cortex-m4"])["cflags"]
    try:
        libc = subprocess.run([tools["gcc"], *cflags, "-print-file-name=libc.a"], capture_output=True,
                              text=True, timeout=60).stdout.strip()
    except (OSError, subprocess.SubprocessError) as e:
        raise SqccError(f"arm-none-eabi-gcc does not run ({e}): reinstall gcc-arm-none-eabi") from None
    if not libc or not os.path.isabs(libc) or not os.path.exists(libc):
        raise SqccError("newlib for arm-none-eabi not found (arm-none-eabi-gcc cannot find libc.a): "
                        "install the Debian package libnewlib-arm-none-eabi")
    if need_qemu:
        tools["qemu"] = _which("qemu-system-arm")
    return tools


# --------------------------------------------------------------------------------------------------
# Lowering: Relax -> fused PrimFuncs + a linear list of kernel calls
# --------------------------------------------------------------------------------------------------
@dataclass
class Buf:
    name: str
    shape: tuple
    dtype: str
    nbytes: int
    kind: str  # "input" | "act" | "output" | "workspace" | "const"
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


def _nbytes(shape, dtype) -> int:
    return int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize if shape else \
        np.dtype(dtype).itemsize


def _relax_lower(mod):
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


def _CONST_TYPES():
    import tvm
    from tvm import relax
    return tuple(t for t in (getattr(tvm.ir, "GenericConst", None), getattr(relax, "Constant", None)) if t)


def _build_graph(mod) -> Graph:
    """Walk main's bindings (already lowered to call_tir) into a Graph of steps and buffers."""
    import tvm
    from tvm import relax

    g = Graph()
    if "main" not in [gv.name_hint for gv in mod.get_global_vars()]:
        raise SqccError("micro: the module has no 'main' function")
    main = mod["main"]
    env = {}  # relax Var -> buffer name, or tuple of names
    for p in main.params:
        shape, dtype = _static_shape(p.ty, f"input '{p.name}'")
        g.bufs[p.name] = Buf(p.name, shape, dtype, _nbytes(shape, dtype), "input", start=-1)
        g.inputs.append(p.name)
        env[p] = p.name
    const_ids = {}
    call_tir = tvm.ir.Op.get("relax.call_tir")
    reshape = tvm.ir.Op.get("relax.reshape")

    def const_buf(c):
        key = c.__hash__()
        for k, name in const_ids.items():
            if k == key:
                return name
        arr = c.value.numpy() if hasattr(c, "value") else c.data.numpy()
        name = f"c{len(g.consts)}"
        g.bufs[name] = Buf(name, tuple(arr.shape), str(arr.dtype), arr.nbytes, "const")
        g.consts.append(name)
        g.const_data[name] = np.ascontiguousarray(arr)
        const_ids[key] = name
        return name

    def arg_name(a, where):
        if isinstance(a, _CONST_TYPES()):
            return const_buf(a)
        if isinstance(a, relax.Var) and a in env and isinstance(env[a], str):
            return env[a]
        raise SqccError(f"micro: unsupported argument {type(a).__name__} in {where}")

    body = main.body
    for block in body.blocks:
        for b in block.bindings:
            if not isinstance(b, relax.VarBinding):
                raise SqccError(f"micro: unsupported binding {type(b).__name__} for '{b.var.name}'")
            v = b.value
            if isinstance(v, relax.Call) and v.op.same_as(call_tir):
                gv = v.args[0]
                if len(v.args) > 2:
                    raise SqccError(f"micro: '{b.var.name}' calls {gv.name_hint} with symbolic "
                                    "shape arguments; the micro target needs static shapes")
                args = [arg_name(a, gv.name_hint) for a in v.args[1].fields]
                ty = b.var.ty
                outs = []
                if isinstance(ty, relax.TupleType):
                    for i, f in enumerate(ty.fields):
                        shape, dtype = _static_shape(f, f"'{b.var.name}'[{i}]")
                        name = f"{b.var.name}_{i}"
                        outs.append(name)
                        g.bufs[name] = Buf(name, shape, dtype, _nbytes(shape, dtype), "act")
                    env[b.var] = tuple(outs)
                else:
                    shape, dtype = _static_shape(ty, f"'{b.var.name}'")
                    name = b.var.name
                    while name in g.bufs:
                        name += "_"
                    outs.append(name)
                    g.bufs[name] = Buf(name, shape, dtype, _nbytes(shape, dtype), "act")
                    env[b.var] = name
                g.steps.append(Step(gv.name_hint, args + outs, n_out=len(outs)))
            elif isinstance(v, relax.Call) and v.op.same_as(reshape):
                base = arg_name(v.args[0], b.var.name)
                shape, dtype = _static_shape(b.var.ty, f"'{b.var.name}'")
                name = b.var.name
                while name in g.bufs:
                    name += "_"
                root = g.bufs[base].base or base
                g.bufs[name] = Buf(name, shape, dtype, _nbytes(shape, dtype), "view", base=root)
                env[b.var] = name
            elif isinstance(v, relax.Var) and v in env:
                env[b.var] = env[v]
            elif isinstance(v, relax.TupleGetItem) and isinstance(env.get(v.tuple_value), tuple):
                env[b.var] = env[v.tuple_value][v.index]
            elif isinstance(v, relax.Tuple):
                env[b.var] = tuple(arg_name(f, b.var.name) for f in v.fields)
            else:
                op = getattr(getattr(v, "op", None), "name", type(v).__name__)
                raise SqccError(f"micro: unsupported operation {op} at '{b.var.name}' after "
                                "legalization (only TIR kernels can run on the micro target)")
    ret = body.body
    if isinstance(ret, relax.Tuple):
        outs = [arg_name(f, "the return value") for f in ret.fields]
    else:
        r = env.get(ret) if isinstance(ret, relax.Var) else None
        outs = list(r) if isinstance(r, tuple) else [arg_name(ret, "the return value")]
    for o in outs:
        if g.bufs[o].kind == "view" and g.bufs[g.bufs[o].base].kind == "act":
            continue
        if g.bufs[o].kind != "act":
            raise SqccError(f"micro: model output '{o}' is a {g.bufs[o].kind}, not computed by a "
                            "kernel; not supported on the micro target")
        g.bufs[o].kind = "output"
    g.outputs = outs
    # lifetimes: a kernel's outputs are born at its step; every buffer lives to its last use
    n = len(g.steps)
    for i, s in enumerate(g.steps):
        for j, a in enumerate(s.args):
            if j >= len(s.args) - s.n_out:
                g.bufs[a].start = i
            g.bufs[a].end = max(g.bufs[a].end, i)
    for o in outs:
        g.bufs[o].end = n
    for b in g.bufs.values():  # a view keeps the bytes it reinterprets alive
        if b.kind == "view":
            root = g.bufs[b.base]
            root.end = max(root.end, b.end)
            if root.kind in ("act", "output") and b.start < root.start:
                b.start = root.start
    return g


def _inline_schedule(func):
    """Cheap schedule so fused kernels need little workspace: inline injective producers (pad_temp),
    and compute elementwise epilogues (bias, relu) right after each output element of a reduction."""
    import tvm
    from tvm import s_tir

    try:
        sch = s_tir.Schedule(func)
        root = sch.get_sblock("root")
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
        # epilogues after reductions
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
        return sch.mod["main"]
    except Exception:  # noqa: BLE001 - scheduling is an optimisation only
        return func


_C_INTRINSICS_REGISTERED = False


def _register_c_intrinsics():
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


def _build_kernels(mod, schedule: bool = True):
    """Build every PrimFunc with target c; returns (C source, {kernel: workspace bytes})."""
    import tvm

    _register_c_intrinsics()
    funcs = {}
    for gv, f in mod.functions.items():
        if isinstance(f, tvm.tirx.PrimFunc):
            if schedule:
                f = _inline_schedule(f.with_attr("global_symbol", gv.name_hint))
            funcs[gv] = f.with_attr("global_symbol", gv.name_hint)
    tir = tvm.IRModule(funcs)
    try:
        with tvm.transform.PassContext(opt_level=3, config={"tirx.disable_assert": True}):
            lib = tvm.tirx.build(tir, target="c")
    except Exception as e:  # noqa: BLE001 -- a TVM codegen gap: name the kernel and the operation
        raise SqccError(_codegen_error(e, funcs)) from e
    src = lib.inspect_source()
    ws = {}
    for gv in funcs:
        name = gv.name_hint
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
            total += _align(int(sz.group(1)))
        ws[name] = total
    return src, ws, {gv.name_hint: f for gv, f in funcs.items()}


def _codegen_error(e: Exception, funcs: dict) -> str:
    """A readable message for a failure of TVM's c codegen: which intrinsic, in which kernels."""
    text = str(e)
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
    lines = [l for l in text.strip().splitlines() if l.strip()]
    return f"micro: TVM's C code generator failed: {lines[-1][:300] if lines else type(e).__name__}"


def _align(n: int, a: int = ALIGN) -> int:
    return (n + a - 1) // a * a


# --------------------------------------------------------------------------------------------------
# In-place overlap of a kernel's output with an input that dies at that kernel
# --------------------------------------------------------------------------------------------------
# A conv writes its output element by element; once an input element's last reader has run, its bytes
# may hold output. _overlap_limit finds, from the kernel's (scheduled) TIR, how far the output may be
# shifted onto the input: d_max such that with out_base - in_base = d <= d_max no output byte is
# written before every read of the input byte it lands on. It executes the loop nest symbolically
# (numpy over each leaf block's whole iteration space): every input element's last-read time and
# every output element's first-write time, in the kernel's sequential order. The kernels are plain
# serial C without `restrict` (every access goes through char-typed or same-typed pointers that may
# alias), so the compiler keeps that order. Anything the evaluator does not know makes it give up
# (no overlap for that pair). Guarded loads count as reads even where the guard is false.
OVERLAP_MAX_POINTS = 4_000_000
PLAN_TRIES = 48  # seeded perturbed orders tried by plan_arena when overlaps are allowed  # iteration-space points evaluated per leaf block


class _NoOverlap(Exception):
    pass


def _np_eval(e, env):
    """Evaluate an index expression over numpy grids of loop values (``env``: Var → array)."""
    t = type(e).__name__
    if t == "IntImm":
        return np.int64(e.value)
    if t == "FloatImm":
        return np.float64(e.value)
    if t == "Var":
        for k, v in env.items():
            if k.same_as(e):
                return v
        raise _NoOverlap(f"free variable {e}")
    bins = {"Add": np.add, "Sub": np.subtract, "Mul": np.multiply, "FloorDiv": np.floor_divide,
            "FloorMod": np.mod, "Min": np.minimum, "Max": np.maximum, "EQ": np.equal, "NE": np.not_equal,
            "LT": np.less, "LE": np.less_equal, "GT": np.greater, "GE": np.greater_equal,
            "And": np.logical_and, "Or": np.logical_or}
    if t in bins:
        return bins[t](_np_eval(e.a, env), _np_eval(e.b, env))
    if t in ("Div", "Mod"):
        a, b = _np_eval(e.a, env), _np_eval(e.b, env)
        q = np.sign(a) * np.sign(b) * (np.abs(a) // np.abs(b))
        return q if t == "Div" else a - b * q
    if t == "Not":
        return np.logical_not(_np_eval(e.a, env))
    if t == "Cast":
        return _np_eval(e.value, env)
    if t == "Select":
        return np.where(_np_eval(e.condition, env), _np_eval(e.true_value, env), _np_eval(e.false_value, env))
    if t == "Call":
        name = getattr(e.op, "name", "")
        if name == "tirx.if_then_else":
            return np.where(*(_np_eval(a, env) for a in e.args))
        if name == "tirx.likely":
            return _np_eval(e.args[0], env)
        raise _NoOverlap(f"call {name} in an index")
    raise _NoOverlap(f"{t} in an index")


def _src(load):
    """The buffer a load reads (0.27's TensorLoad calls it ``source``)."""
    b = getattr(load, "buffer", None)
    return b if b is not None else load.source


_LEAF_EXPRS = ("IntImm", "FloatImm", "StringImm", "Var", "SizeVar")
_BINARY_EXPRS = ("Add", "Sub", "Mul", "Div", "Mod", "FloorDiv", "FloorMod", "Min", "Max", "EQ", "NE",
                 "LT", "LE", "GT", "GE", "And", "Or", "BitwiseAnd", "BitwiseOr", "BitwiseXor",
                 "LShift", "RShift")


def _loads(e, out):
    """Every load inside expression ``e``; an expression kind not listed here means no overlap."""
    t = type(e).__name__
    if t in ("BufferLoad", "TensorLoad"):
        out.append(e)
        for i in e.indices:
            _loads(i, out)
    elif t in _LEAF_EXPRS:
        pass
    elif t in _BINARY_EXPRS:
        _loads(e.a, out)
        _loads(e.b, out)
    elif t in ("Not", "BitwiseNot"):
        _loads(e.a, out)
    elif t == "Cast":
        _loads(e.value, out)
    elif t == "Select":
        for c in (e.condition, e.true_value, e.false_value):
            _loads(c, out)
    elif t == "Call":
        for a in e.args:
            _loads(a, out)
    else:
        raise _NoOverlap(f"expression {t}")
    return out


def _btype(buf):
    """(shape, dtype) of a TIR buffer (0.27: buffers are Vars typed by a BufferType)."""
    ty = getattr(buf, "ty", None)
    src = ty if ty is not None and hasattr(ty, "shape") else buf
    return [int(d) for d in src.shape], str(src.dtype)


def _flat(buf, idx_vals):
    shape = _btype(buf)[0]
    flat = np.int64(0)
    for d, v in zip(shape, idx_vals):
        flat = flat * d + v
    return flat, int(np.prod(shape, dtype=np.int64))


def _duration(stmt) -> int:
    t = type(stmt).__name__
    if t == "For":
        return int(stmt.extent) * _duration(stmt.body)
    if t == "SeqStmt":
        return sum(_duration(c) for c in stmt.seq)
    if t == "SBlockRealize":
        blk = stmt.block
        inner = type(blk.body).__name__
        if inner == "Evaluate":
            raise _NoOverlap("opaque block")
        return 1 if inner == "BufferStore" else _duration(blk.body)
    if t in ("AllocBuffer", "AttrStmt"):
        return _duration(stmt.body) if getattr(stmt, "body", None) is not None else 0
    if t == "BufferStore":
        return 1
    if t == "Evaluate" and type(stmt.value).__name__ == "IntImm":
        return 0
    raise _NoOverlap(f"statement {t}")


def _access_times(func, in_buf, out_buf):
    """(last read time per input element, first write time per output element) of ``func``."""
    _, n_in = _flat(in_buf, [])
    _, n_out = _flat(out_buf, [])
    last_read = np.full(n_in, -1, np.int64)
    first_write = np.full(n_out, np.iinfo(np.int64).max, np.int64)

    def leaf(stores, loops, base, env):
        # loops: [(var, min, extent, stride)]; broadcast grids, one axis per loop
        n = len(loops)
        points = int(np.prod([ext for _, _, ext, _ in loops], dtype=np.int64)) if loops else 1
        if points > OVERLAP_MAX_POINTS:
            raise _NoOverlap("iteration space too large to check")
        env = dict(env)
        time = np.int64(base)
        for k, (var, lo, ext, stride) in enumerate(loops):
            shape = [1] * n
            shape[k] = ext
            v = (np.arange(ext, dtype=np.int64) + lo).reshape(shape)
            env[var] = v
            time = time + (v - lo) * stride
        time = np.broadcast_to(time, [ext for _, _, ext, _ in loops]) if loops else np.array(time)
        for store, when in stores:
            tv = time * 2 + when  # an init (when = -1) runs before the body of the same instance
            # (reads of the output itself, as an accumulator, do not matter)
            for ld in _loads(store.value, []) + [x for i in store.indices for x in _loads(i, [])]:
                if _src(ld).same_as(in_buf):
                    flat, size = _flat(in_buf, [_np_eval(i, env) for i in ld.indices])
                    flat = np.broadcast_to(flat, tv.shape).ravel()
                    ok = (flat >= 0) & (flat < size)
                    np.maximum.at(last_read, flat[ok], tv.ravel()[ok])
            if store.buffer.same_as(in_buf):
                raise _NoOverlap("the kernel writes its input")
            if store.buffer.same_as(out_buf):
                flat, size = _flat(out_buf, [_np_eval(i, env) for i in store.indices])
                flat = np.broadcast_to(flat, tv.shape).ravel()
                ok = (flat >= 0) & (flat < size)
                np.minimum.at(first_write, flat[ok], tv.ravel()[ok])

    def walk(stmt, loops, base, env):
        t = type(stmt).__name__
        if t == "For":
            if int(stmt.kind) not in (0, 3):  # serial or unrolled: the C runs it in order
                raise _NoOverlap(f"{stmt.kind} loop")
            body_d = _duration(stmt.body)
            walk(stmt.body, loops + [(stmt.loop_var, int(stmt.min), int(stmt.extent), body_d)], base, env)
        elif t == "SeqStmt":
            off = base
            for c in stmt.seq:
                walk(c, loops, off, env)
                off += _duration(c)
        elif t == "SBlockRealize":
            blk = stmt.block
            if len(blk.match_buffers):  # a region of a parameter under another name
                raise _NoOverlap("match_buffer")
            if type(blk.body).__name__ in ("BufferStore", "Evaluate"):
                # bind block iter vars to their values over the enclosing loops' grid
                env2 = dict(env)
                n = len(loops)
                grid_env = dict(env)
                for k, (var, lo, ext, _) in enumerate(loops):
                    shape = [1] * n
                    shape[k] = ext
                    grid_env[var] = (np.arange(ext, dtype=np.int64) + lo).reshape(shape)
                for iv, val in zip(blk.iter_vars, stmt.iter_values):
                    env2[iv.var] = _np_eval(val, grid_env)
                env2.update({var: grid_env[var] for var, _, _, _ in loops})
                stores = []
                if blk.init is not None:
                    if type(blk.init).__name__ != "BufferStore":
                        raise _NoOverlap("block init is not a store")
                    stores.append((blk.init, -1))
                if type(blk.body).__name__ == "BufferStore":
                    stores.append((blk.body, 0))
                else:
                    raise _NoOverlap("block body is not a store")
                leaf(stores, loops, base, env2)
            elif blk.init is not None:
                raise _NoOverlap("init of a block with loops inside")
            else:
                walk(blk.body, loops, base, env)
        elif t in ("AllocBuffer", "AttrStmt"):  # (a DeclBuffer could alias a parameter: give up)
            if getattr(stmt, "body", None) is not None:
                walk(stmt.body, loops, base, env)
        elif t == "BufferStore":
            leaf([(stmt, 0)], loops, base, env)
        elif t == "Evaluate" and type(stmt.value).__name__ == "IntImm":
            return
        else:  # extern calls (which may write through pointers), conditionals, lets, ...
            raise _NoOverlap(f"statement {t}")

    walk(func.body, [], 0, {})
    return last_read, first_write


def _overlap_limit(func, in_idx: int, out_idx: int):
    """d_max in bytes (see the section comment), or None when the output may not overlap."""
    try:
        params = list(func.params)
        in_buf, out_buf = params[in_idx], params[out_idx]
        lr, fw = _access_times(func, in_buf, out_buf)
    except _NoOverlap:
        return None
    except Exception:  # noqa: BLE001 -- an optimisation: anything unexpected means no overlap
        return None
    isz = max(1, int(np.dtype(_btype(in_buf)[1]).itemsize))
    osz = max(1, int(np.dtype(_btype(out_buf)[1]).itemsize))
    lr_bytes = np.repeat(lr, isz)
    pm = np.maximum.accumulate(lr_bytes) if lr_bytes.size else lr_bytes
    n_in = lr_bytes.size
    a = np.searchsorted(pm, fw, side="right")  # first input byte that may still be read after j's write
    j = np.arange(fw.size, dtype=np.int64)
    bound = a - (j + 1) * osz
    bound = bound[a < n_in]  # elements with no later-read byte above them constrain nothing
    return int(bound.min()) if bound.size else int(n_in)


# --------------------------------------------------------------------------------------------------
# Arena planning: greedy by size over lifetime intervals (best-fit gap), like TFLite Micro's planner
# --------------------------------------------------------------------------------------------------
def plan_arena(bufs: list[dict], align: int = ALIGN, overlaps: list | None = None) -> dict:
    """``bufs``: [{"name", "size", "start", "end"}] with inclusive live intervals [start, end] in
    step units. ``overlaps``: [{"out", "in", "d_max"}]: buffer ``out`` may share bytes with ``in``
    (a kernel writing its output over an input it finishes reading, see :func:`_overlap_limit`)
    when offset(out) − offset(in) ≤ d_max. Greedy by size; each buffer goes to the valid offset with
    the lowest end. Returns {"buffers": [... + "offset"], "peak": bytes, "lower_bound": bytes (the
    most bytes live at one step, i.e. the best plan without overlaps), "no_reuse": bytes,
    "overlaps": the allowances used}. Two buffers live at the same step never share bytes unless
    an allowance permits it."""
    allow = {}
    for o in overlaps or []:
        key = (o["out"], o["in"])
        allow[key] = min(allow.get(key, o["d_max"]), o["d_max"])
    def ok(b, off, p):
        if not (p["start"] <= b["end"] and b["start"] <= p["end"]):
            return True
        if off + b["size"] <= p["offset"] or p["offset"] + p["size"] <= off:
            return True
        d = allow.get((b["name"], p["name"]))
        if d is not None and off - p["offset"] <= d:
            return True
        d = allow.get((p["name"], b["name"]))
        return d is not None and p["offset"] - off <= d

    orders = {
        "size": lambda b: (-b["size"], b["start"], b["name"]),
        "start": lambda b: (b["start"], -b["size"], b["name"]),
        "end-desc": lambda b: (-b["end"], -b["size"], b["name"]),
    }
    if allow:  # overlaps make the order matter more: also a few seeded perturbations of by-size
        rng = np.random.default_rng(0)
        for k in range(PLAN_TRIES):
            w = {b["name"]: float(rng.uniform(0.25, 1.75)) for b in bufs}
            orders[f"perturbed size #{k}"] = lambda b, w=w: (-b["size"] * w[b["name"]], b["start"], b["name"])
    best_plan = None
    for oname, key in orders.items():
        placed = _place(sorted(bufs, key=key), align, allow, ok)
        peak = max((_align(p["offset"] + p["size"], align) for p in placed), default=0)
        if best_plan is None or peak < best_plan[0]:
            best_plan = (peak, placed, oname)
        if not allow:
            break
    peak, placed, oname = best_plan
    return _plan_result(bufs, placed, peak, align, overlaps, oname)


def _place(order, align, allow, ok):
    placed = []
    for b in order:
        size = _align(b["size"], align)
        live = [p for p in placed if p["start"] <= b["end"] and b["start"] <= p["end"]]
        cands = {0}
        for p in live:
            cands.add(_align(p["offset"] + p["size"], align))
            d = allow.get((b["name"], p["name"]))  # b writes over p
            if d is not None and p["offset"] + d >= 0:
                cands.add((p["offset"] + d) // align * align)
            d = allow.get((p["name"], b["name"]))  # p writes over b
            if d is not None:
                cands.add(_align(max(p["offset"] - d, 0), align))
        best = None
        for off in sorted(cands):
            if all(ok(b, off, p) for p in live):
                key = (off + size, off)
                if best is None or key < best:
                    best = key
        placed.append(dict(b, offset=best[1]))
    return placed


def _plan_result(bufs, placed, peak, align, overlaps, oname):
    steps = sorted({t for b in bufs for t in (b["start"], b["end"])})
    lower = 0
    for t in steps:
        lower = max(lower, sum(_align(b["size"], align) for b in bufs if b["start"] <= t <= b["end"]))
    placed.sort(key=lambda p: (p["offset"], p["start"]))
    offs = {p["name"]: p["offset"] for p in placed}
    used = [dict(o, d=offs[o["out"]] - offs[o["in"]]) for o in overlaps or []
            if o["out"] in offs and o["in"] in offs
            and offs[o["out"]] < offs[o["in"]] + next(p["size"] for p in placed if p["name"] == o["in"])
            and offs[o["in"]] < offs[o["out"]] + next(p["size"] for p in placed if p["name"] == o["out"])]
    return {"buffers": placed, "peak": peak, "lower_bound": lower,
            "no_reuse": sum(_align(b["size"], align) for b in bufs),
            "algorithm": f"greedy (best of several orders; this one by {oname}), lowest valid end; "
                         "in-place overlap of a kernel's output with an input it finishes reading where "
                         "its access order allows",
            "overlaps": used}


def check_plan(plan: dict) -> None:
    """Raise SqccError if two buffers that are live at the same step overlap in the arena (other
    than as the plan's ``overlaps`` allow), or if a buffer lies outside [0, peak)."""
    bs = plan["buffers"]
    allow = {(o["out"], o["in"]): o["d_max"] for o in plan.get("overlaps", [])}
    for b in bs:
        if b["offset"] < 0 or b["offset"] + b["size"] > plan["peak"]:
            raise SqccError(f"arena plan: buffer {b['name']} [{b['offset']}, {b['offset'] + b['size']}) "
                            f"lies outside the arena of {plan['peak']} bytes")
        if b["offset"] % ALIGN:
            raise SqccError(f"arena plan: buffer {b['name']} is not {ALIGN}-byte aligned")
    for i, a in enumerate(bs):
        for b in bs[i + 1:]:
            live = a["start"] <= b["end"] and b["start"] <= a["end"]
            mem = a["offset"] < b["offset"] + b["size"] and b["offset"] < a["offset"] + a["size"]
            if live and mem:
                d = allow.get((a["name"], b["name"]))
                if d is not None and a["offset"] - b["offset"] <= d:
                    continue
                d = allow.get((b["name"], a["name"]))
                if d is not None and b["offset"] - a["offset"] <= d:
                    continue
                raise SqccError(f"arena plan: {a['name']} and {b['name']} are live together "
                                f"(steps {max(a['start'], b['start'])}..{min(a['end'], b['end'])}) "
                                "and overlap")


# --------------------------------------------------------------------------------------------------
# C generation
# --------------------------------------------------------------------------------------------------
_DT = {"float32": ("kDLFloat", 32), "float64": ("kDLFloat", 64), "float16": ("kDLFloat", 16),
       "int8": ("kDLInt", 8), "int16": ("kDLInt", 16), "int32": ("kDLInt", 32), "int64": ("kDLInt", 64),
       "uint8": ("kDLUInt", 8), "uint16": ("kDLUInt", 16), "uint32": ("kDLUInt", 32),
       "uint64": ("kDLUInt", 64), "bool": ("kDLBool", 8)}


def _cname(s: str) -> str:
    return re.sub(r"\W", "_", s)


def _gen_model_c(g: Graph, plan_off: dict, arena: int, ws_bytes: dict) -> str:
    L = ["/* Generated by sqcc (targets/micro.py). Do not edit. */",
         "#include <stdint.h>", "#include <stddef.h>", "#include <tvm/ffi/c_api.h>",
         '#include "model.h"', "",
         f"uint8_t sqcc_arena[{max(arena, ALIGN)}] __attribute__((aligned({ALIGN}), section(\".sqcc_arena\")));",
         "extern const uint8_t sqcc_weights[];", ""]
    # kernels
    kernels = sorted({s.kernel for s in g.steps})
    for k in kernels:
        L.append(f"int32_t __tvm_ffi_{k}(void* self_handle, void* args, int32_t num_args, void* result);")
    L.append("")
    # tensors
    used = set(a for s in g.steps for a in s.args)
    for name, b in g.bufs.items():
        if name not in used and b.kind != "input":
            continue
        c = _cname(name)
        code, bits = _DT.get(b.dtype, (None, None))
        if code is None:
            raise SqccError(f"micro: dtype {b.dtype} of '{name}' is not supported")
        shape = ", ".join(str(d) for d in b.shape) or "1"
        L.append(f"static const int64_t shape_{c}[] = {{{shape}}};")
        root = g.bufs[b.base] if b.kind == "view" else b
        if root.kind == "const":
            data = f"(void*)(sqcc_weights + {root.offset})"
        else:
            data = f"(void*)(sqcc_arena + {plan_off[root.name]})"
        L.append(f"static const DLTensor t_{c} = {{ .data = {data}, .device = {{kDLCPU, 0}}, "
                 f".ndim = {len(b.shape)}, .dtype = {{{code}, {bits}, 1}}, .shape = (int64_t*)shape_{c}, "
                 ".strides = NULL, .byte_offset = 0 };")
    L.append("")
    # workspace stubs (the only TVM runtime symbols the c-target kernels reference)
    L += [
        "static uint8_t* sqcc_ws_cur;", "static uint8_t* sqcc_ws_end;",
        "int sqcc_last_error;",
        "void* TVMBackendAllocWorkspace(int device_type, int device_id, uint64_t nbytes,",
        "                               int dtype_code_hint, int dtype_bits_hint) {",
        "  (void)device_type; (void)device_id; (void)dtype_code_hint; (void)dtype_bits_hint;",
        f"  uintptr_t p = ((uintptr_t)sqcc_ws_cur + {ALIGN - 1}u) & ~(uintptr_t){ALIGN - 1}u;",
        "  if (p + nbytes > (uintptr_t)sqcc_ws_end) { sqcc_last_error = 2; return NULL; }",
        "  sqcc_ws_cur = (uint8_t*)(p + (uintptr_t)nbytes);",
        "  return (void*)p;", "}",
        "int TVMBackendFreeWorkspace(int device_type, int device_id, void* ptr) {",
        "  (void)device_type; (void)device_id;",
        "  sqcc_ws_cur = (uint8_t*)ptr; /* kernels free in LIFO order */", "  return 0;", "}",
        "void TVMFFIErrorSetRaisedFromCStrParts(const char* kind, const char** parts, int32_t n) {",
        "  (void)kind; (void)parts; (void)n; sqcc_last_error = 1;", "}",
        "void TVMFFIErrorSetRaisedFromCStr(const char* kind, const char* msg) {",
        "  (void)kind; (void)msg; sqcc_last_error = 1;", "}", "",
    ]
    # inputs/outputs tables
    def table(kind, names):
        ptrs = ", ".join(f"sqcc_arena + {plan_off[g.bufs[n].base or n]}" for n in names) or "0"
        sizes = ", ".join(str(g.bufs[n].nbytes) for n in names) or "0"
        return [f"uint8_t* const sqcc_{kind}_ptr[] = {{{ptrs}}};",
                f"const uint32_t sqcc_{kind}_bytes[] = {{{sizes}}};"]
    L += table("input", g.inputs) + table("output", g.outputs) + [""]
    # run
    L += ["int sqcc_model_run(void) {", "  TVMFFIAny ret;", "  int32_t rc;", "  sqcc_last_error = 0;"]
    for i, s in enumerate(g.steps):
        L.append(f"  {{ /* step {i}: {s.kernel} */")
        L.append(f"    static const TVMFFIAny args[{len(s.args)}] = {{")
        for a in s.args:
            L.append(f"      {{ .type_index = kTVMFFIDLTensorPtr, .zero_padding = 0, .v_ptr = (void*)&t_{_cname(a)} }},")
        L.append("    };")
        if s.ws_buf is not None:
            L.append(f"    sqcc_ws_cur = sqcc_arena + {plan_off[s.ws_buf]}; "
                     f"sqcc_ws_end = sqcc_ws_cur + {ws_bytes[s.kernel]};")
        else:
            L.append("    sqcc_ws_cur = sqcc_ws_end = NULL;")
        L.append(f"    rc = __tvm_ffi_{s.kernel}(NULL, (void*)args, {len(s.args)}, &ret);")
        L.append(f"    if (rc != 0 || sqcc_last_error) return {i + 1};")
        L.append("  }")
    L += ["  return 0;", "}", ""]
    return "\n".join(L)


def _gen_model_h(g: Graph, arena: int) -> str:
    return "\n".join([
        "/* Generated by sqcc. */", "#pragma once", "#include <stdint.h>",
        f"#define SQCC_NUM_INPUTS {len(g.inputs)}", f"#define SQCC_NUM_OUTPUTS {len(g.outputs)}",
        f"#define SQCC_ARENA_BYTES {arena}",
        "extern uint8_t* const sqcc_input_ptr[];", "extern const uint32_t sqcc_input_bytes[];",
        "extern uint8_t* const sqcc_output_ptr[];", "extern const uint32_t sqcc_output_bytes[];",
        "int sqcc_model_run(void);", ""])


_MAIN_C = r"""/* sqcc micro harness: startup, semihosting I/O, instruction count. No heap, no stdio. */
#include <stdint.h>
#include <string.h>
#include "model.h"

extern uint32_t _sidata, _sdata, _edata, _sbss, _ebss, _sstack, _estack;
int main(void);

/* ---- ARM semihosting (bkpt 0xAB) ---- */
static int sh_call(int op, void* arg) {
  register int r0 __asm__("r0") = op;
  register void* r1 __asm__("r1") = arg;
  __asm__ volatile("bkpt 0xAB" : "+r"(r0) : "r"(r1) : "memory");
  return r0;
}
static void sh_puts(const char* s) { sh_call(0x04, (void*)s); }
static void sh_exit(int code) {
  sh_call(0x18, (void*)(uintptr_t)(code == 0 ? 0x20026 : 0x20023));
  for (;;) {}
}
static int sh_open(const char* name, int mode) {
  uint32_t a[3] = {(uint32_t)(uintptr_t)name, (uint32_t)mode, (uint32_t)strlen(name)};
  return sh_call(0x01, a);
}
static int sh_read(int fh, void* buf, uint32_t n) {  /* returns bytes NOT read */
  uint32_t a[3] = {(uint32_t)fh, (uint32_t)(uintptr_t)buf, n};
  return sh_call(0x06, a);
}
static int sh_write(int fh, const void* buf, uint32_t n) {
  uint32_t a[3] = {(uint32_t)fh, (uint32_t)(uintptr_t)buf, n};
  return sh_call(0x05, a);
}
static void sh_close(int fh) { uint32_t a[1] = {(uint32_t)fh}; sh_call(0x02, a); }
static void put_u64(const char* key, uint64_t v) {
  char buf[64]; char tmp[24]; int n = 0, k = 0;
  while (key[k] && n < 36) buf[n++] = key[k++];
  buf[n++] = '=';
  k = 0; do { tmp[k++] = (char)('0' + v % 10); v /= 10; } while (v);
  while (k) buf[n++] = tmp[--k];
  buf[n++] = '\n'; buf[n] = 0;
  sh_puts(buf);
}

/* ---- SysTick: 24-bit down counter at the processor clock, overflows counted ---- */
#define SYST_CSR (*(volatile uint32_t*)0xE000E010u)
#define SYST_RVR (*(volatile uint32_t*)0xE000E014u)
#define SYST_CVR (*(volatile uint32_t*)0xE000E018u)
static volatile uint32_t systick_wraps;
void SysTick_Handler(void) { systick_wraps++; }
#define SCB_ICSR (*(volatile uint32_t*)0xE000ED04u)
#define SYST_RELOAD 0xFFFFFFu
static void ticks_start(void) {
  SYST_CSR = 0; SYST_RVR = SYST_RELOAD; SYST_CVR = 0; systick_wraps = 0;
  SYST_CSR = 7u; /* enable, interrupt, processor clock */
  while (SYST_CVR == 0) {}  /* first reload */
}
/* Ticks since the first reload. The wrap at 1->0 is counted by the handler or is still pending
   (interrupts are masked while reading), so the two are combined consistently. */
static uint64_t ticks_now(void) {
  uint32_t w, v, pend;
  __asm__ volatile("cpsid i" ::: "memory");
  v = SYST_CVR;
  pend = (SCB_ICSR >> 26) & 1u;
  w = systick_wraps;
  if (pend) v = SYST_CVR;
  __asm__ volatile("cpsie i" ::: "memory");
  w += pend;
  if (v == 0) return (uint64_t)w * (SYST_RELOAD + 1u) - 1u;
  return (uint64_t)w * (SYST_RELOAD + 1u) + (SYST_RELOAD - v);
}
static void ticks_stop(void) { SYST_CSR = 0; }

/* ---- vector table and reset ---- */
void Default_Handler(void) { sh_puts("sqcc: fault\n"); sh_exit(1); }
void Reset_Handler(void);
__attribute__((section(".vectors"), used)) void (*const sqcc_vectors[16])(void) = {
  (void (*)(void))(&_estack), Reset_Handler, Default_Handler, Default_Handler, Default_Handler,
  Default_Handler, Default_Handler, 0, 0, 0, 0, Default_Handler, Default_Handler, 0,
  Default_Handler, SysTick_Handler,
};

__attribute__((noinline)) static void paint_stack(void) {
  uint32_t* p = &_sstack;
  uint32_t* sp = (uint32_t*)__builtin_frame_address(0) - 64;
  while (p < sp) *p++ = 0xDEADBEEFu;
}
static uint32_t stack_used(void) {
  uint32_t* p = &_sstack;
  while (p < &_estack && *p == 0xDEADBEEFu) p++;
  return (uint32_t)((uintptr_t)&_estack - (uintptr_t)p);
}

void Reset_Handler(void) {
  /* FPU (and MVE) on before any compiled code may use it */
  *(volatile uint32_t*)0xE000ED88u |= (0xFu << 20);
  __asm__ volatile("dsb\n isb" ::: "memory");
  uint32_t* src = &_sidata; uint32_t* dst = &_sdata;
  while (dst < &_edata) *dst++ = *src++;
  for (dst = &_sbss; dst < &_ebss; ) *dst++ = 0;
  paint_stack();
  sh_exit(main());
}

__attribute__((noinline)) static void calib_loop(uint32_t n) {
  __asm__ volatile("1: subs %0, %0, #1\n bne 1b" : "+r"(n) :: "cc");
}

static char cmdline[512];
int main(void) {
  char* argv[4] = {0, 0, 0, 0}; int argc = 0;
  uint32_t a[2] = {(uint32_t)(uintptr_t)cmdline, sizeof(cmdline) - 1};
  if (sh_call(0x15, a) == 0) {
    char* p = cmdline;
    while (*p && argc < 4) {
      while (*p == ' ') *p++ = 0;
      if (!*p) break;
      argv[argc++] = p;
      while (*p && *p != ' ') p++;
    }
  }
  if (argc > 1) {  /* argv[1]: raw input bytes, all inputs concatenated */
    int fh = sh_open(argv[1], 1);
    if (fh < 0) { sh_puts("sqcc: cannot open input file\n"); return 3; }
    for (int i = 0; i < SQCC_NUM_INPUTS; i++)
      if (sh_read(fh, sqcc_input_ptr[i], sqcc_input_bytes[i]) != 0) {
        sh_puts("sqcc: input file too short\n"); return 3;
      }
    sh_close(fh);
  } else {
    for (int i = 0; i < SQCC_NUM_INPUTS; i++) memset(sqcc_input_ptr[i], 0, sqcc_input_bytes[i]);
  }
  ticks_start();
  uint64_t c0 = ticks_now();
  calib_loop(CALIB_ITERS);
  uint64_t c1 = ticks_now();
  int rc = sqcc_model_run();
  uint64_t c2 = ticks_now();
  ticks_stop();
  if (rc != 0) { put_u64("sqcc_error_step", (uint64_t)rc); return 4; }
  put_u64("sqcc_calib_insns", 2ull * CALIB_ITERS);
  put_u64("sqcc_calib_ticks", c1 - c0);
  put_u64("sqcc_run_ticks", c2 - c1);
  put_u64("sqcc_stack_used", stack_used());
  if (argc > 2) {
    int fh = sh_open(argv[2], 5);
    if (fh < 0) { sh_puts("sqcc: cannot open output file\n"); return 5; }
    for (int i = 0; i < SQCC_NUM_OUTPUTS; i++)
      if (sh_write(fh, sqcc_output_ptr[i], sqcc_output_bytes[i]) != 0) return 5;
    sh_close(fh);
  }
  sh_puts("sqcc_done\n");
  return 0;
}
"""


def _gen_linker(p: dict, stack: int) -> str:
    fl, ram, vec = p["flash"], p["ram"], p["vectors"]
    mem = [f"  FLASH (rx)  : ORIGIN = 0x{fl['origin']:08X}, LENGTH = {fl['size']}",
           f"  RAM   (rwx) : ORIGIN = 0x{ram['origin']:08X}, LENGTH = {ram['size']}"]
    vec_region = "FLASH"
    if vec:
        mem.insert(0, f"  VECT  (rx)  : ORIGIN = 0x{vec['origin']:08X}, LENGTH = {vec['size']}")
        vec_region = "VECT"
    return f"""/* Generated by sqcc for {p['name']} ({p['board']}). */
ENTRY(Reset_Handler)
MEMORY
{{
{chr(10).join(mem)}
}}
SECTIONS
{{
  .vectors : {{ KEEP(*(.vectors)) }} > {vec_region}
  .text : {{ *(.text .text.*) *(.glue_7 .glue_7t .vfp11_veneer .v4_bx) KEEP(*(.init)) KEEP(*(.fini)) }} > FLASH
  .rodata : ALIGN(16) {{ *(.rodata .rodata.*) }} > FLASH
  .ARM.extab : {{ *(.ARM.extab* .gnu.linkonce.armextab.*) }} > FLASH
  .ARM.exidx : {{ __exidx_start = .; *(.ARM.exidx* .gnu.linkonce.armexidx.*) __exidx_end = .; }} > FLASH
  _sidata = LOADADDR(.data);
  .data : ALIGN(4) {{ _sdata = .; *(.data .data.*) . = ALIGN(4); _edata = .; }} > RAM AT > FLASH
  .bss (NOLOAD) : ALIGN(4) {{ _sbss = .; *(.bss .bss.* COMMON) . = ALIGN(4); _ebss = .; }} > RAM
  .sqcc_arena (NOLOAD) : ALIGN(16) {{ *(.sqcc_arena) }} > RAM
  .stack (NOLOAD) : ALIGN(8) {{ _sstack = .; . = . + {stack}; . = ALIGN(8); _estack = .; }} > RAM
  /DISCARD/ : {{ *(.ARM.attributes.discard) }}
}}
"""


OPT_FLAGS = ["-O2", "-funroll-loops"]  # unrolling the small conv/pool loops: ~3.6x fewer instructions


def _flags(p: dict):
    # -fno-strict-aliasing: a kernel may write its output over an input it has finished reading
    # (arena overlap); the compiler must not move a load of one type past a store of another.
    cflags = p["cflags"] + OPT_FLAGS + ["-fno-strict-aliasing", "-std=gnu11", "-ffunction-sections", "-fdata-sections",
                            "-fno-common", "-Wall", "-Wno-unused-variable", "-Wno-unused-but-set-variable",
                            "-Iinclude", "-I.", f"-DCALIB_ITERS={CALIB_ITERS}u"]
    ldflags = p["cflags"] + ["-T", "link.ld", "-nostartfiles", "--specs=nano.specs",
                             "--specs=nosys.specs", "-Wl,--gc-sections", "-Wl,-Map=model.map"]
    return cflags, ldflags, ["-lm", "-lc", "-lgcc"]


_SOURCES = ["kernels.c", "model.c", "main.c", "weights.S"]


def _gen_makefile(p: dict, qemu_cmd: list) -> str:
    cflags, ldflags, libs = _flags(p)
    objs = " ".join(s.rsplit(".", 1)[0] + ".o" for s in _SOURCES)
    return f"""# Generated by sqcc for {p['name']} ({p['board']}, qemu machine {p['machine']}).
# Debian packages: gcc-arm-none-eabi libnewlib-arm-none-eabi qemu-system-arm
CC = arm-none-eabi-gcc
SIZE = arm-none-eabi-size
QEMU = qemu-system-arm
CFLAGS = {' '.join(cflags)}
LDFLAGS = {' '.join(ldflags)}
LIBS = {' '.join(libs)}
OBJS = {objs}

all: model.elf

%.o: %.c model.h
\t$(CC) $(CFLAGS) -c $< -o $@

weights.o: weights.S weights.bin
\t$(CC) $(CFLAGS) -c $< -o $@

model.elf: $(OBJS) link.ld
\t$(CC) $(LDFLAGS) $(OBJS) -Wl,--start-group $(LIBS) -Wl,--end-group -o $@
\t$(SIZE) -A $@

# make run INPUT=input.bin OUTPUT=output.bin  (raw little-endian tensors, concatenated)
INPUT ?= bench_input.bin
OUTPUT ?= output.bin
run: model.elf
\t$(QEMU) {' '.join(qemu_cmd[1:]).replace('@INPUT@', '$(INPUT)').replace('@OUTPUT@', '$(OUTPUT)').replace('@ELF@', 'model.elf')}

clean:
\trm -f $(OBJS) model.elf model.map

.PHONY: all run clean
"""


def _qemu_cmd(p: dict, elf="@ELF@", inp="@INPUT@", out="@OUTPUT@") -> list:
    return ["qemu-system-arm", "-M", p["machine"], "-nographic", "-monitor", "none", "-serial", "none",
            "-icount", "shift=0", "-semihosting-config",
            f"enable=on,target=native,arg=model.elf,arg={inp},arg={out}", "-kernel", elf]


def _copy_headers(dst: str):
    import tvm
    import tvm_ffi
    tvm_inc = os.path.join(os.path.dirname(tvm.__file__), "include")
    ffi_inc = os.path.join(os.path.dirname(tvm_ffi.__file__), "include")
    for root, rel in [(ffi_inc, "tvm/ffi/c_api.h"), (ffi_inc, "tvm/ffi/extra/c_env_api.h"),
                      (ffi_inc, "dlpack/dlpack.h"), (tvm_inc, "tvm/runtime/base.h"),
                      (tvm_inc, "tvm/runtime/c_backend_api.h")]:
        src = os.path.join(root, rel)
        if not os.path.exists(src):
            raise SqccError(f"micro: TVM header {rel} not found under {root}")
        os.makedirs(os.path.join(dst, "include", os.path.dirname(rel)), exist_ok=True)
        shutil.copyfile(src, os.path.join(dst, "include", rel))


def _run(cmd, cwd, what, timeout=600):
    try:
        r = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise SqccError(f"micro: {what} timed out after {timeout} s") from None
    return r


def _section_sizes(size_tool: str, elf: str) -> dict:
    out = subprocess.run([size_tool, "-A", elf], capture_output=True, text=True, check=True).stdout
    secs = {}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[0].startswith(".") and parts[1].isdigit():
            secs[parts[0]] = int(parts[1])
    return secs


def _spec_list(specs):
    out = []
    for s in specs:
        if isinstance(s, dict):
            out.append({"name": s["name"], "shape": list(s["shape"]), "dtype": s.get("dtype", "float32")})
        else:
            out.append({"name": s.name, "shape": list(s.shape), "dtype": getattr(s, "dtype", "float32")})
    return out


def _atomic_replace(tmp: str, out_dir: str):
    out_dir = os.path.abspath(out_dir)
    old = None
    if os.path.exists(out_dir):
        old = tempfile.mkdtemp(prefix=".old-", dir=os.path.dirname(out_dir))
        os.rmdir(old)
        os.rename(out_dir, old)
    os.rename(tmp, out_dir)
    if old:
        shutil.rmtree(old, ignore_errors=True)


def _write_json(path: str, obj):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1)
    os.replace(tmp, path)


# --------------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------------
def compile_micro(mod, inputs, outputs, preset: str, out_dir: str, *, stack_bytes: int | None = None,
                  schedule: bool = True, measure: bool = True, overlap: bool = True) -> dict:
    """Compile a Relax module for a Cortex-M preset into ``out_dir`` (sources, Makefile, model.elf,
    micro.json). Returns the figures written to ``out_dir/micro.json``.

    ``inputs``/``outputs``: TensorSpec-like objects or dicts (name, shape, dtype), in the order of
    main's parameters / results. ``preset``: ``cortex-m4`` | ``cortex-m7`` | ``cortex-m55`` (a
    ``micro:`` prefix is accepted). ``schedule``: sqcc's inline schedule (less workspace, faster).
    ``measure``: run once under qemu for the instruction count and the stack high-water mark.
    ``overlap``: let a kernel's output share arena bytes with an input it finishes reading, where
    its access order (checked on its TIR) allows. ``stack_bytes``: the stack to reserve; None (default): link with 16 KiB, measure the high-water
    mark under qemu, relink with that + 512 B (rounded up to 256 B) and check the run is unchanged."""
    t0 = time.time()
    p = get_preset(preset)
    tools = check_toolchain(p, need_qemu=measure)
    auto_stack = stack_bytes is None
    if auto_stack:
        stack_bytes = DEFAULT_STACK  # first link; shrunk to the measured high-water mark + margin

    try:
        lowered = _relax_lower(mod)
    except SqccError:
        raise
    except Exception as e:  # noqa: BLE001 -- a TVM failure on a valid model is sqcc's gap: say where
        lines = [ln for ln in str(e).strip().splitlines() if ln.strip()]
        raise SqccError(f"micro: lowering the model with TVM (legalize, fuse) failed: "
                        f"{lines[-1][:300] if lines else type(e).__name__}; this is a gap in sqcc's "
                        "micro target, please report it") from e
    g = _build_graph(lowered)
    in_specs, out_specs = _spec_list(inputs), _spec_list(outputs)
    if len(in_specs) != len(g.inputs) or len(out_specs) != len(g.outputs):
        raise SqccError(f"micro: the module has {len(g.inputs)} input(s) and {len(g.outputs)} output(s), "
                        f"but {len(in_specs)} and {len(out_specs)} were specified")
    for spec, name in zip(in_specs, g.inputs):
        b = g.bufs[name]
        if tuple(spec["shape"]) != tuple(b.shape) or spec["dtype"] != b.dtype:
            raise SqccError(f"micro: input '{spec['name']}' is {spec['shape']} {spec['dtype']} but the "
                            f"module's is {list(b.shape)} {b.dtype}")
    src, ws, kfuncs = _build_kernels(lowered, schedule=schedule)
    t_tvm = time.time() - t0

    # weights: one blob, 16-byte aligned entries
    off = 0
    for c in g.consts:
        b = g.bufs[c]
        b.offset = off
        off = _align(off + b.nbytes)
    weights_bytes = off

    # arena plan
    items = []
    for name, b in g.bufs.items():
        if b.kind in ("input", "act", "output"):
            items.append({"name": name, "kind": b.kind, "size": b.nbytes, "start": b.start, "end": b.end})
    for i, s in enumerate(g.steps):
        s.workspace = ws.get(s.kernel, 0)
        if s.workspace:
            s.ws_buf = f"ws{i}_{s.kernel}"
            items.append({"name": s.ws_buf, "kind": "workspace", "size": s.workspace, "start": i, "end": i})
    # overlaps need the kernels' sequential order: no `restrict` pointers in the generated C
    overlap = overlap and not re.search(r"\brestrict\b|__restrict", src)
    plan = plan_arena(items, overlaps=_overlap_allowances(g, kfuncs) if overlap else None)
    check_plan(plan)
    plan_off = {b["name"]: b["offset"] for b in plan["buffers"]}
    arena = plan["peak"]

    # budget checks before spending time in gcc
    ram_need = arena + stack_bytes
    flash_need = weights_bytes
    problems = []
    if ram_need > p["ram"]["size"]:
        problems.append(f"RAM: arena {arena} B + stack {stack_bytes} B = {ram_need} B > {p['ram']['size']} B "
                        f"({p['ram']['name']}), over by {ram_need - p['ram']['size']} B "
                        f"({(ram_need - p['ram']['size']) / MiB:.2f} MiB)")
    if flash_need > p["flash"]["size"]:
        problems.append(f"flash: weights alone {flash_need} B > {p['flash']['size']} B "
                        f"({p['flash']['name']}), over by {flash_need - p['flash']['size']} B "
                        f"({(flash_need - p['flash']['size']) / MiB:.2f} MiB)")
    if problems:
        raise SqccError(f"model too big for {p['name']} ({p['board']}): " + "; ".join(problems))

    parent = os.path.dirname(os.path.abspath(out_dir)) or "."
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(os.path.abspath(out_dir))}.tmp-", dir=parent)
    try:
        _copy_headers(tmp)
        with open(os.path.join(tmp, "kernels.c"), "w") as f:
            f.write("/* TVM 0.27 target \"c\" kernels (tirx.disable_assert), exported by sqcc. */\n" + src)
        with open(os.path.join(tmp, "weights.bin"), "wb") as f:
            for c in g.consts:
                b = g.bufs[c]
                f.seek(b.offset)
                f.write(g.const_data[c].tobytes())
            f.truncate(weights_bytes)
        with open(os.path.join(tmp, "weights.S"), "w") as f:
            f.write("/* All constants of the model, 16-byte aligned, in flash. */\n"
                    "  .section .rodata.sqcc_weights,\"a\",%progbits\n  .balign 16\n"
                    "  .global sqcc_weights\n  .type sqcc_weights, %object\nsqcc_weights:\n"
                    f"  .incbin \"weights.bin\"\n  .size sqcc_weights, {weights_bytes}\n")
        with open(os.path.join(tmp, "model.c"), "w") as f:
            f.write(_gen_model_c(g, plan_off, arena, ws))
        with open(os.path.join(tmp, "model.h"), "w") as f:
            f.write(_gen_model_h(g, arena))
        with open(os.path.join(tmp, "main.c"), "w") as f:
            f.write(_MAIN_C)
        with open(os.path.join(tmp, "link.ld"), "w") as f:
            f.write(_gen_linker(p, stack_bytes))
        with open(os.path.join(tmp, "Makefile"), "w") as f:
            f.write(_gen_makefile(p, _qemu_cmd(p)))
        # bench input: deterministic
        rng = np.random.default_rng(0)
        with open(os.path.join(tmp, "bench_input.bin"), "wb") as f:
            for s in in_specs:
                f.write(rng.standard_normal(s["shape"]).astype(s["dtype"]).tobytes())

        # build (the same commands as the Makefile)
        cflags, ldflags, libs = _flags(p)
        objs = []
        t1 = time.time()
        procs = []
        for s in _SOURCES:
            o = s.rsplit(".", 1)[0] + ".o"
            objs.append(o)
            procs.append((s, subprocess.Popen([tools["gcc"], *cflags, "-c", s, "-o", o], cwd=tmp,
                                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)))
        for s, pr in procs:
            out, _ = pr.communicate(timeout=1800)
            if pr.returncode != 0:
                raise SqccError(f"micro: arm-none-eabi-gcc failed on {s}: {_first_error(out)}")
        secs = _link(tools, p, tmp, objs)
        t_gcc = time.time() - t1
        fig = {
            "preset": p["name"], "cpu": p["cpu"], "board": p["board"], "qemu_machine": p["machine"],
            "cflags": p["cflags"],
            "inputs": in_specs, "outputs": out_specs,
            "weights_bytes": weights_bytes,
            "flash_capacity": p["flash"]["size"],
            "ram_capacity": p["ram"]["size"],
            "arena_bytes": arena,
            "arena_lower_bound": plan["lower_bound"],
            "arena_no_reuse": plan["no_reuse"],
            "arena_peak": _arena_peak(plan, g),
            "stack_policy": "auto: measured high-water mark + margin" if auto_stack and measure else "fixed",
            "kernels": len({s.kernel for s in g.steps}),
            "steps": [{"kernel": s.kernel, "args": s.args, "workspace": s.workspace} for s in g.steps],
            "plan": plan,
            "views": {n: b.base for n, b in g.bufs.items() if b.kind == "view"},  # reshapes: no copy
            "heap": "none (no malloc/_sbrk linked)",
            "time_s": {"tvm": round(t_tvm, 2), "gcc": round(t_gcc, 2)},
            "cost_metric": "instructions executed by sqcc_model_run under qemu-system-arm -icount shift=0 "
                           "(SysTick ticks of virtual time, calibrated with a 2,000,000-instruction loop); "
                           "QEMU is not cycle-accurate",
        }
        fig.update(_size_fields(secs, stack_bytes))
        _write_json(os.path.join(tmp, "micro.json"), fig)
        if measure:
            res = _qemu_run(tmp, p, os.path.join(tmp, "bench_input.bin"), keep_output=False)
            wall = res["wall_s"]
            if auto_stack:
                # The generated code's stack use does not depend on the input (no recursion, no
                # VLAs, fixed-size kernel locals), so the measured high-water mark is the model's;
                # the margin covers an exception frame (SysTick, with FP context) and the harness.
                tight = _align(res["stack_used"] + STACK_MARGIN, 256)
                if tight < stack_bytes:
                    with open(os.path.join(tmp, "link.ld"), "w") as f:
                        f.write(_gen_linker(p, tight))
                    secs = _link(tools, p, tmp, objs)
                    res2 = _qemu_run(tmp, p, os.path.join(tmp, "bench_input.bin"), keep_output=False)
                    if res2["instructions"] != res["instructions"] or res2["stack_used"] > tight - 256:
                        raise SqccError(f"micro: relinking with a {tight} B stack changed the run "
                                        f"({res['instructions']} vs {res2['instructions']} instructions, "
                                        f"stack {res['stack_used']} vs {res2['stack_used']} B)")
                    res, stack_bytes = res2, tight
                    wall += res2["wall_s"]
                    fig.update(_size_fields(secs, stack_bytes))
            fig.update(_bench_fields(res))
            fig.update(_ram_fields(fig, res["stack_used"]))
            fig["time_s"]["qemu"] = round(wall, 2)
            _write_json(os.path.join(tmp, "micro.json"), fig)
        _atomic_replace(tmp, out_dir)
        tmp = None
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    return fig


def _link(tools: dict, p: dict, tmp: str, objs: list) -> dict:
    """Link model.elf in ``tmp`` (link.ld as written); check it has no heap; its section sizes."""
    _, ldflags, libs = _flags(p)
    r = _run([tools["gcc"], *ldflags, *objs, "-Wl,--start-group", *libs, "-Wl,--end-group",
              "-o", "model.elf"], tmp, "link")
    if r.returncode != 0:
        over = re.findall(r"region `(\w+)' overflowed by (\d+) bytes", r.stderr)
        if over:
            msg = "; ".join(f"{'flash' if reg in ('FLASH', 'VECT') else 'RAM'} over by {int(n)} B "
                            f"({int(n) / MiB:.2f} MiB)" for reg, n in over)
            raise SqccError(f"model too big for {p['name']} ({p['board']}): {msg}")
        raise SqccError(f"micro: link failed: {_first_error(r.stderr)}")
    nm_tool = tools["gcc"][: -len("gcc")] + "nm"
    nm = subprocess.run([nm_tool, "model.elf"], cwd=tmp, capture_output=True, text=True).stdout \
        if os.path.exists(nm_tool) or shutil.which(nm_tool) else ""
    heap_syms = sorted({m for m in re.findall(r"\b(malloc|_malloc_r|_sbrk|_sbrk_r|calloc|free)\b", nm)})
    if heap_syms:
        raise SqccError(f"micro: the ELF links heap functions ({', '.join(heap_syms)}); "
                        "the micro target must not use a heap")
    return _section_sizes(tools["size"], os.path.join(tmp, "model.elf"))


FLASH_SECTIONS = [".vectors", ".text", ".rodata", ".ARM.extab", ".ARM.exidx", ".data"]
RAM_SECTIONS = [".data", ".bss", ".sqcc_arena", ".stack"]


def _size_fields(secs: dict, stack_bytes: int) -> dict:
    return {
        "flash_bytes": sum(secs.get(s, 0) for s in FLASH_SECTIONS),
        "flash_text_bytes": secs.get(".text", 0) + secs.get(".vectors", 0),
        "flash_rodata_bytes": secs.get(".rodata", 0),
        # RAM the ELF reserves: .data + .bss + the arena + the stack (all statically placed)
        "ram_bytes": sum(secs.get(s, 0) for s in RAM_SECTIONS),
        "stack_reserved": stack_bytes,
        "data_bss_bytes": secs.get(".data", 0) + secs.get(".bss", 0),
        "sections": secs,
    }


def _arena_peak(plan: dict, g: Graph) -> dict:
    """What is in the arena at its fullest step: the live buffers there (inputs, activations,
    outputs, kernel workspaces), with their shapes and dtypes."""
    bs = plan["buffers"]
    steps = sorted({t for b in bs for t in (b["start"], b["end"])})
    best, best_t = -1, None
    for t in steps:  # the step whose live buffers cover the most arena bytes (overlaps counted once)
        iv = sorted((b["offset"], b["offset"] + b["size"]) for b in bs if b["start"] <= t <= b["end"])
        tot, hi = 0, 0
        for lo, up in iv:
            tot += max(0, up - max(lo, hi))
            hi = max(hi, up)
        if tot > best:
            best, best_t = tot, t
    live = sorted((b for b in bs if b["start"] <= best_t <= b["end"]), key=lambda b: b["offset"])
    kinds: dict = {}
    for b in bs:
        kinds[b["kind"]] = kinds.get(b["kind"], 0) + 1
    by_kind = {}
    for b in live:
        by_kind[b["kind"]] = by_kind.get(b["kind"], 0) + b["size"]
    kernel = g.steps[best_t].kernel if best_t is not None and 0 <= best_t < len(g.steps) else None
    names = {b["name"] for b in live}
    inplace = [o for o in plan.get("overlaps", []) if o["out"] in names and o["in"] in names]
    return {
        "step": best_t, "kernel": kernel, "occupied_bytes": max(best, 0), "live_bytes_by_kind": by_kind,
        "in_place": inplace,
        "live": [{"name": b["name"], "kind": b["kind"], "bytes": b["size"], "offset": b["offset"],
                  "shape": list(g.bufs[b["name"]].shape) if b["name"] in g.bufs else None,
                  "dtype": g.bufs[b["name"]].dtype if b["name"] in g.bufs else None} for b in live],
        "workspace_bytes_max": max((b["size"] for b in bs if b["kind"] == "workspace"), default=0),
        "dtypes": sorted({g.bufs[b["name"]].dtype for b in bs if b["name"] in g.bufs}),
        "max_bytes_by_dtype": {dt: max(b["size"] for b in bs if b["name"] in g.bufs
                                       and g.bufs[b["name"]].dtype == dt)
                               for dt in sorted({g.bufs[b["name"]].dtype for b in bs if b["name"] in g.bufs})},
        "buffers_by_kind": kinds,
    }


def _ram_fields(fig: dict, stack_used: int) -> dict:
    """RAM in use = .data + .bss + arena (inputs, outputs, activations, workspaces) + stack used."""
    used = fig["data_bss_bytes"] + fig["arena_bytes"] + stack_used
    pk = fig.get("arena_peak") or {}
    live = ", ".join(f"{b['name']} {'×'.join(map(str, b['shape'] or []))} {b['dtype']} {b['bytes']:,} B"
                     for b in pk.get("live", []))
    ip = "".join(f"; {o['out']} written over {o['in']} in place" for o in pk.get("in_place", []))
    if pk.get("live"):
        live += f"{ip}: {pk.get('occupied_bytes', 0):,} B"
    text = (f"{used:,} B used = arena {fig['arena_bytes']:,} B (peak at step {pk.get('step')}: {live}) "
            f"+ stack {stack_used:,} B (of {fig['stack_reserved']:,} B reserved) + .data/.bss "
            f"{fig['data_bss_bytes']:,} B; reserved by the ELF: {fig['ram_bytes']:,} B")
    return {"ram_used_bytes": used, "ram_breakdown": {
        "arena": fig["arena_bytes"], "stack_used": stack_used, "stack_reserved": fig["stack_reserved"],
        "data_bss": fig["data_bss_bytes"], "total_used": used, "total_reserved": fig["ram_bytes"],
        "text": text}}


def _overlap_allowances(g: Graph, kfuncs: dict) -> list:
    """[{"out", "in", "d_max", "step"}] for every step whose single output may be written over an
    arena input that dies at that step (views resolve to the buffer they reinterpret)."""
    out, cache = [], {}
    for i, s in enumerate(g.steps):
        if s.n_out != 1:
            continue
        o = s.args[-1]
        ob = g.bufs[o]
        if ob.kind not in ("act", "output") or ob.start != i:
            continue
        n_in = len(s.args) - 1
        for j, a in enumerate(s.args[:n_in]):
            ab = g.bufs[a]
            root = ab.base or a
            rb = g.bufs[root]
            if rb.kind not in ("input", "act") or rb.end != i or ab.nbytes != rb.nbytes:
                continue
            idxs = [k for k, x in enumerate(s.args[:n_in]) if (g.bufs[x].base or x) == root]
            f = kfuncs.get(s.kernel)
            if f is None:
                continue
            lims = []
            for k in idxs:
                key = (s.kernel, k)
                if key not in cache:
                    cache[key] = _overlap_limit(f, k, len(s.args) - 1)
                lims.append(cache[key])
            if any(d is None for d in lims) or any(x["in"] == root and x["out"] == o for x in out):
                continue
            out.append({"out": o, "in": root, "d_max": int(min(lims)), "step": i})
    return out


def _bench_fields(res: dict) -> dict:
    return {"instructions": res["instructions"], "run_ticks": res["run_ticks"],
            "calib_ticks": res["calib_ticks"], "stack_used": res["stack_used"]}


def _first_error(text: str) -> str:
    for line in text.splitlines():
        if "error" in line.lower():
            return line.strip()[:300]
    return (text.strip().splitlines() or ["(no output)"])[-1][:300]


def _qemu_run(build_dir: str, p: dict, input_path: str | None, keep_output=True) -> dict:
    qemu = _which("qemu-system-arm")
    elf = os.path.join(build_dir, "model.elf")
    work = tempfile.mkdtemp(prefix="sqcc-micro-run-")
    try:
        if input_path is not None:
            shutil.copyfile(input_path, os.path.join(work, "input.bin"))
        cmd = _qemu_cmd(p, elf=elf, inp="input.bin" if input_path else "", out="output.bin")
        if input_path is None:
            cmd[cmd.index("-semihosting-config") + 1] = "enable=on,target=native,arg=model.elf"
        cmd[0] = qemu
        t = time.time()
        r = _run(cmd, work, f"qemu-system-arm -M {p['machine']}", timeout=QEMU_TIMEOUT_S)
        wall = time.time() - t
        text = r.stdout + r.stderr
        vals = dict(re.findall(r"(sqcc_\w+)=(\d+)", text))
        if r.returncode != 0 or "sqcc_done" not in text:
            raise SqccError(f"micro: the model failed under qemu-system-arm -M {p['machine']} "
                            f"(exit {r.returncode}): {' | '.join(text.strip().splitlines()[-3:])[:300]}")
        calib_t, run_t = int(vals["sqcc_calib_ticks"]), int(vals["sqcc_run_ticks"])
        res = {"run_ticks": run_t, "calib_ticks": calib_t,
               "instructions": int(round(run_t * int(vals["sqcc_calib_insns"]) / max(calib_t, 1))),
               "stack_used": int(vals["sqcc_stack_used"]), "wall_s": round(wall, 2)}
        if keep_output:
            with open(os.path.join(work, "output.bin"), "rb") as f:
                res["output"] = f.read()
        return res
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _load_meta(out_dir: str) -> dict:
    path = os.path.join(out_dir, "micro.json")
    if not os.path.exists(path) or not os.path.exists(os.path.join(out_dir, "model.elf")):
        raise SqccError(f"{out_dir}: not a micro build (micro.json / model.elf missing)")
    with open(path) as f:
        return json.load(f)


def run_micro(out_dir: str, inputs: dict) -> list:
    """Run the ELF in ``out_dir`` under qemu on ``inputs`` ({name: ndarray}); returns the outputs."""
    meta = _load_meta(out_dir)
    p = get_preset(meta["preset"])
    if isinstance(inputs, (list, tuple)):
        inputs = {s["name"]: a for s, a in zip(meta["inputs"], inputs)}
    blob = bytearray()
    for s in meta["inputs"]:
        if s["name"] not in inputs:
            raise SqccError(f"micro: missing input '{s['name']}' (expected {s['shape']} {s['dtype']})")
        a = np.asarray(inputs[s["name"]])
        if tuple(a.shape) != tuple(s["shape"]):
            raise SqccError(f"micro: input '{s['name']}' has shape {list(a.shape)}, expected {s['shape']}")
        blob += np.ascontiguousarray(a.astype(s["dtype"], copy=False)).tobytes()
    extra = set(inputs) - {s["name"] for s in meta["inputs"]}
    if extra:
        raise SqccError(f"micro: unknown input(s) {', '.join(sorted(extra))}")
    fd, path = tempfile.mkstemp(prefix="sqcc-micro-in-", suffix=".bin")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(bytes(blob))
        res = _qemu_run(out_dir, p, path)
    finally:
        os.unlink(path)
    outs, off, data = [], 0, res["output"]
    for s in meta["outputs"]:
        n = int(np.prod(s["shape"])) * np.dtype(s["dtype"]).itemsize
        outs.append(np.frombuffer(data[off:off + n], dtype=s["dtype"]).reshape(s["shape"]).copy())
        off += n
    return outs


def bench_micro(out_dir: str) -> dict:
    """Instruction count (deterministic: fixed input, qemu -icount shift=0), flash and RAM."""
    meta = _load_meta(out_dir)
    p = get_preset(meta["preset"])
    res = _qemu_run(out_dir, p, os.path.join(out_dir, "bench_input.bin"), keep_output=False)
    keys = ["preset", "cpu", "board", "qemu_machine", "flash_bytes", "flash_capacity", "weights_bytes",
            "flash_text_bytes", "ram_bytes", "ram_capacity", "arena_bytes", "stack_reserved",
            "data_bss_bytes", "cost_metric"]
    out = {k: meta[k] for k in keys if k in meta}
    out.update(_bench_fields(res))
    ram = _ram_fields(meta, res["stack_used"])
    out["ram_used_bytes"] = ram["ram_used_bytes"]
    out["ram_breakdown"] = ram["ram_breakdown"]["text"]
    pk = meta.get("arena_peak") or {}
    if pk:
        out["arena_dtypes"] = ", ".join(pk.get("dtypes", []))
        out["workspace_bytes_max"] = pk.get("workspace_bytes_max", 0)
    out["qemu_wall_s"] = res["wall_s"]
    return out


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


def spec(preset: str | None = None):
    """TargetSpec for ``micro:PRESET`` (sqcc.targets.micro_spec uses it)."""
    from sqcc.targets import TargetSpec
    p = get_preset(preset or "cortex-m4")
    return TargetSpec(
        f"micro:{p['name']}", "micro", p["name"],
        f"{p['cpu']} on {p['board']} (qemu-system-arm -M {p['machine']}), flash {p['flash']['size'] // KiB} KiB, "
        f"RAM {p['ram']['size'] // KiB} KiB; TVM c kernels + sqcc driver, one static arena, no heap",
        tvm_target={"kind": "c"}, runs_locally=False, device_type="micro",
        cross_compiler="arm-none-eabi-gcc", toolchain_package="gcc-arm-none-eabi",
        how_to_run=f"model.elf under qemu-system-arm -M {p['machine']} -semihosting (run_micro)",
        how_to_measure="instructions executed by the inference under qemu -icount shift=0 (SysTick, calibrated); "
                       "flash/RAM from arm-none-eabi-size and the arena plan (bench_micro)",
        checker=lambda: check_toolchain(p, need_qemu=True))


target_spec = spec


def is_micro_build(path: str) -> bool:
    """True if ``path`` is a directory written by :func:`compile_micro`."""
    return os.path.isdir(path) and os.path.exists(os.path.join(path, "micro.json")) and \
        os.path.exists(os.path.join(path, "model.elf"))
