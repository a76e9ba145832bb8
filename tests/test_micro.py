"""Cortex-M target (targets/micro.py): mnist-8 built with arm-none-eabi-gcc and run under
qemu-system-arm. These tests do not skip when the toolchain is missing: CI installs
gcc-arm-none-eabi, libnewlib-arm-none-eabi and qemu-system-arm."""
from __future__ import annotations

import json
import os
import shutil
import stat

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from sqcc.errors import SqccError
from sqcc.targets import micro
from sqcc.targets.micro import (bench_micro, check_plan, compile_micro, plan_arena, run_micro)

from conftest import DATA as _SHARED_DATA, MODELS  # ../shared beside the checkout (CI has it too)

DATA = str(_SHARED_DATA / "mnist-8")
MNIST = str(MODELS / "mnist-8.onnx")


def _load_mnist():
    """Relax module + specs via sqcc.frontend; the plain TVM importer while the frontend is incomplete."""
    try:
        from sqcc.frontend import load
        m = load(MNIST)
        return m.mod, m.inputs, m.outputs
    except ImportError:
        from tvm.relax.frontend.onnx import from_onnx
        mod = from_onnx(onnx.load(MNIST), {"Input3": [1, 1, 28, 28]}, keep_params_in_input=False)
        return mod, [{"name": "Input3", "shape": [1, 1, 28, 28], "dtype": "float32"}], \
            [{"name": "Plus214_Output_0", "shape": [1, 10], "dtype": "float32"}]


def _name(spec):
    return spec["name"] if isinstance(spec, dict) else spec.name


def _ref_sets():
    out = []
    for i in range(3):
        x = numpy_helper.to_array(onnx.load_tensor(f"{DATA}/set{i}_input_0.pb"))
        y = numpy_helper.to_array(onnx.load_tensor(f"{DATA}/set{i}_output_0.pb"))
        out.append((x, y))
    return out


def _rel(a, b):
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))


@pytest.fixture(scope="module")
def mnist():
    return _load_mnist()


@pytest.fixture(scope="module")
def m4_build(mnist, tmp_path_factory):
    mod, ins, outs = mnist
    out_dir = str(tmp_path_factory.mktemp("micro") / "mnist-m4")
    fig = compile_micro(mod, ins, outs, "cortex-m4", out_dir)
    return out_dir, fig


def test_mnist_m4_matches_onnxruntime_and_reference(mnist, m4_build):
    import onnxruntime as ort
    _, ins, _ = mnist
    out_dir, _ = m4_build
    sess = ort.InferenceSession(MNIST)
    for x, ref in _ref_sets():
        y = run_micro(out_dir, {_name(ins[0]): x})
        assert len(y) == 1 and y[0].shape == (1, 10) and y[0].dtype == np.float32
        host = sess.run(None, {sess.get_inputs()[0].name: x})[0]
        assert _rel(y[0], host) <= 1e-4
        assert _rel(y[0], ref) <= 1e-3
        assert y[0].argmax() == ref.argmax()


def test_mnist_m4_matches_host_tvm(mnist, m4_build):
    import tvm
    from tvm import relax
    mod, ins, _ = mnist
    out_dir, _ = m4_build
    vm = relax.VirtualMachine(relax.build(mod, "llvm"), tvm.cpu())
    x, _ = _ref_sets()[1]
    host = vm["main"](tvm.runtime.tensor(x, tvm.cpu()))
    host = host.numpy() if hasattr(host, "numpy") else host[0].numpy()
    y = run_micro(out_dir, {_name(ins[0]): x})[0]
    assert _rel(y, host) <= 1e-4


