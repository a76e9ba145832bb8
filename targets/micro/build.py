"""compile_micro: Relax module -> a directory of C sources, Makefile, model.elf and micro.json.

The steps: lower and fuse (``lowering``), build the kernels with TVM's ``c`` target (``kernels``),
plan ONE arena (``arena``; in-place overlaps from ``tir_eval``), check the flash/RAM budget before
spending time in gcc, write the sources (``codegen``), compile and link with ``arm-none-eabi-gcc``
(the same commands as the Makefile), then run once under qemu (``run``) for the instruction count
and the stack high-water mark. The stack is sized from the measured high-water mark (+512 B) after
that first run, and the ELF relinked and rerun to check nothing changed. RAM = .data + .bss + arena
(inputs, outputs, activations, workspaces) + stack; ``micro.json`` has the plan, the arena's fullest
step (``arena_peak``) and ``ram_breakdown``.

The output directory is written atomically: everything is built in a sibling temp directory which
replaces ``out_dir`` only when the build (and measurement) succeeded.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
import time

import numpy as np

from sqcc.errors import SqccError, one_line

from .arena import align_up, arena_peak, check_plan, plan_arena
from .boards import MiB, Preset, get_preset
from .codegen import gen_linker, gen_makefile, gen_model_c, gen_model_h, main_c
from .kernels import build_kernels
from .lowering import Graph, build_graph, relax_lower
from .run import bench_fields, qemu_run, ram_fields
from .tir_eval import overlap_allowances
from .toolchain import SOURCES, check_toolchain, first_error, flags, run_tool, section_sizes

DEFAULT_STACK = 16 * 1024  # first link (and the budget check); then the measured need + STACK_MARGIN
STACK_MARGIN = 512
FLASH_SECTIONS = [".vectors", ".text", ".rodata", ".ARM.extab", ".ARM.exidx", ".data"]
RAM_SECTIONS = [".data", ".bss", ".sqcc_arena", ".stack"]
COST_METRIC = ("instructions executed by sqcc_model_run under qemu-system-arm -icount shift=0 "
               "(SysTick ticks of virtual time, calibrated with a 2,000,000-instruction loop); "
               "QEMU is not cycle-accurate")


def compile_micro(mod, inputs, outputs, preset: str, out_dir: str, *, stack_bytes: int | None = None,
                  schedule: bool = True, measure: bool = True, overlap: bool = True) -> dict:
    """Compile a Relax module for a Cortex-M preset into ``out_dir`` (sources, Makefile, model.elf,
    micro.json). Returns the figures written to ``out_dir/micro.json``.

    ``inputs``/``outputs``: TensorSpec-like objects or dicts (name, shape, dtype), in the order of
    main's parameters / results. ``preset``: ``cortex-m4`` | ``cortex-m7`` | ``cortex-m55`` (a
    ``micro:`` prefix is accepted). ``schedule``: sqcc's inline schedule (less workspace, faster).
    ``measure``: run once under qemu for the instruction count and the stack high-water mark.
    ``overlap``: let a kernel's output share arena bytes with an input it finishes reading, where
    its access order (checked on its TIR) allows. ``stack_bytes``: the stack to reserve; None
    (default): link with 16 KiB, measure the high-water mark under qemu, relink with that + 512 B
    (rounded up to 256 B) and check the run is unchanged."""
    t0 = time.time()
    p = get_preset(preset)
    tools = check_toolchain(p, need_qemu=measure)
    auto_stack = stack_bytes is None
    if auto_stack:
        stack_bytes = DEFAULT_STACK  # first link; shrunk to the measured high-water mark + margin
    lowered = _lower(mod)
    g = build_graph(lowered)
    in_specs, out_specs = spec_list(inputs), spec_list(outputs)
    _check_io(g, in_specs, out_specs)
    src, ws, kfuncs = build_kernels(lowered, schedule=schedule)
    t_tvm = time.time() - t0
    weights_bytes = _place_weights(g)
    plan = _plan(g, ws, kfuncs, src, overlap)
    _check_budget(p, plan["peak"], stack_bytes, weights_bytes)

    parent = os.path.dirname(os.path.abspath(out_dir)) or "."
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(os.path.abspath(out_dir))}.tmp-", dir=parent)
    try:
        _write_sources(tmp, g, src, plan, ws, weights_bytes, p, stack_bytes, in_specs)
        t1 = time.time()
        objs = _compile_objects(tools, p, tmp)
        secs = _link(tools, p, tmp, objs)
        fig = _figures(p, g, plan, in_specs, out_specs, weights_bytes, auto_stack and measure)
        fig["time_s"] = {"tvm": round(t_tvm, 2), "gcc": round(time.time() - t1, 2)}
        fig.update(size_fields(secs, stack_bytes))
        write_json(os.path.join(tmp, "micro.json"), fig)
        if measure:
            _measure(tools, p, tmp, objs, fig, stack_bytes, auto_stack)
            write_json(os.path.join(tmp, "micro.json"), fig)
        atomic_replace(tmp, out_dir)
        tmp = None
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    return fig


def _lower(mod):
    try:
        return relax_lower(mod)
    except SqccError:
        raise
    except Exception as e:  # noqa: BLE001 -- a TVM failure on a valid model is sqcc's gap: say where
        raise SqccError(f"micro: lowering the model with TVM (legalize, fuse) failed: "
                        f"{one_line(e)[:300]}; this is a gap in sqcc's "
                        "micro target, please report it") from e


def spec_list(specs):
    """[{"name", "shape", "dtype"}] from TensorSpec-like objects or dicts (dtype defaults to float32)."""
    out = []
    for s in specs:
        if isinstance(s, dict):
            out.append({"name": s["name"], "shape": list(s["shape"]), "dtype": s.get("dtype", "float32")})
        else:
            out.append({"name": s.name, "shape": list(s.shape), "dtype": getattr(s, "dtype", "float32")})
    return out


def _check_io(g: Graph, in_specs: list, out_specs: list) -> None:
    if len(in_specs) != len(g.inputs) or len(out_specs) != len(g.outputs):
        raise SqccError(f"micro: the module has {len(g.inputs)} input(s) and {len(g.outputs)} output(s), "
                        f"but {len(in_specs)} and {len(out_specs)} were specified")
    for spec, name in zip(in_specs, g.inputs):
        b = g.bufs[name]
        if tuple(spec["shape"]) != tuple(b.shape) or spec["dtype"] != b.dtype:
            raise SqccError(f"micro: input '{spec['name']}' is {spec['shape']} {spec['dtype']} but the "
                            f"module's is {list(b.shape)} {b.dtype}")


def _place_weights(g: Graph) -> int:
    """Weights: one blob, 16-byte aligned entries; sets each constant's offset, returns the size."""
    off = 0
    for c in g.consts:
        b = g.bufs[c]
        b.offset = off
        off = align_up(off + b.nbytes)
    return off


