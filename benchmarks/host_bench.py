#!/usr/bin/env python
"""Host (x86/aarch64 llvm) latency of sqcc builds against onnxruntime, measured in the same run.

For each model: untuned (TVM's plain ``relax.build``: legalized, unscheduled), default (sqcc's
layout + default schedules), tuned (when ``--records`` names a MetaSchedule database) and
onnxruntime with the same number of threads, with its workers spinning (its default) and sleeping.
Every variant is timed in alternating blocks over 5 rounds (``sqcc.bench.time_blocks``: never run by
run, because a spinning thread pool starves the runtime that runs right after it), and the median of
each is reported with min/max, the ratio to the faster onnxruntime setting, and achieved GFLOP/s
against the detected CPU's fp32 peak (FMA lanes x 2 x FMA units x clock x cores).

    TVM_NUM_THREADS=2 python benchmarks/host_bench.py [--models squeezenet1.1 ...] [--runs 30]
        [--records tuning/host.json] [--no-untuned] [--profile] [--concat-ab]
        [--stock-work-dir DIR [--stock-trials N --stock-per-task 64]]

``--concat-ab`` adds "no-concat-el": the default build with concat elimination off, to show what
writing producers straight into their concat slices saves (:mod:`sqcc.schedules.concat`).

``--stock-work-dir`` adds "stock-tuned": TVM's own ``static_shape_tuning`` pipeline (MetaSchedule on
TVM's default lowering, no sqcc layout or schedules), its database in DIR; with ``--stock-trials N``
it tunes first (N trials, at most ``--stock-per-task`` per task) and prints the tuning wall time, so
sqcc's tuner can be compared with stock MetaSchedule at the same trial budget on the same machine.

``--profile`` also prints the per-kernel time from the Relax VM profiler and how much of the
end-to-end latency is spent outside kernels (VM dispatch, allocation, thread-pool wake-ups).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

MODELS_DIR = Path(os.environ.get("SQCC_MODELS", "/work/shared/models"))
DEFAULT_MODELS = ["squeezenet1.1", "mobilenet_v1_0.5_160", "squeezenet1.0"]


def model_path(name: str) -> Path:
    p = Path(name)
    if p.suffix == ".onnx" and p.exists():
        return p
    for cand in (MODELS_DIR / f"{name}.onnx",
                 Path(__file__).resolve().parents[1] / "sqcc" / "models" / f"{name}.onnx"):
        if cand.exists():
            return cand
    sys.exit(f"host_bench: model {name} not found (looked in {MODELS_DIR})")


def conv_flops(onnx_model, shape_dict) -> float:
    """2 x MACs of Conv/Gemm/MatMul nodes, from ONNX shape inference."""
    from onnx import numpy_helper, shape_inference

    m = shape_inference.infer_shapes(onnx_model)
    shapes = {}
    for vi in list(m.graph.value_info) + list(m.graph.output) + list(m.graph.input):
        dims = [d.dim_value for d in vi.type.tensor_type.shape.dim]
        shapes[vi.name] = dims
    shapes.update({k: list(v) for k, v in shape_dict.items()})
    inits = {i.name: numpy_helper.to_array(i).shape for i in m.graph.initializer}
    total = 0
    for n in m.graph.node:
        if n.op_type == "Conv":
            w = inits.get(n.input[1])
            out = shapes.get(n.output[0])
            if w is None or not out:
                continue
            groups = next((a.i for a in n.attribute if a.name == "group"), 1)
            total += int(np.prod(out)) * int(np.prod(w[1:]))  # out elems x (C/g x Kh x Kw)
            del groups
        elif n.op_type in ("Gemm", "MatMul"):
            w = inits.get(n.input[1])
            out = shapes.get(n.output[0])
            if w is not None and out:
                k = w[0] if n.op_type == "MatMul" or not any(
                    a.name == "transB" and a.i for a in n.attribute) else w[1]
                total += int(np.prod(out)) * int(k)
    return 2.0 * total


def time_ms(fn, runs: int, number: int = 1) -> list[float]:
    out = []
    for _ in range(runs):
        t = time.perf_counter()
        for _ in range(number):
            fn()
        out.append((time.perf_counter() - t) * 1e3 / number)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", nargs="*", default=DEFAULT_MODELS)
    ap.add_argument("--runs", type=int, default=30, help="timed runs per variant (median of these)")
    ap.add_argument("--records", default=None, help="MetaSchedule JSON database for the tuned build")
    ap.add_argument("--no-untuned", action="store_true", help="skip the (slow) unscheduled build")
    ap.add_argument("--profile", action="store_true", help="per-kernel times and time outside kernels")
    ap.add_argument("--stock-work-dir", default=None, help="stock MetaSchedule database directory")
    ap.add_argument("--stock-trials", type=int, default=0, help="tune stock MetaSchedule first (trials)")
    ap.add_argument("--stock-per-task", type=int, default=64)
    ap.add_argument("--concat-ab", action="store_true",
                    help="also the default build without concat elimination (SQCC_CONCAT_ELIMINATION=0)")
    args = ap.parse_args(argv)

    threads = os.environ.get("TVM_NUM_THREADS")
    if threads is None:
        threads = str(os.cpu_count() or 1)
        os.environ["TVM_NUM_THREADS"] = threads  # must be set before the TVM runtime starts
    import onnx
    import onnxruntime as ort
    import tvm
    from tvm import relax
    from tvm.relax.frontend.onnx import from_onnx

    from sqcc.bench import time_blocks
    from sqcc.build import build, host_target
    from sqcc.schedules.cpu import host_peak_gflops

    nthreads = int(threads)
    peak = host_peak_gflops(nthreads)
    target = host_target()
    print(f"CPU: {peak['model']} (LLVM mcpu {peak['mcpu']}), {peak['isa']}, {peak['lanes']} fp32 lanes, "
          f"{peak['fma_units']} FMA units, {peak['ghz']:.2f} GHz ({peak['clock_source']}), "
          f"{nthreads} threads -> fp32 peak {peak['peak_gflops']:.0f} GFLOP/s")
    print(f"TVM_NUM_THREADS={threads}, onnxruntime intra_op_num_threads={threads}, batch 1, "
          f"median of {args.runs} runs (alternating blocks with onnxruntime), target {target}")

    for name in args.models:
        path = model_path(name)
        m = onnx.load(str(path))
        inp = m.graph.input[0]
        shape = [d.dim_value or 1 for d in inp.type.tensor_type.shape.dim]
        flops = conv_flops(m, {inp.name: shape})
        mod = from_onnx(m, {inp.name: shape}, keep_params_in_input=False)
        x = np.random.default_rng(0).random(shape, dtype=np.float32)

        sessions = {}
        for label, spin in (("onnxruntime", "1"), ("ort-nospin", "0")):
            so = ort.SessionOptions()
            so.intra_op_num_threads = nthreads
            so.inter_op_num_threads = 1
            so.add_session_config_entry("session.intra_op.allow_spinning", spin)
            sessions[label] = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        ref = sessions["onnxruntime"].run(None, {inp.name: x})[0]

        variants = {}
        t0 = time.time()
        if not args.no_untuned:
            variants["untuned"] = relax.build(mod, target)
        t1 = time.time()
        variants["default"] = build(mod, target)
        t2 = time.time()
        if args.concat_ab:
            os.environ["SQCC_CONCAT_ELIMINATION"] = "0"
            variants["no-concat-el"] = build(mod, target)
            del os.environ["SQCC_CONCAT_ELIMINATION"]
        if args.records:
            variants["tuned"] = build(mod, target, tuning_records=args.records)
        if args.stock_work_dir:
            ts = time.time()
            with target:
                smod = relax.get_pipeline("static_shape_tuning", total_trials=args.stock_trials,
                                          target=target, work_dir=args.stock_work_dir,
                                          max_trials_per_task=args.stock_per_task)(mod)
            if args.stock_trials:
                print(f"stock MetaSchedule: {args.stock_trials} trials (<= {args.stock_per_task} per task) "
                      f"tuned in {time.time() - ts:.0f} s wall")
            variants["stock-tuned"] = tvm.compile(smod, target)
        print(f"\n== {name} ({flops / 1e9:.3f} GFLOP) build s: untuned {t1 - t0:.1f}, default {t2 - t1:.1f}")

        dev = tvm.cpu()
        xt = tvm.runtime.tensor(x, dev)
        vms, errs = {}, {}
        for k, ex in variants.items():
            vm = relax.VirtualMachine(ex, dev)
            out = vm["main"](xt).numpy()
            errs[k] = float(np.abs(out - ref).max() / max(np.abs(ref).max(), 1e-30))
            vms[k] = vm
        fns = {k: (lambda vm=vm: vm["main"](xt)) for k, vm in vms.items() if k != "untuned"}
        fns.update({k: (lambda s=s: s.run(None, {inp.name: x})) for k, s in sessions.items()})
        stats = time_blocks(fns, args.runs, warmup=5)
        if "untuned" in vms:  # hundreds of ms a run: 5 runs tell the story
            stats["untuned"] = time_blocks({"untuned": lambda: vms["untuned"]["main"](xt)}, 5, 1, 1)["untuned"]
        ort_med = min(stats["onnxruntime"]["median_ms"], stats["ort-nospin"]["median_ms"])
        print(f"{'variant':<12}{'median ms':>10}{'min':>9}{'max':>9}{'x ORT':>8}{'GFLOP/s':>9}"
              f"{'% peak':>8}{'max rel err':>13}")
        for k in [*[v for v in ("untuned", "default", "no-concat-el", "tuned", "stock-tuned") if v in stats],
                  "onnxruntime", "ort-nospin"]:
            med, st = stats[k]["median_ms"], stats[k]
            gf = flops / med / 1e6
            pct = 100 * gf / peak["peak_gflops"] if peak["peak_gflops"] else float("nan")
            err = f"{errs[k]:.1e}" if k in errs else "ref"
            print(f"{k:<12}{med:>10.3f}{st['min_ms']:>9.3f}{st['max_ms']:>9.3f}{med / ort_med:>8.2f}{gf:>9.1f}"
                  f"{pct:>7.1f}%{err:>13} (n={st['runs']})")
        print("x ORT: against the faster onnxruntime setting (workers spinning = its default, or sleeping)")
        if args.profile:
            for k in ("default", "no-concat-el"):
                if k in variants:
                    print(f"-- {k}")
                    profile(variants[k], xt, dev)
    return 0


def profile(ex, xt, dev, runs: int = 30):
    """Per-kernel times and the share of end-to-end latency spent outside kernels.

    Kernels are timed through the VM's instrument hook (a timestamp just before and just after each
    call); the median over ``runs`` runs is taken per call site. The hook itself costs a little, so
    "outside kernels" = uninstrumented end-to-end median - sum of kernel medians is a fair lower
    bound of VM dispatch + allocation + thread-pool wake-up costs that a kernel's own timer misses.
    """
    import tvm
    from tvm import relax

    vm = relax.VirtualMachine(ex, dev)
    e2e = statistics.median(time_ms(lambda: vm["main"](xt), runs, number=5))
    per_site: dict = {}
    state = {"t": 0.0, "i": 0}

    def instrument(func, symbol, before, ret, *args):  # noqa: ARG001
        if before:
            state["t"] = time.perf_counter()
        else:
            dt = (time.perf_counter() - state["t"]) * 1e3
            key = (state["i"], str(symbol))
            per_site.setdefault(key, []).append(dt)
            state["i"] += 1
        return 0

    vmi = relax.VirtualMachine(ex, dev)
    vmi.set_instrument(tvm.runtime.convert(instrument) if hasattr(tvm.runtime, "convert")
                       else instrument)
    outside = []  # per run: wall time of the run minus the time inside its kernels
    for _ in range(runs):
        state["i"] = 0
        before = {k: len(v) for k, v in per_site.items()}
        t0 = time.perf_counter()
        vmi["main"](xt)
        wall = (time.perf_counter() - t0) * 1e3
        inside = sum(v[-1] for k, v in per_site.items()
                     if len(v) > before.get(k, 0) and not k[1].startswith("vm.builtin"))
        outside.append((wall, inside))
    by_name: dict = {}
    for (_, name), ts in per_site.items():
        by_name[name] = by_name.get(name, 0.0) + statistics.median(ts)
    kern = sum(v for k, v in by_name.items() if not k.startswith("vm.builtin"))
    calls = len(per_site)
    out_ms = statistics.median(w - k for w, k in outside)
    share = statistics.median((w - k) / w for w, k in outside)
    print(f"profile: end-to-end {e2e:.3f} ms (uninstrumented median); {calls} VM calls; "
          f"kernels {kern:.3f} ms (sum of per-call medians); outside kernels {out_ms:.3f} ms a run "
          f"({100 * share:.0f}%, instrumented runs of median wall "
          f"{statistics.median(w for w, _ in outside):.3f} ms: includes the hook's own cost)")
    for k, v in sorted(by_name.items(), key=lambda kv: -kv[1])[:40]:
        print(f"  {v * 1e3:9.1f} us  {k}")


if __name__ == "__main__":
    sys.exit(main())
