"""Budget allocation: meets the budget, realised by ordinary pass specs, errors for unreachable and
malformed budgets; data-aware beats weight-only at the same MAC budget on SqueezeNet."""
from __future__ import annotations

import numpy as np
import pytest

from sqcc import frontend, passes, planning
from sqcc.errors import SqccError

from test_passes_lowrank import MODELS, SHARED, rel, squeezenet, tvm_run  # noqa: F401

IMAGES = SHARED / "data" / "imagenet-sample"
FAST = ("lowrank:weight", "lowrank:channel")  # closed-form pricing: keeps the tests quick


def test_allocation_meets_budget_and_is_realised_by_pass_specs(squeezenet):
    plan = planning.allocate(squeezenet.mod, macs=0.6, techniques=FAST)
    assert plan.fit == "weight" and plan.macs_after <= 0.6 * plan.macs_before
    assert plan.entries and all(e.macs_after < e.macs_before for e in plan.entries)
    specs = plan.pass_specs
    assert all(s.startswith("lowrank:scheme=") and "layers=" in s for s in specs)
    ctx = passes.PassContext()
    mod = squeezenet.mod
    for s in specs:
        mod = passes.create(s, ctx)(mod)
    from sqcc.layers import layers, totals

    assert totals(layers(mod))["macs"] == plan.macs_after
    assert sum(r.applied for r in ctx.records) == len(plan.entries)
    js = plan.to_json()
    assert js["passes"] == specs and abs(js["achieved"] - plan.fraction) < 1e-12
    assert "conv25" in plan.table()


def test_params_budget(squeezenet):
    plan = planning.allocate(squeezenet.mod, params=0.5, techniques=FAST)
    assert plan.params_after <= 0.5 * plan.params_before


def test_unreachable_budget_says_smallest(squeezenet):
    with pytest.raises(SqccError) as e:
        planning.allocate(squeezenet.mod, macs=0.01, techniques=FAST)
    msg = str(e.value)
    assert "unreachable" in msg and "smallest reachable is macs=0." in msg


@pytest.mark.parametrize("text, msg", [("macs=0", "out of range"), ("macs=1.5", "out of range"),
                                       ("flops=0.5", "exactly one of"), ("macs", "expected macs=F"),
                                       ("macs=abc", "expected a fraction"),
                                       ("macs=0.5,params=0.5", "exactly one of")])
def test_bad_budget_text(text, msg):
    with pytest.raises(SqccError) as e:
        planning.parse_budget(text)
    assert msg in str(e.value)


def test_data_aware_beats_weight_only_on_squeezenet(squeezenet):
    """Same MAC budget (0.7), 6 calibration images, 6 other images to judge: data-aware fitting and
    allocation give lower logit error and at least the same top-1 agreement."""
    from sqcc.calibrate import collect_activations, load_calibration_images

    files_calib = load_calibration_images(IMAGES, squeezenet.preprocess, 6, squeezenet.inputs[0])
    name = squeezenet.inputs[0].name
    acts = collect_activations(squeezenet.mod, [{name: x} for x in files_calib])
    feeds, _, _ = planning.eval_set(squeezenet, IMAGES, 13)
    feeds = feeds[1::2]  # not the calibration images
    ref = np.stack([tvm_run(squeezenet.mod, f).reshape(-1) for f in feeds])
    out = {}
    for mode in ("weight", "data"):
        plan = planning.allocate(squeezenet.mod, acts if mode == "data" else None, macs=0.7, techniques=FAST,
                                 fit=mode)
        assert plan.fit == mode and plan.macs_after <= 0.7 * plan.macs_before
        mod, records = planning.apply_plan(squeezenet.mod, plan, acts)
        import tvm
        from tvm import relax

        vm = relax.VirtualMachine(relax.build(mod, "llvm"), tvm.cpu())
        y = np.stack([vm["main"](tvm.runtime.tensor(f[name])).numpy().reshape(-1) for f in feeds])
        out[mode] = (rel(y, ref), float((y.argmax(1) == ref.argmax(1)).mean()))
        if mode == "data":
            assert all(r.output_error is not None for r in records if r.applied)
    assert out["data"][0] < out["weight"][0], out
    assert out["data"][1] >= out["weight"][1], out


