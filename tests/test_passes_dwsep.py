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
        assert reasons <= {"1×1 kernel: no spatial part to separate", "already depthwise", "dwsep applies to convs only"}


@pytest.mark.parametrize("geometry", ["stride2_asympad", "3x5_stride21_dil21", "dilated2_grouped2"])
def test_geometry_against_onnxruntime(geometry):
    geometry_check("dwsep:multiplier=15,force=true", geometry)


def test_depthwise_with_multiplier_is_skipped_or_exact():
    # groups=C with 2 outputs per channel: each channel's 2×9 matrix factors exactly at M=2
    rec = geometry_check("dwsep:multiplier=2,force=true", "depthwise_mult2")
    assert rec.detail.startswith("multiplier 2/2")


def test_reduced_multiplier_saves_macs_and_reports_error(squeezenet):
    from sqcc.budget import layer_fits

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
                                       ("dwsep:multiplier=x", "expected an integer"),
                                       ("dwsep:rank=2", "unknown parameter 'rank'"),
                                       ("dwsep:als=-1", "dwsep: als=-1 out of range"),
                                       ("lowrank:relu=-1", "lowrank: relu=-1 out of range"),
                                       ("lowrank:scheme=spatial,als=-2", "lowrank: als=-2 out of range")])
def test_bad_parameters(spec, msg):
    with pytest.raises(SqccError) as e:
        passes.create(spec)
    assert msg in str(e.value)


def _real_layer(model, name, images):
    from sqcc.budget import layer_fits
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
