"""dwsep pass: exact at full multiplier (per layer in numpy, end to end through TVM), geometry preserved
(against onnxruntime), reduced multiplier reports its error, bad input."""
from __future__ import annotations

import numpy as np
import pytest

from sqcc import frontend, passes
from sqcc.errors import SqccError
from sqcc.passes import PassContext

from test_passes_lowrank import (GEOMETRIES, SHARED, check_layers_exact, geometry_check, rel,  # noqa: F401
                                 mobilenet, random_activations, squeezenet, tvm_run)


@pytest.mark.parametrize("data", [False, True], ids=["weights", "data"])
def test_full_multiplier_exact_per_layer(squeezenet, mobilenet, data):
    from sqcc.passes.dwsep import fit_dwsep

    # SqueezeNet: the stride-2 stem and a 3×3 expand; MobileNet: the asymmetric-padding stem
    assert check_layers_exact(squeezenet, lambda lf: fit_dwsep(lf, 9, data), data, names=["conv0", "conv3"]) == 2
    assert check_layers_exact(mobilenet, lambda lf: fit_dwsep(lf, 9, data), data, names=["conv0"]) == 1


def test_full_multiplier_end_to_end(squeezenet, mobilenet):
    for model, n_3x3 in ((squeezenet, 9), (mobilenet, 1)):
        feed = frontend.random_inputs(model)
        y0 = tvm_run(model.mod, feed)
        ctx = PassContext()
        mod = passes.create("dwsep:multiplier=9,force=true", ctx)(model.mod)
        applied = [r for r in ctx.records if r.applied]
        assert len(applied) == n_3x3, [r.detail for r in ctx.records]
        assert all(r.detail.startswith("multiplier") for r in applied)
        assert rel(tvm_run(mod, feed), y0) < 1e-4
        # MobileNet's depthwise and 1×1 layers are skipped with a reason
        reasons = {r.detail.split(";")[0] for r in ctx.records if not r.applied}
        assert reasons <= {"1×1 kernel: no spatial part to separate", "already depthwise",
                           "dwsep applies to convs only"}


@pytest.mark.parametrize("geometry", ["stride2_asympad", "3x5_stride21_dil21", "dilated2_grouped2"])
def test_geometry_against_onnxruntime(geometry):
    geometry_check("dwsep:multiplier=15,force=true", geometry)


def test_depthwise_with_multiplier_is_skipped_or_exact():
    # groups=C with 2 outputs per channel: each channel's 2×9 matrix factors exactly at M=2
    rec = geometry_check("dwsep:multiplier=2,force=true", "depthwise_mult2")
    assert rec.detail.startswith("multiplier 2/2")


def test_reduced_multiplier_saves_macs_and_reports_error(squeezenet):
    from sqcc.planning import layer_fits

    lf = next(l for l in layer_fits(squeezenet.mod) if l.name == "conv3")
    x = random_activations(lf)
    ctx = PassContext(activations={"conv3": x})
    passes.create("dwsep:multiplier=2,layers=conv3", ctx)(squeezenet.mod)
    (rec,) = ctx.records
    assert rec.applied and rec.technique == "dwsep"
    # HoWo·C·M·(Kh·Kw + N) = 55²·16·2·(9 + 64)
    assert rec.macs_after == 55 * 55 * 16 * 2 * (9 + 64) < rec.macs_before
    assert 0 < rec.output_error < 1 and 0 < rec.weight_error < 1


@pytest.mark.parametrize("spec, msg", [("dwsep:multiplier=0", "multiplier=0"),
                                       ("dwsep:multiplier=x", "expected a number"),
                                       ("dwsep:multiplier=2.5,spread=uniform", "with spread=uniform it must"),
                                       ("dwsep:spread=even", "spread"),
                                       ("dwsep:rank=2", "unknown parameter 'rank'"),
                                       ("dwsep:als=-1", "dwsep: als=-1 out of range"),
                                       ("lowrank:relu=-1", "lowrank: relu=-1 out of range"),
                                       ("lowrank:scheme=spatial,als=-2", "lowrank: als=-2 out of range")])
