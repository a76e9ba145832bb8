"""NVIDIA GPUs: ``cuda:sm_XX`` presets. Builds anywhere (codegen only); runs where a GPU is.

TVM 0.27 embeds the generated CUDA C in the library and compiles it when the library is loaded
(NVRTC, or nvcc with ``TVM_CUDA_COMPILE_MODE=nvcc``), so building needs no GPU and no CUDA toolkit.
Every kernel must have its loops bound to GPU threads: ``relax.build`` for a CUDA target applies
dlight's GPU rules (Matmul, GEMV, Reduction, GeneralReduction, then ``Fallback``, which binds every
remaining PrimFunc — convolutions included, dlight has no conv rule — to blocks/threads).
:func:`schedule_gpu` applies the same rules explicitly, so a fused module built by sqcc's own
pipeline is also fully bound; :func:`check_bound` verifies it.
"""
from __future__ import annotations

import shutil

from sqcc.errors import SqccError, one_line

#: preset → (architecture, description)
PRESETS = {
    "sm_75": ("Turing (T4, RTX 20xx)",),
    "sm_80": ("Ampere (A100)",),
    "sm_86": ("Ampere (RTX 30xx, A10, A40)",),
    "sm_89": ("Ada Lovelace (L4, L40, RTX 40xx)",),
    "sm_90": ("Hopper (H100, H200)",),
}
DEFAULT_PRESET = "sm_80"


def target_dict(preset: str) -> dict:
    if preset not in PRESETS:
        raise SqccError(f"--target cuda:{preset}: unknown cuda preset (known: {', '.join(PRESETS)})")
    return {"kind": "cuda", "arch": preset, "host": {"kind": "llvm"}}


def gpu_present() -> bool:
    """True when the CUDA runtime sees a device here."""
    try:
        import tvm

        return bool(tvm.cuda(0).exist)
    except Exception:  # no CUDA runtime library at all
        return False


def gpu_name() -> str | None:
    if not gpu_present():
        return None
    try:
        import tvm

        return str(tvm.cuda(0).device_name)
    except Exception:
        return "CUDA device"


def require_gpu(what: str = "running a CUDA package") -> None:
    """SqccError unless a CUDA GPU is present here."""
    if not gpu_present():
        hint = "no NVIDIA driver/device (nvidia-smi not found)" if not shutil.which("nvidia-smi") else \
            "the CUDA runtime sees no device"
        raise SqccError(f"{what} needs an NVIDIA GPU, and this machine has none ({hint}); the package was built "
                        "fine -- run it on a GPU machine, or on a remote one with --rpc-tracker/--rpc-key")


def gpu_rules():
    from tvm.s_tir import dlight as dl

    return [dl.gpu.Matmul(), dl.gpu.GEMV(), dl.gpu.Reduction(), dl.gpu.GeneralReduction(), dl.gpu.Fallback()]


def schedule_gpu(mod, target):
    """Bind every unscheduled PrimFunc of a fused module to GPU blocks/threads (dlight rules)."""
    import tvm
    from tvm.s_tir import dlight as dl

    target = target if isinstance(target, tvm.target.Target) else tvm.target.Target(target)
    with target:
        return dl.ApplyDefaultSchedule(*gpu_rules())(mod)


def unbound_functions(mod) -> list[str]:
    """Names of PrimFuncs in ``mod`` that have loops but no GPU thread binding (they would not build)."""
    from tvm import tirx

    bad = []
    for gv, func in mod.functions.items():
        if not isinstance(func, tirx.PrimFunc):
            continue
        text = func.script()
        has_loop = "for " in text or "T.grid(" in text
        bound = "threadIdx." in text or "blockIdx." in text
        if has_loop and not bound:
            bad.append(gv.name_hint)
    return bad


def build(mod, preset_or_target="sm_80"):
    """Build a Relax module for CUDA (no GPU needed): TVM's CUDA pipeline (fusion + dlight rules)."""
    import tvm
    from tvm import relax

    t = preset_or_target
    if isinstance(t, str):
        t = tvm.target.Target(target_dict(t.split(":", 1)[-1]))
    elif isinstance(t, dict):
        t = tvm.target.Target(t)
    try:
        return relax.build(mod, t)
    except Exception as e:
        raise SqccError(f"CUDA build for {t.attrs.get('arch', 'cuda')} failed: {one_line(e)}") from e


def export_library(executable, path) -> str:
    """Host code linked with the system C++ compiler; the CUDA C is embedded (compiled at load time)."""
    from . import export_with

    return export_with(executable, path, "the CUDA package's host library")


def spec(preset: str | None):
    from . import TargetSpec

    preset = preset or DEFAULT_PRESET
    tdict = target_dict(preset)
    return TargetSpec(
        name=f"cuda:{preset}", family="cuda", preset=preset, description=f"NVIDIA {preset}: {PRESETS[preset][0]}",
        tvm_target=tdict, runs_locally=gpu_present(), device_type="cuda", cross_compiler=None,
        toolchain_package=None, rpc_key=None,
        how_to_run="locally on an NVIDIA GPU (CUDA C compiled at load time by NVRTC), or remotely with "
                   "--rpc-tracker/--rpc-key on a GPU node; building needs no GPU",
        how_to_measure="time_evaluator on the GPU (median/min/max)",
        exporter=export_library, checker=None)


def presets() -> list[str]:
    return list(PRESETS)


def make_vm(executable):
    """``relax.VirtualMachine`` on the local GPU; SqccError saying so when there is no GPU."""
    require_gpu()
    import tvm
    from tvm import relax

    return relax.VirtualMachine(executable, tvm.cuda(0))


def run(executable, arrays):
    """Run ``main`` on the local GPU with numpy inputs; numpy outputs (list). No GPU → SqccError."""
    vm = make_vm(executable)
    import tvm

    dev = tvm.cuda(0)
    res = vm["main"](*[tvm.runtime.tensor(a, dev) for a in arrays])

    def to_np(r):
        return [r.numpy()] if hasattr(r, "numpy") else [x for it in r for x in to_np(it)]

    return to_np(res)


def bench(executable, arrays, repeat: int = 50, warmup: int = 5) -> dict:
    """Median/min/max ms on the local GPU (time_evaluator). No GPU → SqccError."""
    import statistics

    import tvm

    vm = make_vm(executable)
    dev = tvm.cuda(0)
    args = [tvm.runtime.tensor(a, dev) for a in arrays]
    for _ in range(warmup):
        vm["main"](*args)
    res = vm.time_evaluator("main", dev, number=1, repeat=repeat)(*args)
    ms = [t * 1e3 for t in res.results]
    return {"median_ms": statistics.median(ms), "min_ms": min(ms), "max_ms": max(ms), "runs": len(ms),
            "device": gpu_name()}
