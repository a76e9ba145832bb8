"""Cortex-M presets: the boards (Arm MPS2/MPS3 FPGA images) that qemu-system-arm emulates.

Memory sizes are those of the boards. MPS2 boards have no flash: code runs from 4 MB ZBT SSRAM1 at
0x0 (the "flash" of these images) and data lives in 4 MB ZBT SSRAM2/3 at 0x20000000. MPS3 AN547
(SSE-300): 8 MB QSPI flash (XIP), 512 KB ITCM (vector table), 4 MB internal SRAM (ISRAM0/1) for
data; the secure aliases are used because the core resets in the Secure state.

(The module is ``boards``, not ``presets``: ``sqcc.targets.presets(family)`` calls a family
module's ``presets`` attribute when it has one.)
"""
from __future__ import annotations

from dataclasses import dataclass

from sqcc.errors import SqccError

KiB = 1024
MiB = 1024 * 1024


@dataclass(frozen=True)
class MemRegion:
    name: str
    origin: int
    size: int


@dataclass(frozen=True)
class Preset:
    name: str  # the preset's name, as in ``micro:NAME``
    cpu: str
    board: str
    machine: str  # qemu-system-arm -M
    cflags: tuple  # arm-none-eabi-gcc's core/FPU/ABI flags (also the multilib newlib is looked up for)
    flash: MemRegion
    ram: MemRegion
    vectors: MemRegion | None  # None: the vector table sits at the start of flash
    clock_hz: int


PRESETS: dict[str, Preset] = {
    "cortex-m4": Preset(
        name="cortex-m4", cpu="Cortex-M4F", board="Arm MPS2+ AN386", machine="mps2-an386",
        cflags=("-mcpu=cortex-m4", "-mthumb", "-mfpu=fpv4-sp-d16", "-mfloat-abi=hard"),
        flash=MemRegion("ZBT SSRAM1 (code)", 0x00000000, 4 * MiB),
        ram=MemRegion("ZBT SSRAM2/3 (data)", 0x20000000, 4 * MiB),
        vectors=None, clock_hz=25_000_000),
    "cortex-m7": Preset(
        name="cortex-m7", cpu="Cortex-M7 (double-precision FPU)", board="Arm MPS2+ AN500",
        machine="mps2-an500",
        cflags=("-mcpu=cortex-m7", "-mthumb", "-mfpu=fpv5-d16", "-mfloat-abi=hard"),
        flash=MemRegion("ZBT SSRAM1 (code)", 0x00000000, 4 * MiB),
        ram=MemRegion("ZBT SSRAM2/3 (data)", 0x20000000, 4 * MiB),
        vectors=None, clock_hz=25_000_000),
    "cortex-m55": Preset(
        name="cortex-m55", cpu="Cortex-M55 (Helium/MVE, FPU)", board="Arm MPS3 AN547 (Corstone SSE-300)",
        machine="mps3-an547",
        cflags=("-mcpu=cortex-m55", "-mthumb", "-mfpu=auto", "-mfloat-abi=hard"),
        flash=MemRegion("QSPI flash (XIP)", 0x38000000, 8 * MiB),
        ram=MemRegion("ISRAM0/1", 0x31000000, 4 * MiB),
        vectors=MemRegion("ITCM (vector table)", 0x10000000, 512 * KiB), clock_hz=32_000_000),
}


def get_preset(preset: str) -> Preset:
    """The preset named ``preset`` (a ``micro:`` prefix is accepted)."""
    name = preset.split(":", 1)[1] if preset.startswith("micro:") else preset
    if name not in PRESETS:
        raise SqccError(f"unknown micro preset '{preset}': choose one of {', '.join(sorted(PRESETS))}")
    return PRESETS[name]