def two_conv_model():
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w1 = rng.standard_normal((16, 4, 3, 3)).astype(np.float32) * 0.3
    w2 = rng.standard_normal((10, 16, 3, 3)).astype(np.float32) * 0.3
    nodes = [helper.make_node("Conv", ["x", "w1"], ["a"], kernel_shape=[3, 3], pads=[1, 1, 1, 1], name="c1"),
             helper.make_node("Relu", ["a"], ["b"]),
             helper.make_node("Conv", ["b", "w2"], ["c"], kernel_shape=[3, 3], strides=[2, 2], name="c2"),
             helper.make_node("GlobalAveragePool", ["c"], ["d"]),
             helper.make_node("Flatten", ["d"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 12, 12])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 10])],
                              [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return frontend.load(model)


def test_sensitivity_and_refit_on_small_model():
    from sqcc.calibrate import collect_activations

    m = two_conv_model()
    rng = np.random.default_rng(1)
    feeds = [{"x": rng.standard_normal((1, 4, 12, 12)).astype(np.float32)} for _ in range(6)]
    acts = collect_activations(m.mod, feeds)
    assert set(acts) == {"c1", "c2"}
    priced = planning.price(m.mod, acts)
    sens = planning.layer_sensitivity(m.mod, priced, acts, feeds[:3])
    assert set(sens) == {"c1", "c2"} and all(v >= 0 for v in sens.values())
    plan = planning.allocate(m.mod, acts, macs=0.6, priced=priced, sensitivity=sens)
    assert plan.macs_after <= 0.6 * plan.macs_before and "sensitivity" in plan.error_measure
    # one round of refitting the last factors to the rewritten model's own inputs
    mod, records = planning.apply_plan(m.mod, plan, acts, feeds, rounds=1)
    assert all(r.output_error is not None for r in records if r.applied)
    y = tvm_run(mod, feeds[0])
    assert y.shape == (1, 10) and np.isfinite(y).all()


def test_sequential_refit_and_heldout_sensitivity_on_small_model():
    """Defaults: sensitivity fitted on half the calibration inputs and measured on the other half;
    apply_plan with the feeds refits each rewritten layer, in order, to the original outputs given
    the rewritten model's own inputs (c2 compensates c1's error)."""
    from sqcc.calibrate import collect_activations

    m = two_conv_model()
    rng = np.random.default_rng(2)
    feeds = [{"x": rng.standard_normal((1, 4, 12, 12)).astype(np.float32)} for _ in range(8)]
    acts = collect_activations(m.mod, feeds)
    priced = planning.price(m.mod, acts)
    sens = planning.layer_sensitivity(m.mod, priced, acts, feeds)  # held-out split: fit on 4, measure on 4
    assert set(sens) == {"c1", "c2"} and all(np.isfinite(v) and v >= 0 for v in sens.values())
    plan = planning.allocate(m.mod, acts, macs=0.6, priced=priced, sensitivity=sens)
    ref = np.stack([tvm_run(m.mod, f).reshape(-1) for f in feeds])
    errs = {}
    for seq in (False, True):
        mod, records = planning.apply_plan(m.mod, plan, acts, feeds, sequential=seq)
        y = np.stack([tvm_run(mod, f).reshape(-1) for f in feeds])
        errs[seq] = rel(y, ref)
        refitted = [r for r in records if r.applied and "refitted" in r.detail]
        if seq and len(plan.entries) > 1:
            assert refitted and refitted[0].layer != plan.entries[0].layer
        if not seq:
            assert not refitted
    if len(plan.entries) > 1:
        assert errs[True] <= errs[False] * 1.02, errs


def test_compensation_of_unrewritten_layers_on_small_model(monkeypatch):
    """realise's default (and apply_plan's) compensates the layers below the first rewrite that it does
    not rewrite (a 'refit' record each, MACs unchanged); turning it off leaves them alone; a layer
    with too few calibration patches per dimension is left alone too."""
    import sqcc.passes._factor as factor
    from sqcc.calibrate import collect_activations

    m = two_conv_model()
    rng = np.random.default_rng(3)
    feeds = [{"x": rng.standard_normal((1, 4, 12, 12)).astype(np.float32)} for _ in range(8)]
    acts = collect_activations(m.mod, feeds)
    ref = np.stack([tvm_run(m.mod, f).reshape(-1) for f in feeds])
    spec = ["lowrank:scheme=channel,rank=3,fit=data,layers=c1"]
    # c2 sees 8 × 5 × 5 = 200 patches of dimension 144: too few for a full-rank refit
    _, records = planning.realise(m.mod, spec, acts, feeds)
    assert not [r for r in records if r.technique == "refit"]
    monkeypatch.setattr(factor, "SHRINK_BELOW", 1)
    errs = {}
    for comp in (False, True):
        mod, records = planning.realise(m.mod, spec, acts, feeds, compensate=comp)
        refits = [r for r in records if r.technique == "refit"]
        if comp:
            assert [r.layer for r in refits] == ["c2"] and refits[0].macs_after == refits[0].macs_before
            assert "cross-validation" in refits[0].detail
        else:
            assert not refits
        errs[comp] = rel(np.stack([tvm_run(mod, f).reshape(-1) for f in feeds]), ref)
    assert errs[True] <= errs[False] * 1.05, errs


def mini_squeezenet_onnx(classes=300, seed=0):
    """SqueezeNet 1.1's structure in miniature, at its 224x224 input: a stride-2 3x3 stem, max pools,
    two fire modules (squeeze 1x1 -> expand 1x1 + expand 3x3 -> concat), then the 1x1 classifier ->
    ReLU -> GlobalAveragePool -> Flatten (about 17% of the MACs, as SqueezeNet's is about 25%, so the
    pool hoist alone cannot meet the budget). Random, fixed (He-scaled) weights; 9.5 M MACs."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    nodes, inits = [], []

    def conv(name, x, cin, cout, k, stride=1, pad=0):
        w = (rng.standard_normal((cout, cin, k, k)) * np.sqrt(2.0 / (cin * k * k))).astype(np.float32)
        b = (rng.standard_normal(cout) * 0.05).astype(np.float32)
        inits.extend([numpy_helper.from_array(w, f"{name}_W"), numpy_helper.from_array(b, f"{name}_B")])
        nodes.append(helper.make_node("Conv", [x, f"{name}_W", f"{name}_B"], [name], name=name,
                                      kernel_shape=[k, k], strides=[stride] * 2, pads=[pad] * 4))
        nodes.append(helper.make_node("Relu", [name], [f"{name}_relu"], name=f"{name}_relu"))
        return f"{name}_relu"

    def pool(name, x):
        nodes.append(helper.make_node("MaxPool", [x], [name], name=name, kernel_shape=[3, 3], strides=[2, 2]))
        return name

    def fire(name, x, first, cin, squeeze, expand):
        s = conv(f"conv{first}", x, cin, squeeze, 1)
        e1 = conv(f"conv{first + 1}", s, squeeze, expand, 1)
        e3 = conv(f"conv{first + 2}", s, squeeze, expand, 3, pad=1)
        nodes.append(helper.make_node("Concat", [e1, e3], [name], name=name, axis=1))
        return name

    x = conv("conv0", "data", 3, 8, 3, stride=2)  # 224 -> 111
    x = pool("pool0", x)                          # -> 55
    x = fire("fire1", x, 1, 8, 8, 16)
    x = pool("pool1", x)                          # -> 27
    x = fire("fire2", x, 4, 32, 8, 16)
    x = pool("pool2", x)                          # -> 13
    x = conv("conv7", x, 32, classes, 1)
    nodes.append(helper.make_node("GlobalAveragePool", [x], ["gap"], name="gap"))
    nodes.append(helper.make_node("Flatten", ["gap"], ["logits"], name="flatten", axis=1))
    graph = helper.make_graph(nodes, "mini_squeezenet",
                              [helper.make_tensor_value_info("data", TensorProto.FLOAT, [1, 3, 224, 224])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, classes])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def write_images(folder, n=8, seed=0):
    """``n`` small generated colour images (random sinusoids plus noise; PNG and JPEG, not at the input
    size, so the resize + centre crop runs) and a labels.json, like shared/data/imagenet-sample."""
    import json

    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    labels = {}
    for i in range(n):
        h, w = 96 + 16 * (i % 3), 128
        yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
        img = np.stack([np.sin(2 * np.pi * (rng.uniform(0.5, 3) * xx + rng.uniform(0.5, 3) * yy + rng.uniform()))
                        for _ in range(3)], -1)
        img = 127.5 * (img + 1) + rng.normal(0, 20, img.shape)
        name = f"{i:03d}_synthetic.{'jpg' if i % 2 else 'png'}"
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(folder / name)
        labels[name] = i % 10
    (folder / "labels.json").write_text(json.dumps(labels))
    return folder


# The same flow on the real SqueezeNet 1.1 (~460 s on 2 Zen 5 cores, 712 s on a 2-core CI machine) is
# benchmarks/budget_cli_squeezenet.py. The CLI reads --calibration/--eval-images images with the
# preprocessing recipe of a *known* model only (sqcc.models.REGISTRY, matched by name or by file name):
# the miniature is written as squeezenet1.1.onnx so that SqueezeNet's own recipe (torch, 224x224) applies.
@pytest.mark.timeout(900)
def test_cli_compile_with_budget_end_to_end(tmp_path):
    """`sqcc compile MODEL --budget macs=F --calibration DIR --eval-images DIR`: the plan is
    allocated (held-out sensitivity, the pool hoist priced by measured KL), realised with the
    sequential refit, reported and stored in the package, which loads and runs like any other."""
    import json
    import tarfile

    import onnx

    from conftest import run_cli

    model = tmp_path / "mini" / "squeezenet1.1.onnx"
    model.parent.mkdir()
    onnx.save(mini_squeezenet_onnx(), str(model))
    images = write_images(tmp_path / "images")
    p = run_cli("compile", model, "--budget", "macs=0.7", "--calibration", images,
                "--calibration-limit", "8", "--eval-images", images, "-o", tmp_path / "c.tar",
                check=0, env={"TVM_NUM_THREADS": "2"})
    assert "calibration 8/8" in p.stderr  # the generated images went through the recipe
    assert "refitted to the rewritten model's inputs" in p.stdout  # the sequential refit ran
    assert "evaluation on" in p.stdout and "top-1 agreement" in p.stdout
    with tarfile.open(tmp_path / "c.tar") as t:
        report = json.load(t.extractfile("report.json"))
        manifest = json.load(t.extractfile("manifest.json"))
    plan = report["budget"]
    assert plan["fit"] == "data" and plan["sensitivity"] and plan["achieved"] <= 0.7
    # the classifier's pool hoist alone saves at most 17%: the plan also factorises, and refits
    assert any(s.startswith("poolhoist:") for s in plan["passes"])
    assert any(s.startswith(("dwsep:", "lowrank:", "flatten:")) for s in plan["passes"])
    after, before = report["after"]["totals"]["macs"], report["before"]["totals"]["macs"]
    assert before == 9_469_080 and after <= 0.7 * before
    assert [x["spec"] for x in manifest["passes"]][:len(plan["passes"])] == plan["passes"]
    r = run_cli("run", tmp_path / "c.tar", "--image", images / "001_synthetic.jpg", "--print-top", "1", check=0)
    assert "1. class" in r.stdout


def test_sweep_on_small_model_reports_heldout_agreement(tmp_path):
    """The sweep end to end on feeds: one row for the original and one per budget and mode, with
    agreement measured on all evaluation inputs and on those not used for calibration."""
    m = two_conv_model()
    rng = np.random.default_rng(3)
    calib = [{"x": rng.standard_normal((1, 4, 12, 12)).astype(np.float32)} for _ in range(8)]
    new = [{"x": rng.standard_normal((1, 4, 12, 12)).astype(np.float32)} for _ in range(4)]
    mask = planning.heldout_mask(calib, calib[:3] + new)
    assert mask.tolist() == [False] * 3 + [True] * 4
    rows = planning.sweep(m, [0.6], calib, calib + new, modes=("weight", "data"), plot=str(tmp_path / "p.png"))
    assert [(r["budget"], r["mode"]) for r in rows] == [(1.0, "original"), (0.6, "weight"), (0.6, "data")]
    assert rows[0]["agreement"] == 1.0 and rows[0]["n_heldout"] == 4 and rows[0]["n_eval"] == 12
    for r in rows[1:]:
        assert r["macs_frac"] <= 0.6 + 1e-9 and 0.0 <= r["agreement_heldout"] <= 1.0 and r["passes"]
    assert (tmp_path / "p.png").stat().st_size > 0


def test_realise_memo_reuses_shared_prefix_and_changes_nothing(monkeypatch):
    """Plans that share their first rewrites reuse the refit inputs collected for them (no new build
    for that prefix), and the model is the same as without the memo."""
    import sqcc.calibrate as calibrate
    from sqcc.calibrate import collect_activations

    m = two_conv_model()
    rng = np.random.default_rng(4)
    feeds = [{"x": rng.standard_normal((1, 4, 12, 12)).astype(np.float32)} for _ in range(8)]
    acts = collect_activations(m.mod, feeds)
    calls = []
    real = calibrate.collect_activations
    monkeypatch.setattr(calibrate, "collect_activations",
                        lambda *a, **k: calls.append(k.get("layers")) or real(*a, **k))
    a = ["lowrank:scheme=channel,rank=3,fit=data,layers=c1", "dwsep:multiplier=2,fit=data,layers=c2"]
    b = [a[0], "lowrank:scheme=spatial,rank=4,fit=data,layers=c2"]
    memo: dict = {}
    outs = {}
    for name, specs in (("a", a), ("b", b)):
        calls.clear()
        mod, records = planning.realise(m.mod, specs, acts, feeds, memo=memo)
        outs[name] = np.stack([tvm_run(mod, f).reshape(-1) for f in feeds])
        c2 = next(r for r in records if r.layer == "c2" and r.applied)
        assert "refitted to the rewritten model's inputs" in c2.detail, c2.detail
        if name == "a":
            # dwsep's filters shared by energy: a channel gather starts c2's chain, and its input is
            # what the refit collects
            assert "R.take" in mod.script() and "spread by energy" in c2.detail
            assert calls == [["c2__dwg0", "c2__dw0"]]  # c2's inputs from the refitted c1
        else:
            assert calls == []  # same c1 rewrite above c2: its inputs come from the memo
    for name, specs in (("a", a), ("b", b)):
        mod, _ = planning.realise(m.mod, specs, acts, feeds)
        y = np.stack([tvm_run(mod, f).reshape(-1) for f in feeds])
        assert np.allclose(y, outs[name], rtol=1e-5, atol=1e-6), name


def test_refine_techniques_keeps_only_swaps_that_lower_heldout_kl():
    """Every other technique of every planned layer is tried within the budget; the tries are
    logged with the KL on the held-out half of the calibration inputs, a swap is kept only when it
    lowers that KL, and the refined plan (still within budget) scores what its log says."""
    from sqcc.calibrate import collect_activations

    m = two_conv_model()
    rng = np.random.default_rng(13)  # a case where swaps are kept on both layers
    feeds = [{"x": rng.standard_normal((1, 4, 12, 12)).astype(np.float32)} for _ in range(8)]
    acts = collect_activations(m.mod, feeds)
    priced = planning.price(m.mod, acts)
    plan = planning.allocate(m.mod, acts, macs=0.5, priced=priced)
    refined = planning.refine_techniques(m.mod, plan, priced, acts, feeds, max_ratio=100.0, min_gain=0.0)
    log = refined.refinement
    techs = {lf.name: {c.technique for c in cs} for lf, cs in priced}
    assert len(log) >= sum(len(techs[e.layer]) - 1 for e in plan.entries) - 1  # (one may not fit the budget)
    assert refined.macs_after <= 0.5 * refined.macs_before
    assert {t["layer"] for t in log if t["kept"]} == {"c1", "c2"}
    best = log[0]["kl_before"]
    for t in log:
        assert t["kl_before"] == pytest.approx(best) and np.isfinite(t["kl"])
        assert t["kept"] == (t["kl"] < t["kl_before"])
        if t["kept"]:
            best = t["kl"]
    assert min([log[0]["kl_before"]] + [t["kl"] for t in log]) == pytest.approx(best)
    kept = {t["layer"]: t["to"] for t in log if t["kept"]}
    for e0, e1 in zip(plan.entries, refined.entries):
        assert (f"{e1.technique} {e1.rank}" == kept[e0.layer]) if e0.layer in kept else e0 == e1
    # the refined plan scored again from scratch: the KL its log ends with
    ev = {k: v[0::2] for k, v in acts.items()}
    ref = np.stack([tvm_run(m.mod, f).reshape(-1) for f in feeds[1::2]])
    mod, _ = planning.realise(m.mod, [e.step("data") for e in refined.entries], ev, feeds[0::2])
    y = np.stack([tvm_run(mod, f).reshape(-1) for f in feeds[1::2]])
    assert planning.mean_kl(ref, y) == pytest.approx(best, rel=1e-4)
    assert "refined" in refined.table() and refined.to_json()["refinement"] == log
