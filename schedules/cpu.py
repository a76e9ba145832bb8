"""What the target CPU can do: SIMD width, register count, FMA units, clock.

Schedules size their register tiles from these numbers and the benchmark reports achieved GFLOP/s
against the peak they imply. Everything is detected from the target (LLVM's view of ``mcpu``/``mattr``)
or, for the host, from ``/proc/cpuinfo`` -- never hard-coded, because CI machines vary between
AVX2-only Zen 2 and AVX-512/VNNI Xeons from one run to the next.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

from tvm.target import Target
from tvm.target import codegen


@dataclass(frozen=True)
class CpuInfo:
    """The numbers a schedule or a roofline needs."""

    arch: str  # "x86_64" | "aarch64" | "other"
    mcpu: str
    lanes: int  # fp32 lanes per SIMD register
    vector_regs: int  # architectural SIMD registers
    num_cores: int

    @property
    def acc_regs(self) -> int:
        """Registers a micro-kernel may spend on accumulators: all but one weight vector, one
        broadcast and one spare (13 x ymm for a 13-pixel tile on AVX2, 26 x zmm on AVX-512)."""
        return max(4, self.vector_regs - 3)


def _has(features, target) -> bool:
    try:
        return bool(codegen.llvm_cpu_has_features(features, target))
    except Exception:  # older/odd targets: LLVM cannot answer
        return False


def cpu_info(target: Target) -> CpuInfo:
    """Detect SIMD lanes and register count for an llvm ``target``.

    ``llvm_get_vector_width`` is not used: it reports 512 bits for a plain AVX2 ``znver2`` target,
    so feature queries are the reliable source.
    """
    triple = str(target.attrs.get("mtriple", "") or "") or codegen.llvm_get_system_triple()
    mcpu = str(target.attrs.get("mcpu", "") or "")
    cores = int(target.attrs.get("num-cores", 0) or 0) or (os.cpu_count() or 1)
    if triple.startswith(("aarch64", "arm64")):
        return CpuInfo("aarch64", mcpu, 4, 32, cores)
    if triple.startswith("arm"):
        return CpuInfo("other", mcpu, 4, 16, cores)
    if triple.startswith(("x86_64", "i686", "i386")):
        if _has(["avx512f"], target):
            return CpuInfo("x86_64", mcpu, 16, 32, cores)
        if _has(["avx"], target):
            return CpuInfo("x86_64", mcpu, 8, 16, cores)
        return CpuInfo("x86_64", mcpu, 4, 16, cores)
    return CpuInfo("other", mcpu, 4, 16, cores)


def host_peak_gflops(cores: int | None = None) -> dict:
    """fp32 peak of this host (:func:`sqcc.targets.host.detect` is the one place the host CPU is
    read): FMA lanes x 2 flops x 2 FMA units x clock x cores, with where the clock came from."""
    from ..targets.host import detect

    cpu = detect()
    n = cores or cpu.cores
    ghz = (cpu.mhz or 0.0) / 1000.0
    return {"isa": cpu.isa, "lanes": cpu.simd_fp32_lanes, "fma_units": 2, "ghz": ghz, "cores": n,
            "model": cpu.model, "mcpu": cpu.mcpu, "clock_source": cpu.clock_source,
            "peak_gflops": cpu.simd_fp32_lanes * 2 * 2 * ghz * n}
