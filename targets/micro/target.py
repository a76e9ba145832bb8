"""The TargetSpec of ``micro:PRESET`` (what ``sqcc targets`` lists and ``sqcc.targets.micro_spec`` uses)."""
from __future__ import annotations

from .boards import KiB, get_preset
from .toolchain import check_toolchain


def spec(preset: str | None = None):
    """TargetSpec for ``micro:PRESET`` (sqcc.targets.micro_spec uses it)."""
    from sqcc.targets import TargetSpec  # at call time: sqcc.targets imports this package lazily
    p = get_preset(preset or "cortex-m4")
    return TargetSpec(
        f"micro:{p.name}", "micro", p.name,
        f"{p.cpu} on {p.board} (qemu-system-arm -M {p.machine}), flash {p.flash.size // KiB} KiB, "
        f"RAM {p.ram.size // KiB} KiB; TVM c kernels + sqcc driver, one static arena, no heap",
        tvm_target={"kind": "c"}, runs_locally=False, device_type="micro",
        cross_compiler="arm-none-eabi-gcc", toolchain_package="gcc-arm-none-eabi",
        how_to_run=f"model.elf under qemu-system-arm -M {p.machine} -semihosting (run_micro)",
        how_to_measure="instructions executed by the inference under qemu -icount shift=0 (SysTick, calibrated); "
                       "flash/RAM from arm-none-eabi-size and the arena plan (bench_micro)",
        checker=lambda: check_toolchain(p, need_qemu=True))


target_spec = spec
