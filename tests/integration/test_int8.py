"""int8 lowering: accuracy on real images, integer arithmetic in the lowered kernels, errors."""
from pathlib import Path

import numpy as np
import pytest

SHARED = Path(__file__).resolve().parents[2].parent / "shared"
IMAGES = SHARED / "data" / "imagenet-sample"


def _run(spec, mod):
    """Apply a pass as the compile pipeline does (it unwraps TVM's wrapping of SqccError)."""
    from sqcc import passes
    from sqcc.pipeline import run_passes

    return run_passes(mod, [passes.create(spec)], [spec])


@pytest.fixture(scope="module")
def squeeze():
    import sqcc.frontend as F
    from sqcc.calibrate import calibration_feeds, collect_activations
    from sqcc.passes.int8 import layer_names, quantize_module

    m = F.load("squeezenet1.1")
    feeds = calibration_feeds(m, IMAGES, limit=4)
    acts = collect_activations(m.mod, feeds, layers=layer_names(m.mod))
    records = []
    q = quantize_module(m.mod, acts, "entropy", records=records)
    return m, q, acts, records


def test_int8_agreement_with_fp32(squeeze):
    import onnxruntime as ort
    import tvm
    from tvm import relax

    from sqcc.build import build
    from sqcc.preprocess import list_images, load_image

    m, q, _, records = squeeze
    assert sum(r.applied for r in records) == 26
    vm = relax.VirtualMachine(build(q, "host"), tvm.cpu())
    sess = ort.InferenceSession(m.source, providers=["CPUExecutionProvider"])
    files = list_images(IMAGES)[1::10]  # 20 images, none of them calibration images
    agree = 0
    for f in files:
        x = load_image(f, m.preprocess)
        ours = vm["main"](tvm.runtime.tensor(x)).numpy()
        ref = sess.run(None, {"data": x})[0]
        agree += int(ours.argmax() == ref.argmax())
    assert agree >= 17, f"int8 top-1 agreement {agree}/{len(files)}"


def test_int8_kernels_are_integer(squeeze):
    """The lowered convs read 8-bit activations and int8 weights and accumulate in int32."""
    from sqcc.build import as_target, lower_to_tir
    from sqcc.schedules import DefaultSchedules
    from sqcc.schedules.int8 import int8_isa, is_int8_function
    from tvm import tirx

    _, q, _, _ = squeeze
    target = as_target("host")
    low = lower_to_tir(q, target)
    prims = {gv.name_hint: f for gv, f in low.functions_items() if isinstance(f, tirx.PrimFunc)}
    conv = [n for n in prims if "conv2d" in n]
    int8 = [n for n in conv if is_int8_function(prims[n])]
    assert len(int8) >= 10 and len(int8) == len(conv), (conv, int8)  # shared by same-shape layers
    # dtypes of one kernel's buffers, as printed in the TIR
    text = prims[int8[0]].script()
    assert '"uint8"' in text and '"int8"' in text and '"int32"' in text
    with target:
        ds = DefaultSchedules(target)
        ds(low)
    isa = int8_isa(target)
    if isa in ("vnni", "avx2", "avx512"):  # 8-bit weights: AVX-512 without VNNI runs vpmaddwd (avx2)
        rule = "int8-vnni" if isa == "vnni" else "int8-avx2"
        assert sum(r == rule for r in ds.applied.values()) >= 10, ds.applied


def _int8_conv_module(adt, c=16, o=32, hw=13, k=3, pad=1, wmax=128):
    import tvm  # noqa: F401
    from tvm import relax

    wt = np.random.default_rng(0).integers(-wmax, wmax, (o, c, k, k)).astype("int8")
    if wmax < 128:  # the extreme weights, at the positions the extreme activations meet
        wt[:, :, 0, 0] = np.where(np.arange(o)[:, None] % 2, wmax, -wmax)
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((1, c, hw, hw), adt))
    with bb.function("main", [x]):
        with bb.dataflow():
            y = bb.emit(relax.op.nn.conv2d(x, relax.const(wt), padding=pad, out_dtype="int32"))
            out = bb.emit_output(y)
        bb.emit_func_output(out)
    return bb.get(), wt


