"""Zoo benchmark: every model of the corpus compiled with sqcc's defaults for this host.

One row per model: import+build seconds, the worst per-output error against the reference runtime
(onnxruntime for ONNX, LiteRT for TFLite; relative to each output's largest magnitude), and the
same-run latency ratio sqcc / onnxruntime at 1 and 2 threads (ONNX models; TFLite models are timed
against LiteRT). Nothing here is tuned: it is what a user gets from ``sqcc compile model``.

    python benchmarks/zoo_bench.py                       # corpus + onnx 'light' models, latency too
    python benchmarks/zoo_bench.py --no-latency          # build and match only
    python benchmarks/zoo_bench.py --only tv_resnet18 --json out.json
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CORPUS = ROOT / "tests" / "data" / "corpus"


def light_models():
    import onnx

    d = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"
    return sorted(d.glob("light_*.onnx"))


def corpus_models():
    return sorted(p for p in CORPUS.iterdir() if p.suffix in (".onnx", ".tflite"))


def cpu_name():
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def one(path: Path, latency: bool, repeat: int):
    import sqcc
    from sqcc.errors import SqccError

    row = {"model": path.name}
    t0 = time.perf_counter()
    try:
        pkg = sqcc.compile(str(path))
    except SqccError as e:
        row.update(ok=False, error=str(e), build_s=round(time.perf_counter() - t0, 1))
        return row
    row["build_s"] = round(time.perf_counter() - t0, 1)
    fid = pkg.report.get("fidelity", {})
    row.update(ok=True, max_rel=fid.get("max_rel"),
               outputs=[(o["name"], o["max_rel"]) for o in fid.get("outputs", [])])
    if latency:
        from sqcc.bench import benchmark_package

        for threads in (1, 2):
            r = benchmark_package(pkg, threads=threads, repeat=repeat, compare="onnxruntime")
            row[f"ratio_{threads}t"] = r.get("ratio")
            row[f"ms_{threads}t"] = r["sqcc"]["median_ms"]
    return row


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", help="substring of the model file names to run")
    ap.add_argument("--no-latency", action="store_true")
    ap.add_argument("--no-light", action="store_true", help="skip the onnx wheel's light models")
    ap.add_argument("--repeat", type=int, default=30)
    ap.add_argument("--json", help="write the rows here")
    a = ap.parse_args(argv)
    models = corpus_models() + ([] if a.no_light else light_models())
    if a.only:
        models = [m for m in models if a.only in m.name]
    print(f"# {len(models)} models, CPU {cpu_name()}, {os.cpu_count()} cores", flush=True)
    rows = []
    for p in models:
        r = one(p, not a.no_latency, a.repeat)
        rows.append(r)
        ratios = "  ".join(f"{k} {r[k]:.2f}x" for k in ("ratio_1t", "ratio_2t") if r.get(k))
        state = f"max rel {r['max_rel']:.2e}" if r["ok"] else f"FAILED: {r['error'][:160]}"
        print(f"{p.name:50s} {r['build_s']:6.1f}s  {state}  {ratios}", flush=True)
    if a.json:
        Path(a.json).write_text(json.dumps({"cpu": cpu_name(), "rows": rows}, indent=1))
    return 0 if all(r["ok"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
