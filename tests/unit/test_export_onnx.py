"""ONNX export of tiny in-memory Relax graphs: each op the exporter knows, checked by running the file
in onnxruntime against TVM's build of the same graph; the errors a user can cause, one line each.

The packages here are stand-ins (:class:`FakePackage`): a Relax module built with TVM, the manifest
fields export reads, and ``graph`` as ``tvm.ir.save_json`` writes it -- what a real host package
holds, without compiling a model.
"""
import numpy as np
import onnx
import pytest

from sqcc import SqccError
from sqcc.export import export_onnx
from sqcc.model import TensorSpec


def _spec(name, ty):
    return TensorSpec(name, tuple(int(d) for d in ty.shape), str(ty.dtype))


class FakePackage:
    """A host package's face, for a Relax module: run() is TVM's build of the module itself."""

    def __init__(self, mod, family="host", report=None, graph=True, output_names=None):
        import tvm
        from tvm import relax

        func = mod["main"]
        body = func.body.body
        bound = {b.var: b.value for blk in func.body.blocks for b in blk.bindings}
        body = bound.get(body, body) if isinstance(bound.get(body), relax.Tuple) else body
        rets = list(body.fields) if isinstance(body, relax.Tuple) else [body]
        self.inputs = [_spec(p.name, p.ty) for p in func.params]
        self.outputs = [_spec(n, r.ty) for n, r in zip(output_names or [f"out{k}" for k in range(len(rets))], rets)]
        self.manifest = {"model": {"name": "tiny", "format": "onnx", "sha256": "0" * 64},
                         "target": {"name": family, "family": family}, "passes": [{"spec": "test"}],
                         "inputs": [s.to_json() for s in self.inputs],
                         "outputs": [s.to_json() for s in self.outputs],
                         "preprocess": None, "versions": {"sqcc": "test"}}
        self.report = report or {}
        self.graph = tvm.ir.save_json(mod).encode() if graph else None
        self.path = None
        self.preprocess = None
        self.target = family
        self._mod = mod
        self._vm = None

    def run(self, feed):
        import tvm
        from tvm import relax

        if self._vm is None:
            self._vm = relax.VirtualMachine(relax.build(self._mod, "llvm"), tvm.cpu())
        arrs = [feed[s.name] if isinstance(feed, dict) else feed for s in self.inputs]
        res = self._vm["main"](*[tvm.runtime.tensor(np.asarray(a), tvm.cpu()) for a in arrs])
        outs = [r.numpy() for r in res] if not hasattr(res, "numpy") else [res.numpy()]
        return outs if len(outs) > 1 else outs[0]


def graph(inputs, body):
    """A Relax module: ``inputs`` [(name, shape)], ``body(bb, *vars)`` emits and returns the result."""
    from tvm import relax

    bb = relax.BlockBuilder()
    params = [relax.Var(n, relax.TensorType(s, "float32")) for n, s in inputs]
    with bb.function("main", params):
        with bb.dataflow():
            out = bb.emit_output(body(bb, *params))
        bb.emit_func_output(out)
    return bb.get()


def const(rng, *shape):
    from tvm import relax

    return relax.const(rng.standard_normal(shape).astype(np.float32))


def nn():
    from tvm import relax

    return relax.op


def exported(mod, tmp_path, name="m.onnx", **kw):
    """Export ``mod`` through a FakePackage (checked in onnxruntime by export_onnx itself); the model."""
    pkg = FakePackage(mod, **kw)
    r = export_onnx(pkg, tmp_path / name)
    model = onnx.load(str(tmp_path / name))
    onnx.checker.check_model(model, full_check=True)
    return model, r


def ops_of(model):
    return [n.op_type for n in model.graph.node]


RNG = np.random.default_rng(0)


def _conv_bias_relu(bb, x, w, groups=1, name="conv0", **kw):
    op = nn()
    y = bb.emit(op.nn.conv2d(x, w, groups=groups, **kw), name)
    b = const(RNG, 1, int(w.ty.shape[0]), 1, 1)
    return bb.emit(op.nn.relu(bb.emit(op.add(y, b))))


