"""C generation: ``model.c`` / ``model.h`` (the driver), ``main.c`` (the harness), ``link.ld`` and
the ``Makefile``.

``model.c`` calls the kernels in topological order over ONE statically planned arena, weights as
``const`` data in flash (``weights.bin`` pulled in by ``.incbin``), no heap, no TVM runtime: the
three runtime symbols the kernels need are stubbed (``templates/runtime_stubs.c``):
``TVMBackendAllocWorkspace`` / ``TVMBackendFreeWorkspace`` hand out the planned workspace slot,
``TVMFFIErrorSetRaisedFromCStrParts`` records the failure.

``main.c`` (``templates/main.c``, copied as is) holds the vector table, reset handler and ARM
semihosting (no newlib stdio): it reads the inputs from a host file, runs the model once, writes
the outputs to a host file, and prints the instruction count (SysTick under
``qemu -icount shift=0``, calibrated against a loop of known length) and the stack high-water mark.

The templates are package data; ``@NAME@`` placeholders are filled in one pass (a filled-in value
is never scanned again, so the Makefile's own ``@INPUT@``-style qemu placeholders survive as given).
"""
from __future__ import annotations

import re
from importlib import resources

from sqcc.errors import SqccError

from .arena import ALIGN
from .boards import Preset
from .toolchain import SOURCES, flags, qemu_cmd

_DT = {"float32": ("kDLFloat", 32), "float64": ("kDLFloat", 64), "float16": ("kDLFloat", 16),
       "int8": ("kDLInt", 8), "int16": ("kDLInt", 16), "int32": ("kDLInt", 32), "int64": ("kDLInt", 64),
       "uint8": ("kDLUInt", 8), "uint16": ("kDLUInt", 16), "uint32": ("kDLUInt", 32),
       "uint64": ("kDLUInt", 64), "bool": ("kDLBool", 8)}


def template(name: str) -> str:
    """The text of ``templates/NAME`` (package data)."""
    return resources.files(__package__).joinpath("templates", name).read_text()


def render(name: str, **subs) -> str:
    """``templates/NAME`` with every ``@KEY@`` replaced by ``subs[KEY]`` (one pass)."""
    def fill(m):
        if m.group(1) not in subs:
            raise KeyError(f"template {name}: no value for @{m.group(1)}@")
        return str(subs[m.group(1)])
    return re.sub(r"@([A-Z_]+)@", fill, template(name))


def _cname(s: str) -> str:
    return re.sub(r"\W", "_", s)


def _tensor_decls(g, plan_off: dict) -> list:
    """A static DLTensor (and its shape array) for every buffer a kernel uses, and every input."""
    L = []
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
    return L


def _io_table(g, plan_off: dict, kind: str, names: list) -> list:
    """main.c's view of the inputs or outputs: arena pointers and byte counts."""
    ptrs = ", ".join(f"sqcc_arena + {plan_off[g.bufs[n].base or n]}" for n in names) or "0"
    sizes = ", ".join(str(g.bufs[n].nbytes) for n in names) or "0"
    return [f"uint8_t* const sqcc_{kind}_ptr[] = {{{ptrs}}};",
            f"const uint32_t sqcc_{kind}_bytes[] = {{{sizes}}};"]


def _run_function(g, plan_off: dict, ws_bytes: dict) -> list:
    """sqcc_model_run: one block per step; returns the 1-based step that failed, or 0."""
    L = ["int sqcc_model_run(void) {", "  TVMFFIAny ret;", "  int32_t rc;", "  sqcc_last_error = 0;"]
    for i, s in enumerate(g.steps):
        L.append(f"  {{ /* step {i}: {s.kernel} */")
        L.append(f"    static const TVMFFIAny args[{len(s.args)}] = {{")
        for a in s.args:
            L.append(f"      {{ .type_index = kTVMFFIDLTensorPtr, .zero_padding = 0, "
                     f".v_ptr = (void*)&t_{_cname(a)} }},")
        L.append("    };")
        if s.ws_buf is not None:
            L.append(f"    sqcc_ws_cur = sqcc_arena + {plan_off[s.ws_buf]}; "
                     f"sqcc_ws_end = sqcc_ws_cur + {ws_bytes[s.kernel]};")
        else:
            L.append("    sqcc_ws_cur = sqcc_ws_end = NULL;")
        L.append(f"    rc = __tvm_ffi_{s.kernel}(NULL, (void*)args, {len(s.args)}, &ret);")
        L.append(f"    if (rc != 0 || sqcc_last_error) return {i + 1};")
        L.append("  }")
    return L + ["  return 0;", "}", ""]


