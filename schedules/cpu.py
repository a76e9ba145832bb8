"""What the target CPU can do: SIMD width, register count, FMA units, clock.

Schedules size their register tiles from these numbers and the benchmark reports achieved GFLOP/s
against the peak they imply. Everything is detected from the target (LLVM's view of ``mcpu``/``mattr``)
or, for the host, from ``/proc/cpuinfo`` -- never hard-coded, because CI machines vary between
AVX2-only Zen 2 and AVX-512/VNNI Xeons from one run to the next.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass

import tvm
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


def host_cpu_flags() -> set:
    """The flags line of /proc/cpuinfo (empty where there is none)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def host_clock() -> tuple[float | None, str]:
    """(GHz, where it came from): cpufreq's cpuinfo_max_freq (the boost clock), else the
    'cpu MHz' line of /proc/cpuinfo, which under a hypervisor is usually the nominal clock -- a
    single core can then exceed the "peak" computed from it."""
    try:
        with open("/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq", encoding="utf-8") as f:
            return int(f.read().strip()) / 1e6, "cpufreq max"
    except (OSError, ValueError):
        pass
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                m = re.match(r"cpu MHz\s*:\s*([\d.]+)", line)
                if m:
                    return float(m.group(1)) / 1000.0, "/proc/cpuinfo cpu MHz (nominal; boost may exceed it)"
    except OSError:
        pass
    return None, "unknown"


def host_clock_ghz() -> float | None:
    return host_clock()[0]


def host_model_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


def host_peak_gflops(cores: int | None = None) -> dict:
    """fp32 peak of this host = FMA lanes x 2 flops x FMA units x clock x cores.

    FMA units per core: 2 on every x86 core with AVX2/AVX-512 that sqcc meets (Zen 2-5, Skylake-SP and
    later Xeons: two 512-bit FMA ports on Gold/Platinum; some Silver parts have one -- the figure is then
    an upper bound, which is what a roofline wants); 2 NEON FMA pipes on common Arm cores.
    """
    flags = host_cpu_flags()
    if "avx512f" in flags:
        lanes, isa = 16, "AVX-512"
    elif "avx2" in flags and "fma" in flags:
        lanes, isa = 8, "AVX2+FMA"
    elif "asimd" in flags:
        lanes, isa = 4, "NEON"
    else:
        lanes, isa = 4, "SSE"
    units = 2
    ghz, clock_src = host_clock()
    ghz = ghz or 0.0
    n = cores or os.cpu_count() or 1
    return {"isa": isa, "lanes": lanes, "fma_units": units, "ghz": ghz, "cores": n,
            "model": host_model_name(), "mcpu": codegen.llvm_get_system_cpu(),
            "clock_source": clock_src,
            "peak_gflops": lanes * 2 * units * ghz * n}