@pytest.mark.parametrize("case", ["plain", "strided_padded_dilated", "depthwise_m2", "grouped", "kh1", "1kw"])
def test_conv_variants_match_and_keep_layer_names(case, tmp_path):
    c = 8
    w, kw = {"plain": ((16, c, 3, 3), {}),
             "strided_padded_dilated": ((16, c, 3, 3), dict(strides=[2, 1], padding=[1, 2, 1, 0], dilation=[2, 1])),
             "depthwise_m2": ((2 * c, 1, 3, 3), dict(padding=[1, 1, 1, 1])),
             "grouped": ((12, c // 4, 1, 1), {}), "kh1": ((16, c, 3, 1), dict(padding=[1, 0, 1, 0])),
             "1kw": ((16, c, 1, 3), dict(padding=[0, 1, 0, 1]))}[case]
    groups = {"depthwise_m2": c, "grouped": 4}.get(case, 1)
    weight = const(RNG, *w)
    mod = graph([("x", (1, c, 12, 12))], lambda bb, x: _conv_bias_relu(bb, x, weight, groups, **kw))
    model, r = exported(mod, tmp_path)
    assert ops_of(model) == ["Conv", "Relu"]  # the bias add is Conv's B
    conv = model.graph.node[0]
    assert list(conv.input)[1:] == ["conv0.weight", "conv0.bias"] and conv.name == "conv0"
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in conv.attribute}
    assert attrs["group"] == groups and attrs["kernel_shape"] == list(w[2:])
    assert r["check"]["outputs"]["out0"]["max_rel"] <= 1e-4
    assert model.opset_import[0].version >= 17


def test_dense_pools_and_shape_ops(tmp_path):
    """Gemm (+bias), max/avg pooling (ceil mode, counted padding), the global mean, concat, a channel
    gather and a shuffle (reshape-transpose-reshape), slice, softmax: one graph, one check."""
    op = nn()
    from tvm import relax

    w = const(RNG, 8, 4, 3, 3)
    fc = const(RNG, 24, 10)

    def body(bb, x):
        a = bb.emit(op.nn.max_pool2d(x, (3, 3), (2, 2), ceil_mode=True), "pool0")
        b = bb.emit(op.nn.avg_pool2d(x, (3, 3), (2, 2), padding=(1, 1, 1, 1), count_include_pad=True), "pool1")
        c = bb.emit(op.nn.conv2d(a, w, padding=[1, 1, 1, 1]), "conv0")
        cat = bb.emit(op.concat([c, a, b], axis=1), "fire0")  # 8 + 4 + 4 channels
        g = bb.emit(op.take(cat, relax.const(np.asarray([3, 1, 0, 2] + list(range(4, 16)), np.int32)), axis=1))
        s = bb.emit(op.reshape(op.permute_dims(op.reshape(g, (1, 2, 8, 7, 7)), [0, 2, 1, 3, 4]), (1, 16, 7, 7)))
        s = bb.emit(op.strided_slice(s, axes=[2], begin=[0], end=[7], strides=[1]))
        m = bb.emit(op.mean(op.nn.relu(s), axis=[2, 3], keepdims=True))
        flat = bb.emit(op.reshape(m, (1, 16)))
        both = bb.emit(op.concat([flat, op.sigmoid(flat)], axis=1))
        y = bb.emit(op.matmul(op.strided_slice(both, [1], [0], [24]), fc), "fc")
        return bb.emit(op.nn.softmax(op.add(y, const(RNG, 10)), axis=-1))

    model, _ = exported(graph([("x", (1, 4, 14, 14))], body), tmp_path)
    ops = ops_of(model)
    for want in ("MaxPool", "AveragePool", "Conv", "Concat", "Gather", "Transpose", "Reshape", "Slice",
                 "GlobalAveragePool", "Sigmoid", "Gemm", "Softmax"):
        assert want in ops, (want, ops)
    inits = {i.name for i in model.graph.initializer}
    assert {"conv0.weight", "fc.weight", "fc.bias"} <= inits


def test_clip_forms_and_activations(tmp_path):
    """relax.clip, relu6, max(min(·)) with scalars (what ONNX Clip imports as) become Clip; leaky
    ReLU, tanh, GELU and SiLU their ONNX forms."""
    op = nn()
    from tvm import relax

    def body(bb, x):
        a = bb.emit(op.clip(x, -1.0, 2.0))
        b = bb.emit(op.maximum(op.minimum(a, relax.const(np.float32(1.5))), relax.const(np.float32(-0.5))))
        c = bb.emit(op.nn.leakyrelu(op.tanh(b), 0.1))
        return bb.emit(op.add(op.nn.gelu(c), op.nn.silu(x)))

    model, _ = exported(graph([("x", (1, 3, 5, 5))], body), tmp_path)
    assert ops_of(model).count("Clip") == 2 and "Min" not in ops_of(model) and "LeakyRelu" in ops_of(model)


def test_metadata_and_interface(tmp_path):
    mod = graph([("x", (1, 2, 4, 4))], lambda bb, x: bb.emit(nn().nn.relu(x)))
    report = {"before": {"totals": {"layers": 1, "params": 0, "macs": 0, "weight_bytes": 0}},
              "passes": [{"layer": "conv0", "technique": "lowrank", "applied": True, "detail": "rank 3"}]}
    model, _ = exported(mod, tmp_path, report=report, output_names=["scores"])
    props = {p.key: p.value for p in model.metadata_props}
    assert props["sqcc.passes"] == '["test"]' and '"rank 3"' in props["sqcc.report"]
    assert {"sqcc.preprocess", "sqcc.model", "sqcc.version", "sqcc.target"} <= set(props)
    assert [i.name for i in model.graph.input] == ["x"] and [o.name for o in model.graph.output] == ["scores"]
    assert model.producer_name == "sqcc"


# ----------------------------------------------------------------------------------------- errors
def test_unsupported_op_names_the_binding_and_writes_nothing(tmp_path):
    mod = graph([("x", (1, 4))], lambda bb, x: bb.emit(nn().cumsum(x, axis=1), "running"))
    with pytest.raises(SqccError, match=r"^cannot export to ONNX: binding 'running' \(relax.cumsum\): no ONNX "):
        export_onnx(FakePackage(mod), tmp_path / "m.onnx")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("family, message", [
    ("micro", r"a micro build .* has no exportable graph"),
    ("cuda", r"built for cuda, which this host cannot run, so the exported file could not be checked"),
    ("arm_cpu", r"built for arm_cpu, which this host cannot run")])
def test_packages_for_other_targets_are_refused(family, message, tmp_path):
    mod = graph([("x", (1, 4))], lambda bb, x: bb.emit(nn().nn.relu(x)))
    with pytest.raises(SqccError, match=message):
        export_onnx(FakePackage(mod, family=family), tmp_path / "m.onnx")
    assert list(tmp_path.iterdir()) == []


def test_a_package_without_a_graph_says_recompile(tmp_path):
    mod = graph([("x", (1, 4))], lambda bb, x: bb.emit(nn().nn.relu(x)))
    with pytest.raises(SqccError, match=r"no rewritten graph .*; re-compile with this sqcc to export$"):
        export_onnx(FakePackage(mod, graph=False), tmp_path / "m.onnx")


def test_a_directory_as_output_is_refused_before_any_work(tmp_path):
    mod = graph([("x", (1, 4))], lambda bb, x: bb.emit(nn().nn.relu(x)))
    (tmp_path / "out.onnx").mkdir()
    with pytest.raises(SqccError, match=r"--onnx .*out.onnx: is a directory; give a file name"):
        export_onnx(FakePackage(mod, graph=False), tmp_path / "out.onnx")  # before the graph is read


def test_a_file_that_does_not_match_the_package_is_not_written(tmp_path):
    mod = graph([("x", (1, 4))], lambda bb, x: bb.emit(nn().nn.relu(x)))
    pkg = FakePackage(mod)
    real = pkg.run
    pkg.run = lambda feed: real(feed) * 1.01  # a package whose build computes something else
    (tmp_path / "m.onnx").write_bytes(b"previous")
    with pytest.raises(SqccError, match=r"does not match the package: output 'out0' differs by .* nothing written"):
        export_onnx(pkg, tmp_path / "m.onnx")
    assert (tmp_path / "m.onnx").read_bytes() == b"previous"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]