def test_figures_written_and_deterministic(m4_build):
    out_dir, fig = m4_build
    with open(os.path.join(out_dir, "micro.json")) as f:
        saved = json.load(f)
    assert saved["instructions"] == fig["instructions"] > 100_000
    assert 20_000 < fig["flash_bytes"] < fig["flash_capacity"]
    assert fig["weights_bytes"] >= 4 * 5994  # mnist-8 has 5,994 float weights
    assert fig["ram_bytes"] >= fig["arena_bytes"] + fig["stack_reserved"]
    assert 0 < fig["stack_used"] < fig["stack_reserved"]
    for f in ["model.elf", "model.c", "main.c", "kernels.c", "Makefile", "link.ld", "weights.bin"]:
        assert os.path.exists(os.path.join(out_dir, f)), f
    # no leftover temp dirs from the atomic write
    assert not [d for d in os.listdir(os.path.dirname(out_dir)) if ".tmp-" in d or d.startswith(".old-")]
    b1, b2 = bench_micro(out_dir), bench_micro(out_dir)
    assert b1["instructions"] == b2["instructions"] == fig["instructions"]
    assert b1["flash_bytes"] == fig["flash_bytes"] and b1["ram_bytes"] == fig["ram_bytes"]


def test_arena_plan_valid(m4_build):
    _, fig = m4_build
    plan = fig["plan"]
    check_plan(plan)  # no two live buffers overlap
    names = {b["name"] for b in plan["buffers"]}
    for s in fig["steps"]:
        for a in s["args"]:
            # c*: constants live in flash; views (reshapes) share their base buffer's bytes
            assert a in names or a.startswith("c") or fig["views"].get(a) in names
    bs = plan["buffers"]
    for i, a in enumerate(bs):  # the same check, written out
        for b in bs[i + 1:]:
            if a["start"] <= b["end"] and b["start"] <= a["end"]:
                assert a["offset"] + a["size"] <= b["offset"] or b["offset"] + b["size"] <= a["offset"]
    assert plan["lower_bound"] <= plan["peak"] < plan["no_reuse"]  # buffers are reused


def test_plan_arena_random_and_check_detects_overlap():
    rng = np.random.default_rng(0)
    for _ in range(50):
        n = int(rng.integers(1, 30))
        bufs = []
        for i in range(n):
            s = int(rng.integers(-1, 20))
            bufs.append({"name": f"b{i}", "size": int(rng.integers(1, 5000)), "start": s,
                         "end": s + int(rng.integers(0, 6))})
        plan = plan_arena(bufs)
        check_plan(plan)
        assert plan["lower_bound"] <= plan["peak"] <= plan["no_reuse"]
    bad = {"peak": 64, "buffers": [{"name": "a", "size": 32, "start": 0, "end": 2, "offset": 0},
                                   {"name": "b", "size": 32, "start": 2, "end": 3, "offset": 16}]}
    with pytest.raises(SqccError, match="overlap"):
        check_plan(bad)


def test_workspace_path_unscheduled(mnist, m4_build, tmp_path):
    """Without sqcc's inline schedule, fused kernels ask TVMBackendAllocWorkspace for scratch: the
    stub hands out planned arena slots, and the result is the same."""
    mod, ins, outs = mnist
    fig = compile_micro(mod, ins, outs, "cortex-m4", str(tmp_path / "ws"), schedule=False)
    assert any(s["workspace"] > 0 for s in fig["steps"])
    assert any(b["kind"] == "workspace" for b in fig["plan"]["buffers"])
    check_plan(fig["plan"])
    x, ref = _ref_sets()[0]
    y = run_micro(str(tmp_path / "ws"), {_name(ins[0]): x})[0]
    y4 = run_micro(m4_build[0], {_name(ins[0]): x})[0]
    assert _rel(y, ref) <= 1e-3 and _rel(y, y4) <= 1e-5


