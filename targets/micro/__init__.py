"""Cortex-M microcontroller target (issue 7): no microTVM in TVM 0.27, so sqcc builds its own.

Kernels come from TVM's ``c`` target (the Relax module is legalized and fused, its PrimFuncs are built
with target ``c`` and their C source exported). sqcc generates everything else:

* ``model.c``   -- a driver that calls the kernels in topological order over ONE statically planned
                    arena (greedy placement over lifetime intervals, workspaces of fused kernels
                    included; a kernel's output may be written over an input it finishes reading
                    where its TIR access order allows -- :func:`tir_eval.overlap_limit`),
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

Modules (each imports only those above it; TVM is imported inside the functions that need it):

* ``boards``    -- the presets (frozen dataclasses: the qemu boards' memory maps and gcc flags)
* ``toolchain`` -- finding arm-none-eabi-gcc / newlib / qemu; compiler flags; qemu's command line
* ``arena``     -- the arena planner and its checker (pure: no TVM)
* ``lowering``  -- Relax -> fused PrimFuncs -> a Graph of steps and buffers with lifetimes
* ``kernels``   -- the PrimFuncs scheduled and built with TVM's ``c`` target
* ``tir_eval``  -- a numpy evaluator of TIR access order: in-place overlap allowances
* ``codegen``   -- model.c / model.h / link.ld / Makefile from ``templates/`` (main.c copied as is)
* ``run``       -- qemu runs: run_micro, bench_micro, the RAM breakdown
* ``build``     -- compile_micro: all of the above into one atomic output directory
* ``reference`` -- the LiteRT integer reference for int8 TFLite models
* ``target``    -- the TargetSpec for ``micro:PRESET``

Public API: :func:`compile_micro`, :func:`run_micro`, :func:`bench_micro`, :func:`spec` (the
TargetSpec for ``micro:PRESET``), :func:`is_micro_build`, :data:`PRESETS`, :func:`get_preset`,
:func:`plan_arena`, :func:`check_plan`, :func:`check_toolchain`, :func:`integer_reference`.

Debian packages: gcc-arm-none-eabi (brings binutils-arm-none-eabi), libnewlib-arm-none-eabi,
qemu-system-arm.
"""
from __future__ import annotations

from .arena import ALIGN, check_plan, plan_arena
from .boards import KiB, MiB, PRESETS, MemRegion, Preset, get_preset
from .build import DEFAULT_STACK, STACK_MARGIN, compile_micro
from .reference import IntegerReference, integer_reference
from .run import QEMU_TIMEOUT_S, bench_micro, is_micro_build, run_micro
from .target import spec, target_spec
from .toolchain import APT_PACKAGES, CALIB_ITERS, check_toolchain

__all__ = ["compile_micro", "run_micro", "bench_micro", "spec", "target_spec", "is_micro_build",
           "PRESETS", "Preset", "MemRegion", "get_preset", "plan_arena", "check_plan", "check_toolchain",
           "integer_reference", "IntegerReference", "ALIGN", "KiB", "MiB", "DEFAULT_STACK",
           "STACK_MARGIN", "CALIB_ITERS", "QEMU_TIMEOUT_S", "APT_PACKAGES"]