def test_damaged_graph_member_is_one_error(tmp_path):
    mod = graph([("x", (1, 4))], lambda bb, x: bb.emit(nn().nn.relu(x)))
    pkg = FakePackage(mod)
    pkg.graph = b'{"root": 1, "nodes": [{"type_key": "no.such.Type"}]}'
    with pytest.raises(SqccError, match=r"graph.json is not a Relax module TVM can read .*re-compile"):
        export_onnx(pkg, tmp_path / "m.onnx")


# -------------------------------------------------------------------------------------------- QDQ
def _int8_tiny(weight_bits=8):
    """conv0 → ReLU → max-pool (on uint8) → [conv1, conv2] → ReLU → concat → mean → fc (float out),
    quantised by sqcc's int8 pass on calibration activations; (module, report, feeds)."""
    from sqcc.calibrate import collect_activations
    from sqcc.passes.int8 import quantize_module

    op = nn()
    w0, w1, w2, fc = const(RNG, 8, 3, 3, 3), const(RNG, 6, 8, 1, 1), const(RNG, 6, 8, 3, 3), const(RNG, 12, 5)

    def body(bb, x):
        def layer(x, w, name, **kw):
            y = bb.emit(op.nn.conv2d(x, w, **kw), name)
            return bb.emit(op.nn.relu(op.add(y, const(RNG, 1, int(w.ty.shape[0]), 1, 1))))

        a = layer(x, w0, "conv0", padding=[1, 1, 1, 1])
        p = bb.emit(op.nn.max_pool2d(a, (2, 2), (2, 2)), "pool0")
        b, c = layer(p, w1, "conv1"), layer(p, w2, "conv2", padding=[1, 1, 1, 1])
        cat = bb.emit(op.concat([b, c], axis=1), "fire0")
        m = bb.emit(op.reshape(op.mean(cat, axis=[2, 3], keepdims=True), (1, 12)))
        return bb.emit(op.add(bb.emit(op.matmul(m, fc), "fc"), const(RNG, 5)))

    mod = graph([("x", (1, 3, 16, 16))], body)
    feeds = [{"x": np.random.default_rng(s).standard_normal((1, 3, 16, 16)).astype(np.float32)} for s in range(4)]
    acts = collect_activations(mod, feeds)
    records = []
    qmod = quantize_module(mod, acts, method="minmax", records=records, weight_bits=weight_bits)
    report = {"passes": [r.to_json() for r in records]}
    return qmod, report, feeds