@pytest.mark.parametrize("adt,wmax,mcpu,rule,instr", [
    ("uint8", 128, "haswell", "int8-avx2", "vpmaddwd"),  # full-range weights: the int16 route
    ("int8", 128, "haswell", "int8-avx2", "vpmaddwd"),
    ("uint8", 65, "haswell", "int8-avx2", "vpmaddwd"),  # |w| = 65 could saturate vpmaddubsw: not used
    ("uint8", 64, "haswell", "int8-avx2_ubsw", "vpmaddubsw"),  # weight_bits=7: u8·s8 pairs, exact
    ("uint8", 64, "skylake-avx512", "int8-avx512_ubsw", "vpmaddubsw"),  # AVX-512BW, no VNNI: zmm
])
def test_x86_int8_kernel_is_exact(adt, wmax, mcpu, rule, instr):
    """An x86 CPU without VNNI gets vpmaddubsw when every weight has |w| ≤ 64 (2·255·64 ≤ 32767, no
    int16 saturation), else the vpmaddwd kernel; all bit-exact on extreme 8-bit data. haswell code
    uses 256-bit registers only. Built always; run wherever this CPU can execute it (AVX2: every x86
    CI machine; AVX-512BW: some), otherwise the generated assembly is still checked."""
    import tvm
    from tvm import relax

    from sqcc.build import build, schedule
    from sqcc.schedules import RULE_ATTR
    from sqcc.targets.host import detect

    mod, wt = _int8_conv_module(adt, wmax=wmax)
    target = tvm.target.Target({"kind": "llvm", "mcpu": mcpu, "num-cores": 2})
    rules = [str(f.attrs[RULE_ATTR]) for _, f in schedule(mod, target).functions_items()
             if isinstance(f, tvm.tirx.PrimFunc) and f.attrs is not None and RULE_ATTR in f.attrs]
    assert rule in rules, rules
    ex = build(mod, target)

    def modules(m):
        yield m
        for i in m.imports:
            yield from modules(i)

    asm = "".join(m.inspect_source("asm") for m in modules(ex.mod) if m.kind == "llvm")
    assert instr in asm and (("zmm" in asm) == (mcpu == "skylake-avx512"))
    needs = {"avx2", "fma"} | ({"avx512f", "avx512bw"} if mcpu == "skylake-avx512" else set())
    if not needs <= set(detect().features):
        return  # this CPU cannot run it (e.g. AVX-512 code on an AVX2-only CI machine)
    lo, hi = (0, 256) if adt == "uint8" else (-128, 128)
    x = np.random.default_rng(1).integers(lo, hi, (1, 16, 13, 13)).astype(adt)
    x[0, :, 0, 0] = hi - 1  # the extreme products: 255·(−128) pairs must not saturate
    y = relax.VirtualMachine(ex, tvm.cpu())["main"](tvm.runtime.tensor(x)).numpy()
    xp = np.pad(x.astype(np.int64), ((0, 0), (0, 0), (1, 1), (1, 1)))
    ref = sum(np.einsum("nchw,oc->nohw", xp[:, :, i:i + 13, j:j + 13], wt[:, :, i, j].astype(np.int64))
              for i in range(3) for j in range(3))
    np.testing.assert_array_equal(y, ref)


def test_avx2_gets_7bit_weights_and_vpmaddubsw(squeeze):
    """weight_bits=auto resolves to 7 for an AVX2-only target; the 7-bit SqueezeNet then runs every
    fitting conv on the vpmaddubsw kernel (haswell build, runs on any AVX2 machine) and still agrees
    with fp32 on held-out images."""
    import onnxruntime as ort
    import tvm
    from tvm import relax

    from sqcc import passes
    from sqcc.build import build, schedule
    from sqcc.passes.int8 import quantize_module
    from sqcc.preprocess import list_images, load_image
    from sqcc.schedules import RULE_ATTR

    for isa, bits in (("avx2", 7), ("avx512", 7), ("vnni", 8), ("i8mm", 8), (None, 8)):
        ctx = passes.PassContext()
        if isa:
            ctx.extra["int8_isa"] = isa
        assert passes.create("int8", ctx).weight_bits == bits, isa
    assert passes.create("int8:weight_bits=8", passes.PassContext(extra={"int8_isa": "avx2"})).weight_bits == 8

    m, _, acts, _ = squeeze
    records = []
    q = quantize_module(m.mod, acts, "entropy", records=records, weight_bits=7)
    assert all("|w| ≤ 64" in r.detail for r in records if r.applied)
    target = tvm.target.Target({"kind": "llvm", "mcpu": "haswell", "num-cores": 2})
    rules = [str(f.attrs[RULE_ATTR]) for _, f in schedule(q, target).functions_items()
             if isinstance(f, tvm.tirx.PrimFunc) and f.attrs is not None and RULE_ATTR in f.attrs]
    assert rules.count("int8-avx2_ubsw") >= 10 and "int8-avx2" not in rules, rules
    vm = relax.VirtualMachine(build(q, target), tvm.cpu())
    sess = ort.InferenceSession(m.source, providers=["CPUExecutionProvider"])
    files = list_images(IMAGES)[1::20]  # 10 images, none of them calibration images
    agree = sum(int(vm["main"](tvm.runtime.tensor(x)).numpy().argmax() ==
                    sess.run(None, {"data": x})[0].argmax())
                for x in (load_image(f, m.preprocess) for f in files))
    assert agree >= 8, f"7-bit int8 top-1 agreement {agree}/{len(files)}"


def test_calibration_methods_ranges(squeeze):
    from sqcc.passes.int8 import calibrate_range

    _, _, acts, _ = squeeze
    a = acts["conv10"]
    r = {m: calibrate_range(a, m, unsigned=True) for m in ("minmax", "percentile", "entropy", "mse")}
    assert r["minmax"] == pytest.approx(float(a.max()))
    assert all(0 < v <= r["minmax"] * 1.001 for v in r.values())