def _tiny_module(n_in=64, n_out=10, big_act=0, big_weight=0):
    """x -> dense(W) -> softmax, and a second output exp(x)*2 (tuple return, libm)."""
    import tvm
    from tvm import relax
    bb = relax.BlockBuilder()
    k = n_in + big_act
    x = relax.Var("x", relax.TensorType((1, k), "float32"))
    rng = np.random.default_rng(0)
    w = rng.standard_normal((k, n_out + big_weight)).astype("float32") * 0.1
    with bb.function("main", [x]):
        with bb.dataflow():
            h = bb.emit(relax.op.matmul(x, relax.const(w)))
            y = bb.emit(relax.op.nn.softmax(h))
            z = bb.emit(relax.op.multiply(relax.op.exp(x), relax.const(np.float32(2.0))))
            out = bb.emit_output(relax.Tuple([y, z]))
        bb.emit_func_output(out)
    mod = bb.get()
    return mod, w, [{"name": "x", "shape": [1, k]}], \
        [{"name": "y", "shape": [1, n_out + big_weight]}, {"name": "z", "shape": [1, k]}]


def test_tuple_outputs_softmax_on_m55(tmp_path):
    mod, w, ins, outs = _tiny_module()
    fig = compile_micro(mod, ins, outs, "cortex-m55", str(tmp_path / "tiny"))
    x = np.random.default_rng(3).standard_normal((1, 64)).astype("float32")
    y, z = run_micro(str(tmp_path / "tiny"), {"x": x})
    h = x @ w
    e = np.exp(h - h.max())
    assert _rel(y, e / e.sum()) <= 1e-5
    assert _rel(z, 2 * np.exp(x)) <= 1e-5
    assert fig["preset"] == "cortex-m55" and fig["instructions"] > 0


def test_unknown_preset(mnist, tmp_path):
    mod, ins, outs = mnist
    with pytest.raises(SqccError, match=r"unknown micro preset 'cortex-m99'.*cortex-m4"):
        compile_micro(mod, ins, outs, "cortex-m99", str(tmp_path / "x"))


def test_too_big_for_flash(tmp_path):
    mod, _, ins, outs = _tiny_module(n_in=1024, big_weight=1270)  # 1024 x 1280 floats = 5 MiB
    with pytest.raises(SqccError, match=r"too big for cortex-m4.*flash.*over by \d+ B") as e:
        compile_micro(mod, ins, outs, "cortex-m4", str(tmp_path / "big"))
    msg = str(e.value)
    assert "\n" not in msg
    import re
    over = int(re.search(r"over by (\d+) B", msg).group(1))
    assert over >= 1024 * 1280 * 4 - 4 * 1024 * 1024
    assert not (tmp_path / "big").exists()


