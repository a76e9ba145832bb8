"""Float TFLite export of tiny in-memory Relax graphs, run in LiteRT against TVM's build of the same
graph (``export_tflite`` checks that itself before writing), and read back through the ``tflite``
schema package: NHWC layout, SAME/VALID/explicit padding, depthwise and grouped convolutions, fused
bias and ReLU/ReLU6, pools, concat, mean, reshape, gather, fully connected."""
import numpy as np
import pytest
import tflite

from sqcc import SqccError
from sqcc.export import export_tflite
from sqcc.export.tflite_writer import _enum
from test_export_onnx import RNG, FakePackage, const, graph, nn


def exported(mod, tmp_path, **kw):
    r = export_tflite(FakePackage(mod, **kw), tmp_path / "m.tflite")
    data = (tmp_path / "m.tflite").read_bytes()
    return tflite.Model.GetRootAs(data, 0), r


def op_codes(model):
    names = {v: k for k, v in vars(tflite.BuiltinOperator).items() if not k.startswith("_")}
    sub = model.Subgraphs(0)
    return [names[model.OperatorCodes(sub.Operators(i).OpcodeIndex()).BuiltinCode()]
            for i in range(sub.OperatorsLength())]


@pytest.mark.parametrize("case, want", [
    ("same", "CONV_2D"), ("valid_strided", "CONV_2D"), ("explicit_pad", "PAD"), ("depthwise_m2", "DEPTHWISE_CONV_2D"),
    ("grouped", "CONV_2D"), ("dilated", "CONV_2D")])
