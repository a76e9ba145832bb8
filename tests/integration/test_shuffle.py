"""Channel shuffle: the balanced partition, exact permutation folding on real SqueezeNet 1.1 weights,
the grouped rewrite, ShuffleNet reshape→transpose→reshape canonicalisation vs onnxruntime, errors."""
from pathlib import Path

import numpy as np
import pytest

SHARED = Path(__file__).resolve().parents[2].parent / "shared"


def _build_run(mod, feeds):
    import tvm
    from tvm import relax

    from sqcc.build import build

    vm = relax.VirtualMachine(build(mod, "host"), tvm.cpu())
    return [vm["main"](tvm.runtime.tensor(x, tvm.cpu())).numpy() for x in feeds]


def _rel(a, b):
    return float(np.abs(a - b).max() / np.abs(b).max())


@pytest.fixture(scope="module")
def squeezenet():
    from sqcc import frontend

    m = frontend.load("squeezenet1.1")
    x = np.random.default_rng(0).random((1, 3, 224, 224), dtype=np.float32)
    return m, x, _build_run(m.mod, [x])[0]


# ------------------------------------------------------------------------------------ partition

def test_partition_is_balanced_and_keeps_more_energy_than_random():
    from sqcc.passes.shuffle import balanced_partition, block_perms, kept_energy

    rng = np.random.default_rng(1)
    n, c, g = 32, 48, 4
    # a planted block structure, scrambled
    e = rng.random((n, c)) * 0.05
    for b in range(g):
        e[b * 8:(b + 1) * 8, b * 12:(b + 1) * 12] += 1.0
    e = e[rng.permutation(n)][:, rng.permutation(c)]
    ib, ob = balanced_partition(e, g)
    assert sorted(np.bincount(ib)) == [12] * g and sorted(np.bincount(ob)) == [8] * g
    kept = kept_energy(e, ib, ob) / e.sum()
    rand = kept_energy(e, rng.permutation(np.repeat(np.arange(g), 12)),
                       rng.permutation(np.repeat(np.arange(g), 8))) / e.sum()
    assert kept > 0.9 > rand  # recovers the planted blocks
    pi, sigma = block_perms(ib, ob, g)
    assert sorted(pi) == list(range(c)) and sorted(sigma) == list(range(n))


# -------------------------------------------------------------------------------- folding exact

def test_permutation_folding_is_exact_on_squeezenet(squeezenet):
    """Random input/output permutations of a squeeze, an expand1x1 and the classifier, folded into
    neighbours (or gathered where folding is not free): the model's output does not change."""
    from sqcc.passes.shuffle import permute_layer

    m, x, ref = squeezenet
    rng = np.random.default_rng(0)
    mod = m.mod
    infos = {}
    for layer, c, n in [("conv2", 16, 64), ("conv4", 128, 16), ("conv13", 256, 48), ("conv25", 512, 1000)]:
        mod, infos[layer] = permute_layer(mod, layer, rng.permutation(c), rng.permutation(n))
    # expand1x1 conv2: input into the squeeze conv1 (and expand3x3 conv3), output into the next squeeze
    assert infos["conv2"]["input"] == "folded into conv1" and "conv3" in infos["conv2"]["absorbed"]
    assert infos["conv2"]["output"] == "folded into conv4"
    # squeeze conv4: its input is a concat (not free: a gather), its output goes into both expands
    assert infos["conv4"]["input"].startswith("gather")
    assert infos["conv4"]["output"] == "folded into conv5, conv6"
    assert infos["conv25"]["output"].startswith("gather")  # the classifier feeds the global pool
    out = _build_run(mod, [x])[0]
    assert _rel(out, ref) <= 1e-5


def test_shuffle_groups1_is_exact(squeezenet):
    from sqcc import passes

    m, x, ref = squeezenet
    ctx = passes.PassContext()
    mod = passes.create("shuffle:groups=1", ctx)(m.mod)
    recs = [r for r in ctx.records if r.technique == "shuffle"]
    assert len(recs) == 17 and all(r.weight_error == 0 and r.macs_after == r.macs_before for r in recs)
    assert _rel(_build_run(mod, [x])[0], ref) <= 1e-5


