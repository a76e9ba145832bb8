"""TFLite frontend: real models against LiteRT, the quantized_dimension fix, and every user error.

Models and data come from ../shared (beside the checkout). Builds are untuned llvm (a few seconds
each); the module-scoped fixtures build each model once.
"""
from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest

SHARED = Path(__file__).resolve().parents[2].parent / "shared"
MODELS = SHARED / "models"
DATA = SHARED / "data"


from sqcc import frontend  # noqa: E402
from sqcc.errors import SqccError, UnsupportedOpsError  # noqa: E402
from sqcc.tflite_frontend import _bad_qdim_fields, normalize_tflite  # noqa: E402


# ------------------------------------------------------------------------------------- helpers

def _build(model):
    import tvm
    from tvm import relax

    ex = relax.build(model.mod, target="llvm")
    return relax.VirtualMachine(ex, tvm.cpu())


def _run(vm, x):
    import tvm

    out = vm["main"](tvm.runtime.tensor(x))
    return out.numpy()


def _imagenet_image(name="100_black_swan.jpg"):
    """RGB float32 [224,224,3]: centre crop of the 256x256 sample, x/255, ImageNet mean/std."""
    from PIL import Image

    img = np.asarray(Image.open(DATA / "imagenet-sample" / name).convert("RGB"), dtype=np.float32)
    h, w = img.shape[:2]
    top, left = (h - 224) // 2, (w - 224) // 2
    img = img[top:top + 224, left:left + 224] / 255.0
    mean = np.array([0.485, 0.456, 0.406], np.float32)
    std = np.array([0.229, 0.224, 0.225], np.float32)
    return ((img - mean) / std).astype(np.float32)


def _person_input(name):
    """The TFLM test images store the int8 input bytes (pixel - 128) as an 8-bit grey BMP, so the
    bytes are reinterpreted, not shifted again (shifting the BMP values wraps the image)."""
    from PIL import Image

    px = np.asarray(Image.open(DATA / "person-detection" / f"{name}.bmp"))
    assert px.shape == (96, 96) and px.dtype == np.uint8
    return px.view(np.int8).reshape(1, 96, 96, 1)


def _litert(content, x):
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_content=content)
    it.allocate_tensors()
    it.set_tensor(it.get_input_details()[0]["index"], x)
    it.invoke()
    return it.get_tensor(it.get_output_details()[0]["index"])


def _rel_err(a, b):
    return float(np.abs(a.astype(np.float64) - b).max() / max(np.abs(b).max(), 1e-30))


def _patch_opcode(data: bytes, index: int, code: int) -> bytes:
    """Set operator code ``index``'s builtin code (both the int8 and the int32 field, where present)."""
    import tflite

    buf = bytearray(data)
    oc = tflite.Model.GetRootAs(buf, 0).OperatorCodes(index)
    patched = 0
    for vt_off, fmt, val in ((4, "<b", min(code, 127)), (10, "<i", code)):
        o = oc._tab.Offset(vt_off)
        if o:
            struct.pack_into(fmt, buf, oc._tab.Pos + o, val)
            patched += 1
    assert patched
    return bytes(buf)