def _plan(g: Graph, ws: dict, kfuncs: dict, src: str, overlap: bool) -> dict:
    """The arena plan over inputs, activations, outputs and each step's workspace (checked)."""
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
    plan = plan_arena(items, overlaps=overlap_allowances(g, kfuncs) if overlap else None)
    check_plan(plan)
    return plan


def _check_budget(p: Preset, arena: int, stack_bytes: int, weights_bytes: int) -> None:
    """Budget checks before spending time in gcc (the linker catches what code adds on top)."""
    ram_need = arena + stack_bytes
    problems = []
    if ram_need > p.ram.size:
        problems.append(f"RAM: arena {arena} B + stack {stack_bytes} B = {ram_need} B > {p.ram.size} B "
                        f"({p.ram.name}), over by {ram_need - p.ram.size} B "
                        f"({(ram_need - p.ram.size) / MiB:.2f} MiB)")
    if weights_bytes > p.flash.size:
        problems.append(f"flash: weights alone {weights_bytes} B > {p.flash.size} B "
                        f"({p.flash.name}), over by {weights_bytes - p.flash.size} B "
                        f"({(weights_bytes - p.flash.size) / MiB:.2f} MiB)")
    if problems:
        raise SqccError(f"model too big for {p.name} ({p.board}): " + "; ".join(problems))