def test_shuffle_groups4_squeeze_layers(squeezenet):
    """groups=4 on the squeeze layers: 4× fewer MACs there, energy and output error reported, the
    rewrite agrees with a numpy reference of the grouped layer, and the model builds and runs."""
    from sqcc import layers, passes
    from sqcc.passes.shuffle import ChannelIR

    m, x, ref = squeezenet
    rng = np.random.default_rng(0)
    # synthetic calibration activations (positive, channel-dependent scale) for the data-aware fit
    acts = {}
    for lay in layers.layers(m.mod):
        if lay.op == "relax.nn.conv2d":
            n, c, h, w = lay.in_shape
            acts[lay.name] = (rng.random((2, c, h, w)) * rng.random((1, c, 1, 1)) * 3).astype(np.float32)
    weight_only = None  # the "weight" round's errors, compared in the "data" round
    for fit in ("weight", "data"):
        ctx = passes.PassContext(activations=acts)
        mod = passes.create(f"shuffle:groups=4,layers=squeeze,fit={fit}", ctx)(m.mod)
        recs = [r for r in ctx.records if r.technique == "shuffle"]
        assert len(recs) == 8 and all(r.applied for r in recs)
        assert all(r.macs_after * 4 == r.macs_before for r in recs)
        assert all(r.weight_error > 0 and r.output_error is not None for r in recs)
        assert all("kept" in r.detail and "dropped" in r.detail for r in recs)
        ir = ChannelIR(mod)
        assert int(ir.value("conv4").attrs.groups) == 4
        if fit == "data":  # least-squares refit never does worse on the fitted statistics
            assert np.mean([r.output_error for r in recs]) <= np.mean(weight_only) + 1e-9
        else:
            weight_only = [r.output_error for r in recs]
    out = _build_run(mod, [x])[0]
    assert out.shape == ref.shape and np.isfinite(out).all()


def test_shuffle_rewrite_matches_numpy_reference():
    """A 1×1 conv (C=12→N=8) with bias, ReLU, then a consumer conv: shuffle groups=2 folds both
    permutations, and the rewritten model equals the block-diagonal weight applied in numpy."""
    from onnx import TensorProto, helper, numpy_helper

    from sqcc import frontend, passes
    from sqcc.passes.shuffle import ChannelIR

    rng = np.random.default_rng(3)
    w0 = rng.standard_normal((12, 3, 1, 1)).astype(np.float32)
    w1 = rng.standard_normal((8, 12, 1, 1)).astype(np.float32)
    b1 = rng.standard_normal(8).astype(np.float32)
    w2 = rng.standard_normal((4, 8, 1, 1)).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "w0"], ["a"], name="c0"),
             helper.make_node("Conv", ["a", "w1", "b1"], ["b"], name="c1"),
             helper.make_node("Relu", ["b"], ["r"]),
             helper.make_node("Conv", ["r", "w2"], ["y"], name="c2")]
    inits = [numpy_helper.from_array(v, k) for k, v in (("w0", w0), ("w1", w1), ("b1", b1), ("w2", w2))]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 5, 5])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 5, 5])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    m = frontend.load(model)
    ctx = passes.PassContext()
    mod = passes.create("shuffle:groups=2,layers=c1", ctx)(m.mod)
    info = ctx.extra["shuffle"]["c1"]
    assert info["input"] == "folded into c0" and info["output"] == "folded into c2"
    assert int(ChannelIR(mod).value("c1").attrs.groups) == 2
    # numpy: Ŵ keeps the partition's blocks in the original channel order
    from sqcc.passes.shuffle import balanced_partition

    wm = w1.reshape(8, 12).astype(np.float64)
    ib, ob = balanced_partition(wm ** 2, 2)
    w_hat = np.where(ob[:, None] == ib[None, :], wm, 0)
    x = rng.random((1, 3, 5, 5), dtype=np.float32)
    a = np.einsum("oc,nchw->nohw", w0.reshape(12, 3), x)
    r = np.maximum(np.einsum("oc,nchw->nohw", w_hat, a) + b1[None, :, None, None], 0)
    y_ref = np.einsum("oc,nchw->nohw", w2.reshape(4, 8), r)
    out = _build_run(mod, [x])[0]
    assert _rel(out, y_ref) <= 1e-5
    assert np.isclose(info["kept_weight_energy"], (w_hat ** 2).sum() / (wm ** 2).sum())


# ------------------------------------------------------------------------- imported shuffles