def _tiny_relu(shape=(1, 4), signature=(-1, 4), name="x") -> bytes:
    """A one-op float TFLite model (RELU) built with the flatbuffers builder; ``signature`` gives
    its input's shape_signature (-1 = dynamic)."""
    import importlib

    import flatbuffers

    # tflite/__init__ re-exports the classes under the module names: fetch the modules themselves.
    B, M, O, OC, SG, T = (importlib.import_module(f"tflite.{n}") for n in
                          ("Buffer", "Model", "Operator", "OperatorCode", "SubGraph", "Tensor"))

    b = flatbuffers.Builder(1024)

    def ivec(start, vals):
        start(b, len(vals))
        for v in reversed(vals):
            b.PrependInt32(v)
        return b.EndVector()

    B.BufferStart(b)
    buf0 = B.BufferEnd(b)
    tensors = []
    for tname, sig in ((name, signature), ("y", signature)):
        nm = b.CreateString(tname)
        shp = ivec(lambda bb, n: T.TensorStartShapeVector(bb, n), list(shape))
        sgn = ivec(lambda bb, n: T.TensorStartShapeSignatureVector(bb, n), list(sig)) if sig else None
        T.TensorStart(b)
        T.TensorAddShape(b, shp)
        T.TensorAddType(b, 0)
        T.TensorAddBuffer(b, 0)
        T.TensorAddName(b, nm)
        if sgn is not None:
            T.TensorAddShapeSignature(b, sgn)
        tensors.append(T.TensorEnd(b))
    ins = ivec(lambda bb, n: O.OperatorStartInputsVector(bb, n), [0])
    outs = ivec(lambda bb, n: O.OperatorStartOutputsVector(bb, n), [1])
    O.OperatorStart(b)
    O.OperatorAddOpcodeIndex(b, 0)
    O.OperatorAddInputs(b, ins)
    O.OperatorAddOutputs(b, outs)
    op = O.OperatorEnd(b)
    SG.SubGraphStartTensorsVector(b, 2)
    for t in reversed(tensors):
        b.PrependUOffsetTRelative(t)
    tvec = b.EndVector()
    sin = ivec(lambda bb, n: SG.SubGraphStartInputsVector(bb, n), [0])
    sout = ivec(lambda bb, n: SG.SubGraphStartOutputsVector(bb, n), [1])
    SG.SubGraphStartOperatorsVector(b, 1)
    b.PrependUOffsetTRelative(op)
    ovec = b.EndVector()
    SG.SubGraphStart(b)
    SG.SubGraphAddTensors(b, tvec)
    SG.SubGraphAddInputs(b, sin)
    SG.SubGraphAddOutputs(b, sout)
    SG.SubGraphAddOperators(b, ovec)
    sg = SG.SubGraphEnd(b)
    OC.OperatorCodeStart(b)
    OC.OperatorCodeAddDeprecatedBuiltinCode(b, 19)  # RELU
    OC.OperatorCodeAddBuiltinCode(b, 19)
    OC.OperatorCodeAddVersion(b, 1)
    code = OC.OperatorCodeEnd(b)
    M.ModelStartOperatorCodesVector(b, 1)
    b.PrependUOffsetTRelative(code)
    cvec = b.EndVector()
    M.ModelStartSubgraphsVector(b, 1)
    b.PrependUOffsetTRelative(sg)
    svec = b.EndVector()
    M.ModelStartBuffersVector(b, 1)
    b.PrependUOffsetTRelative(buf0)
    bvec = b.EndVector()
    M.ModelStart(b)
    M.ModelAddVersion(b, 3)
    M.ModelAddOperatorCodes(b, cvec)
    M.ModelAddSubgraphs(b, svec)
    M.ModelAddBuffers(b, bvec)
    b.Finish(M.ModelEnd(b), file_identifier=b"TFL3")
    return bytes(b.Output())


# -------------------------------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def squeezenet_tflite():
    m = frontend.load(str(MODELS / "squeezenet1.1.tflite"))
    return m, _build(m)


@pytest.fixture(scope="module")
def person_detect():
    m = frontend.load(str(MODELS / "person_detect.tflite"))
    return m, _build(m)


# ------------------------------------------------------------------------------- float models

def test_squeezenet_tflite_matches_litert(squeezenet_tflite):
    m, vm = squeezenet_tflite
    assert m.format == "tflite" and m.quant == {}
    assert [(s.name, s.shape, s.dtype) for s in m.inputs] == [
        ("serving_default_input:0", (1, 224, 224, 3), "float32")]
    assert [(s.shape, s.dtype) for s in m.outputs] == [((1, 1000), "float32")]
    main = m.mod["main"]
    assert [p.name for p in main.params] == ["serving_default_input:0"]  # weights are inline
    assert main.attrs is None or "params" not in main.attrs
    x = _imagenet_image()[None]
    ours = _run(vm, x)
    ref = _litert(m.source, x)
    assert _rel_err(ours, ref) <= 1e-4
    assert ours.argmax() == ref.argmax() == 100  # black swan


def test_squeezenet_tflite_layer_names(squeezenet_tflite):
    from sqcc.layers import layers, totals

    m, _ = squeezenet_tflite
    ls = layers(m.mod)
    convs = [l for l in ls if l.op == "relax.nn.conv2d"]
    assert len(convs) == 26
    assert convs[0].name == "functional_1_1_conv0_1_Relu"  # first output tensor name, up to ';'
    assert all(not l.name.startswith("lv") for l in convs)
    assert totals(ls)["params"] == 1235496


def test_squeezenet_onnx_matches_onnxruntime():
    from sqcc.reference import reference_session

    m = frontend.load(str(MODELS / "squeezenet1.1.onnx"))
    x = np.ascontiguousarray(_imagenet_image().transpose(2, 0, 1)[None])
    ours = _run(_build(m), x)
    ref = reference_session(m, threads=2).run({m.inputs[0].name: x})[0]
    assert _rel_err(ours, ref) <= 1e-4
    assert ours.argmax() == ref.argmax() == 100


# ------------------------------------------------------------------------------------ int8 models

