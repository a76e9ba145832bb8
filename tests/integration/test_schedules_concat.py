"""Concat elimination (schedules/concat.py): producers write into their slices of the concat output."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import tvm
from onnx import TensorProto, helper, numpy_helper
from tvm import relax
from tvm.relax.frontend.onnx import from_onnx

from sqcc.build import build, host_target, schedule
from sqcc.schedules.concat import EliminateConcat

SQUEEZENET = Path(__file__).resolve().parents[2] / "sqcc" / "models" / "squeezenet1.1.onnx"


def _calls(mod):
    """Names of the kernels main calls, in order."""
    names = []
    for blk in mod["main"].body.blocks:
        for b in blk.bindings:
            if isinstance(b.value, relax.Call) and b.value.args and \
                    isinstance(b.value.args[0], tvm.ir.GlobalVar):
                names.append(b.value.args[0].name_hint)
    return names


def _run(mod, x, monkeypatch, eliminate: bool):
    monkeypatch.setenv("SQCC_CONCAT_ELIMINATION", "1" if eliminate else "0")
    vm = relax.VirtualMachine(build(mod, host_target()), tvm.cpu())
    return vm["main"](tvm.runtime.tensor(x)).numpy()


def test_squeezenet11_concats_are_eliminated_and_outputs_identical(monkeypatch):
    model = onnx.load(str(SQUEEZENET))
    mod = from_onnx(model, {"data": [1, 3, 224, 224]}, keep_params_in_input=False)
    scheduled = schedule(mod, host_target())
    before = _calls(scheduled)
    assert sum(n.startswith("concatenate") for n in before) == 8
    p = EliminateConcat()
    after = _calls(p(scheduled))
    assert p.merged == 8
    assert not any(n.startswith("concatenate") for n in after)
    assert len(after) == len(before) - 3 * 8 + 8  # 2 producers + 1 concat → 1 kernel, per fire

    x = np.random.default_rng(0).standard_normal((1, 3, 224, 224), dtype=np.float32)
    plain = _run(mod, x, monkeypatch, eliminate=False)
    merged = _run(mod, x, monkeypatch, eliminate=True)
    np.testing.assert_array_equal(merged, plain)  # the same kernels, writing elsewhere
    ref = ort.InferenceSession(model.SerializeToString(),
                               providers=["CPUExecutionProvider"]).run(None, {"data": x})[0]
    assert np.abs(merged - ref).max() <= 1e-4 * np.abs(ref).max()


def _concat_model(axis: int) -> onnx.ModelProto:
    """x → three convs (1×1, 3×3, 3×3) concatenated on ``axis`` → 1×1 conv, plus a second concat that
    takes the graph input itself and a tensor used twice (neither may be merged)."""
    rng = np.random.default_rng(1)
    c, h = 6, 9
    inits, nodes = [], []
    for i, (o, k) in enumerate([(8, 1), (5, 3), (8, 3)]):
        inits.append(numpy_helper.from_array(
            rng.standard_normal((o, c, k, k)).astype(np.float32) * 0.3, f"W{i}"))
        inits.append(numpy_helper.from_array(rng.standard_normal(o).astype(np.float32), f"B{i}"))
        nodes += [helper.make_node("Conv", ["x", f"W{i}", f"B{i}"], [f"c{i}"], kernel_shape=[k, k],
                                   pads=[k // 2] * 4),
                  helper.make_node("Relu", [f"c{i}"], [f"r{i}"])]
    outs = ["r0", "r1", "r2"]
    if axis != 1:  # spatial concat: make the channel counts agree
        nodes.append(helper.make_node("Slice", ["r1", "st", "en", "ax"], ["r1s"]))
        inits += [numpy_helper.from_array(np.array(v, np.int64), n)
                  for n, v in (("st", [0]), ("en", [5]), ("ax", [1]))]
        nodes += [helper.make_node("Slice", [r, "st", "en", "ax"], [r + "s"]) for r in ("r0", "r2")]
        outs = ["r0s", "r1s", "r2s"]
    nodes.append(helper.make_node("Concat", outs, ["cat"], axis=axis))
    # consumed by a conv, as in a fire module (so the layout pass keeps the concat in NHWC)
    cc = 21 if axis == 1 else 5
    inits.append(numpy_helper.from_array(rng.standard_normal((4, cc, 1, 1)).astype(np.float32), "Wo"))
    nodes.append(helper.make_node("Conv", ["cat", "Wo"], ["y"], kernel_shape=[1, 1]))
    nodes.append(helper.make_node("Concat", ["x", "x"], ["cat2"], axis=axis))
    graph = helper.make_graph(
        nodes, "concat", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, c, h, h])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None),
         helper.make_tensor_value_info("cat2", TensorProto.FLOAT, None)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


@pytest.mark.parametrize("axis", [1, 2, 3])
def test_three_way_concat_on_any_axis_matches_onnxruntime(axis, monkeypatch):
    model = _concat_model(axis)
    mod = from_onnx(model, {"x": [1, 6, 9, 9]}, keep_params_in_input=False)
    p = EliminateConcat()
    calls = _calls(p(schedule(mod, host_target())))
    assert p.merged == 1, calls  # the three-conv concat; not the one of the graph input
    assert sum(n.startswith("concatenate") for n in calls) == 1
    x = np.random.default_rng(2).standard_normal((1, 6, 9, 9), dtype=np.float32)
    monkeypatch.setenv("SQCC_CONCAT_ELIMINATION", "1")
    vm = relax.VirtualMachine(build(mod, host_target()), tvm.cpu())
    got = [t.numpy() for t in vm["main"](tvm.runtime.tensor(x))]
    ref = ort.InferenceSession(model.SerializeToString(),
                               providers=["CPUExecutionProvider"]).run(None, {"x": x})
    for g, r in zip(got, ref):
        assert g.shape == r.shape
        assert np.abs(g - r).max() <= 1e-4 * np.abs(r).max()
