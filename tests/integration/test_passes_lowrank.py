"""lowrank pass: exact at full rank (per layer in numpy, end to end through TVM), geometry preserved
(against onnxruntime on small strided/padded/dilated/grouped convs), errors reported, bad input."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from sqcc import frontend, passes
from sqcc.errors import SqccError
from sqcc.passes import PassContext
from sqcc.passes._factor import reference_chain, reference_conv2d

SHARED = Path(__file__).resolve().parents[2].parent / "shared"
MODELS = SHARED / "models"


# ------------------------------------------------------------------------------------------ helpers

def load(name):
    return frontend.load(str(MODELS / name))


@pytest.fixture(scope="module")
def squeezenet():
    return load("squeezenet1.1.onnx")


@pytest.fixture(scope="module")
def mobilenet():
    return load("mobilenet_v1_0.5_160.onnx")


def tvm_run(mod, feed):
    import tvm
    from tvm import relax

    ex = relax.build(mod, "llvm")
    vm = relax.VirtualMachine(ex, tvm.cpu())
    args = [tvm.runtime.tensor(np.ascontiguousarray(feed[p.name])) for p in mod["main"].params]
    out = vm["main"](*args)
    return out.numpy() if hasattr(out, "numpy") else out[0].numpy()


def rel(a, b):
    return float(np.linalg.norm(np.asarray(a, np.float64) - b) / np.linalg.norm(np.asarray(b, np.float64)))


def random_activations(layer, seed=0):
    rng = np.random.default_rng(seed)
    shape = (1,) + tuple(layer.in_shape[1:])
    return np.maximum(rng.standard_normal(shape), 0).astype(np.float32)


# One layer of each geometry: stride 2 (C=3), 1×1 squeeze/expand, 3×3 expand, the 512→1000 classifier;
# MobileNet's asymmetric-padding stride-2 stem, a stride-2 depthwise, a 1×1 and the last 1×1.
LAYERS = {"squeezenet1.1": ["conv0", "conv1", "conv3", "conv25"],
          "mobilenet_v1_0.5_160": ["conv0", "dw3", "dw5", "conv26"]}


def check_layers_exact(model, fit_fn, data: bool, tol=1e-4, names=None):
    """The factorised chain equals the conv on random activations (numpy), for the listed layers."""
    from sqcc.planning import layer_fits
    from sqcc.calibrate import patch_covariance

    names = names or LAYERS.get(model.name)
    n_checked = 0
    for lf in layer_fits(model.mod):
        if lf.kind != "conv" or (names and lf.name not in names):
            continue
        x = random_activations(lf)
        if data:
            lf.cov, lf.mean = patch_covariance(x, lf.kernel, lf.strides, lf.padding, lf.dilation, lf.groups,
                                               return_mean=True)
        f = fit_fn(lf)
        if isinstance(f, str):
            continue
        y0 = reference_conv2d(x, lf.weight, lf.strides, lf.padding, lf.dilation, lf.groups)
        y = reference_chain(x, lf, f)
        assert y.shape == y0.shape, lf.name
        assert rel(y, y0) < tol, (lf.name, f.technique, rel(y, y0))
        n_checked += 1
    return n_checked


def single_conv_model(c=6, n=12, h=13, w=11, kernel=(3, 3), strides=(1, 1), pads=(1, 1, 1, 1),
                      dilations=(1, 1), group=1, seed=0):
    """A one-Conv ONNX model (with bias). pads are ONNX order: top, left, bottom, right."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    wt = rng.standard_normal((n, c // group) + tuple(kernel)).astype(np.float32)
    b = rng.standard_normal(n).astype(np.float32)
    from sqcc.passes._factor import conv_out_hw

    node = helper.make_node("Conv", ["x", "w", "b"], ["y"], kernel_shape=list(kernel), strides=list(strides),
                            pads=list(pads), dilations=list(dilations), group=group, name="theconv")
    ho, wo = conv_out_hw(h, w, kernel, strides, (pads[0], pads[1], pads[2], pads[3]), dilations)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, c, h, w])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, n, ho, wo])],
                              [numpy_helper.from_array(wt, "w"), numpy_helper.from_array(b, "b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model


def ort_run(model, x):
    import onnxruntime as ort

    s = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return s.run(None, {"x": x})[0]


GEOMETRIES = {
    "stride2_asympad": dict(kernel=(3, 3), strides=(2, 2), pads=(0, 0, 1, 1)),
    "3x5_stride21_dil21": dict(kernel=(3, 5), strides=(2, 1), pads=(1, 2, 2, 2), dilations=(2, 1)),
    "dilated2_grouped2": dict(kernel=(3, 3), pads=(2, 2, 2, 2), dilations=(2, 2), group=2),
    "depthwise_mult2": dict(c=6, n=12, kernel=(3, 3), strides=(2, 2), pads=(1, 1, 1, 1), group=6),
}


def geometry_check(spec, geometry, expect_applied=True):
    m_onnx = single_conv_model(**GEOMETRIES[geometry])
    m = frontend.load(m_onnx)
    x = np.random.default_rng(1).standard_normal(m.inputs[0].shape).astype(np.float32)
    ctx = PassContext()
    mod = passes.create(spec, ctx)(m.mod)
    rec = [r for r in ctx.records if r.layer == "theconv"]
    assert len(rec) == 1, ctx.records
    if expect_applied:
        assert rec[0].applied, rec[0]
    y = tvm_run(mod, {"x": x})
    ref = ort_run(m_onnx, x)
    assert y.shape == ref.shape
    assert rel(y, ref) < 1e-4, (spec, geometry, rel(y, ref))
    return rec[0]


# -------------------------------------------------------------------------------------- exactness

@pytest.mark.parametrize("scheme", ["channel", "spatial"])
@pytest.mark.parametrize("data", [False, True], ids=["weights", "data"])
def test_full_rank_exact_per_layer(squeezenet, mobilenet, scheme, data):
    from sqcc.passes.low_rank import fit

    for model in (squeezenet, mobilenet):
        n = check_layers_exact(model, lambda lf: fit(lf, scheme, 1.0, None, data), data)
        assert n >= (4 if scheme == "channel" else 2)


def test_full_rank_end_to_end_squeezenet(squeezenet):
    feed = frontend.random_inputs(squeezenet)
    y0 = tvm_run(squeezenet.mod, feed)
    ctx = PassContext()
    mod = passes.create("lowrank:scheme=channel,rank=1.0,force=true", ctx)(squeezenet.mod)
    assert sum(r.applied for r in ctx.records) == 26
    assert rel(tvm_run(mod, feed), y0) < 1e-4


def test_full_rank_end_to_end_mobilenet_spatial_and_weight(mobilenet):
    """Spatial SVD on every 3×3 (incl. the 13 depthwise convs, per group), then weight SVD on the 1×1s
    and the final matmul."""
    feed = frontend.random_inputs(mobilenet)
    y0 = tvm_run(mobilenet.mod, feed)
    ctx = PassContext()
    mod = passes.create("lowrank:scheme=spatial,rank=1.0,force=true", ctx)(mobilenet.mod)
    mod = passes.create("lowrank:scheme=weight,rank=1.0,force=true", ctx)(mod)
    applied = {r.layer: r.technique for r in ctx.records if r.applied}
    assert applied["dw1"] == "lowrank:spatial" and applied["conv26"] == "lowrank:weight"
    assert applied["fc"] == "lowrank:weight"
    assert len(applied) == 28
    assert rel(tvm_run(mod, feed), y0) < 1e-4


@pytest.mark.parametrize("geometry", list(GEOMETRIES))
@pytest.mark.parametrize("scheme", ["channel", "spatial"])
def test_geometry_against_onnxruntime(scheme, geometry):
    geometry_check(f"lowrank:scheme={scheme},rank=1.0,force=true", geometry)


def test_matmul_weight_svd():
    """A Gemm/MatMul with a constant weight is split into two matmuls."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w = rng.standard_normal((40, 30)).astype(np.float32)
    node = helper.make_node("MatMul", ["x", "w"], ["y"], name="fc")
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 40])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 30])],
                              [numpy_helper.from_array(w, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    m = frontend.load(model)
    x = rng.standard_normal((2, 40)).astype(np.float32)
    ctx = PassContext()
    mod = passes.create("lowrank:scheme=weight,rank=10", ctx)(m.mod)
    rec = ctx.records[0]
    assert rec.applied and rec.macs_after == 2 * 10 * 70 and rec.weight_error > 0.1
    y = tvm_run(mod, {"x": x})
    u, s, vt = np.linalg.svd(w.astype(np.float64))
    w10 = (u[:, :10] * s[:10]) @ vt[:10]
    assert rel(y, x @ w10) < 1e-4


# ----------------------------------------------------------------------------- reduced rank, records

def test_reduced_rank_reports_its_error(squeezenet):
    from sqcc.planning import layer_fits

    lf = next(l for l in layer_fits(squeezenet.mod) if l.name == "conv3")
    x = np.concatenate([random_activations(lf, s) for s in range(2)])
    ctx = PassContext(activations={"conv3": x})
    # relu=0: the plain linear fit, whose error is checked below (the ReLU-aware one is tested apart)
    mod = passes.create("lowrank:scheme=channel,rank=0.25,layers=conv3,relu=0", ctx)(squeezenet.mod)
    (rec,) = ctx.records
    assert rec.applied and rec.detail.startswith("rank 16/64") and "data-aware" in rec.detail
    assert rec.macs_after < rec.macs_before and rec.params_after < rec.params_before
    assert 0.01 < rec.weight_error < 1 and 0 < rec.output_error < 1
    # the reported output error is the one measured by running both convs on the activations
    from sqcc.passes.low_rank import fit_channel
    from sqcc.calibrate import patch_covariance

    from sqcc.passes._factor import bias_correction

    lf.cov, lf.mean = patch_covariance(x, lf.kernel, lf.strides, lf.padding, lf.dilation, lf.groups,
                                       return_mean=True)
    f = fit_channel(lf, 0.25, None, True)
    f.bias = bias_correction(lf, f.dense)
    y0 = reference_conv2d(x, lf.weight, lf.strides, lf.padding, lf.dilation)
    assert abs(rel(reference_chain(x, lf, f), y0) - rec.output_error) < 1e-3 * rec.output_error
    # and the module really contains the two convs
    text = mod.script(show_meta=False)
    assert "conv3__lr0" in text


def test_energy_and_mac_rule(squeezenet):
    ctx = PassContext()
    passes.create("lowrank:scheme=weight,energy=0.5,layers=conv3,conv4,conv25", ctx)(squeezenet.mod)
    recs = {r.layer: r for r in ctx.records}
    assert not recs["conv3"].applied and "scheme=weight" in recs["conv3"].detail
    assert recs["conv25"].applied and recs["conv25"].macs_after < recs["conv25"].macs_before
    # full rank never saves MACs: skipped with the reason unless forced
    ctx = PassContext()
    passes.create("lowrank:scheme=channel,rank=1.0,layers=conv0,conv3,conv4,conv25", ctx)(squeezenet.mod)
    assert len(ctx.records) == 4 and not any(r.applied for r in ctx.records)
    assert all("MACs would not drop" in r.detail for r in ctx.records)


# ------------------------------------------------------------------------------------------ bad input

@pytest.mark.parametrize("spec, msg", [
    ("lowrank:ranks=3", "unknown parameter 'ranks'"),
    ("lowrank:rank=0", "rank"),
    ("lowrank:rank=-2", "rank"),
    ("lowrank:rank=1.5", "rank"),
    ("lowrank:energy=0", "energy=0"),
    ("lowrank:energy=1.2", "energy=1.2"),
    ("lowrank:scheme=diagonal", "scheme=diagonal"),
    ("lowrank:rank=4,energy=0.9", "not both"),
    ("lowrank:fit=magic", "fit=magic"),
    ("nosuchpass:rank=2", "unknown pass"),
])
def test_bad_parameters(spec, msg):
    with pytest.raises(SqccError) as e:
        passes.create(spec)
    assert msg in str(e.value)
    assert "\n" not in str(e.value)


def test_listed_in_registry():
    info = passes.available()
    for name in ("lowrank", "dwsep", "flatten"):
        assert name in info and info[name].summary
    assert {p.name for p in info["lowrank"].params} >= {"scheme", "rank", "energy", "force", "layers", "fit"}


def _asym_layer(seed=0, kernel=(3, 3)):
    """A LayerFit with data moments of x and the cross moments with a distorted x̂ (what an upstream
    rewrite feeds this layer)."""
    from sqcc.calibrate import patch_covariance, patch_cross_moments
    from sqcc.passes._factor import LayerFit

    rng = np.random.default_rng(seed)
    c, n = 8, 12
    x = np.maximum(rng.standard_normal((4, c, 9, 9)), 0) + 0.1 * rng.standard_normal((4, c, 9, 9))
    mix = np.eye(c) + 0.3 * rng.standard_normal((c, c))
    xh = np.einsum("dc,nchw->ndhw", mix, x) + 0.05 * rng.standard_normal(x.shape)
    w = rng.standard_normal((n, c) + kernel)
    pad = (kernel[0] // 2, kernel[1] // 2, kernel[0] // 2, kernel[1] // 2)
    cov, mean = patch_covariance(x, kernel, (1, 1), pad, return_mean=True)
    hat = patch_cross_moments(x, xh, kernel, (1, 1), pad)
    mk = lambda h: LayerFit("c", w, x.shape, (4, n, 9, 9), (1, 1), pad, (1, 1), 1, "conv", cov, mean, h)  # noqa: E731
    return mk(None), mk(hat), x, xh


@pytest.mark.parametrize("fit_name", ["channel", "spatial", "dwsep", "flatten"])
def test_asymmetric_fit_compensates_upstream_error(fit_name):
    """With the moments of the rewritten model's inputs x̂, the whole factorisation is fitted to the
    original outputs (T = W·C(p,p̂)·C(p̂,p̂)⁻¹ under C(p̂,p̂)): its error on x̂ is below the plain fit's
    and, at full rank, equals the least-squares optimum over all dense weights."""
    from sqcc.passes._factor import bias_correction, output_error
    from sqcc.passes.dwsep import fit_dwsep
    from sqcc.passes.flatten import fit_flatten
    from sqcc.passes.low_rank import fit_channel, fit_spatial

    plain, asym, x, xh = _asym_layer()
    fits = {"channel": lambda l, r: fit_channel(l, r), "spatial": lambda l, r: fit_spatial(l, r),
            "dwsep": lambda l, r: fit_dwsep(l, r), "flatten": lambda l, r: fit_flatten(l, r, iters=30)}[fit_name]
    low = {"channel": 4, "spatial": 6, "dwsep": 2, "flatten": 1}[fit_name]
    e_plain = output_error(asym, fits(plain, low).dense)  # plain fit, judged on x̂
    e_asym = output_error(asym, fits(asym, low).dense)
    assert e_asym < e_plain, (e_asym, e_plain)
    if fit_name == "channel":  # full rank: Ŵ = T, the unconstrained least-squares map from p̂
        f = fits(asym, 12)
        t = asym.target(0)[0]
        assert rel(f.dense.reshape(12, -1), t) < 1e-4
        # checked against the convs themselves: the fitted chain on x̂ vs the original conv on x
        y = reference_conv2d(x, plain.weight, padding=plain.padding)
        f.bias = bias_correction(asym, f.dense)
        yh = reference_chain(xh, asym, f)
        e_direct = np.linalg.norm(yh - y - (yh - y).mean((0, 2, 3), keepdims=True)) / np.linalg.norm(y)
        assert e_direct < e_plain
    # without upstream error the target is W itself and the fit is the plain one
    assert np.allclose(plain.target(0)[0], plain.group_matrices()[0])


def test_few_samples_shrink_the_covariance():
    """A matmul's Σ from fewer samples than 8× its dimension (one vector per calibration image) is
    shrunk towards the isotropic: a rank ≥ the sample count no longer measures error 0 (which made
    the budget rewrite MobileNet's fc for free and lose most held-out predictions)."""
    from sqcc.calibrate import patch_covariance
    from sqcc.passes._factor import LayerFit, output_error
    from sqcc.passes.low_rank import fit_channel

    rng = np.random.default_rng(0)
    k, n, m = 32, 40, 12
    x = rng.standard_normal((m, k))
    w = rng.standard_normal((n, k, 1, 1))
    cov, mean = patch_covariance(x, return_mean=True)

    def layer(samples):
        return LayerFit("fc", w, (m, k), (m, n), kind="matmul", cov=cov, mean=mean, samples=samples)

    r = m  # ≥ rank of the centred sample covariance
    raw = output_error(layer(None), fit_channel(layer(None), r).dense)
    shrunk_fit = fit_channel(layer(m), r).dense
    assert raw < 1e-3  # exact on the samples it was fitted to
    assert output_error(layer(None), shrunk_fit) > raw
    # on new inputs the shrunk fit generalises better
    xt = rng.standard_normal((500, k))
    wf = w[:, :, 0, 0]
    err = lambda wh: np.linalg.norm(xt @ (wf - wh.reshape(n, k)).T) / np.linalg.norm(xt @ wf.T)  # noqa: E731
    assert err(shrunk_fit) < err(fit_channel(layer(None), r).dense)
    # full rank stays exact either way
    assert rel(fit_channel(layer(m), 1.0).dense, w) < 1e-6


# ------------------------------------------------------------------------ ReLU-aware fit, compensation

def test_relu_followers_found_from_the_graph(squeezenet, mobilenet):
    """Every SqueezeNet conv feeds relu(conv + bias) (the expands through their own relu before the
    concat); MobileNet's ReLU6 (a clip) is not recognised, so its fits stay linear."""
    from sqcc.passes._factor import relu_biases

    r = relu_biases(squeezenet.mod["main"])
    assert len(r) == 26 and r["conv25"].shape == (1000,) and np.any(r["conv25"] != 0)
    assert relu_biases(mobilenet.mod["main"]) == {}


@pytest.mark.parametrize("spec", ["lowrank:scheme=channel,rank=0.25", "dwsep:multiplier=2"])
def test_relu_aware_fit_lowers_post_relu_error_and_stays_exact(squeezenet, spec):
    """Where a ReLU follows, the fit is iterated towards the post-ReLU outputs: its error after the
    ReLU (on the calibration patches) is below the linear fit's; at full rank it is still exact."""
    import re

    from sqcc.planning import layer_fits

    lf = next(l for l in layer_fits(squeezenet.mod) if l.name == "conv3")
    x = np.concatenate([random_activations(lf, s) for s in range(2)])
    ctx = PassContext(activations={"conv3": x})
    passes.create(f"{spec},layers=conv3,relu=3", ctx)(squeezenet.mod)
    (rec,) = ctx.records
    ratio = float(re.search(r"post-ReLU error ([0-9.]+) of the linear fit", rec.detail).group(1))
    assert rec.applied and ratio < 1.0
    # full rank with the ReLU-aware refit: the module computes what the original does
    feed = frontend.random_inputs(squeezenet)
    ctx = PassContext(activations={"conv3": x})
    full = "lowrank:scheme=channel,rank=1.0" if spec.startswith("lowrank") else "dwsep:multiplier=9"
    mod = passes.create(f"{full},layers=conv3,relu=3,force=true", ctx)(squeezenet.mod)
    assert ctx.records[0].applied
    assert rel(tvm_run(mod, feed), tvm_run(squeezenet.mod, feed)) < 1e-4


def test_compensation_refit_of_an_unrewritten_layer():
    """RefitLayers (used by planning.realise for layers it does not rewrite): without upstream error the
    weight stays W; with it, the cross-validated ridge refit lowers the error on the distorted inputs
    and never moves further from W than the unregularised least squares."""
    from sqcc.calibrate import patch_cross_moments
    from sqcc.passes._factor import RefitLayers, output_error

    plain, asym, x, xh = _asym_layer()
    same = patch_cross_moments(x, x, plain.kernel, (1, 1), plain.padding)
    plain.hat = same
    ctx = PassContext(activations={"c": x})
    ctx.extra["activations_hat"] = {"c": x}
    f = RefitLayers(ctx, ["c"], relu=0).fit_layer(plain)
    assert rel(f.dense, plain.weight) < 1e-4
    ctx = PassContext(activations={"c": x})
    ctx.extra["activations_hat"] = {"c": xh}
    f = RefitLayers(ctx, ["c"], relu=0).fit_layer(asym)
    assert output_error(asym, f.dense) < output_error(asym, plain.weight)
    free = RefitLayers(ctx, ["c"], relu=0, shrink=0.0).fit_layer(asym)
    assert np.linalg.norm(f.dense - plain.weight) <= np.linalg.norm(free.dense - plain.weight) + 1e-9


def test_spatial_joint_fit_lowers_error_and_stays_exact(squeezenet):
    """Alternating least squares over the vertical and horizontal factors: lower output error than the
    SVD + least-squares H (fire2's 3×3 expand, rank 20, real activations of 4 images), and exact on a
    weight that is a rank-8 spatial product."""
    from sqcc.planning import layer_fits
    from sqcc.calibrate import collect_activations, load_calibration_images
    from sqcc.passes._factor import bias_correction
    from sqcc.passes.low_rank import fit_spatial

    xs = load_calibration_images(SHARED / "data" / "imagenet-sample", squeezenet.preprocess, 4,
                                 squeezenet.inputs[0])
    acts = collect_activations(squeezenet.mod, [{"data": x} for x in xs], layers=["conv3"])
    lf = next(l for l in layer_fits(squeezenet.mod, acts) if l.name == "conv3")
    x = acts["conv3"]
    y = reference_conv2d(x, lf.weight, lf.strides, lf.padding, lf.dilation)

    def err(als, r):
        lf.cache.clear()
        f = fit_spatial(lf, r, als=als)
        f.bias = bias_correction(lf, f.dense)
        return rel(reference_chain(x, lf, f), y)

    assert err(6, 20) < 0.95 * err(0, 20)
    rng = np.random.default_rng(0)
    v, h = rng.standard_normal((16, 3, 8)), rng.standard_normal((64, 8, 3))
    lf.weight = np.einsum("cyk,nkx->ncyx", v, h).astype(np.float32)
    y = reference_conv2d(x, lf.weight, lf.strides, lf.padding, lf.dilation)
    assert err(6, 8) < 1e-4


def test_joint_fits_survive_dead_groups():
    """A depthwise conv with an all-zero filter (and an input channel that is always 0, as dead ReLU
    channels are): the alternating fits keep that group at zero instead of failing on a singular solve."""
    from sqcc.calibrate import patch_covariance
    from sqcc.passes._factor import LayerFit
    from sqcc.passes.low_rank import fit_spatial

    rng = np.random.default_rng(0)
    w = rng.standard_normal((4, 1, 3, 3)).astype(np.float32)
    w[2] = 0
    x = np.maximum(rng.standard_normal((2, 4, 9, 9)), 0).astype(np.float32)
    x[:, 1] = 0
    lf = LayerFit("dw", w, (1, 4, 9, 9), (1, 4, 9, 9), padding=(1, 1, 1, 1), groups=4)
    lf.cov, lf.mean = patch_covariance(x, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 4, return_mean=True)
    f = fit_spatial(lf, 1)
    assert np.all(np.isfinite(f.dense)) and not np.any(f.dense[2])
    assert rel(f.dense[0], w[0]) < 1.0