def _write(tmp: str, name: str, text: str) -> None:
    with open(os.path.join(tmp, name), "w") as f:
        f.write(text)


def _write_sources(tmp, g: Graph, src, plan, ws, weights_bytes, p: Preset, stack_bytes, in_specs):
    copy_headers(tmp)
    _write(tmp, "kernels.c", "/* TVM 0.27 target \"c\" kernels (tirx.disable_assert), exported by sqcc. */\n" + src)
    with open(os.path.join(tmp, "weights.bin"), "wb") as f:
        for c in g.consts:
            b = g.bufs[c]
            f.seek(b.offset)
            f.write(g.const_data[c].tobytes())
        f.truncate(weights_bytes)
    _write(tmp, "weights.S", "/* All constants of the model, 16-byte aligned, in flash. */\n"
           "  .section .rodata.sqcc_weights,\"a\",%progbits\n  .balign 16\n"
           "  .global sqcc_weights\n  .type sqcc_weights, %object\nsqcc_weights:\n"
           f"  .incbin \"weights.bin\"\n  .size sqcc_weights, {weights_bytes}\n")
    plan_off = {b["name"]: b["offset"] for b in plan["buffers"]}
    _write(tmp, "model.c", gen_model_c(g, plan_off, plan["peak"], ws))
    _write(tmp, "model.h", gen_model_h(g, plan["peak"]))
    _write(tmp, "main.c", main_c())
    _write(tmp, "link.ld", gen_linker(p, stack_bytes))
    _write(tmp, "Makefile", gen_makefile(p))
    rng = np.random.default_rng(0)  # bench input: deterministic
    with open(os.path.join(tmp, "bench_input.bin"), "wb") as f:
        for s in in_specs:
            f.write(rng.standard_normal(s["shape"]).astype(s["dtype"]).tobytes())


def _compile_objects(tools: dict, p: Preset, tmp: str) -> list:
    """Compile every source in parallel (the same commands as the Makefile); the object names."""
    cflags, _, _ = flags(p)
    objs, procs = [], []
    for s in SOURCES:
        o = s.rsplit(".", 1)[0] + ".o"
        objs.append(o)
        procs.append((s, subprocess.Popen([tools["gcc"], *cflags, "-c", s, "-o", o], cwd=tmp,
                                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)))
    for s, pr in procs:
        out, _ = pr.communicate(timeout=1800)
        if pr.returncode != 0:
            raise SqccError(f"micro: arm-none-eabi-gcc failed on {s}: {first_error(out)}")
    return objs


def _link(tools: dict, p: Preset, tmp: str, objs: list) -> dict:
    """Link model.elf in ``tmp`` (link.ld as written); check it has no heap; its section sizes."""
    _, ldflags, libs = flags(p)
    r = run_tool([tools["gcc"], *ldflags, *objs, "-Wl,--start-group", *libs, "-Wl,--end-group",
                  "-o", "model.elf"], tmp, "link")
    if r.returncode != 0:
        over = re.findall(r"region `(\w+)' overflowed by (\d+) bytes", r.stderr)
        if over:
            msg = "; ".join(f"{'flash' if reg in ('FLASH', 'VECT') else 'RAM'} over by {int(n)} B "
                            f"({int(n) / MiB:.2f} MiB)" for reg, n in over)
            raise SqccError(f"model too big for {p.name} ({p.board}): {msg}")
        raise SqccError(f"micro: link failed: {first_error(r.stderr)}")
    nm_tool = tools["gcc"][: -len("gcc")] + "nm"
    nm = subprocess.run([nm_tool, "model.elf"], cwd=tmp, capture_output=True, text=True).stdout \
        if os.path.exists(nm_tool) or shutil.which(nm_tool) else ""
    heap_syms = sorted({m for m in re.findall(r"\b(malloc|_malloc_r|_sbrk|_sbrk_r|calloc|free)\b", nm)})
    if heap_syms:
        raise SqccError(f"micro: the ELF links heap functions ({', '.join(heap_syms)}); "
                        "the micro target must not use a heap")
    return section_sizes(tools["size"], os.path.join(tmp, "model.elf"))


