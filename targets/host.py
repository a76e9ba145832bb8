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
        """fp32 peak: lanes × 2 FMA units × 2 flops × GHz × threads (an upper bound; clocks vary)."""
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
    mhz = re.search(r"^cpu MHz\s*:\s*([\d.]+)", info, re.M)
    mhz = float(mhz.group(1)) if mhz else None
    if not mhz:  # some VMs only expose the bogomips of one core = 2 × clock
        bogo = re.search(r"^(bogomips|BogoMIPS)\s*:\s*([\d.]+)", info, re.M)
        mhz = float(bogo.group(2)) / 2 if bogo and platform.machine() == "x86_64" else None
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return HostCPU(arch=platform.machine(), model=model.group(1).strip() if model else platform.processor(),
                   mcpu=str(tvm.target.codegen.llvm_get_system_cpu()), cores=cores,
                   features=tuple(f for f in INTERESTING if f in flags), mhz=mhz)


def target(num_cores: int | None = None):
    """The llvm target for this machine (mcpu detected; MetaSchedule needs num-cores)."""
    import tvm

    cpu = detect()
    return tvm.target.Target({"kind": "llvm", "mcpu": cpu.mcpu, "num-cores": int(num_cores or cpu.cores)})
