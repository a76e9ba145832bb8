"""The real models compile for the host and match the reference runtime; accuracy as onnxruntime's."""
import numpy as np
import onnx
import pytest
from onnx import numpy_helper

import sqcc
from conftest import DATA, IMAGENET
from sqcc.fidelity import evaluate_images, reference_for_package
from sqcc.preprocess import load_image

ONNX_MODELS = ["squeezenet1.1", "squeezenet1.0", "mobilenet_v1_0.5_160", "mnist-8"]


@pytest.fixture(scope="module")
def compiled():
    cache = {}

    def get(name):
        if name not in cache:
            cache[name] = sqcc.compile(name, target="host")
        return cache[name]

    return get


@pytest.mark.parametrize("name", ONNX_MODELS)
def test_matches_onnxruntime_on_real_input(compiled, name):
    pkg = compiled(name)
    spec = pkg.inputs[0]
    if name == "mnist-8":
        t = onnx.TensorProto()
        t.ParseFromString((DATA / "mnist-8" / "set0_input_0.pb").read_bytes())
        x = numpy_helper.to_array(t)
    else:
        x = load_image(IMAGENET / "000_tench.jpg", pkg.preprocess, spec.dtype)
    ours = pkg.run(x)
    ref = reference_for_package(pkg).run({spec.name: x})[0]
    assert ref.shape == ours.shape
    rel = np.abs(ours - ref).max() / np.abs(ref).max()
    assert rel <= 1e-4, f"{name}: max relative error {rel:.3g}"
    assert pkg.report["fidelity"]["max_rel"] <= 1e-4


def test_mnist_reproduces_stored_outputs(compiled):
    pkg = compiled("mnist-8")
    for k in range(3):
        tin, tout = onnx.TensorProto(), onnx.TensorProto()
        tin.ParseFromString((DATA / "mnist-8" / f"set{k}_input_0.pb").read_bytes())
        tout.ParseFromString((DATA / "mnist-8" / f"set{k}_output_0.pb").read_bytes())
        np.testing.assert_allclose(pkg.run(numpy_helper.to_array(tin)), numpy_helper.to_array(tout),
                                   atol=1e-3, rtol=1e-3)


@pytest.mark.parametrize("name,expected", [("squeezenet1.1", 128), ("mobilenet_v1_0.5_160", 136)])
def test_imagenet_sample_accuracy(compiled, name, expected):
    pkg = compiled(name)
    ref = reference_for_package(pkg)
    run = lambda feed: [pkg.run(feed)]  # noqa: E731
    r = evaluate_images(run, ref, IMAGENET, pkg.preprocess, pkg.inputs[0])
    assert r["labelled"] == 200
    assert r["ref_top1_count"] == expected  # onnxruntime, as shared/README.md states
    assert r["ours_top1_count"] == expected
    assert r["top1_agreement"] == 1.0
