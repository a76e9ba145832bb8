"""Cortex-M target (targets/micro/): mnist-8 built with arm-none-eabi-gcc and run under
qemu-system-arm. These tests do not skip when the toolchain is missing: CI installs
gcc-arm-none-eabi, libnewlib-arm-none-eabi and qemu-system-arm. The pure parts (arena planner,
presets, templates) are tested in tests/unit/test_micro_arena.py."""
from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import stat

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from sqcc.errors import SqccError
from sqcc.targets import micro
from sqcc.targets.micro import bench_micro, check_plan, compile_micro, run_micro
from sqcc.targets.micro.kernels import codegen_error, inline_schedule
from sqcc.targets.micro.tir_eval import overlap_limit

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
    inplace = {frozenset((o["in"], o["out"])) for o in plan["overlaps"]}
    for i, a in enumerate(bs):  # the same check, written out (in-place pairs are checked above)
        for b in bs[i + 1:]:
            if a["start"] <= b["end"] and b["start"] <= a["end"] and \
                    frozenset((a["name"], b["name"])) not in inplace:
                assert a["offset"] + a["size"] <= b["offset"] or b["offset"] + b["size"] <= a["offset"]
    assert plan["peak"] < plan["no_reuse"]  # buffers are reused
    # lower_bound is the best plan without in-place overlaps; overlaps may go below it
    assert plan["lower_bound"] <= plan["peak"] or plan["overlaps"]

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
    # x (2.4 MB) is still needed after exp(x) (2.4 MB) is made, so the two cannot share bytes:
    # 4.8 MB > 4 MB of SSRAM2/3
    n = 600_000
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((1, n), "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            y = bb.emit(relax.op.exp(x))
            z = bb.emit_output(relax.Tuple([y, relax.op.multiply(x, relax.const(np.float32(2)))]))
        bb.emit_func_output(z)
    with pytest.raises(SqccError, match=r"too big for cortex-m7.*RAM.*over by \d+ B") as e:
        compile_micro(bb.get(), [{"name": "x", "shape": [1, n]}],
                      [{"name": "y", "shape": [1, n]}, {"name": "z", "shape": [1, n]}],
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

def test_too_big_caught_at_link(mnist, tmp_path, monkeypatch):
    """Weights fit but weights + code do not: the linker's overflow becomes the same one-line error."""
    mod, ins, outs = mnist
    m4 = micro.PRESETS["cortex-m4"]
    small = dataclasses.replace(m4.flash, size=26_000)  # mnist-8 weights: 23,984 B
    monkeypatch.setitem(micro.PRESETS, "cortex-m4", dataclasses.replace(m4, flash=small))
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


# --------------------------------------------------------------------------------------------------
# person_detect (int8 TFLite, TFLite Micro's example) on Cortex-M4: integer-only requantisation
# --------------------------------------------------------------------------------------------------
PERSON = MODELS / "person_detect.tflite"
PERSON_IMAGES = _SHARED_DATA / "person-detection"


def _litert(content, resolver):
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    it = Interpreter(model_content=content, experimental_op_resolver_type=getattr(OpResolverType, resolver))
    it.allocate_tensors()
    i, o = it.get_input_details()[0]["index"], it.get_output_details()[0]["index"]

    def run(x):
        it.set_tensor(i, x)
        it.invoke()
        return it.get_tensor(o).copy()
    return run


@pytest.fixture(scope="module")
def person_m4(tmp_path_factory):
    """person_detect compiled for cortex-m4 as `sqcc compile --target micro:cortex-m4` does it."""
    import sqcc

    pkg = sqcc.compile(str(PERSON), target="micro:cortex-m4", check=False)
    out = tmp_path_factory.mktemp("pd") / "pd_m4"
    pkg.export(out)
    return pkg, out


def test_person_detect_m4_matches_litert_and_classifies(person_m4):
    """Both test images under qemu: the same int8 outputs as LiteRT's builtin int8 kernels (TFLite's
    integer requantisation, which TFLite Micro uses too); LiteRT's default XNNPACK path requantises in
    fp32 and differs by up to 3 steps of the output scale (1/256) on no_person.bmp (60 vs 57)."""
    from sqcc.preprocess import load_image
    from sqcc.tflite_frontend import normalize_tflite

    pkg, out = person_m4
    content = normalize_tflite(PERSON.read_bytes())
    ref_xnn = _litert(content, "AUTO")
    iref = micro.integer_reference(pkg)
    ref_int = lambda x: iref.run(x)[0]  # noqa: E731 -- LiteRT, OpResolverType.BUILTIN_REF
    q = pkg.manifest["quant"]["inputs"][0]
    xs = {n: load_image(PERSON_IMAGES / f"{n}.bmp", pkg.preprocess, "int8", q) for n in ("person", "no_person")}
    xs["random"] = np.random.default_rng(0).integers(-128, 128, (1, 96, 96, 1)).astype(np.int8)
    for name, x in xs.items():
        (y,) = run_micro(str(out), {"input": x})
        assert y.dtype == np.int8 and y.shape == (1, 2)
        assert np.array_equal(y, ref_int(x)), (name, y, ref_int(x))
        assert np.abs(y.astype(int) - ref_xnn(x).astype(int)).max() <= 3, (name, y, ref_xnn(x))
        if name != "random":  # class 0 = no person, class 1 = person
            assert int(y.argmax()) == (1 if name == "person" else 0), (name, y)


def test_person_detect_m4_ram_and_plan(person_m4):
    """RAM ≤ 100 KB (TFLite Micro's example asks for a 136 KB tensor arena): int8/uint8 activations
    only in the arena (no int32 accumulators or float intermediates between kernels), no kernel
    workspace, and in-place overlap takes the arena below the best plan without it (the largest pair
    of live activations). Measured: 38,536 B reserved (arena 36,880 + stack 1,024 + .data/.bss 632)."""
    pkg, out = person_m4
    with open(out / "micro.json") as f:
        fig = json.load(f)
    assert fig["ram_bytes"] <= 100_000, fig["ram_bytes"]  # .data + .bss + arena + stack reserved
    assert fig["ram_bytes"] == sum(fig["sections"][s] for s in (".data", ".bss", ".sqcc_arena", ".stack"))
    assert fig["ram_used_bytes"] == fig["data_bss_bytes"] + fig["arena_bytes"] + fig["stack_used"]
    # Without overlap the best plan holds the largest live pair, 48×48×8 + 48×48×16 (the lower
    # bound); the 1×1 conv 8→16 writes its output over its input as it finishes reading it: one
    # 48×48×16 buffer plus one 16-byte alignment step.
    assert fig["arena_lower_bound"] == 48 * 48 * 8 + 48 * 48 * 16
    assert fig["arena_bytes"] == 48 * 48 * 16 + 16
    assert {(o["in"], o["out"]) for o in fig["plan"]["overlaps"]} >= {("lv2", "lv3")}
    check_plan(fig["plan"])
    assert fig["stack_used"] < fig["stack_reserved"] <= fig["stack_used"] + micro.STACK_MARGIN + 256
    kinds = {b["kind"] for b in fig["plan"]["buffers"]}
    assert kinds == {"input", "act", "output"}  # no workspaces: accumulators stay in registers
    assert all(b["dtype"] in ("int8", "uint8") for b in fig["arena_peak"]["live"])
    # int8 tensors stay 8-bit between kernels; the only wider one is the 2-element float32
    # dequantised logits in front of softmax
    assert fig["arena_peak"]["max_bytes_by_dtype"] == {"int8": 9216, "uint8": 36864, "float32": 8}
    b = bench_micro(str(out))
    assert b["instructions"] == fig["instructions"] and b["ram_used_bytes"] == fig["ram_used_bytes"]
    assert "arena 36,880 B" in b["ram_breakdown"] and "in place" in b["ram_breakdown"]
    # integer-only requantisation: no float conversion or rounding call in any conv kernel
    src = (out / "kernels.c").read_text()
    bodies = re.findall(r"int32_t __tvm_ffi_fused_conv2d\w*\(void\* self_handle[^)]*\) \{(.*?)\n\}\n", src,
                        re.S)
    assert len(bodies) == 21  # distinct conv kernels (27 convs + the final 1×1) and the average pool
    assert sum(">> (int64_t)31" in body for body in bodies) == 20  # the fixed-point high multiply
    for body in bodies:
        assert "float" not in body and "nearbyint" not in body


def test_fixed_point_requant_is_tflite_arithmetic():
    """qdq_fold's requant="fixed" arithmetic against TFLite's MultiplyByQuantizedMultiplier written
    out literally (SaturatingRoundingDoublingHighMul + RoundingDivideByPOT), ties included."""
    import tvm
    from tvm import relax

    from sqcc.passes.qdq_fold import fixed_point_requant, quantize_multiplier

    def tflite(x, m):
        q, shift = quantize_multiplier(m)
        left, right = max(shift, 0), max(-shift, 0)
        a = int(x) * (1 << left)
        ab = a * q
        nudge = (1 << 30) if ab >= 0 else 1 - (1 << 30)
        v = ab + nudge
        high = (abs(v) >> 31) * (1 if v >= 0 else -1)  # C's truncating division by 2^31
        mask = (1 << right) - 1
        rem, thr = high & mask, (mask >> 1) + (1 if high < 0 else 0)
        return (high >> right) + (1 if rem > thr else 0)

    rng = np.random.default_rng(0)
    n = 4096
    # with some channels at shift ≥ 0 (0.5, 0.999, 1.7: the general form), and all below 0.5
    for ms in (np.array([0.3, 0.0007, 0.5, 0.999, 1.7, 2.0 ** -10, 0.00012, 0.75]),
               np.array([0.3, 0.0007, 0.25, 0.4999, 0.01, 2.0 ** -10, 0.00012, 0.123])):
        acc = rng.integers(-(1 << 20), 1 << 20, (n, len(ms))).astype(np.int32)
        acc[:8] = np.array([[1024], [-1024], [512], [-512], [3], [-3], [0], [1]]) * np.ones((1, len(ms)), np.int32)
        acc[8:16] = np.round(np.array([[k + 0.5] for k in range(-4, 4)]) / ms[None, :])  # near ties
        bb = relax.BlockBuilder()
        x = relax.Var("x", relax.TensorType((n, len(ms)), "int32"))
        with bb.function("main", [x]):
            with bb.dataflow():
                o = bb.emit_output(fixed_point_requant(x, ms, (1, len(ms))))
            bb.emit_func_output(o)
        vm = relax.VirtualMachine(relax.build(bb.get(), "llvm"), tvm.cpu())
        got = vm["main"](tvm.runtime.tensor(acc, tvm.cpu())).numpy()
        want = np.array([[tflite(a, m) for a, m in zip(row, ms)] for row in acc])
        assert np.array_equal(got, want)
    assert quantize_multiplier(0.5) == (1 << 30, 0) and quantize_multiplier(1.0) == (1 << 30, 1)


def test_abs_lowers_on_c_target_and_codegen_errors_are_sqcc_errors(tmp_path):
    """tirx.fabs has no rule in TVM's c target (it stopped person_detect with an internal error):
    sqcc lowers it to fabsf. Any other codegen gap is an SqccError naming the op and kernel."""
    from tvm import relax

    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((1, 37), "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            o = bb.emit_output(relax.op.floor(relax.op.add(relax.op.abs(x), relax.const(np.float32(0.5)))))
        bb.emit_func_output(o)
    compile_micro(bb.get(), [{"name": "x", "shape": [1, 37]}], [{"name": "y", "shape": [1, 37]}],
                  "cortex-m4", str(tmp_path / "abs"))
    xv = np.random.default_rng(2).standard_normal((1, 37)).astype(np.float32) * 4
    y = run_micro(str(tmp_path / "abs"), {"x": xv})[0]
    assert np.array_equal(y, np.floor(np.abs(xv) + 0.5))

    class FakeGV:
        name_hint = "fused_weird_op"
    err = Exception('InternalError: Unresolved call ir.Op(span=None, name="tirx.weird", num_inputs=1)')
    msg = codegen_error(err, {FakeGV(): "T.weird(x)"})
    assert msg.startswith("micro: TVM's C code generator cannot lower the operation tirx.weird")
    assert "fused_weird_op" in msg and "InternalError" not in msg


def _tir_kernel(kind, n=64, c_in=8, c_out=16):
    """A 1×1 conv expanding channels (reads pixel p for every output of pixel p), or a flip
    (out[i] = in[n-1-i]: the first write lands where the last read is)."""
    from tvm import te
    if kind == "pointwise":
        x = te.placeholder((n, c_in), "uint8", name="x")
        w = te.placeholder((c_in, c_out), "int8", name="w")
        k = te.reduce_axis((0, c_in), name="k")
        y = te.compute((n, c_out), lambda p, o: te.sum(x[p, k].astype("int32") * w[k, o].astype("int32"),
                                                       axis=k), name="y")
        z = te.compute((n, c_out), lambda p, o: y[p, o].astype("uint8"), name="z")
        f = te.create_prim_func([x, w, z])
        return inline_schedule(f), 0, 2
    x = te.placeholder((n,), "uint8", name="x")
    z = te.compute((n,), lambda i: x[n - 1 - i], name="z")
    return te.create_prim_func([x, z]), 0, 1


def test_overlap_limit_from_tir():
    """d_max from the kernel's access order: a 1×1 conv 8→16 over 64 pixels may start its output
    up to 64·8 + 7 bytes below its input (so the output ends 9 bytes short of the input's end, where
    pixel 63's last reads still happen); a flip may not overlap its input at all."""
    f, i, o = _tir_kernel("pointwise")
    assert overlap_limit(f, i, o) == -(64 * 8 + 7)
    f, i, o = _tir_kernel("flip")
    # only the last output byte may land on the first input byte (read by the same iteration)
    assert overlap_limit(f, i, o) == -63

def test_person_detect_cli_compile_run_bench(tmp_path):
    """The issue's commands: sqcc compile --target micro:cortex-m4, sqcc run --image (both images),
    sqcc bench (flash, RAM with its breakdown, instruction count)."""
    from conftest import run_cli

    out = tmp_path / "pd_m4"
    p = run_cli("compile", PERSON, "--target", "micro:cortex-m4", "-o", out, check=0)
    assert "internal error" not in p.stdout + p.stderr and "micro: flash" in p.stdout
    for name, label in [("person", "person"), ("no_person", "no person")]:
        p = run_cli("run", out, "--image", PERSON_IMAGES / f"{name}.bmp", check=0)
        assert re.search(r"builtin int8 reference kernels.*: max abs err 0\b", p.stdout), p.stdout
        first = [ln for ln in p.stdout.splitlines() if ln.startswith("1. ")][0]
        assert first.endswith(f"  {label}"), p.stdout
    p = run_cli("bench", out, check=0)
    for key in ("flash_bytes", "ram_bytes", "arena_bytes", "stack_used", "instructions", "ram_breakdown"):
        assert f"  {key}: " in p.stdout, p.stdout


def test_in_place_overlaps_keep_results(tmp_path):
    """Kernels with every kind of access order -- transposes, flips, strided and depthwise convs,
    pools, concatenation, an input read twice -- planned with in-place overlaps where their TIR
    allows, and the same numbers as host TVM."""
    import tvm
    from tvm import relax
    rng = np.random.default_rng(5)
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((1, 12, 12, 8), "float32"))
    w1 = rng.standard_normal((3, 3, 8, 16)).astype("float32")
    w2 = rng.standard_normal((3, 3, 1, 16)).astype("float32")
    with bb.function("main", [x]):
        with bb.dataflow():
            t = bb.emit(relax.op.permute_dims(x, [0, 2, 1, 3]))
            f = bb.emit(relax.op.flip(t, axis=1))
            c = bb.emit(relax.op.nn.conv2d(f, relax.const(w1), strides=2, padding=1, data_layout="NHWC",
                                           kernel_layout="HWIO"))
            d = bb.emit(relax.op.nn.conv2d(c, relax.const(w2), padding=1, groups=16, data_layout="NHWC",
                                           kernel_layout="HWIO"))
            s = bb.emit(relax.op.add(d, d))
            p = bb.emit(relax.op.nn.max_pool2d(s, pool_size=2, strides=1, layout="NHWC"))
            q = bb.emit(relax.op.concat([p, relax.op.flip(p, axis=3)], axis=3))
            r = bb.emit(relax.op.permute_dims(q, [0, 3, 1, 2]))
            o = bb.emit_output(relax.op.nn.softmax(relax.op.reshape(r, (1, -1))))
        bb.emit_func_output(o)
    mod = bb.get()
    n_out = 32 * 5 * 5
    fig = compile_micro(mod, [{"name": "x", "shape": [1, 12, 12, 8]}], [{"name": "y", "shape": [1, n_out]}],
                        "cortex-m4", str(tmp_path / "ov"))
    assert fig["plan"]["overlaps"]  # some kernels write over their inputs
    check_plan(fig["plan"])
    vm = relax.VirtualMachine(relax.build(mod, "llvm"), tvm.cpu())
    for seed in range(2):
        xv = np.random.default_rng(seed).standard_normal((1, 12, 12, 8)).astype("float32")
        y = run_micro(str(tmp_path / "ov"), {"x": xv})[0]
        ref = vm["main"](tvm.runtime.tensor(xv, tvm.cpu())).numpy()
        assert _rel(y, ref) <= 1e-5
