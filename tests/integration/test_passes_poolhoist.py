"""poolhoist pass: exact where no ReLU sits between the 1×1 conv and the global mean (against onnxruntime,
windows that do and do not divide the map), the real SqueezeNet classifier against the numpy reference
of pool-first, what it does not match, bad input, and its pricing in the budget."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from sqcc import frontend, passes, planning
from sqcc.errors import SqccError
from sqcc.passes import PassContext
from sqcc.passes.pool_hoist import find_hoistable, hoisted_reference

from test_passes_lowrank import mobilenet, rel, squeezenet, tvm_run  # noqa: F401

IMAGES = Path(__file__).resolve().parents[3] / "shared" / "data" / "imagenet-sample"


def conv_gap_model(relu: bool, c=24, n=40, h=13, w=11, seed=0, extra_bias=False):
    """ONNX: Conv 1×1 (bias) → [Add per-channel constant] → [Relu] → GlobalAveragePool → Flatten."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    wt = rng.standard_normal((n, c, 1, 1)).astype(np.float32)
    b = rng.standard_normal(n).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["y"])]
    last = "y"
    inits = [numpy_helper.from_array(wt, "w"), numpy_helper.from_array(b, "b")]
    if extra_bias:  # a second per-channel add, as a refitted conv's bias correction gives
        nodes.append(helper.make_node("Add", ["y", "b2"], ["y2"]))
        inits.append(numpy_helper.from_array(rng.standard_normal((1, n, 1, 1)).astype(np.float32), "b2"))
        last = "y2"
    if relu:
        nodes.append(helper.make_node("Relu", [last], ["r"]))
        last = "r"
    nodes += [helper.make_node("GlobalAveragePool", [last], ["p"]), helper.make_node("Flatten", ["p"], ["out"])]
    g = helper.make_graph(nodes, "conv_gap", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, c, h, w])],
                          [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, n])],
                          inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])


def ort(model, x):
    import onnxruntime as ort_

    s = ort_.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return s.run(None, {"x": x})[0]


