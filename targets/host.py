"""The host CPU: what it is (detected at run time, never assumed) and what it can do at best.

Machines change from one day to the next (an AVX2-only Zen 2, an AVX-512/VNNI/AMX Xeon, a Zen 5), so
the llvm target takes ``mcpu`` from LLVM's own detection and the feature list from /proc/cpuinfo.
The fp32 peak (SIMD lanes × 2 FMA units × 2 flops × clock × cores) is what achieved GFLOP/s are
reported against.
"""
from __future__ import annotations

import os
import platform
import re
from dataclasses import asdict, dataclass
from functools import lru_cache

INTERESTING = ("sse4_2", "avx", "avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_vnni",
               "avx_vnni", "avx512_bf16", "amx_tile", "amx_int8", "amx_bf16", "asimd", "asimddp", "sve",
               "i8mm")


@dataclass(frozen=True)
class HostCPU:
    arch: str
    model: str
    mcpu: str
    cores: int
    features: tuple
    mhz: float | None
    clock_source: str = "unknown"

    @property
    def isa(self) -> str:
        f = set(self.features)
        return ("AVX-512" if "avx512f" in f else "AVX2+FMA" if {"avx2", "fma"} <= f else
                "NEON" if "asimd" in f or self.arch in ("aarch64", "arm64") else "SSE")

    @property
    def simd_fp32_lanes(self) -> int:
        f = set(self.features)
        if "avx512f" in f:
            return 16
        if "avx2" in f or "avx" in f:
            return 8
        if "asimd" in f or self.arch in ("aarch64", "arm64") or "sse4_2" in f:
            return 4
        return 1

    def peak_gflops(self, threads: int | None = None) -> float | None:
        """fp32 peak: lanes × 2 FMA units × 2 flops × GHz × threads (an upper bound; clocks vary).

        2 FMA units per core: every x86 core with AVX2/AVX-512 sqcc meets (Zen 2-5, Skylake-SP and
        later Xeons; some Silver parts have one -- the figure is then an upper bound, which is what a
        roofline wants) and the NEON pipes of common Arm cores."""
        if not self.mhz:
            return None
        n = min(threads or self.cores, self.cores)
        return self.simd_fp32_lanes * 2 * 2 * self.mhz / 1000.0 * n

    def to_json(self):
        d = asdict(self)
        d["features"] = list(self.features)
        d["simd_fp32_lanes"] = self.simd_fp32_lanes
        return d


def _cpuinfo():
    try:
        return open("/proc/cpuinfo").read()
    except OSError:
        return ""


@lru_cache(maxsize=None)
def detect() -> HostCPU:
    import tvm

    info = _cpuinfo()
    flags = re.search(r"^(flags|Features)\s*:\s*(.*)$", info, re.M)
    flags = set(flags.group(2).split()) if flags else set()
    model = re.search(r"^model name\s*:\s*(.*)$", info, re.M)
    mhz, source = None, "unknown"
    try:  # cpufreq's maximum is the boost clock: the honest upper bound for a peak
        with open("/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq", encoding="utf-8") as f:
            mhz, source = int(f.read().strip()) / 1000.0, "cpufreq max (boost)"
    except (OSError, ValueError):
        pass
    line = re.search(r"^cpu MHz\s*:\s*([\d.]+)", info, re.M)
    if not mhz and line:  # under a hypervisor usually the nominal clock: boost clocks run higher
        mhz, source = float(line.group(1)), "/proc/cpuinfo cpu MHz (nominal; boost may exceed it)"
    if not mhz:  # some VMs only expose the bogomips of one core = 2 × clock
        bogo = re.search(r"^(bogomips|BogoMIPS)\s*:\s*([\d.]+)", info, re.M)
        if bogo and platform.machine() == "x86_64":
            mhz, source = float(bogo.group(2)) / 2, "bogomips / 2"
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return HostCPU(arch=platform.machine(), model=model.group(1).strip() if model else platform.processor(),
                   mcpu=str(tvm.target.codegen.llvm_get_system_cpu()), cores=cores,
                   features=tuple(f for f in INTERESTING if f in flags), mhz=mhz, clock_source=source)


def target(num_cores: int | None = None):
    """The llvm target for this machine (mcpu detected; MetaSchedule needs num-cores)."""
    import tvm

    cpu = detect()
    return tvm.target.Target({"kind": "llvm", "mcpu": cpu.mcpu, "num-cores": int(num_cores or cpu.cores)})
