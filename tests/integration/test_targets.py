"""Targets: presets and their TVM targets, the aarch64 cross toolchain, CUDA builds without a GPU."""
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from sqcc.errors import SqccError
from sqcc.targets import FAMILIES, TargetSpec, all_targets, arm_cpu, cuda, resolve

EM_AARCH64 = 0xB7  # ELF e_machine


def _elf_machine(path) -> int:
    data = Path(path).read_bytes()[:20]
    assert data[:4] == b"\x7fELF", "not an ELF file"
    return int.from_bytes(data[18:20], "little")


def test_families_registered():
    assert {"host", "arm_cpu", "cuda"} <= set(FAMILIES)
    names = {s.name for s in all_targets()}
    for n in ["host", "arm_cpu:rpi4", "arm_cpu:rk3399", "arm_cpu:graviton2", "arm_cpu:generic",
              "cuda:sm_75", "cuda:sm_80", "cuda:sm_86", "cuda:sm_89", "cuda:sm_90"]:
        assert n in names
    assert resolve("host").family == "host"


def test_arm_presets_target_dicts():
    s = resolve("arm_cpu:rpi4")
    assert isinstance(s, TargetSpec) and s.family == "arm_cpu" and s.preset == "rpi4"
    assert s.tvm_target == {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": "cortex-a72",
                            "mattr": ["+neon"], "num-cores": 4}
    assert s.rpc_key == "aarch64" and s.cross_compiler == "aarch64-linux-gnu-g++"
    assert s.runs_locally is False
    g = resolve("arm_cpu:graviton2").tvm()
    assert str(g.attrs["mcpu"]) == "neoverse-n1" and "+dotprod" in list(g.attrs["mattr"])
    gen = resolve("arm_cpu:generic").tvm_target
    assert gen["mattr"] == ["+neon", "+dotprod"] and "mcpu" not in gen
    assert resolve("arm_cpu").preset == "generic"
    for p in arm_cpu.PRESETS:
        t = resolve(f"arm_cpu:{p}").tvm()
        assert t.kind.name == "llvm" and str(t.attrs["mtriple"]) == "aarch64-linux-gnu"
        assert int(t.attrs["num-cores"]) >= 1  # MetaSchedule needs it


def test_cuda_presets_target_dicts():
    for p in ["sm_75", "sm_80", "sm_86", "sm_89", "sm_90"]:
        t = resolve(f"cuda:{p}").tvm()
        assert t.kind.name == "cuda" and str(t.attrs["arch"]) == p
        assert t.host is not None and t.host.kind.name == "llvm"


@pytest.mark.parametrize("name,needle", [
    ("arm_cpu:rpi5", "unknown arm_cpu preset 'rpi5'"),
    ("cuda:sm_100x", "unknown cuda preset 'sm_100x'"),
    ("fpga", "unknown target"),
    ("host:fast", "takes no preset"),
])
def test_unknown_target_or_preset(name, needle):
    with pytest.raises(SqccError, match=needle) as e:
        resolve(name)
    assert "known" in str(e.value) or "preset" in str(e.value)


def test_missing_cross_toolchain_names_package(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))  # nothing on PATH: the cross compiler is "missing"
    spec = resolve("arm_cpu:rpi4")
    with pytest.raises(SqccError, match=r"aarch64-linux-gnu-g\+\+.*apt-get install g\+\+-aarch64-linux-gnu"):
        spec.check_toolchain()
    with pytest.raises(SqccError, match="g\\+\\+-aarch64-linux-gnu"):
        spec.export_library(object(), tmp_path / "lib.so")


@pytest.fixture(scope="module")
def mnist_mod():
    from sqcc import frontend

    return frontend.load("mnist-8")


def test_aarch64_cross_export_is_aarch64_elf(mnist_mod, tmp_path):
    """The cross toolchain is required here (CI installs it): the export must be a real aarch64 .so."""
    from sqcc.build import build

    assert shutil.which("aarch64-linux-gnu-g++"), "apt-get install g++-aarch64-linux-gnu (packages.apt)"
    spec = resolve("arm_cpu:rpi4")
    ex = build(mnist_mod.mod, spec.tvm())
    out = spec.export_library(ex, tmp_path / "lib.so")
    assert _elf_machine(out) == EM_AARCH64


def test_cuda_builds_without_gpu_and_run_says_no_gpu(tmp_path):
    """SqueezeNet 1.1 for sm_90: codegen only, every kernel bound to GPU threads; no GPU → clear error."""
    from sqcc import frontend
    from sqcc.build import lower_to_tir

    m = frontend.load("squeezenet1.1")
    spec = resolve("cuda:sm_90")
    target = spec.tvm()
    fused = lower_to_tir(m.mod, target)
    scheduled = cuda.schedule_gpu(fused, target)
    assert cuda.unbound_functions(scheduled) == [], "every PrimFunc must have bound GPU threads"
    import sqcc

    pkg = sqcc.compile("squeezenet1.1", target="cuda:sm_90", check=False)  # the user's path
    assert pkg.manifest["target"]["family"] == "cuda"
    ex = pkg.executable
    lib = spec.export_library(ex, tmp_path / "sq_cuda.so")
    assert os.path.getsize(lib) > 1_000_000  # weights + embedded CUDA C
    def modules(m):
        yield m
        for i in m.imports:
            yield from modules(i)

    kinds = {m.kind: m for m in modules(ex.mod)}
    assert "cuda" in kinds, f"no CUDA module in the build ({sorted(kinds)})"
    assert "__global__" in kinds["cuda"].inspect_source()
    x = np.zeros((1, 3, 224, 224), np.float32)
    if cuda.gpu_present():
        out = cuda.run(ex, [x])
        assert out[0].shape == (1, 1000)
    else:
        with pytest.raises(SqccError, match="needs an NVIDIA GPU, and this machine has none"):
            cuda.run(ex, [x])
        with pytest.raises(SqccError, match="NVIDIA GPU"):
            cuda.bench(ex, [x])