def size_fields(secs: dict, stack_bytes: int) -> dict:
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


def _figures(p: Preset, g: Graph, plan, in_specs, out_specs, weights_bytes, auto_stack: bool) -> dict:
    """micro.json before measurement (sizes and time_s are added by the caller)."""
    return {
        "preset": p.name, "cpu": p.cpu, "board": p.board, "qemu_machine": p.machine,
        "cflags": list(p.cflags),
        "inputs": in_specs, "outputs": out_specs,
        "weights_bytes": weights_bytes,
        "flash_capacity": p.flash.size,
        "ram_capacity": p.ram.size,
        "arena_bytes": plan["peak"],
        "arena_lower_bound": plan["lower_bound"],
        "arena_no_reuse": plan["no_reuse"],
        "arena_peak": arena_peak(plan, g),
        "stack_policy": "auto: measured high-water mark + margin" if auto_stack else "fixed",
        "kernels": len({s.kernel for s in g.steps}),
        "steps": [{"kernel": s.kernel, "args": s.args, "workspace": s.workspace} for s in g.steps],
        "plan": plan,
        "views": {n: b.base for n, b in g.bufs.items() if b.kind == "view"},  # reshapes: no copy
        "heap": "none (no malloc/_sbrk linked)",
        "time_s": {},
        "cost_metric": COST_METRIC,
    }


def _measure(tools, p: Preset, tmp, objs, fig, stack_bytes, auto_stack) -> None:
    """Run once under qemu; with ``auto_stack``, relink with the measured stack + margin and check
    the run is unchanged. Updates ``fig`` with the run's figures."""
    res = qemu_run(tmp, p, os.path.join(tmp, "bench_input.bin"), keep_output=False)
    wall = res["wall_s"]
    if auto_stack:
        # The generated code's stack use does not depend on the input (no recursion, no
        # VLAs, fixed-size kernel locals), so the measured high-water mark is the model's;
        # the margin covers an exception frame (SysTick, with FP context) and the harness.
        tight = align_up(res["stack_used"] + STACK_MARGIN, 256)
        if tight < stack_bytes:
            _write(tmp, "link.ld", gen_linker(p, tight))
            secs = _link(tools, p, tmp, objs)
            res2 = qemu_run(tmp, p, os.path.join(tmp, "bench_input.bin"), keep_output=False)
            if res2["instructions"] != res["instructions"] or res2["stack_used"] > tight - 256:
                raise SqccError(f"micro: relinking with a {tight} B stack changed the run "
                                f"({res['instructions']} vs {res2['instructions']} instructions, "
                                f"stack {res['stack_used']} vs {res2['stack_used']} B)")
            res, stack_bytes = res2, tight
            wall += res2["wall_s"]
            fig.update(size_fields(secs, stack_bytes))
    fig.update(bench_fields(res))
    fig.update(ram_fields(fig, res["stack_used"]))
    fig["time_s"]["qemu"] = round(wall, 2)


def copy_headers(dst: str):
    """The TVM / TVM-FFI / DLPack headers kernels.c and model.c include, into ``dst/include``."""
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


def atomic_replace(tmp: str, out_dir: str):
    """Move ``tmp`` to ``out_dir``, replacing what was there (a stale build never survives half-written)."""
    out_dir = os.path.abspath(out_dir)
    old = None
    if os.path.exists(out_dir):
        old = tempfile.mkdtemp(prefix=".old-", dir=os.path.dirname(out_dir))
        os.rmdir(old)
        os.rename(out_dir, old)
    os.rename(tmp, out_dir)
    if old:
        shutil.rmtree(old, ignore_errors=True)


def write_json(path: str, obj):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1)
    os.replace(tmp, path)
