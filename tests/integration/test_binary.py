"""binary lowering: bit-packed XNOR / BWN kernels exact on ±1 data, 32× smaller weights, errors."""
import numpy as np
import pytest


def _conv_model(w, shape, groups=1, padding=(1, 1, 1, 1), name="convb"):
    from tvm import relax

    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType(shape, "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            y = bb.emit(relax.op.nn.conv2d(x, relax.const(w), padding=list(padding), groups=groups), name)
            o = bb.emit_output(relax.op.nn.relu(y))
        bb.emit_func_output(o)
    return bb.get()


def _numpy_conv(x, w, pad=1):
    n, c, h, ww = x.shape
    o, _, kh, kw = w.shape
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad))).astype(np.float64)
    out = np.zeros((n, o, h, ww))
    for dy in range(kh):
        for dx in range(kw):
            out += np.einsum("nchw,oc->nohw", xp[:, :, dy:dy + h, dx:dx + ww], w[:, :, dy, dx])
    return out


def _run(spec, mod):
    """Apply a pass as the compile pipeline does (it unwraps TVM's wrapping of SqccError)."""
    from sqcc import passes
    from sqcc.pipeline import run_passes

    return run_passes(mod, [passes.create(spec)], [spec])


@pytest.fixture(scope="module")
def pm1():
    rng = np.random.default_rng(0)
    w = np.where(rng.random((256, 256, 3, 3)) > 0.5, 1.0, -1.0).astype(np.float32)
    x = np.where(rng.random((1, 256, 28, 28)) > 0.5, 1.0, -1.0).astype(np.float32)
    return w, x, _numpy_conv(x, w)


@pytest.mark.parametrize("mode", ["xnor", "weights"])
def test_binary_conv_exact_on_pm1(pm1, mode):
    import tvm
    from tvm import relax

    from sqcc.build import build
    from sqcc.passes import PassContext
    from sqcc.passes.binary import Binary, packed_weight_bytes

    w, x, ref = pm1
    ctx = PassContext()
    q = Binary(context=ctx, mode=mode, skip=["none"])(_conv_model(w, x.shape))
    assert packed_weight_bytes(q) * 32 == w.nbytes  # 32× smaller
    text = q.script(show_meta=False)
    assert "R.nn.conv2d" not in text and "popcount" in text if mode == "xnor" else True
    vm = relax.VirtualMachine(build(q, "host"), tvm.cpu())
    y = vm["main"](tvm.runtime.tensor(x)).numpy()
    np.testing.assert_array_equal(y, np.maximum(ref, 0).astype(np.float32))
    assert ctx.records[0].applied and ctx.records[0].weight_error == pytest.approx(0.0, abs=1e-6)


def test_binary_skip_and_groups_errors():
    from sqcc.errors import SqccError

    w = np.ones((8, 1, 3, 3), np.float32)
    mod = _conv_model(w, (1, 8, 8, 8), groups=8, name="dw")
    with pytest.raises(SqccError, match="dw is a grouped conv.*skip=dw"):
        _run("binary:mode=xnor,skip=none", mod)
    with pytest.raises(SqccError, match="unknown layer 'nope'"):
        _run("binary:skip=nope", mod)
    # the default skip=first,last leaves a one-conv model alone
    out = _run("binary:mode=xnor", mod)
    assert "R.nn.conv2d" in out.script(show_meta=False)