def test_bad_parameters(spec, msg):
    with pytest.raises(SqccError) as e:
        passes.create(spec)
    assert msg in str(e.value)


def _real_layer(model, name, images):
    from sqcc.planning import layer_fits
    from sqcc.calibrate import collect_activations, load_calibration_images

    xs = load_calibration_images(SHARED / "data" / "imagenet-sample", model.preprocess, images, model.inputs[0])
    acts = collect_activations(model.mod, [{model.inputs[0].name: x} for x in xs], layers=[name])
    return next(l for l in layer_fits(model.mod, acts) if l.name == name), acts[name]


def test_joint_fit_lowers_output_error_on_real_activations(squeezenet):
    """Alternating least squares over all depthwise filters beats choosing each channel's filters by
    its own SVD (fire2's 3×3 expand, M = 4, 4 calibration images): measured by running both chains."""
    from sqcc.passes._factor import bias_correction, reference_chain, reference_conv2d
    from sqcc.passes.dwsep import fit_dwsep

    lf, x = _real_layer(squeezenet, "conv3", 4)
    y = reference_conv2d(x, lf.weight, lf.strides, lf.padding, lf.dilation)
    errs = {}
    for als in (0, 6):
        lf.cache.clear()
        f = fit_dwsep(lf, 4, als=als)
        f.bias = bias_correction(lf, f.dense)
        errs[als] = rel(reference_chain(x, lf, f), y)
    assert errs[6] < 0.95 * errs[0], errs


def test_joint_fit_stays_exact_on_separable_weights(squeezenet):
    """Weights that are exactly depthwise (M = 2) + pointwise: the alternating fit keeps them exact."""
    from sqcc.passes._factor import bias_correction, reference_chain, reference_conv2d
    from sqcc.passes.dwsep import fit_dwsep

    lf, x = _real_layer(squeezenet, "conv3", 1)
    rng = np.random.default_rng(0)
    b = rng.standard_normal((16, 2, 9))
    a = rng.standard_normal((64, 16, 2))
    lf.weight = np.einsum("ncm,cmk->nck", a, b).reshape(64, 16, 3, 3).astype(np.float32)
    lf.cache.clear()
    f = fit_dwsep(lf, 2, als=6)
    f.bias = bias_correction(lf, f.dense)
    y = reference_conv2d(x, lf.weight, lf.strides, lf.padding, lf.dilation)
    assert rel(reference_chain(x, lf, f), y) < 1e-4