def gen_model_c(g, plan_off: dict, arena: int, ws_bytes: dict) -> str:
    L = ["/* Generated by sqcc (targets/micro/codegen.py). Do not edit. */",
         "#include <stdint.h>", "#include <stddef.h>", "#include <tvm/ffi/c_api.h>",
         '#include "model.h"', "",
         f"uint8_t sqcc_arena[{max(arena, ALIGN)}] __attribute__((aligned({ALIGN}), section(\".sqcc_arena\")));",
         "extern const uint8_t sqcc_weights[];", ""]
    for k in sorted({s.kernel for s in g.steps}):
        L.append(f"int32_t __tvm_ffi_{k}(void* self_handle, void* args, int32_t num_args, void* result);")
    L.append("")
    L += _tensor_decls(g, plan_off)
    L.append("")
    # workspace stubs (the only TVM runtime symbols the c-target kernels reference)
    L += render("runtime_stubs.c", ALIGN_MASK=ALIGN - 1).split("\n")[:-1]
    L += _io_table(g, plan_off, "input", g.inputs) + _io_table(g, plan_off, "output", g.outputs) + [""]
    L += _run_function(g, plan_off, ws_bytes)
    return "\n".join(L)


def gen_model_h(g, arena: int) -> str:
    return "\n".join([
        "/* Generated by sqcc. */", "#pragma once", "#include <stdint.h>",
        f"#define SQCC_NUM_INPUTS {len(g.inputs)}", f"#define SQCC_NUM_OUTPUTS {len(g.outputs)}",
        f"#define SQCC_ARENA_BYTES {arena}",
        "extern uint8_t* const sqcc_input_ptr[];", "extern const uint32_t sqcc_input_bytes[];",
        "extern uint8_t* const sqcc_output_ptr[];", "extern const uint32_t sqcc_output_bytes[];",
        "int sqcc_model_run(void);", ""])


def main_c() -> str:
    return template("main.c")


def gen_linker(p: Preset, stack: int) -> str:
    fl, ram, vec = p.flash, p.ram, p.vectors
    mem = [f"  FLASH (rx)  : ORIGIN = 0x{fl.origin:08X}, LENGTH = {fl.size}",
           f"  RAM   (rwx) : ORIGIN = 0x{ram.origin:08X}, LENGTH = {ram.size}"]
    vec_region = "FLASH"
    if vec:  # a separate vector-table region (the M55's ITCM)
        mem.insert(0, f"  VECT  (rx)  : ORIGIN = 0x{vec.origin:08X}, LENGTH = {vec.size}")
        vec_region = "VECT"
    return render("link.ld", NAME=p.name, BOARD=p.board, MEMORY="\n".join(mem), VECT_REGION=vec_region,
                  STACK=stack)


def gen_makefile(p: Preset) -> str:
    cflags, ldflags, libs = flags(p)
    objs = " ".join(s.rsplit(".", 1)[0] + ".o" for s in SOURCES)
    qemu_args = " ".join(qemu_cmd(p)[1:]).replace("@INPUT@", "$(INPUT)").replace(
        "@OUTPUT@", "$(OUTPUT)").replace("@ELF@", "model.elf")
    return render("Makefile.in", NAME=p.name, BOARD=p.board, MACHINE=p.machine, CFLAGS=" ".join(cflags),
                  LDFLAGS=" ".join(ldflags), LIBS=" ".join(libs), OBJS=objs, QEMU_ARGS=qemu_args)