def test_convolutions(case, want, tmp_path):
    c = 8
    shape, kw, groups = {
        "same": ((16, c, 3, 3), dict(padding=[1, 1, 1, 1]), 1),
        "valid_strided": ((16, c, 3, 1), dict(strides=[2, 2]), 1),
        "explicit_pad": ((16, c, 3, 3), dict(padding=[2, 0, 1, 1]), 1),
        "depthwise_m2": ((2 * c, 1, 3, 3), dict(padding=[1, 1, 1, 1], strides=[2, 2]), c),
        "grouped": ((12, c // 4, 1, 3), dict(padding=[0, 1, 0, 1]), 4),
        "dilated": ((16, c, 3, 3), dict(padding=[2, 2, 2, 2], dilation=[2, 2]), 1)}[case]
    w = const(RNG, *shape)

    def body(bb, x):
        op = nn()
        y = bb.emit(op.nn.conv2d(x, w, groups=groups, **kw), "conv0")
        return bb.emit(op.nn.relu(op.add(y, const(RNG, 1, shape[0], 1, 1))))

    model, r = exported(graph([("x", (1, c, 13, 13))], body), tmp_path)
    codes = op_codes(model)
    assert want in codes and "ADD" not in codes and "RELU" not in codes  # bias and ReLU fused
    sub = model.Subgraphs(0)
    names = [sub.Tensors(i).Name().decode() for i in range(sub.TensorsLength())]
    assert "conv0.weight" in names and "conv0.bias" in names
    assert list(sub.Tensors(sub.Inputs(0)).ShapeAsNumpy()) == [1, 13, 13, c]  # NHWC input
    assert r["check"]["outputs"]["out0"]["max_rel"] <= 1e-4


def test_pools_concat_mean_gather_and_dense(tmp_path):
    from tvm import relax

    op = nn()
    w = const(RNG, 6, 4, 1, 1)
    fc = const(RNG, 14, 3)

    def body(bb, x):
        a = bb.emit(op.nn.max_pool2d(x, (2, 2), (2, 2), ceil_mode=True), "pool0")  # 13 → 7: TFLite SAME
        b = bb.emit(op.nn.avg_pool2d(x, (3, 3), (2, 2), padding=(1, 1, 1, 1)), "pool1")  # padding excluded: SAME
        c = bb.emit(op.minimum(op.maximum(bb.emit(op.nn.conv2d(a, w), "conv0"), relax.const(np.float32(0))),
                               relax.const(np.float32(6))))
        cat = bb.emit(op.concat([c, a, b], axis=1), "fire0")
        g = bb.emit(op.take(cat, relax.const(np.arange(13, -1, -1).astype(np.int32)), axis=1))
        m = bb.emit(op.reshape(op.mean(g, axis=[2, 3], keepdims=True), (1, 14)))
        return bb.emit(op.nn.softmax(op.add(bb.emit(op.matmul(m, fc), "fc"), const(RNG, 3)), axis=1))

    model, _ = exported(graph([("x", (1, 4, 13, 13))], body), tmp_path)
    codes = op_codes(model)
    assert "MAXIMUM" not in codes and "MINIMUM" not in codes  # max(·, 0) → min(·, 6): conv0's fused ReLU6
    for want in ("MAX_POOL_2D", "AVERAGE_POOL_2D", "CONCATENATION", "GATHER", "MEAN", "RESHAPE",
                 "FULLY_CONNECTED", "SOFTMAX"):
        assert want in codes, (want, codes)
    assert "TRANSPOSE" not in codes  # the reshape after the mean is of a 1×1 map: same bytes in NHWC
    meta = {model.Metadata(i).Name().decode() for i in range(model.MetadataLength())}
    assert {"sqcc.passes", "sqcc.preprocess", "sqcc.report", "sqcc.layout"} <= meta


def test_a_real_reshape_of_a_map_transposes_back_to_nchw(tmp_path):
    op = nn()
    mod = graph([("x", (1, 3, 4, 4))], lambda bb, x: bb.emit(op.reshape(op.nn.relu(
        bb.emit(op.nn.conv2d(x, const(RNG, 2, 3, 1, 1)))), (1, 32))))
    model, _ = exported(mod, tmp_path)
    assert "TRANSPOSE" in op_codes(model)


def test_unsupported_op_is_one_error(tmp_path):
    mod = graph([("x", (1, 4))], lambda bb, x: bb.emit(nn().cumsum(x, axis=1), "running"))
    with pytest.raises(SqccError, match=r"^cannot export to TFLite: binding 'running' \(relax.cumsum\)"):
        export_tflite(FakePackage(mod), tmp_path / "m.tflite")
    assert list(tmp_path.iterdir()) == []


def test_writer_enums_come_from_the_schema_package():
    assert _enum("BuiltinOperator", "CONV_2D") == tflite.BuiltinOperator.CONV_2D
    assert _enum("BuiltinOptions", "Conv2DOptions") == tflite.BuiltinOptions.Conv2DOptions


def test_several_outputs(tmp_path):
    from tvm import relax

    op = nn()
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((1, 3, 4, 4), "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            a = bb.emit(op.nn.relu(bb.emit(op.nn.conv2d(x, const(RNG, 2, 3, 1, 1)))))
            out = bb.emit_output(relax.Tuple([bb.emit(op.sigmoid(a)), a, a]))
        bb.emit_func_output(out)
    model, r = exported(bb.get(), tmp_path, output_names=["p", "f", "f2"])
    sub = model.Subgraphs(0)
    assert [sub.Tensors(sub.Outputs(i)).Name().decode() for i in range(3)] == ["p", "f", "f2"]
    assert list(sub.Tensors(sub.Outputs(1)).ShapeAsNumpy()) == [1, 2, 4, 4]  # the package's NCHW


def test_average_pool_padded_at_the_end_only(tmp_path):
    """poolhoist's 13 → 5 window-3 pool pads the end only, padding excluded: not TFLite's SAME, so a
    zero PAD, a VALID average, and each position rescaled by window size / in-bounds count."""
    mod = graph([("x", (1, 4, 13, 13))], lambda bb, x: bb.emit(nn().nn.avg_pool2d(
        x, (3, 3), (3, 3), padding=(0, 0, 2, 2), count_include_pad=False), "conv25__ph0"))
    model, r = exported(mod, tmp_path)
    assert op_codes(model)[:3] == ["PAD", "AVERAGE_POOL_2D", "MUL"] and r["check"]["outputs"]["out0"]["max_rel"] <= 1e-4
