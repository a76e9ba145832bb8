"""Figures for issue 5 (int8 and binary lowering), measured in one run.

    TVM_NUM_THREADS=2 python benchmarks/int8_bench.py [--images N] [--calib 32] [--out int8_bench.json]

* SqueezeNet 1.1 int8: top-1 agreement with fp32 (onnxruntime) and top-1 accuracy on
  ../shared/data/imagenet-sample, for each calibration method, next to onnxruntime's static quantiser
  (QDQ, per-channel, MinMax) on the same calibration images.
* Latency (median of ≥30 after warm-up, 2 threads, alternating blocks -- ``sqcc.bench.time_blocks``):
  sqcc int8 vs sqcc fp32 (same default schedules) vs onnxruntime fp32 and int8 (each with its workers
  spinning and sleeping; the faster setting is the peer). ``--mcpu znver2,skylake-avx512`` builds
  sqcc's variants for an AVX2-only CPU and an AVX-512 CPU without VNNI as well (the vpmaddubsw kernels
  with 7-bit weights next to 8-bit vpmaddwd), to show them on a machine that has more.
* Binary: one 256→256 3×3 conv on 28×28, XNOR popcount kernel vs sqcc's fp32 kernel for the layer.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
IMAGES = SHARED / "data" / "imagenet-sample"


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=200)
    ap.add_argument("--calib", type=int, default=32)
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--methods", default="minmax,percentile,entropy,mse")
    ap.add_argument("--binary-images", type=int, default=50)
    ap.add_argument("--out", default="int8_bench.json")
    ap.add_argument("--mcpu", default=None, help="also build sqcc fp32/int8 for these LLVM CPUs (e.g. znver2,skylake-avx512)")
    ap.add_argument("--latency-only", action="store_true", help="latency figures only: one method (entropy), 16 images for the scores")
    a = ap.parse_args(argv)
    if a.latency_only:  # one method, few images: the accuracy figures need the full run
        a.methods, a.images, a.binary_images = "entropy", min(a.images, 16), min(a.binary_images, 8)
    threads = int(os.environ.get("TVM_NUM_THREADS", "2"))
    os.environ["TVM_NUM_THREADS"] = str(threads)

    import onnxruntime as ort
    import tvm
    from tvm import relax

    import sqcc.frontend as F
    from sqcc.bench import time_blocks
    from sqcc.build import build
    from sqcc.calibrate import calibration_feeds, collect_activations
    from sqcc.passes.int8 import layer_names, quantize_module
    from sqcc.preprocess import list_images, load_image, load_labels
    from sqcc.schedules.int8 import int8_isa

    say = lambda s: print(f"[{time.strftime('%H:%M:%S')}] {s}", file=sys.stderr, flush=True)  # noqa: E731
    m = F.load("squeezenet1.1")
    files = list_images(IMAGES)[: a.images]
    labels = load_labels(IMAGES) or {}
    xs = [load_image(f, m.preprocess) for f in files]
    ys = [labels.get(f.name) for f in files]
    feeds = calibration_feeds(m, IMAGES, limit=a.calib)
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    ref = ort.InferenceSession(m.source, so, providers=["CPUExecutionProvider"])
    so_q = ort.SessionOptions()
    so_q.intra_op_num_threads = threads
    so_q.inter_op_num_threads = 1
    so_q.add_session_config_entry("session.intra_op.allow_spinning", "0")
    ref_nospin = ort.InferenceSession(m.source, so_q, providers=["CPUExecutionProvider"])
    ref_out = [ref.run(None, {"data": x})[0].reshape(-1) for x in xs]

    def score(outs):
        agree = sum(int(o.argmax() == r.argmax()) for o, r in zip(outs, ref_out))
        acc = sum(int(o.argmax() == y) for o, y in zip(outs, ys) if y is not None)
        return {"top1_agreement": agree, "top1_correct": acc, "n": len(outs)}

    from sqcc.targets.host import detect

    res = {"host": detect().model, "int8_isa": int8_isa(tvm.target.Target({"kind": "llvm", "mcpu": tvm.target.codegen.llvm_get_system_cpu()})),
           "threads": threads, "calibration_images": len(feeds), "eval_images": len(xs)}
    res["fp32_onnxruntime"] = score(ref_out)

    say("collecting activations")
    acts = collect_activations(m.mod, feeds, layers=layer_names(m.mod))
    say("building sqcc fp32")
    vm_f = relax.VirtualMachine(build(m.mod, "host"), tvm.cpu())
    run = lambda vm: [vm["main"](tvm.runtime.tensor(x)).numpy().reshape(-1) for x in xs]  # noqa: E731
    res["fp32_sqcc"] = score(run(vm_f))
    vms = {}
    for meth in a.methods.split(","):
        say(f"int8 {meth}")
        q = quantize_module(m.mod, acts, meth)
        vms[meth] = relax.VirtualMachine(build(q, "host"), tvm.cpu())
        res[f"int8_sqcc_{meth}"] = score(run(vms[meth]))
        say(str(res[f"int8_sqcc_{meth}"]))

    say("onnxruntime quantize_static")
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat,
                                          QuantType, quantize_static)

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter(feeds)

        def get_next(self):
            return next(self.it, None)

    tmp = Path(tempfile.mkdtemp())
    (tmp / "f.onnx").write_bytes(m.source)
    quantize_static(str(tmp / "f.onnx"), str(tmp / "q.onnx"), Reader(), quant_format=QuantFormat.QDQ,
                    per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                    calibrate_method=CalibrationMethod.MinMax)
    ort_q = ort.InferenceSession(str(tmp / "q.onnx"), so, providers=["CPUExecutionProvider"])
    ort_q_nospin = ort.InferenceSession(str(tmp / "q.onnx"), so_q, providers=["CPUExecutionProvider"])
    res["int8_onnxruntime_minmax"] = score([ort_q.run(None, {"data": x})[0].reshape(-1) for x in xs])

    say("latency")
    x0 = xs[0]
    xt = tvm.runtime.tensor(x0)
    best = max(vms, key=lambda k: res[f"int8_sqcc_{k}"]["top1_agreement"])
    vm_pp = vms[best]  # sqcc's build packs the int8 weights at build time
    fns = {"sqcc_fp32": lambda: vm_f["main"](xt),
           f"sqcc_int8_{best}": lambda: vm_pp["main"](xt),
           "onnxruntime_fp32": lambda: ref.run(None, {"data": x0}),
           "onnxruntime_fp32_nospin": lambda: ref_nospin.run(None, {"data": x0}),
           "onnxruntime_int8": lambda: ort_q.run(None, {"data": x0}),
           "onnxruntime_int8_nospin": lambda: ort_q_nospin.run(None, {"data": x0})}
    bits_by_cpu = {}
    for mcpu in (a.mcpu.split(",") if a.mcpu else []):
        t2 = tvm.target.Target({"kind": "llvm", "mcpu": mcpu, "num-cores": threads})
        # what `sqcc compile --pass int8` does for that CPU (weight_bits=auto): 7-bit weights on
        # x86 CPUs without VNNI (vpmaddubsw), and the 8-bit build (vpmaddwd) next to it
        bits = bits_by_cpu[mcpu] = [7, 8] if int8_isa(t2) in ("avx2", "avx512") else [8]
        vm_f2 = relax.VirtualMachine(build(m.mod, t2), tvm.cpu())
        fns[f"sqcc_fp32_{mcpu}"] = lambda vm_f2=vm_f2: vm_f2["main"](xt)
        for wb in bits:
            vm_q2 = relax.VirtualMachine(build(quantize_module(m.mod, acts, best, weight_bits=wb), t2),
                                         tvm.cpu())
            res[f"int8_sqcc_{best}_{mcpu}_w{wb}"] = score(run(vm_q2))
            fns[f"sqcc_int8_{best}_{mcpu}_w{wb}"] = lambda vm_q2=vm_q2: vm_q2["main"](xt)
    lat = time_blocks(fns, a.runs, 5)
    i8 = lat[f"sqcc_int8_{best}"]["median_ms"]
    o32 = min(lat["onnxruntime_fp32"]["median_ms"], lat["onnxruntime_fp32_nospin"]["median_ms"])
    o8 = min(lat["onnxruntime_int8"]["median_ms"], lat["onnxruntime_int8_nospin"]["median_ms"])
    lat["ratios_of_medians"] = {  # > 1: sqcc int8 is faster
        "sqcc_fp32/sqcc_int8": lat["sqcc_fp32"]["median_ms"] / i8,
        "ort_fp32/sqcc_int8": o32 / i8, "ort_int8/sqcc_int8": o8 / i8, "ort_fp32/ort_int8": o32 / o8}
    for mcpu, bits in bits_by_cpu.items():
        for wb in bits:
            lat["ratios_of_medians"][f"sqcc_fp32/sqcc_int8 ({mcpu}, {wb}-bit weights)"] = \
                lat[f"sqcc_fp32_{mcpu}"]["median_ms"] / lat[f"sqcc_int8_{best}_{mcpu}_w{wb}"]["median_ms"]
    res["latency"] = lat

    say("binary layer")
    from sqcc.passes.binary import Binary

    rng = np.random.default_rng(0)
    w = rng.standard_normal((256, 256, 3, 3)).astype(np.float32)
    xb = rng.standard_normal((1, 256, 28, 28)).astype(np.float32)
    bb = relax.BlockBuilder()
    xv = relax.Var("x", relax.TensorType(xb.shape, "float32"))
    with bb.function("main", [xv]):
        with bb.dataflow():
            y = bb.emit(relax.op.nn.conv2d(xv, relax.const(w), padding=[1, 1, 1, 1]), "convb")
            o = bb.emit_output(y)
        bb.emit_func_output(o)
    layer = bb.get()
    vf = relax.VirtualMachine(build(layer, "host"), tvm.cpu())
    vx = relax.VirtualMachine(build(Binary(mode="xnor", skip=["none"])(layer), "host"), tvm.cpu())
    t = tvm.runtime.tensor(xb)
    bl = time_blocks({"sqcc_fp32": lambda: vf["main"](t), "sqcc_xnor": lambda: vx["main"](t)}, a.runs, 5)
    bl["speedup_medians"] = bl["sqcc_fp32"]["median_ms"] / bl["sqcc_xnor"]["median_ms"]
    bl["speedup_minima"] = bl["sqcc_fp32"]["min_ms"] / bl["sqcc_xnor"]["min_ms"]
    bl["weight_bytes"] = {"fp32": int(w.nbytes), "packed": int(w.nbytes // 32)}
    res["binary_layer_256x256x3x3_28x28"] = bl

    say("binary SqueezeNet (XNOR, skip=first,last): agreement with fp32")
    from sqcc.passes import PassContext

    ctx = PassContext()
    vb = relax.VirtualMachine(build(Binary(context=ctx, mode="xnor")(m.mod), "host"), tvm.cpu())
    nb = min(len(xs), a.binary_images)
    outs = [vb["main"](tvm.runtime.tensor(x)).numpy().reshape(-1) for x in xs[:nb]]
    res["binary_xnor_squeezenet"] = {
        "top1_agreement": sum(int(o.argmax() == r.argmax()) for o, r in zip(outs, ref_out[:nb])),
        "top1_correct": sum(int(o.argmax() == y) for o, y in zip(outs, ys[:nb]) if y is not None),
        "n": nb, "layers_binarised": sum(r.applied for r in ctx.records),
        "mean_weight_error": float(np.mean([r.weight_error for r in ctx.records if r.applied]))}

    Path(a.out).write_text(json.dumps(res, indent=2))
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
