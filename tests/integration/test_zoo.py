"""Models nobody here tuned for: every model of the corpus (tests/data/corpus, see its NOTICE and
corpus.json), the onnx wheel's `light` model zoo and its pytorch-converted / pytorch-operator CNN
cases compile with sqcc's defaults and match the reference runtime on every output.

sqcc.compile itself fails when an output misses by more than 1e-4 of its largest magnitude (no
lossy rewrite is asked for here), so a compile that returns is a match; the tests also check that
every output was compared.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

import sqcc
from sqcc.errors import SqccError

CORPUS = Path(__file__).resolve().parents[1] / "data" / "corpus"
ONNX_DATA = Path(onnx.__file__).parent / "backend" / "test" / "data"
INFO = {e["file"]: e for e in json.loads((CORPUS / "corpus.json").read_text())}

# Models that cannot compile, each for a reason the error must name (what a user would need to fix).
EXPECTED_ERRORS = {
    # MediaPipe's own custom op: no runtime but MediaPipe's implements it
    "mp_selfie_segmentation.tflite": r"unsupported operator.*CUSTOM:Convolution2DTransposeBias.*#244",
    # sparse (densified) fp16 weights: TVM's TFLite importer rejects the DEQUANTIZE of a sparse tensor
    "mp_face_detection_full_range_sparse.tflite": r"TFLite importer failed at operator #\d+ DEQUANTIZE",
    # dynamic height and width: only the batch defaults to 1; the flag is named
    # Keras' dynamic-batch RESHAPE (Shape → StridedSlice → Pack → Reshape): TVM's TFLite importer
    "tfl_keras_mobilenet_v1_025_fp16.tflite": r"TFLite importer failed at operator #88 RESHAPE",
    "rapidocr_ch_ppocr_mobile_v2.0_cls.onnx": r"dynamic dimension\(s\) at axis 2.*axis 3.*--input-shape x:",
    "tv_deeplabv3_dyn.onnx": r"dynamic dimension\(s\) at axis 2.*--input-shape input:",
}
# ... and those models with the shape a user gives
SHAPES = {"rapidocr_ch_ppocr_mobile_v2.0_cls.onnx": "x:1,3,48,192",
          "tv_deeplabv3_dyn.onnx": "input:1,3,96,96"}


def corpus_files():
    return sorted(p.name for p in CORPUS.iterdir() if p.suffix in (".onnx", ".tflite"))


def assert_every_output_checked(pkg, n_outputs):
    fid = pkg.report["fidelity"]
    assert len(fid["outputs"]) == n_outputs == len(pkg.outputs)
    for row in fid["outputs"]:
        assert row["max_rel"] <= 1e-4, row
        assert row["cosine"] > 0.999999, row


@pytest.mark.parametrize("name", corpus_files())
def test_corpus_model_compiles_and_matches(name):
    path = CORPUS / name
    if name in EXPECTED_ERRORS:
        with pytest.raises(SqccError, match=EXPECTED_ERRORS[name]):
            sqcc.compile(str(path))
        if name not in SHAPES:
            return
        pkg = sqcc.compile(str(path), input_shapes=SHAPES[name])
    else:
        pkg = sqcc.compile(str(path))
    assert_every_output_checked(pkg, len(INFO[name]["outputs"]))
    if "dynamic-batch" in INFO[name].get("features", []) and name not in SHAPES:
        assert any("dynamic batch" in n for n in pkg.report["notes"])
        assert pkg.inputs[0].shape[0] == 1


@pytest.mark.parametrize("path", sorted((ONNX_DATA / "light").glob("light_*.onnx")),
                         ids=lambda p: p.stem)
def test_light_model_zoo(path):
    n_out = len(onnx.load(str(path), load_external_data=False).graph.output)
    pkg = sqcc.compile(str(path))
    assert_every_output_checked(pkg, n_out)


CNN_CASE = re.compile(r"(2d|conv|maxpool|pad|pixelshuffle|batchnorm|prelu)", re.I)


def _onnxruntime_runs(model: Path) -> bool:
    import onnxruntime as ort

    try:
        ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
        return True
    except Exception:  # noqa: BLE001 -- opset-6 BatchNormalization/PRelu, opset-1 AveragePool
        return False


def pytorch_cases():
    """The CNN cases (convs, pools, pads, norms) with stored outputs that onnxruntime itself runs."""
    cases = []
    for suite in ("pytorch-converted", "pytorch-operator"):
        for d in sorted((ONNX_DATA / suite).iterdir()):
            if (CNN_CASE.search(d.name) and (d / "test_data_set_0" / "output_0.pb").exists()
                    and _onnxruntime_runs(d / "model.onnx")):
                cases.append(d)
    return cases


def _tensor(path):
    t = onnx.TensorProto()
    t.ParseFromString(path.read_bytes())
    return numpy_helper.to_array(t)


@pytest.mark.parametrize("case", pytorch_cases(), ids=lambda d: d.name)
def test_pytorch_cnn_case_matches_stored_outputs(case):
    model = case / "model.onnx"
    if case.name == "test_operator_index":
        # TVM's importer rejects its Slice; the one-line error names the node and the op
        with pytest.raises(SqccError, match=r"importer failed at node .*\(Slice\)"):
            sqcc.compile(str(model))
        return
    pkg = sqcc.compile(str(model))
    data = case / "test_data_set_0"
    feed = {spec.name: _tensor(data / f"input_{k}.pb") for k, spec in enumerate(pkg.inputs)}
    outs = pkg.run(feed)
    outs = outs if isinstance(outs, list) else [outs]
    for k, ours in enumerate(outs):
        ref = _tensor(data / f"output_{k}.pb")
        scale = float(np.abs(ref).max()) or 1.0
        assert float(np.abs(np.asarray(ours) - ref).max()) <= 1e-4 * scale + 1e-6


def test_corrupted_weight_fails_the_compile(tmp_path, monkeypatch):
    """A deliberately mis-compiled model (one weight changed after import) must not be packaged."""
    from sqcc import frontend

    real_load = frontend.load

    def corrupting_load(*a, **k):
        m = real_load(*a, **k)
        m.mod = _scale_first_weight(m.mod, 1.5)
        return m

    monkeypatch.setattr(frontend, "load", corrupting_load)
    path = CORPUS / "tv_ssdlite_heads.onnx"  # two outputs
    with pytest.raises(SqccError, match=r"does not match onnxruntime on \d of 2 output\(s\).*no package"):
        sqcc.compile(str(path))
    pkg = sqcc.compile(str(path), force=True)  # written anyway, and marked
    assert pkg.manifest["numerics_mismatch_forced"]


def _scale_first_weight(mod, factor):
    """``mod`` with the first conv2d's constant weight multiplied by ``factor``."""
    from tvm import relax
    from tvm.relax.expr_functor import PyExprMutator, mutator

    from sqcc.layers import is_const, op_name

    done = []

    @mutator
    class _Scale(PyExprMutator):
        def visit_call_(self, call):
            call = super().visit_call_(call)
            if done or op_name(call) != "relax.nn.conv2d" or not is_const(call.args[1]):
                return call
            done.append(True)
            w = relax.const(call.args[1].value.numpy() * factor)
            return relax.Call(call.op, [call.args[0], w], call.attrs)

    main = _Scale(mod).visit_expr(mod["main"])
    assert done, "no conv2d weight to corrupt"
    mod = tvm_module_with(mod, main)
    return mod


def tvm_module_with(mod, main):
    import tvm

    return tvm.IRModule({gv: (main if gv.name_hint == "main" else f) for gv, f in mod.functions.items()},
                        attrs=mod.attrs)