def _per_channel_rank_model(ranks, n=12, seed=0):
    """A one-conv ONNX model (3×3, stride 2, bias) whose input channel c's N×9 slice has rank ranks[c]."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    c = len(ranks)
    wt = np.zeros((n, c, 9), np.float32)
    for ch, r in enumerate(ranks):
        wt[:, ch] = rng.standard_normal((n, r)) @ rng.standard_normal((r, 9))
    node = helper.make_node("Conv", ["x", "w", "b"], ["y"], kernel_shape=[3, 3], strides=[2, 2],
                            pads=[1, 1, 1, 1], name="theconv")
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, c, 13, 11])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, n, 7, 6])],
                              [numpy_helper.from_array(wt.reshape(n, c, 3, 3), "w"),
                               numpy_helper.from_array(rng.standard_normal(n).astype(np.float32), "b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model


@pytest.mark.parametrize("data", [False, True], ids=["weights", "data"])
def test_energy_spread_is_exact_on_per_channel_rank_weights(data):
    """Channel c of the weight has rank r_c (0, 1, 2, 3, 1, 2: 9 in all): at multiplier 9/6 = 1.5 the
    energy spread gives each channel exactly r_c filters (channel 0 none), the chain starts with a
    channel gather, and the rewritten model equals the original (TVM against onnxruntime)."""
    from test_passes_lowrank import ort_run

    ranks = [0, 1, 2, 3, 1, 2]
    m_onnx = _per_channel_rank_model(ranks)
    m = frontend.load(m_onnx)
    x = np.random.default_rng(1).standard_normal((1, 6, 13, 11)).astype(np.float32)
    ctx = PassContext(activations={"theconv": np.maximum(x, 0)} if data else None)
    mod = passes.create("dwsep:multiplier=1.5", ctx)(m.mod)
    (rec,) = ctx.records
    assert rec.applied and "spread by energy: 9 filters" in rec.detail and "1 channel(s) dropped" in rec.detail
    assert "R.take" in mod.script()
    # HoWo·(Σ r_c)·(Kh·Kw + N): the gather costs no MACs
    assert rec.macs_after == 7 * 6 * 9 * (9 + 12)
    assert rel(tvm_run(mod, {"x": x}), ort_run(m_onnx, x)) < 1e-4


def test_energy_spread_lowers_output_error_at_same_macs(squeezenet):
    """Fire2's 3×3 expand (conv3) at M = 4 on real activations (8 images, fitted on 4, measured on the
    other 4): sharing the 64 filters by energy gives lower output error than 4 per channel, at the same
    MACs, measured by running both chains."""
    from sqcc.planning import layer_fits
    from sqcc.passes._factor import bias_correction, chain_cost, reference_chain, reference_conv2d
    from sqcc.passes.dwsep import fit_dwsep

    lf, x = _real_layer(squeezenet, "conv3", 8)
    fit_lf = next(l for l in layer_fits(squeezenet.mod, {"conv3": x[0::2]}) if l.name == "conv3")
    test = x[1::2]
    y = reference_conv2d(test, lf.weight, lf.strides, lf.padding, lf.dilation)
    errs, macs = {}, {}
    for spread in ("uniform", "energy"):
        f = fit_dwsep(fit_lf, 4, spread=spread)
        f.bias = bias_correction(fit_lf, f.dense)
        errs[spread] = rel(reference_chain(test, fit_lf, f), y)
        macs[spread] = chain_cost(fit_lf, f)[0]
        assert (f.convs[0].in_index is None) == (spread == "uniform")
    assert macs["energy"] == macs["uniform"]
    assert errs["energy"] < 0.95 * errs["uniform"], errs


@pytest.mark.parametrize("geometry", ["3x5_stride21_dil21", "dilated2_grouped2"])
def test_fractional_multiplier_runs_the_fitted_chain(geometry):
    """A fractional multiplier (filters shared by energy, channel gather first) on strided, dilated,
    padded and grouped convs: the built model computes exactly the fitted weight Ŵ (TVM against a
    numpy conv with Ŵ and the original bias), and the report counts the chain's MACs."""
    from onnx import numpy_helper
    from test_passes_lowrank import GEOMETRIES, single_conv_model

    from sqcc.planning import layer_fits
    from sqcc.passes._factor import chain_cost, reference_conv2d
    from sqcc.passes.dwsep import fit_dwsep

    m_onnx = single_conv_model(**GEOMETRIES[geometry])
    m = frontend.load(m_onnx)
    (lf,) = layer_fits(m.mod)
    f = fit_dwsep(lf, 2.5, use_data=False)
    assert f.convs[0].in_index is not None  # the filters are not 2.5 per channel
    ctx = PassContext()
    mod = passes.create("dwsep:multiplier=2.5", ctx)(m.mod)
    (rec,) = ctx.records
    assert rec.applied and "spread by energy" in rec.detail and rec.macs_after == chain_cost(lf, f)[0]
    x = np.random.default_rng(1).standard_normal(m.inputs[0].shape).astype(np.float32)
    bias = next(numpy_helper.to_array(t) for t in m_onnx.graph.initializer if t.name == "b")
    want = reference_conv2d(x, f.dense, lf.strides, lf.padding, lf.dilation, lf.groups) + bias.reshape(1, -1, 1, 1)
    assert rel(tvm_run(mod, {"x": x}), want) < 1e-5
