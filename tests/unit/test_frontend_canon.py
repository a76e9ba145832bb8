"""Import-side fixes on tiny in-memory ONNX graphs (no model files): Dropout and Sum canonicalised,
a dynamic batch set to 1 with a note, numerics checks per output, the --preprocess parser."""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from sqcc import frontend
from sqcc.errors import SqccError, one_line
from sqcc.fidelity import is_class_scores, numerics_misses
from sqcc.preprocess import parse_preprocess


def _model(nodes, inputs, outputs, inits=(), opset=13):
    g = helper.make_graph(nodes, "t", inputs, outputs, initializer=list(inits))
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])


def _vi(name, shape):
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def test_dropout_and_sum_are_rewritten_and_keep_the_outputs():
    nodes = [helper.make_node("Dropout", ["x"], ["d", "mask"], name="drop"),
             helper.make_node("Relu", ["x"], ["r"], name="relu"),
             helper.make_node("Sum", ["d", "r", "x"], ["y"], name="sum3")]
    m = _model(nodes, [_vi("x", [1, 4])], [_vi("y", [1, 4])])
    out, notes = frontend.canonicalize_onnx(m)
    ops = [n.op_type for n in out.graph.node]
    assert ops == ["Identity", "Relu", "Add", "Add"]
    assert any("Dropout" in n for n in notes) and any("Sum" in n for n in notes)
    x = np.random.default_rng(0).standard_normal((1, 4)).astype(np.float32)
    want = ort.InferenceSession(m.SerializeToString()).run(None, {"x": x})[0]
    got = ort.InferenceSession(out.SerializeToString()).run(None, {"x": x})[0]
    np.testing.assert_allclose(got, want, rtol=1e-6)


def test_dropout_whose_mask_is_used_is_kept():
    nodes = [helper.make_node("Dropout", ["x"], ["d", "mask"], name="drop"),
             helper.make_node("Cast", ["mask"], ["y"], to=TensorProto.FLOAT)]
    m = _model(nodes, [_vi("x", [1, 4])], [_vi("y", [1, 4])])
    out, notes = frontend.canonicalize_onnx(m)
    assert [n.op_type for n in out.graph.node] == ["Dropout", "Cast"] and not notes


def test_untouched_graph_is_returned_as_is():
    m = _model([helper.make_node("Relu", ["x"], ["y"])], [_vi("x", [1, 4])], [_vi("y", [1, 4])])
    out, notes = frontend.canonicalize_onnx(m)
    assert out is m and notes == []


def test_dynamic_batch_becomes_one_with_a_note_and_imports():
    w = numpy_helper.from_array(np.ones((2, 3, 1, 1), np.float32), "w")
    m = _model([helper.make_node("Conv", ["x", "w"], ["y"], name="conv")],
               [_vi("x", ["batch", 3, 4, 4])], [_vi("y", ["batch", 2, 4, 4])], [w])
    model = frontend.load(m)
    assert model.inputs[0].shape == (1, 3, 4, 4)
    assert any("dynamic batch dimension 'batch' set to 1" in n for n in model.notes)


def test_dynamic_spatial_dims_stay_an_error_naming_the_flag():
    m = _model([helper.make_node("Relu", ["x"], ["y"])], [_vi("x", ["n", 3, "h", 4])],
               [_vi("y", ["n", 3, "h", 4])])
    with pytest.raises(SqccError, match=r"axis 2 \('h'\).*--input-shape x:1,3,N,4"):
        frontend.load(m)


def test_batch_one_leaves_static_and_rank_one_inputs():
    notes = []
    assert frontend.batch_one("x", [1, 3], notes) == [1, 3]
    assert frontend.batch_one("x", ["n"], notes) == ["n"]
    assert notes == []


def test_numerics_misses_names_each_output_past_its_tolerance():
    fid = {"outputs": [
        {"name": "boxes", "dtype": "float32", "max_rel": 2e-4, "max_abs": 0.1},
        {"name": "scores", "dtype": "float32", "max_rel": 5e-5, "max_abs": 0.1},
        {"name": "q", "dtype": "int8", "max_rel": 0.01, "max_abs": 1.0},
        {"name": "q2", "dtype": "int8", "max_rel": 0.02, "max_abs": 2.0}]}
    misses = numerics_misses(fid)
    assert len(misses) == 2 and "'boxes'" in misses[0] and "'q2'" in misses[1]


def test_class_scores_are_vectors_only():
    assert is_class_scores([1, 1000]) and is_class_scores([10])
    assert not is_class_scores([1, 896, 16]) and not is_class_scores([1, 1]) and not is_class_scores([2, 10])


def test_one_line_is_the_last_line_or_the_type():
    assert one_line(RuntimeError("a\nb\n  c  \n")) == "c"
    assert one_line(ValueError("")) == "ValueError"


def test_parse_preprocess():
    p = parse_preprocess("size=96,resize=110,mean=0.5,0.4,0.3,std=0.2,0.2,0.2,layout=nhwc")
    assert p.size == (96, 96) and p.resize == 110 and p.mean == (0.5, 0.4, 0.3)
    assert p.layout == "NHWC" and p.mode == "torch"
    assert parse_preprocess("size=64,32,mode=tf").size == (64, 32)
    with pytest.raises(SqccError, match="unknown key 'colour'"):
        parse_preprocess("colour=rgb")
    with pytest.raises(SqccError, match="mean takes 1 or 3 values"):
        parse_preprocess("mean=1,2")
    with pytest.raises(SqccError, match="has no key"):
        parse_preprocess("224")


def test_importer_failure_names_the_node():
    # Slice with a negative 'steps' of zero: TVM's importer rejects it; ORT does too, so only the
    # message matters here
    x = _vi("x", [1, 4])
    starts = numpy_helper.from_array(np.array([0], np.int64), "s")
    ends = numpy_helper.from_array(np.array([2], np.int64), "e")
    axes = numpy_helper.from_array(np.array([1], np.int64), "a")
    steps = numpy_helper.from_array(np.array([0], np.int64), "st")
    m = _model([helper.make_node("Slice", ["x", "s", "e", "a", "st"], ["y"], name="bad_slice")], [x],
               [_vi("y", [1, 2])], [starts, ends, axes, steps])
    onnx.checker.check_model(m)
    try:
        frontend.load(m)
    except SqccError as e:
        assert "importer failed at node 'bad_slice' (Slice)" in str(e)
    # (if this TVM imports it, the node naming is still exercised by the zoo's test_operator_index)