def test_too_big_for_ram(tmp_path):
    from tvm import relax
    n = 600_000  # input and output of 2.4 MB each are live together: 4.8 MB > 4 MB of SSRAM2/3
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((1, n), "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            y = bb.emit_output(relax.op.exp(x))
        bb.emit_func_output(y)
    with pytest.raises(SqccError, match=r"too big for cortex-m7.*RAM.*over by \d+ B") as e:
        compile_micro(bb.get(), [{"name": "x", "shape": [1, n]}], [{"name": "y", "shape": [1, n]}],
                      "cortex-m7", str(tmp_path / "big"))
    assert "flash" not in str(e.value).split("RAM", 1)[1]


def _fake_bin(tmp_path, keep):
    d = tmp_path / "bin"
    d.mkdir()
    for tool in keep:
        real = shutil.which(tool)
        assert real, f"{tool} must be installed for this test"
        os.symlink(real, d / tool)
    return d


def test_missing_gcc(mnist, tmp_path, monkeypatch):
    mod, ins, outs = mnist
    monkeypatch.setenv("PATH", str(_fake_bin(tmp_path, [])))
    with pytest.raises(SqccError, match="arm-none-eabi-gcc.*gcc-arm-none-eabi"):
        compile_micro(mod, ins, outs, "cortex-m4", str(tmp_path / "x"))


def test_missing_newlib(mnist, tmp_path, monkeypatch):
    mod, ins, outs = mnist
    d = _fake_bin(tmp_path, ["arm-none-eabi-size"])
    gcc = d / "arm-none-eabi-gcc"
    gcc.write_text("#!/bin/sh\necho libc.a\n")  # what gcc prints when libc.a is not installed
    gcc.chmod(gcc.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", str(d))
    with pytest.raises(SqccError, match="libnewlib-arm-none-eabi"):
        compile_micro(mod, ins, outs, "cortex-m4", str(tmp_path / "x"))


def test_missing_qemu(m4_build, tmp_path, monkeypatch):
    out_dir, _ = m4_build
    monkeypatch.setenv("PATH", str(_fake_bin(tmp_path, ["arm-none-eabi-gcc", "arm-none-eabi-size"])))
    with pytest.raises(SqccError, match="qemu-system-arm.*Debian package qemu-system-arm"):
        bench_micro(out_dir)
    with pytest.raises(SqccError, match="qemu-system-arm"):
        run_micro(out_dir, {"Input3": np.zeros((1, 1, 28, 28), "float32")})


def test_bad_inputs(m4_build, mnist):
    out_dir, _ = m4_build
    name = _name(mnist[1][0])
    with pytest.raises(SqccError, match="shape"):
        run_micro(out_dir, {name: np.zeros((1, 28, 28), "float32")})
    with pytest.raises(SqccError, match="missing input"):
        run_micro(out_dir, {})
    with pytest.raises(SqccError, match="not a micro build"):
        run_micro(os.path.dirname(out_dir), {name: np.zeros((1, 1, 28, 28), "float32")})


def test_presets_are_real_boards():
    assert micro.PRESETS["cortex-m4"]["machine"] == "mps2-an386"
    assert micro.PRESETS["cortex-m7"]["machine"] == "mps2-an500"
    assert micro.PRESETS["cortex-m55"]["machine"] == "mps3-an547"
    for p in micro.PRESETS.values():
        assert "-mfloat-abi=hard" in p["cflags"] and any(f.startswith("-mcpu=") for f in p["cflags"])


def test_too_big_caught_at_link(mnist, tmp_path, monkeypatch):
    """Weights fit but weights + code do not: the linker's overflow becomes the same one-line error."""
    mod, ins, outs = mnist
    small = dict(micro.PRESETS["cortex-m4"]["flash"], size=26_000)  # mnist-8 weights: 23,984 B
    monkeypatch.setitem(micro.PRESETS["cortex-m4"], "flash", small)
    with pytest.raises(SqccError, match=r"too big for cortex-m4.*flash over by \d+ B"):
        compile_micro(mod, ins, outs, "cortex-m4", str(tmp_path / "x"))
    assert not (tmp_path / "x").exists()
    assert not [d for d in os.listdir(tmp_path) if ".tmp-" in d]


def test_int8_conv_bit_exact(tmp_path):
    """int8 x int8 -> int32 conv, relu, shift, cast: what sqcc's int8 pass emits; bit-exact vs host TVM."""
    import tvm
    from tvm import relax
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((1, 8, 12, 12), "int8"))
    w = np.random.default_rng(0).integers(-128, 127, (16, 8, 3, 3)).astype("int8")
    with bb.function("main", [x]):
        with bb.dataflow():
            y = bb.emit(relax.op.nn.conv2d(x, relax.const(w), padding=1, out_dtype="int32"))
            z = bb.emit(relax.op.nn.relu(y))
            o = bb.emit_output(relax.op.astype(relax.op.right_shift(z, relax.const(np.int32(8))), "int8"))
        bb.emit_func_output(o)
    mod = bb.get()
    compile_micro(mod, [{"name": "x", "shape": [1, 8, 12, 12], "dtype": "int8"}],
                  [{"name": "y", "shape": [1, 16, 12, 12], "dtype": "int8"}], "cortex-m4", str(tmp_path / "i8"))
    xv = np.random.default_rng(1).integers(-128, 127, (1, 8, 12, 12)).astype("int8")
    y = run_micro(str(tmp_path / "i8"), {"x": xv})[0]
    ref = relax.VirtualMachine(relax.build(mod, "llvm"), tvm.cpu())["main"](
        tvm.runtime.tensor(xv, tvm.cpu())).numpy()
    assert y.dtype == np.int8 and np.array_equal(y, ref)