def test_keep_leaves_layers_float(squeeze):
    from sqcc.passes.int8 import quantize_module

    m, _, acts, _ = squeeze
    recs = []
    q = quantize_module(m.mod, acts, "minmax", keep=["conv0", "conv25"], records=recs)
    text = q["main"].script(show_meta=False)
    assert 'conv0_i32' not in text and 'conv25_i32' not in text and 'conv1_i32' in text
    assert {r.layer for r in recs if not r.applied} == {"conv0", "conv25"}


def test_errors(squeeze, tmp_path):
    from sqcc import passes
    from sqcc.calibrate import calibration_feeds, collect_activations
    from sqcc.errors import SqccError

    m, _, acts, _ = squeeze
    with pytest.raises(SqccError, match="unknown layer.*conv99.*quantisable layers: conv0"):
        _run("int8:keep=conv1,conv99", m.mod)
    with pytest.raises(SqccError, match="needs calibration data"):
        _run("int8", m.mod)
    with pytest.raises(SqccError, match="does not exist"):
        calibration_feeds(m, tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(SqccError, match="no images"):
        calibration_feeds(m, tmp_path / "empty")
    with pytest.raises(SqccError, match="shape"):
        collect_activations(m.mod, [{"data": np.zeros((1, 3, 112, 112), np.float32)}])
    with pytest.raises(SqccError, match="calibration"):
        passes.create("int8:calibration=median")
    with pytest.raises(SqccError, match="weight_bits=9"):
        passes.create("int8:weight_bits=9")


def test_person_detect_qdq_fold_matches_litert():
    """The imported int8 TFLite model folded to integer convs matches LiteRT and classifies."""
    import tvm
    from tvm import relax

    import sqcc.frontend as F
    from sqcc.build import build
    from sqcc.layers import op_name
    from sqcc.passes.qdq_fold import fold_qdq, is_int8_tflite
    from sqcc.preprocess import load_image
    from sqcc.reference import reference_session

    m = F.load("person_detect")
    assert is_int8_tflite(m)
    recs = []
    q = fold_qdq(m.mod, recs)
    assert len(recs) == 28
    convs = [b.value for bl in q["main"].body.blocks for b in bl.bindings
             if op_name(b.value) == "relax.nn.conv2d"]
    assert convs and all(str(c.args[1].ty.dtype) == "int8" and str(c.ty.dtype) == "int32" for c in convs)
    vm = relax.VirtualMachine(build(q, "host"), tvm.cpu())
    ref = reference_session(m)
    d = SHARED / "data" / "person-detection"
    for img, person in [("person.bmp", True), ("no_person.bmp", False)]:
        x = load_image(d / img, m.preprocess, "int8", m.quant["inputs"][0])
        ours = vm["main"](tvm.runtime.tensor(x)).numpy().astype(int)
        theirs = ref.run({"input": x})[0].astype(int)
        assert np.abs(ours - theirs).max() <= 1, (img, ours, theirs)
        assert (ours[0, 1] > ours[0, 0]) == person, (img, ours)
    rng = np.random.default_rng(0)
    x = rng.integers(-128, 128, (1, 96, 96, 1)).astype(np.int8)
    ours = vm["main"](tvm.runtime.tensor(x)).numpy().astype(int)
    assert np.abs(ours - ref.run({"input": x})[0].astype(int)).max() <= 1


def test_sensitivity_report(squeeze):
    """Agreement loss / output error when only one layer is quantised (two layers, to keep CI short)."""
    from sqcc.calibrate import calibration_feeds
    from sqcc.passes.int8 import sensitivity

    m, _, acts, _ = squeeze
    feeds = calibration_feeds(m, IMAGES, limit=3)
    rows = sensitivity(m.mod, feeds, activations=acts, layers=["conv0", "conv25"])
    assert {r["layer"] for r in rows} == {"conv0", "conv25"}
    for r in rows:
        assert 0 <= r["agreement_loss"] <= 1 and 0 < r["rel_l2"] < 0.5


def test_vnni_weight_prepack_is_identical(squeeze):
    """Packing the VNNI weights at build time (prepack_weights) changes nothing in the outputs."""
    import tvm
    from tvm import relax

    from sqcc.build import as_target, build, schedule
    from sqcc.schedules.int8 import prepack_weights

    _, q, _, _ = squeeze
    target = as_target("host")
    scheduled = schedule(q, target)
    packed = prepack_weights(scheduled, target)
    n_funcs = lambda m: sum(isinstance(f, tvm.tirx.PrimFunc) for _, f in m.functions_items())  # noqa: E731
    if any(str(f.attrs.get("sqcc.int8_isa", "")) for _, f in scheduled.functions_items()
           if isinstance(f, tvm.tirx.PrimFunc) and f.attrs is not None):
        # the packing blocks were split out and folded into constants: new (then dead) functions
        assert n_funcs(packed) != n_funcs(scheduled)
    x = tvm.runtime.tensor(np.random.default_rng(1).random((1, 3, 224, 224), dtype=np.float32))
    a = relax.VirtualMachine(build(q, target), tvm.cpu())["main"](x).numpy()  # packs at build time
    with target:
        b = relax.VirtualMachine(relax.build(scheduled, target), tvm.cpu())["main"](x).numpy()  # per call
    np.testing.assert_array_equal(a, b)
