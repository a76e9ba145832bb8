"""flatten pass: exact on separable filters and with enough terms (per layer, end to end through TVM),
geometry preserved (against onnxruntime), CP-ALS error reported, bad input."""
from __future__ import annotations

import numpy as np
import pytest

from sqcc import frontend, passes
from sqcc.errors import SqccError
from sqcc.passes import PassContext
from sqcc.passes._factor import LayerFit, reference_chain, reference_conv2d

from test_passes_lowrank import (check_layers_exact, geometry_check, rel,  # noqa: F401
                                 mobilenet, random_activations, squeezenet, tvm_run)


def test_exact_on_separable_layer():
    """Filters built as α(c)·β(y)·γ(x): one term per filter reproduces the conv (strided, padded,
    dilated)."""
    from sqcc.passes.flatten import fit_flatten

    rng = np.random.default_rng(3)
    n, c, kh, kw = 10, 7, 3, 5
    w = np.einsum("nc,ny,nx->ncyx", rng.standard_normal((n, c)), rng.standard_normal((n, kh)),
                  rng.standard_normal((n, kw))).astype(np.float32)
    x = rng.standard_normal((2, c, 17, 15)).astype(np.float32)
    geo = dict(strides=(2, 1), padding=(1, 2, 0, 2), dilation=(1, 2))
    y0 = reference_conv2d(x, w, **geo)
    lf = LayerFit("sep", w, x.shape, y0.shape, **geo)
    f = fit_flatten(lf, 1, use_data=False)
    assert f.rank == 1 and len(f.convs) == 3
    assert rel(f.dense, w) < 1e-6
    assert rel(reference_chain(x, lf, f), y0) < 1e-6


@pytest.mark.parametrize("data", [False, True], ids=["weights", "data"])
def test_enough_terms_exact_per_layer(squeezenet, mobilenet, data):
    from sqcc.passes.flatten import fit_flatten

    assert check_layers_exact(squeezenet, lambda lf: fit_flatten(lf, 9, data), data,
                              names=["conv0", "conv3"]) == 2
    assert check_layers_exact(mobilenet, lambda lf: fit_flatten(lf, 9, data), data,
                              names=["conv0", "dw3"]) == 2


def test_enough_terms_end_to_end(squeezenet, mobilenet):
    for model, n_3x3 in ((squeezenet, 9), (mobilenet, 14)):
        feed = frontend.random_inputs(model)
        y0 = tvm_run(model.mod, feed)
        ctx = PassContext()
        mod = passes.create("flatten:rank=9,force=true", ctx)(model.mod)
        assert sum(r.applied for r in ctx.records) == n_3x3
        assert rel(tvm_run(mod, feed), y0) < 1e-4


@pytest.mark.parametrize("geometry", ["stride2_asympad", "3x5_stride21_dil21", "dilated2_grouped2",
                                      "depthwise_mult2"])
def test_geometry_against_onnxruntime(geometry):
    geometry_check("flatten:rank=15,force=true", geometry)


def test_few_terms_report_error_and_save_macs(squeezenet):
    from sqcc.planning import layer_fits

    lf = next(l for l in layer_fits(squeezenet.mod) if l.name == "conv3")
    ctx = PassContext(activations={"conv3": random_activations(lf)})
    passes.create("flatten:rank=2,layers=conv3", ctx)(squeezenet.mod)
    (rec,) = ctx.records
    assert rec.applied and rec.macs_after < rec.macs_before
    assert "CP-ALS" in rec.detail and "data refit" in rec.detail
    assert 0.01 < rec.weight_error < 1 and 0 < rec.output_error < 1


@pytest.mark.parametrize("spec, msg", [("flatten:rank=0", "rank=0"), ("flatten:rank=2.5", "expected an integer"),
                                       ("flatten:terms=2", "unknown parameter 'terms'")])
def test_bad_parameters(spec, msg):
    with pytest.raises(SqccError) as e:
        passes.create(spec)
    assert msg in str(e.value)
