"""Frontend and layer view: imports, shapes, totals checked against hand computation, and the errors."""
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper, shape_inference

from conftest import MODELS
from sqcc import SqccError
from sqcc.frontend import load, parse_input_shapes
from sqcc.layers import layers, totals


def hand_totals(path):
    """Params = every initializer element; MACs = Σ over Conv (N·O·H·W·C/g·Kh·Kw) and Gemm/MatMul,
    from onnx shape inference — computed without TVM, to check the Relax layer view."""
    m = shape_inference.infer_shapes(onnx.load(path))
    inits = {i.name: numpy_helper.to_array(i) for i in m.graph.initializer}
    shapes = {vi.name: [d.dim_value for d in vi.type.tensor_type.shape.dim]
              for vi in list(m.graph.value_info) + list(m.graph.output) + list(m.graph.input)}
    macs = 0
    shapes.update({k: list(v.shape) for k, v in inits.items()})
    for n in m.graph.node:
        if n.op_type == "Conv":
            w = inits[n.input[1]].shape
            out = shapes[n.output[0]]
            macs += int(np.prod(out)) * int(np.prod(w[1:]))
        elif n.op_type in ("Gemm", "MatMul"):
            w = shapes[n.input[1]]
            macs += int(np.prod(shapes[n.output[0]])) * (w[1] if n.op_type == "Gemm" and any(
                a.name == "transB" and a.i for a in n.attribute) else w[0])
    # weights and biases; scalars are Clip bounds, int64 initializers are shapes
    params = sum(int(a.size) for name, a in inits.items() if a.dtype == np.float32 and a.size > 1)
    return params, macs


@pytest.mark.parametrize("name", ["squeezenet1.1.onnx", "squeezenet1.0.onnx", "mobilenet_v1_0.5_160.onnx",
                                  "mnist-8.onnx"])
def test_totals_match_hand_computation(name):
    t = totals(layers(load(MODELS / name).mod))
    params, macs = hand_totals(MODELS / name)
    assert t["macs"] == macs
    assert t["params"] == params


def test_squeezenet11_totals():
    t = totals(layers(load("squeezenet1.1").mod))
    assert t["params"] == 1_235_496  # ≈1.235 M, as the paper's v1.1 table
    assert abs(t["macs"] / 1e9 - 0.349) < 0.002  # ≈0.35 GMAC
    assert t["conv_layers"] == 26


def test_layer_names_follow_onnx_nodes():
    ls = layers(load("squeezenet1.1").mod)
    convs = [l.name for l in ls if l.op == "relax.nn.conv2d"]
    src = [n.name for n in onnx.load(MODELS / "squeezenet1.1.onnx").graph.node if n.op_type == "Conv"]
    assert convs == src


def test_layer_graph_is_a_dag_with_fire_branches():
    import networkx as nx

    from sqcc.layers import layer_graph

    g = layer_graph(load("squeezenet1.1").mod)
    assert nx.is_directed_acyclic_graph(g)
    concats = [n for n in g if g.nodes[n]["layer"].op == "relax.concat"]
    assert len(concats) == 8  # fire2..fire9
    assert all(g.in_degree(c) == 2 for c in concats)


def test_input_shape_override_and_errors(tmp_path):
    assert parse_input_shapes("data:1,3,224,224") == {"data": (1, 3, 224, 224)}
    for bad in ["data", "data:1,x", "data:1,-3", ":1,2"]:
        with pytest.raises(SqccError, match="--input-shape"):
            parse_input_shapes(bad)
    with pytest.raises(SqccError, match="fixed to 3"):
        load("squeezenet1.1", {"data": (1, 4, 224, 224)})
    with pytest.raises(SqccError, match="model's inputs are data"):
        load("squeezenet1.1", {"image": (1, 3, 224, 224)})


def _dynamic_model(path):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])
    g = helper.make_graph([helper.make_node("Relu", ["x"], ["y"], name="r")], "dyn", [x], [y])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)]), path)
    return path


def test_dynamic_batch_defaults_to_one_and_can_be_overridden(tmp_path):
    p = _dynamic_model(tmp_path / "dyn.onnx")
    m = load(p)
    assert m.inputs[0].shape == (1, 4)
    assert m.notes == ["input 'x': dynamic batch dimension 'N' set to 1 (--input-shape x:N,... for "
                       "another batch)"]
    m = load(p, "x:2,4")
    assert m.inputs[0].shape == (2, 4)


def test_unsupported_ops_listed_in_one_message(tmp_path):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    nodes = [helper.make_node("Relu", ["x"], ["a"], name="ok"),
             helper.make_node("MyOp", ["a"], ["b"], name="custom1", domain="my.domain"),
             helper.make_node("MyOp", ["b"], ["y"], name="custom2", domain="my.domain")]
    g = helper.make_graph(nodes, "g", [x], [y])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13), helper.make_opsetid("my.domain", 1)])
    p = tmp_path / "u.onnx"
    p.write_bytes(m.SerializeToString())
    with pytest.raises(SqccError, match=r"unsupported operator\(s\) MyOp in 2 node\(s\): "
                                        r"custom1 \(MyOp\), custom2 \(MyOp\)"):
        load(p)


def test_bad_files(tmp_path):
    with pytest.raises(SqccError, match="no such file, and not a known model name"):
        load(tmp_path / "missing.onnx")
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"this is not a model at all" * 10)
    with pytest.raises(SqccError, match="not a valid ONNX model"):
        load(junk)
    trunc = tmp_path / "trunc.onnx"
    trunc.write_bytes((MODELS / "squeezenet1.1.onnx").read_bytes()[:100_000])
    with pytest.raises(SqccError, match="trunc.onnx: not a valid ONNX model"):
        load(trunc)
    empty = tmp_path / "empty.onnx"
    empty.write_bytes(b"")
    with pytest.raises(SqccError, match="file is empty"):
        load(empty)
    with pytest.raises(SqccError, match="is a directory"):
        load(tmp_path)


def test_modelproto_input():
    m = load(onnx.load(MODELS / "mnist-8.onnx"))
    assert m.format == "onnx" and m.inputs[0].shape == (1, 1, 28, 28)