@pytest.mark.parametrize("window,extra_bias", [(2, False), (3, True), (4, False), (0, False)])
def test_exact_without_relu_against_onnxruntime(window, extra_bias):
    """A 1×1 conv commutes with average pooling: with no ReLU the rewrite is exact for any window, the
    uneven last windows (13×11 by 2, 3, 4) weighted by their size; any number of per-channel adds."""
    onnx_model = conv_gap_model(relu=False, extra_bias=extra_bias)
    m = frontend.load(onnx_model)
    x = np.random.default_rng(1).standard_normal((1, 24, 13, 11)).astype(np.float32)
    ctx = PassContext()
    mod = passes.create(f"poolhoist:window={window}", ctx)(m.mod)
    (r,) = ctx.records
    assert r.applied and "exact" in r.detail
    k = window or 13
    assert r.macs_after == -(-13 // k) * -(-11 // min(k, 11)) * 40 * 24 < r.macs_before == 13 * 11 * 40 * 24
    assert rel(tvm_run(mod, {"x": x}), ort(onnx_model, x)) < 1e-5


def test_with_relu_matches_pool_first_reference():
    """With a ReLU the rewritten graph computes exactly mean(relu(W·avgpool(x) + b)) (numpy reference),
    which differs from the original."""
    onnx_model = conv_gap_model(relu=True)
    m = frontend.load(onnx_model)
    x = np.maximum(np.random.default_rng(2).standard_normal((1, 24, 13, 11)), 0).astype(np.float32) + 0.1
    from onnx import numpy_helper

    init = {t.name: numpy_helper.to_array(t) for t in onnx_model.graph.initializer}
    wt, b = init["w"], init["b"]
    y0 = ort(onnx_model, x)
    assert rel(hoisted_reference(x, wt, b, 1), y0) < 1e-5  # the reference's window 1 is the original
    mod = passes.create("poolhoist:window=3", PassContext())(m.mod)
    y = tvm_run(mod, {"x": x})
    assert rel(y, hoisted_reference(x, wt, b, 3)) < 1e-5
    assert rel(y, y0) > 1e-3  # the ReLU makes it an approximation


def test_squeezenet_classifier(squeezenet):
    """SqueezeNet 1.1's conv10 (here conv25: 512→1000 at 13×13, then bias, ReLU, global mean) is the one
    match; 2×2 windows cut its MACs to 49/169, and the model computes the pool-first reference on
    real images, with the pooled output's error reported."""
    from sqcc.calibrate import calibration_feeds, collect_activations

    assert list(find_hoistable(squeezenet.mod["main"])) == ["conv25"]
    feeds = calibration_feeds(squeezenet, IMAGES, limit=3)
    acts = collect_activations(squeezenet.mod, feeds, layers=["conv25"], max_samples=3)
    ctx = PassContext(activations=acts)
    mod = passes.create("poolhoist:window=2", ctx)(squeezenet.mod)
    (r,) = ctx.records
    assert r.layer == "conv25" and r.applied
    assert (r.macs_before, r.macs_after) == (13 * 13 * 1000 * 512, 7 * 7 * 1000 * 512)
    wt = next(lf.weight for lf in planning.layer_fits(squeezenet.mod) if lf.name == "conv25")
    bias = passes._factor.relu_biases(squeezenet.mod["main"])["conv25"]
    want = hoisted_reference(acts["conv25"], wt, bias, 2)
    orig = hoisted_reference(acts["conv25"], wt, bias, 1)
    got = np.concatenate([tvm_run(mod, f) for f in feeds])
    assert rel(got, want) < 1e-4
    assert rel(np.concatenate([tvm_run(squeezenet.mod, f) for f in feeds]), orig) < 1e-4
    assert r.output_error == pytest.approx(rel(want, orig), rel=1e-6)
    assert 0.005 < r.output_error < 0.2


def test_no_match_and_bad_input(mobilenet):
    # MobileNet pools before its classifier already: nothing to hoist, the module is returned as is
    assert find_hoistable(mobilenet.mod["main"]) == {}
    ctx = PassContext()
    assert passes.create("poolhoist", ctx)(mobilenet.mod) is not None and ctx.records == []
    with pytest.raises(SqccError, match="window=-1 out of range"):
        passes.create("poolhoist:window=-1")
    with pytest.raises(SqccError, match="expected an integer"):
        passes.create("poolhoist:window=two")
    # window 1 changes nothing: recorded as skipped
    onnx_model = conv_gap_model(relu=True)
    ctx = PassContext()
    passes.create("poolhoist:window=1", ctx)(frontend.load(onnx_model).mod)
    assert [r.applied for r in ctx.records] == [False] and "would not shrink" in ctx.records[0].detail


def test_budget_prices_hoist_by_measured_kl(squeezenet):
    """hoist_candidates measures the hoisted model's KL on the calibration inputs and sets the error so
    that sensitivity·error² is that KL; the allocation can then choose it, and realise applies it."""
    from sqcc.calibrate import calibration_feeds

    feeds = calibration_feeds(squeezenet, IMAGES, limit=4)
    priced = planning.price(squeezenet.mod, None, ("lowrank",), use_data=False)
    added = planning.hoist_candidates(squeezenet.mod, priced, feeds, {"conv25": 4.0})
    assert [(layer, c.rank) for layer, c, _ in added] == [("conv25", 2), ("conv25", 3), ("conv25", 0)]
    ref = planning.predict_logits(squeezenet.mod, feeds)
    for _, c, kl in added:
        new = passes.create(f"poolhoist:window={c.rank}", PassContext())(squeezenet.mod)
        assert kl == pytest.approx(planning.mean_kl(ref, planning.predict_logits(new, feeds)), rel=1e-6)
        assert 4.0 * c.error ** 2 == pytest.approx(kl, rel=1e-9)
    assert added[2][2] > added[0][2] > 0  # the whole map moves the predictions more than 2×2 windows
    # without sensitivities the error is the pass's own: the pooled output's relative error
    plain = planning.hoist_candidates(squeezenet.mod,
                                      planning.price(squeezenet.mod, None, ("lowrank",), use_data=False), feeds)
    errs = [c.error for _, c, kl in plain]
    assert [kl for _, _, kl in plain] == [None] * 3 and 0 < errs[0] < errs[1] < errs[2] < 1
    plan = planning.allocate(squeezenet.mod, None, macs=0.76, fit="weight", priced=priced,
                             techniques=("lowrank", "poolhoist"))
    hoist = [e for e in plan.entries if e.technique == "poolhoist"]
    assert [e.layer for e in hoist] == ["conv25"]
    assert f"poolhoist:window={hoist[0].rank},layers=conv25" in plan.pass_specs
    mod, recs = planning.realise(squeezenet.mod, plan.pass_specs)
    assert any(r.technique == "poolhoist" and r.applied for r in recs)
    assert planning.model_totals(mod)[0] == plan.macs_after


def test_realise_hoists_the_compensated_classifier(squeezenet):
    """In a budget plan the layers below the first rewrite are refitted (compensation) and the hoist is
    applied last, to the refitted classifier; the realised model has the MACs the records count."""
    from sqcc.calibrate import calibration_feeds, collect_activations

    feeds = calibration_feeds(squeezenet, IMAGES, limit=4)
    acts = collect_activations(squeezenet.mod, feeds, max_samples=4)
    specs = ["dwsep:multiplier=8,fit=data,layers=conv24", "poolhoist:window=2,layers=conv25"]
    mod, recs = planning.realise(squeezenet.mod, specs, acts, feeds)
    (h,) = [r for r in recs if r.technique == "poolhoist"]
    assert h.applied and h.layer == "conv25" and h.macs_after == 7 * 7 * 1000 * 512
    dw = next(r for r in recs if r.technique == "dwsep" and r.applied)
    total = planning.model_totals(squeezenet.mod)[0]
    assert planning.model_totals(mod)[0] == total - (dw.macs_before - dw.macs_after) - (h.macs_before - h.macs_after)
