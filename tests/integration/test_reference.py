"""Reference runtimes (sqcc.reference): onnxruntime for ONNX, LiteRT for TFLite."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

SHARED = Path(__file__).resolve().parents[2].parent / "shared"
MODELS = SHARED / "models"
MNIST = SHARED / "data" / "mnist-8"


from sqcc import frontend  # noqa: E402
from sqcc.errors import SqccError  # noqa: E402
from sqcc.reference import reference_session  # noqa: E402


def _pb(path):
    import onnx
    from onnx import numpy_helper

    t = onnx.TensorProto()
    t.ParseFromString(path.read_bytes())
    return numpy_helper.to_array(t)


@pytest.fixture(scope="module")
def mnist():
    return frontend.load(str(MODELS / "mnist-8.onnx"))


@pytest.mark.parametrize("k", [0, 1, 2])
def test_onnxruntime_reproduces_mnist_outputs(mnist, k):
    sess = reference_session(mnist, threads=1)
    assert sess.name == "onnxruntime"
    x = _pb(MNIST / f"set{k}_input_0.pb")
    want = _pb(MNIST / f"set{k}_output_0.pb")
    (got,) = sess.run({mnist.inputs[0].name: x})
    assert got.shape == want.shape == (1, 10)
    np.testing.assert_allclose(got, want, atol=1e-3, rtol=1e-3)
    assert got.argmax() == want.argmax()


def test_onnxruntime_threads_and_onnx_proto():
    import onnx

    proto = onnx.load(str(MODELS / "mnist-8.onnx"))
    m = frontend.load(proto)  # a ModelProto: source is its serialisation
    x = _pb(MNIST / "set0_input_0.pb")
    a = reference_session(m, threads=2).run({m.inputs[0].name: x})[0]
    b = reference_session(m).run({m.inputs[0].name: x})[0]
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)


def test_reference_input_errors(mnist):
    sess = reference_session(mnist)
    x = _pb(MNIST / "set0_input_0.pb")
    with pytest.raises(SqccError, match="missing Input3"):
        sess.run({"wrong": x})
    with pytest.raises(SqccError, match=r"has shape \[1, 28, 28\], the model expects \[1, 1, 28, 28\]"):
        sess.run({"Input3": x[0]})
    # dtype is converted to the model's
    out64 = sess.run({"Input3": x.astype(np.float64)})[0]
    np.testing.assert_array_equal(out64, sess.run({"Input3": x})[0])


def test_litert_session_on_int8_model():
    m = frontend.load(str(MODELS / "person_detect.tflite"))
    sess = reference_session(m, threads=1)
    assert sess.name == "litert"
    from PIL import Image

    px = np.asarray(Image.open(SHARED / "data" / "person-detection" / "person.bmp"))
    (out,) = sess.run({"input": px.view(np.int8).reshape(1, 96, 96, 1)})
    assert out.dtype == np.int8 and out.shape == (1, 2) and out.argmax() == 1


def test_unknown_format(mnist):
    import dataclasses

    other = dataclasses.replace(mnist, format="caffe")
    with pytest.raises(SqccError, match="no reference runtime for format 'caffe'"):
        reference_session(other)