def test_int8_graph_becomes_qdq_with_per_channel_weights(tmp_path):
    qmod, report, feeds = _int8_tiny()
    pkg = FakePackage(qmod, report=report)
    r = export_onnx(pkg, tmp_path / "q.onnx", feeds=feeds)
    model = onnx.load(str(tmp_path / "q.onnx"))
    ops = ops_of(model)
    assert r["form"] == "int8 QDQ" and "QuantizeLinear" in ops and "DequantizeLinear" in ops
    assert "Cast" not in ops and "Round" not in ops  # no integer arithmetic left spelled out
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in model.graph.initializer}
    assert inits["conv0.weight_quantized"].dtype == np.int8 and inits["conv0.weight_scale"].shape == (8,)
    assert inits["fc.weight_quantized"].dtype == np.int8
    from sqcc.export.qdq import recorded_scales

    scales = recorded_scales(report)
    assert float(inits["conv0.scale"]) == pytest.approx(scales["conv0"])  # the calibrated output scale
    assert ops[:2] == ["Clip", "QuantizeLinear"]  # the symmetric input stops at -127, not -128
    props = {p.key: p.value for p in model.metadata_props}
    assert props["sqcc.form"] == "int8 QDQ" and "calibrated" in props["sqcc.qdq"]
    # within one step of the last int8 activations on every feed, the limit the export checked
    step = float(r["check"]["outputs"]["out0"]["limit"].split()[1])
    assert r["check"]["outputs"]["out0"]["max_abs"] <= step


def test_float_tflite_refuses_int8(tmp_path):
    from sqcc.export import export_tflite

    qmod, report, _ = _int8_tiny()
    with pytest.raises(SqccError, match="sqcc writes float TFLite only .*--onnx"):
        export_tflite(FakePackage(qmod, report=report), tmp_path / "q.tflite")
    assert list(tmp_path.iterdir()) == []


def test_several_outputs_keep_their_names_and_order(tmp_path):
    from tvm import relax

    op = nn()

    def build():
        bb = relax.BlockBuilder()
        x = relax.Var("x", relax.TensorType((1, 3, 4, 4), "float32"))
        with bb.function("main", [x]):
            with bb.dataflow():
                a = bb.emit(op.nn.relu(x))
                b = bb.emit(op.sigmoid(a))
                out = bb.emit_output(relax.Tuple([b, a, a]))  # a result read twice, and by b
            bb.emit_func_output(out)
        return bb.get()

    pkg = FakePackage(build(), output_names=["probs", "feat", "feat_again"])
    export_onnx(pkg, tmp_path / "m.onnx")
    model = onnx.load(str(tmp_path / "m.onnx"))
    assert [o.name for o in model.graph.output] == ["probs", "feat", "feat_again"]