def shuffle_unit(dense_after=False, g=4, c=16, h=8, seed=0):
    """A ShuffleNet unit (Zhang et al. 2018, Fig. 2b) in ONNX: 1×1 GConv → ReLU → channel shuffle
    (Reshape → Transpose → Reshape) → 3×3 depthwise conv → 1×1 GConv → + x → ReLU. With
    ``dense_after`` the depthwise conv is replaced by a dense 1×1 conv (where folding is free)."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    inits, nodes = [], []

    def w(name, shape):
        inits.append(numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32) * 0.3, name))
        return name

    nodes.append(helper.make_node("Conv", ["x", w("w1", (c, c // g, 1, 1)), w("b1", (c,))], ["c1"], group=g,
                                  name="gconv1"))
    nodes.append(helper.make_node("Relu", ["c1"], ["r1"]))
    inits.append(numpy_helper.from_array(np.array([1, g, c // g, h, h], np.int64), "s1"))
    inits.append(numpy_helper.from_array(np.array([1, c, h, h], np.int64), "s2"))
    nodes.append(helper.make_node("Reshape", ["r1", "s1"], ["sh1"]))
    nodes.append(helper.make_node("Transpose", ["sh1"], ["sh2"], perm=[0, 2, 1, 3, 4]))
    nodes.append(helper.make_node("Reshape", ["sh2", "s2"], ["sh3"]))
    if dense_after:
        nodes.append(helper.make_node("Conv", ["sh3", w("w2", (c, c, 1, 1)), w("b2", (c,))], ["c2"], name="conv2"))
    else:
        nodes.append(helper.make_node("Conv", ["sh3", w("w2", (c, 1, 3, 3)), w("b2", (c,))], ["c2"], group=c,
                                      pads=[1, 1, 1, 1], name="dwconv"))
    nodes.append(helper.make_node("Conv", ["c2", w("w3", (c, c // g, 1, 1)), w("b3", (c,))], ["c3"], group=g,
                                  name="gconv2"))
    nodes.append(helper.make_node("Add", ["c3", "x"], ["a"]))
    nodes.append(helper.make_node("Relu", ["a"], ["y"]))
    graph = helper.make_graph(
        nodes, "shuffle_unit", [helper.make_tensor_value_info("x", helper.TensorProto.FLOAT, [1, c, h, h])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, c, h, h])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model


@pytest.mark.parametrize("dense_after", [False, True], ids=["gather", "folded"])
def test_imported_channel_shuffle_vs_onnxruntime(dense_after):
    import onnxruntime as ort

    from sqcc import frontend
    from sqcc.passes.shuffle_canon import canonicalize_shuffles

    model = shuffle_unit(dense_after)
    m = frontend.load(model)
    mod, notes = canonicalize_shuffles(m.mod)
    assert len(notes) == 1
    script = mod["main"].script(show_meta=False)
    assert "permute_dims" not in script and "R.reshape(lv" not in script  # no 5-D shuffle left
    if dense_after:
        assert "folded into conv2" in notes[0] and "R.take" not in script
    else:  # between two grouped convs a shuffle is a real permutation: one gather
        assert notes[0].split(": ")[1].startswith("gather") and script.count("R.take") == 1
    rng = np.random.default_rng(0)
    xs = [rng.standard_normal((1, 16, 8, 8)).astype(np.float32) for _ in range(2)]
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    outs = _build_run(mod, xs)
    for x, y in zip(xs, outs):
        ref = sess.run(None, {"x": x})[0]
        assert np.abs(y - ref).max() <= 1e-5 * max(1.0, np.abs(ref).max())


def test_gather_to_nhwc_removes_layout_transposes():
    """After ConvertLayout(NHWC) a channel gather is wrapped in transposes; the clean-up pass turns
    it into one take on axis 3 and the numbers do not change."""
    import tvm
    from tvm import relax

    from sqcc import frontend
    from sqcc.passes.shuffle_canon import canonicalize_shuffles, gather_to_nhwc
    from sqcc.schedules.layout import to_nhwc

    m = frontend.load(shuffle_unit(False))
    mod, _ = canonicalize_shuffles(m.mod)
    nhwc = to_nhwc()(relax.transform.DecomposeOpsForInference()(mod))
    before = nhwc["main"].script(show_meta=False).count("permute_dims")
    cleaned = gather_to_nhwc()(nhwc)
    script = cleaned["main"].script(show_meta=False)
    assert script.count("permute_dims") == before - 2 and "axis=3" in script
    x = np.random.default_rng(1).standard_normal((1, 16, 8, 8)).astype(np.float32)
    a = relax.VirtualMachine(relax.build(nhwc, "llvm"), tvm.cpu())["main"](tvm.runtime.tensor(x)).numpy()
    b = relax.VirtualMachine(relax.build(cleaned, "llvm"), tvm.cpu())["main"](tvm.runtime.tensor(x)).numpy()
    assert np.abs(a - b).max() <= 1e-6


def test_shuffle_canon_is_a_registered_pass():
    from sqcc import frontend, passes

    m = frontend.load(shuffle_unit(True))
    ctx = passes.PassContext()
    mod = passes.create("shuffle-canon", ctx)(m.mod)
    assert [r.technique for r in ctx.records] == ["shuffle-canon"]
    assert "permute_dims" not in mod["main"].script(show_meta=False)


# ------------------------------------------------------------------------------------ errors

@pytest.mark.parametrize("spec,msg", [
    ("shuffle:groups=3", "does not divide"),
    ("shuffle:groups=0", "positive integer"),
    ("shuffle:groups=2,layers=nope", "no conv layer"),
    ("shuffle:groups=2,layers=conv3", "3×3 conv"),
])
def test_shuffle_errors(spec, msg):
    from sqcc import frontend, passes
    from sqcc.errors import SqccError

    m = frontend.load("squeezenet1.1")
    with pytest.raises(SqccError, match=msg):
        passes.create(spec)(m.mod)