def test_person_detect_classifies_and_matches_litert(person_detect):
    m, vm = person_detect
    assert [(s.name, s.shape, s.dtype) for s in m.inputs] == [("input", (1, 96, 96, 1), "int8")]
    assert [(s.shape, s.dtype) for s in m.outputs] == [((1, 2), "int8")]
    q = m.quant
    assert q["inputs"][0]["zero_point"] == -1 and q["inputs"][0]["scale"] == pytest.approx(1 / 127.5)
    assert q["outputs"][0] == {"scale": 1 / 256, "zero_point": -128}
    content = normalize_tflite(m.source)
    for name, want in (("person", 1), ("no_person", 0)):
        x = _person_input(name)
        ours = _run(vm, x)
        ref = _litert(content, x)
        assert ours.dtype == np.int8 and ours.shape == (1, 2)
        assert np.abs(ours.astype(int) - ref.astype(int)).max() <= 1, (name, ours, ref)
        assert int(ours.argmax()) == want, (name, ours)
        assert int(ref.argmax()) == want, (name, ref)


def test_int_avgpool_rounds_half_away_from_zero():
    """TVM's int32 average pool truncates toward zero; TFLite rounds half away from zero (the
    importer's truncation moved person_detect's logits by 6-7 steps). The frontend rewrites it."""
    import tvm
    from tvm import relax

    from sqcc.tflite_frontend import _fix_int_avg_pool

    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((1, 1, 4, 1), "int32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            y = bb.emit(relax.op.nn.avg_pool2d(x, pool_size=[1, 2], strides=[1, 2], layout="NHWC"))
            out = bb.emit_output(y)
        bb.emit_func_output(out)
    data = np.array([-1, -2, 4, 7], np.int32).reshape(1, 1, 4, 1)  # means -1.5 and 5.5
    want = np.array([-2, 6])
    for mod, expect in ((bb.get(), np.array([-1, 5])), (_fix_int_avg_pool(bb.get()), want)):
        vm = relax.VirtualMachine(relax.build(mod, target="llvm"), tvm.cpu())
        got = vm["main"](tvm.runtime.tensor(data)).numpy().ravel()
        np.testing.assert_array_equal(got, expect)


def test_micro_speech_imports_and_matches_litert():
    m = frontend.load(str(MODELS / "micro_speech_quantized.tflite"))
    assert [(s.shape, s.dtype) for s in m.inputs] == [((1, 1960), "int8")]
    assert [(s.shape, s.dtype) for s in m.outputs] == [((1, 4), "int8")]
    vm = _build(m)
    for seed in range(3):
        x = frontend.random_inputs(m, seed)[m.inputs[0].name]
        ours, ref = _run(vm, x), _litert(normalize_tflite(m.source), x)
        assert np.abs(ours.astype(int) - ref.astype(int)).max() <= 1


# ---------------------------------------------------------------------------------- normaliser

def test_normalizer_patches_exactly_the_bad_fields():
    import tflite

    data = (MODELS / "person_detect.tflite").read_bytes()
    bad = _bad_qdim_fields(data)
    assert len(bad) == 14 and all(old == 3 for *_, old in bad)
    fixed = normalize_tflite(data)
    assert len(fixed) == len(data) and fixed[:8] == data[:8]
    diff = np.flatnonzero(np.frombuffer(data, np.uint8) != np.frombuffer(fixed, np.uint8)).tolist()
    assert diff == sorted(pos for _, _, pos, _ in bad)  # one byte (3 → 0) of each int32 field
    assert _bad_qdim_fields(fixed) == []

    before, after = tflite.Model.GetRootAs(data, 0).Subgraphs(0), tflite.Model.GetRootAs(fixed, 0).Subgraphs(0)
    patched = {t for _, t, _, _ in bad}
    for t in range(before.TensorsLength()):
        qb, qa = before.Tensors(t).Quantization(), after.Tensors(t).Quantization()
        if t in patched:
            assert before.Tensors(t).ShapeLength() == 1 and before.Tensors(t).Type() == 2  # int32 bias
            assert qb.QuantizedDimension() == 3 and qa.QuantizedDimension() == 0
            assert np.array_equal(qb.ScaleAsNumpy(), qa.ScaleAsNumpy())
        elif qb is not None:
            assert qb.QuantizedDimension() == qa.QuantizedDimension()  # e.g. depthwise weights keep 3


def test_normalizer_leaves_good_models_alone():
    for name in ("squeezenet1.1.tflite", "micro_speech_quantized.tflite"):
        data = (MODELS / name).read_bytes()
        assert normalize_tflite(data) is data


def test_litert_needs_the_normalizer():
    from ai_edge_litert.interpreter import Interpreter

    data = (MODELS / "person_detect.tflite").read_bytes()
    with pytest.raises(ValueError, match="quantized_dimension"):
        Interpreter(model_content=data).allocate_tensors()
    Interpreter(model_content=normalize_tflite(data)).allocate_tensors()


# -------------------------------------------------------------------------------------- errors

@pytest.mark.parametrize("frac", [0.0001, 0.3, 0.9, 0.99999])
def test_truncated_tflite(tmp_path, frac):
    data = (MODELS / "micro_speech_quantized.tflite").read_bytes()
    p = tmp_path / "cut.tflite"
    p.write_bytes(data[: max(9, int(len(data) * frac))])
    with pytest.raises(SqccError) as e:
        frontend.load(str(p))
    msg = str(e.value)
    assert "\n" not in msg and str(p) in msg
    assert "truncated" in msg


def test_truncated_large_tflite(tmp_path):
    data = (MODELS / "squeezenet1.1.tflite").read_bytes()
    p = tmp_path / "half.tflite"
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(SqccError, match="corrupt or truncated TFLite flatbuffer"):
        frontend.load(str(p))


def test_not_a_model_with_tflite_suffix(tmp_path):
    p = tmp_path / "notes.tflite"
    p.write_text("this is not a model\n" * 10)
    with pytest.raises(SqccError, match="not a TFLite flatbuffer") as e:
        frontend.load(str(p))
    assert str(p) in str(e.value)


def test_garbage_with_identifier(tmp_path):
    p = tmp_path / "junk.tflite"
    p.write_bytes(b"\xff\xff\x00\x00TFL3" + bytes(range(256)) * 4)
    with pytest.raises(SqccError, match="corrupt or truncated") as e:
        frontend.load(str(p))
    assert "\n" not in str(e.value)


def test_unsupported_ops_are_all_listed(tmp_path):
    import tflite
    from tflite.BuiltinOperator import BuiltinOperator as Op

    data = (MODELS / "micro_speech_quantized.tflite").read_bytes()
    model = tflite.Model.GetRootAs(data, 0)
    codes = [max(model.OperatorCodes(i).BuiltinCode(), model.OperatorCodes(i).DeprecatedBuiltinCode())
             for i in range(model.OperatorCodesLength())]
    dw, sm = codes.index(Op.DEPTHWISE_CONV_2D), codes.index(Op.SOFTMAX)
    data = _patch_opcode(data, dw, Op.LSH_PROJECTION)  # ops TVM 0.27 has no converter for
    data = _patch_opcode(data, sm, Op.SKIP_GRAM)
    p = tmp_path / "bad_ops.tflite"
    p.write_bytes(data)
    with pytest.raises(UnsupportedOpsError) as e:
        frontend.load(str(p))
    msg = str(e.value)
    assert "\n" not in msg and str(p) in msg
    assert e.value.ops == [("#1 Relu", "LSH_PROJECTION"), ("#3 labels_softmax", "SKIP_GRAM")]
    assert "LSH_PROJECTION, SKIP_GRAM in 2 node(s)" in msg


def test_custom_op_is_unsupported(tmp_path):
    from tflite.BuiltinOperator import BuiltinOperator as Op

    data = _patch_opcode((MODELS / "micro_speech_quantized.tflite").read_bytes(), 0, Op.CUSTOM)
    p = tmp_path / "custom.tflite"
    p.write_bytes(data)
    with pytest.raises(UnsupportedOpsError, match=r"CUSTOM:\?"):
        frontend.load(str(p))


def test_dynamic_batch_is_one_unless_overridden(tmp_path):
    p = tmp_path / "dyn.tflite"
    p.write_bytes(_tiny_relu())
    m = frontend.load(str(p))
    assert m.inputs[0].shape == (1, 4) and m.outputs[0].shape == (1, 4)
    assert any("dynamic batch dimension '?' set to 1" in n for n in m.notes)

    m = frontend.load(str(p), input_shapes="x:3,4")
    assert m.inputs[0].shape == (3, 4) and m.outputs[0].shape == (3, 4)
    x = np.linspace(-1, 1, 12, dtype=np.float32).reshape(3, 4)
    np.testing.assert_array_equal(_run(_build(m), x), np.maximum(x, 0))

    from sqcc.reference import reference_session

    np.testing.assert_array_equal(reference_session(m).run({"x": x})[0], np.maximum(x, 0))


@pytest.mark.parametrize("shape, pattern", [
    ("x:3,4,1", "rank 3 given, the model's input has rank 2"),
    ("x:3,5", "axis 1 is fixed to 4 in the model, 5 given"),
    ("y:3,4", "--input-shape names y, but the model's inputs are x"),
])
def test_bad_override(tmp_path, shape, pattern):
    p = tmp_path / "dyn.tflite"
    p.write_bytes(_tiny_relu())
    with pytest.raises(SqccError, match=pattern):
        frontend.load(str(p), input_shapes=shape)


def test_static_model_accepts_its_own_shape():
    m = frontend.load(str(MODELS / "micro_speech_quantized.tflite"), input_shapes={"Reshape_1": (1, 1960)})
    assert m.inputs[0].shape == (1, 1960)
    with pytest.raises(SqccError, match="axis 1 is fixed to 1960"):
        frontend.load(str(MODELS / "micro_speech_quantized.tflite"), input_shapes={"Reshape_1": (1, 10)})
