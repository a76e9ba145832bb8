"""Latency: median/min/max of ≥30 timed runs after warm-up, with the peer runtime (onnxruntime, or
LiteRT for TFLite models) timed in the same run with the same thread count, reported as a ratio.

How runtimes are timed against each other (:func:`time_blocks`): never one run of A then one of B.
Both thread pools keep their workers spinning for a while after a run -- onnxruntime by default
(``session.intra_op.allow_spinning``), TVM's pool too -- so strict interleaving makes each runtime
start while the other's workers still hold the cores: measured here, SqueezeNet 1.1 at 2 threads took
33 ms instead of 3.7 when interleaved run by run with a spinning onnxruntime. Instead each runtime is
timed in blocks (warm-up runs first, so the other's workers have gone idle), and the blocks alternate
over several rounds so that drifting load on a shared machine hits every runtime alike.
onnxruntime is timed with spinning on (its default) and off, and the peer figure is the faster of
the two: the comparison is with the peer at its best on this machine, and both are reported.
Every runtime is timed the same way: a Python call with prepared inputs, ``time.perf_counter``.

The TVM thread pool reads ``TVM_NUM_THREADS`` once, when it starts; to time another thread count the
measurement runs in a fresh process (``python -m sqcc.bench PACKAGE --threads N --json``), so every
figure is taken with exactly the threads it states.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from .errors import SqccError


def _stats(times_s: list[float]) -> dict:
    ms = [t * 1e3 for t in times_s]
    return {"median_ms": statistics.median(ms), "min_ms": min(ms), "max_ms": max(ms), "runs": len(ms)}


def time_blocks(fns: dict, repeat: int, warmup: int, rounds: int = 5) -> dict:
    """{name: stats} for callables timed in alternating blocks (see the module docstring): ``rounds``
    rounds, each running every callable ``warmup`` times untimed, then its share of ``repeat``
    timed runs."""
    rounds = max(1, min(rounds, repeat))
    times = {k: [] for k in fns}
    for r in range(rounds):
        n = repeat // rounds + (1 if r < repeat % rounds else 0)
        for k, fn in fns.items():
            for _ in range(warmup):
                fn()
            for _ in range(n):
                t0 = time.perf_counter()
                fn()
                times[k].append(time.perf_counter() - t0)
    return {k: _stats(v) for k, v in times.items()}


MAX_RUNS = 100_000  # more is not a measurement but a hang


def benchmark_package(pkg, threads=None, repeat=50, warmup=5, compare=None, inputs=None) -> dict:
    from .targets import host

    for name, v in (("repeat", repeat), ("warmup", warmup), ("threads", threads)):
        if v is not None and (isinstance(v, bool) or not isinstance(v, int)):
            raise SqccError(f"--{name} {v!r}: expected an integer")
    if warmup < 0 or warmup > MAX_RUNS or repeat > MAX_RUNS:
        raise SqccError(f"--warmup {warmup} --repeat {repeat}: each must be in [0, {MAX_RUNS}]")
    if repeat < 30:
        raise SqccError(f"--repeat {repeat}: at least 30 timed runs are needed for a median")
    if threads is not None and threads < 1:
        raise SqccError(f"--threads {threads}: must be at least 1")
    env_threads = os.environ.get("TVM_NUM_THREADS")
    if threads is not None and str(threads) != env_threads:
        return _in_subprocess(pkg, threads, repeat, warmup, compare)
    n_threads = int(env_threads) if env_threads else host.detect().cores
    if not env_threads:
        os.environ["TVM_NUM_THREADS"] = str(n_threads)
    rng = np.random.default_rng(0)
    if inputs is None:
        arrs = []
        for s in pkg.inputs:
            if s.dtype.startswith("float"):
                arrs.append(rng.random(s.shape, dtype=np.float32).astype(s.dtype))
            else:
                info = np.iinfo(s.dtype)
                arrs.append(rng.integers(info.min, info.max + 1, s.shape).astype(s.dtype))
    else:
        arrs = pkg._as_inputs(inputs)
    cpu = host.detect()
    result = {"model": pkg.manifest["model"]["name"], "target": pkg.target, "threads": n_threads,
              "device": f"{cpu.model} ({cpu.mcpu}, {cpu.cores} cores, {'+'.join(cpu.features)})",
              "passes": [p["spec"] for p in pkg.manifest.get("passes", [])],
              "batch": int(pkg.inputs[0].shape[0]) if pkg.inputs and pkg.inputs[0].shape else 1,
              }
    import tvm

    dev = tvm.cpu()
    targs = [tvm.runtime.tensor(a, dev) for a in arrs]
    fns = {"sqcc": lambda: pkg.vm["main"](*targs)}
    if compare:
        if compare not in ("onnxruntime", "ort", "reference", "litert"):
            raise SqccError(f"--compare {compare}: only onnxruntime (or litert for TFLite models) is supported")
        if pkg.source is None:
            raise SqccError("this package does not contain its source model; cannot compare")
        from .fidelity import reference_for_package

        feed = {s.name: a for s, a in zip(pkg.inputs, arrs)}
        ref = reference_for_package(pkg, threads=n_threads)
        fns[ref.name] = lambda: ref.run(feed)
        if ref.name == "onnxruntime":
            quiet = reference_for_package(pkg, threads=n_threads, spinning=False)
            fns["onnxruntime (no spinning)"] = lambda: quiet.run(feed)
    timed = time_blocks(fns, repeat, warmup)
    result["sqcc"] = timed.pop("sqcc")
    macs = (pkg.report.get("after") or pkg.report.get("before") or {}).get("totals", {}).get("macs")
    if macs:
        result["gflops"] = 2 * macs / (result["sqcc"]["median_ms"] * 1e-3) / 1e9
        peak = cpu.peak_gflops(n_threads)
        if peak:
            result["peak_gflops"] = peak
            result["clock_ghz"] = cpu.mhz / 1000.0
            result["clock_source"] = cpu.clock_source
    if timed:
        result["peers"] = [{"name": k, **v} for k, v in timed.items()]
        best = min(result["peers"], key=lambda p: p["median_ms"])
        result["peer"] = best
        result["ratio"] = result["sqcc"]["median_ms"] / best["median_ms"]
    return result


def _in_subprocess(pkg, threads, repeat, warmup, compare) -> dict:
    with tempfile.TemporaryDirectory() as d:
        path = pkg.export(Path(d) / "bench.tar") if not getattr(pkg, "path", None) else pkg.path
        env = dict(os.environ, TVM_NUM_THREADS=str(threads))
        cmd = [sys.executable, "-m", "sqcc.bench", str(path), "--repeat", str(repeat), "--warmup",
               str(warmup), "--json"] + (["--compare", compare] if compare else [])
        p = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if p.returncode != 0:
            raise SqccError(f"benchmark with {threads} thread(s) failed: {p.stderr.strip().splitlines()[-1:]}")
        return json.loads(p.stdout)


def format_result(r: dict) -> str:
    s = r["sqcc"]
    lines = [f"model {r['model']}  target {r['target']}  threads {r['threads']}  batch {r['batch']}",
             f"device {r['device']}",
             f"sqcc                       median {s['median_ms']:8.3f} ms   min {s['min_ms']:8.3f}   "
             f"max {s['max_ms']:8.3f}"
             f"   ({s['runs']} runs)"]
    if "peer" in r:
        for p in r.get("peers", [r["peer"]]):
            lines.append(f"{p['name']:<26} median {p['median_ms']:8.3f} ms   min {p['min_ms']:8.3f}   "
                         f"max {p['max_ms']:8.3f}   ({p['runs']} runs, same process)")
        p = r["peer"]
        lines.append(f"ratio sqcc/{p['name']}: {r['ratio']:.2f}x "
                     f"({'slower' if r['ratio'] > 1 else 'faster'}; against the faster peer setting; "
                     f"timed in alternating blocks)")
    if "gflops" in r:
        # The clock /proc/cpuinfo reports is the nominal one; boost clocks run higher, so a kernel
        # can pass this "peak": say which clock it is.
        peak = (f" ({100 * r['gflops'] / r['peak_gflops']:.0f}% of {r['peak_gflops']:.0f} GFLOP/s fp32 peak "
                f"at {r.get('clock_ghz', 0):.2f} GHz: {r.get('clock_source', 'clock of unknown origin')})") \
            if r.get("peak_gflops") else ""
        lines.append(f"achieved {r['gflops']:.1f} GFLOP/s{peak}")
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m sqcc.bench")
    ap.add_argument("package")
    ap.add_argument("--repeat", type=int, default=50)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--compare")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)
    from .package import load

    try:
        r = benchmark_package(load(a.package), repeat=a.repeat, warmup=a.warmup, compare=a.compare)
    except SqccError as e:
        print(f"sqcc: error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(r) if a.json else format_result(r))
    return 0


if __name__ == "__main__":
    sys.exit(main())
