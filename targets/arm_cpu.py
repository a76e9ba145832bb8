"""AArch64 CPUs (Linux): presets, the cross toolchain, and how packages for them run (TVM RPC).

A package for an ARM board is built here with TVM's bundled LLVM (AArch64 backend), linked into an
aarch64 shared library with the Debian cross compiler ``aarch64-linux-gnu-g++`` (package
``g++-aarch64-linux-gnu``; ``gcc-aarch64-linux-gnu`` for the C driver) and run on the board through
the RPC tracker: ``sqcc run/bench PKG --rpc-tracker HOST:PORT --rpc-key KEY``. Without a board, the
local farm's emulated aarch64 node (key ``aarch64``, qemu-user) runs it; its timings are emulation.
"""
from __future__ import annotations

import shutil

from sqcc.errors import SqccError

CROSS_CXX = "aarch64-linux-gnu-g++"
CROSS_CC = "aarch64-linux-gnu-gcc"
CROSS_PACKAGES = {CROSS_CXX: "g++-aarch64-linux-gnu", CROSS_CC: "gcc-aarch64-linux-gnu"}
DEFAULT_KEY = "aarch64"

#: preset → (TVM target dict, description, default RPC key)
PRESETS = {
    "rpi4": ({"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": "cortex-a72", "mattr": ["+neon"],
              "num-cores": 4},
             "Raspberry Pi 4: 4x Cortex-A72 (ARMv8.0-A, NEON), 1.5-1.8 GHz"),
    "rk3399": ({"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": "cortex-a72", "mattr": ["+neon"],
                "num-cores": 2},
               "Rockchip RK3399 big cores: 2x Cortex-A72 (+4x A53 little cores, not used), NEON"),
    "graviton2": ({"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": "neoverse-n1",
                   "mattr": ["+neon", "+dotprod"], "num-cores": 4},
                  "AWS Graviton2: Neoverse-N1 (ARMv8.2-A, NEON, dot product), 4 vCPUs assumed"),
    "graviton3": ({"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": "neoverse-v1",
                   "mattr": ["+neon", "+dotprod", "+i8mm"], "num-cores": 4},
                  "AWS Graviton3: Neoverse-V1 (ARMv8.4-A+, NEON, dot product, int8 matrix multiply "
                  "usdot), 4 vCPUs assumed"),
    "generic": ({"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mattr": ["+neon", "+dotprod"], "num-cores": 4},
                "any ARMv8.2-A+ Linux board with NEON and dot product (no mcpu tuning)"),
}
DEFAULT_PRESET = "generic"


def target_dict(preset: str) -> dict:
    if preset not in PRESETS:
        raise SqccError(f"--target arm_cpu:{preset}: unknown arm_cpu preset (known: {', '.join(PRESETS)})")
    d = dict(PRESETS[preset][0])
    d["mattr"] = list(d.get("mattr", []))
    return d


def find_cross_compiler(exe: str = CROSS_CXX) -> str:
    """Path of the aarch64 cross compiler; SqccError naming the Debian package when it is missing."""
    path = shutil.which(exe)
    if not path:
        pkg = CROSS_PACKAGES.get(exe, "g++-aarch64-linux-gnu")
        raise SqccError(f"cross compiler '{exe}' not found on PATH: linking an aarch64 library needs it "
                        f"(Debian: apt-get install {pkg} gcc-aarch64-linux-gnu)")
    return path


def export_library(executable, path, exe: str = CROSS_CXX) -> str:
    """Link a built Relax executable (or runtime module) into an aarch64 ``.so`` with the cross compiler."""
    from tvm.support import cc

    from . import export_with

    find_cross_compiler(exe)
    return export_with(executable, path, f"the aarch64 library with {exe}",
                       fcompile=cc.cross_compiler(exe))


def spec(preset: str | None):
    from . import TargetSpec

    preset = preset or DEFAULT_PRESET
    tdict = target_dict(preset)
    desc = PRESETS[preset][1]
    return TargetSpec(
        name=f"arm_cpu:{preset}", family="arm_cpu", preset=preset, description=desc, tvm_target=tdict,
        runs_locally=False, device_type="cpu", cross_compiler=CROSS_CXX,
        toolchain_package=CROSS_PACKAGES[CROSS_CXX], rpc_key=DEFAULT_KEY,
        how_to_run=(f"through the RPC tracker: --rpc-tracker HOST:PORT --rpc-key KEY (default key "
                    f"'{DEFAULT_KEY}': the local farm's emulated node; a board joins with "
                    "`python -m tvm.exec.rpc_server --tracker HOST:9190 --key rpi4`)"),
        how_to_measure="remote time_evaluator over RPC (median/min/max; 'emulated' on the qemu node)",
        exporter=export_library, checker=lambda: find_cross_compiler(CROSS_CXX))


def presets() -> list[str]:
    return list(PRESETS)
