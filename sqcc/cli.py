"""``sqcc`` — the command line, in the spirit of tvmc.

    sqcc inspect squeezenet1.1
    sqcc compile squeezenet1.1 -o sq.tar [--target host] [--pass lowrank:energy=0.9 ...]
    sqcc run sq.tar --image cat.jpg --print-top 5
    sqcc bench sq.tar --compare onnxruntime --threads 2
    sqcc passes

Every error a user can cause is one line on stderr and a non-zero exit (2); ``-v`` adds detail.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

EXIT_USER = 2


def _fmt_int(n) -> str:
    return f"{n:,}"


def _fmt_shape(s) -> str:
    return "x".join(str(d) for d in s) if s else "-"


def _say(args):
    t0 = time.perf_counter()

    def say(msg):
        if not getattr(args, "quiet", False):
            print(f"[{time.perf_counter() - t0:6.1f}s] {msg}", file=sys.stderr, flush=True)

    return say


# ---------------------------------------------------------------------------------------- inspect

def layer_table(layer_dicts, totals) -> str:
    rows = [("layer", "op", "in", "out", "params", "MACs", "weight bytes", "fused")]
    for l in layer_dicts:
        op = l["op"].replace("relax.nn.", "").replace("relax.", "")
        if l.get("attrs", {}).get("kernel"):
            a = l["attrs"]
            op += f" {a['kernel'][0]}x{a['kernel'][1]}"
            if a["strides"] != [1, 1]:
                op += f"/s{a['strides'][0]}"
            if a["groups"] > 1:
                op += f" g{a['groups']}"
        rows.append((l["name"], op, _fmt_shape(l["in_shape"]), _fmt_shape(l["out_shape"]),
                     _fmt_int(l["params"]), _fmt_int(l["macs"]), _fmt_int(l["weight_bytes"]),
                     "+".join(l.get("fused", []))))
    rows.append(("total", f"{totals['layers']} layers", "", "", _fmt_int(totals["params"]),
                 _fmt_int(totals["macs"]), _fmt_int(totals["weight_bytes"]), ""))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    right = {4, 5, 6}
    out = []
    for k, r in enumerate(rows):
        cells = [c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))]
        out.append("  ".join(cells).rstrip())
        if k == 0 or k == len(rows) - 2:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)


def cmd_inspect(args):
    from . import frontend, layers
    from .package import load

    p = Path(args.model)
    if args.size:
        from .size_report import format_size_report, size_report

        if p.suffix == ".tar" and p.is_file():
            d = load(p).report.get("size")
            if d is None:
                from .errors import SqccError

                raise SqccError(f"{p}: the package has no size report (compile it with --size-report)")
        else:
            d = size_report(frontend.load(args.model, args.input_shape).mod).to_json()
        print(format_size_report(d))
        return 0
    if p.suffix == ".tar" and p.is_file():
        pkg = load(p)
        stage = pkg.report.get("after") or pkg.report.get("before")
        if args.json:
            print(json.dumps({"manifest": pkg.manifest, "report": pkg.report}, indent=1))
            return 0
        m = pkg.manifest
        print(f"package {p}: model {m['model']['name']} ({m['model']['format']}, sha256 "
              f"{m['model']['sha256'][:12]}), target {m['target']['name']}, "
              f"passes: {', '.join(x['spec'] for x in m['passes']) or 'none'}")
        if stage is None:
            print("(the package has no report.json: no layer table)")
            return 0
        print(layer_table(stage["layers"], stage["totals"]))
        return 0
    m = frontend.load(args.model, args.input_shape)
    ls = layers.layers(m.mod)
    tot = layers.totals(ls)
    if args.json:
        print(json.dumps({"model": m.name, "format": m.format, "sha256": m.sha256,
                          "inputs": [s.to_json() for s in m.inputs], "outputs": [s.to_json() for s in m.outputs],
                          "layers": [l.to_json() for l in ls], "totals": tot}, indent=1))
        return 0
    ins = ", ".join(f"{s.name} {_fmt_shape(s.shape)} {s.dtype}" for s in m.inputs)
    outs = ", ".join(f"{s.name} {_fmt_shape(s.shape)} {s.dtype}" for s in m.outputs)
    print(f"model {m.name} ({m.format}, {len(m.source):,} bytes, sha256 {m.sha256[:12]})")
    print(f"inputs: {ins}\noutputs: {outs}")
    print(layer_table([l.to_json() for l in ls], tot))
    print(f"totals: {tot['params'] / 1e6:.3f} M params, {tot['macs'] / 1e9:.3f} GMAC, "
          f"{tot['weight_bytes'] / 1e6:.2f} MB of weights, {tot['conv_layers']} conv layers")
    return 0


# ---------------------------------------------------------------------------------------- compile

def cmd_compile(args):
    from . import api, outputs
    from .fidelity import format_fidelity

    from .errors import SqccError

    say = _say(args)
    micro = (args.target or "").startswith("micro")
    out = args.output if args.output is not None else (
        f"{Path(str(args.model)).stem}_{args.target.split(':')[-1]}" if micro else f"{Path(str(args.model)).stem}.tar")
    out = outputs.check_writable(out, "-o", "directory" if micro else "file")
    if args.dump_ir:
        outputs.check_writable(args.dump_ir, "--dump-ir", "directory")
    if args.emit_onnx:
        _check_emit_onnx(args, out)
    budget = None
    if args.budget:  # the one budget parser, before any work
        from .planning.spec import parse_budget

        budget = parse_budget(args.budget)
    tuning = api.Tuning(records=args.tuning_records) if args.tuning_records else None
    if tuning and not Path(tuning.records).is_file():
        from .errors import SqccError

        raise SqccError(f"--tuning-records {tuning.records}: no such file")
    pkg = api.compile(args.model, target=args.target, passes=args.passes or [],
                      input_shapes=args.input_shape, calibration=args.calibration, budget=budget,
                      calibration_limit=args.calibration_limit, calibration_views=args.calibration_views,
                      tuning=tuning, eval_images=args.eval_images, check=not args.no_check,
                      dump_ir=args.dump_ir, force=args.force, progress=say,
                      refine=args.refine, techniques=_techniques(args.techniques),
                      preprocess=args.preprocess)
    say(f"writing {out}")
    pkg.export(out)
    if args.emit_onnx:
        say(f"exporting {args.emit_onnx} and checking it in onnxruntime")
        print(_export_line(pkg, _emit_onnx(pkg, args.emit_onnx, out)))
    r = pkg.report
    b, a = r["before"]["totals"], r["after"]["totals"]
    size = f"{out.stat().st_size:,} bytes" if out.is_file() else "directory"
    print(f"compiled {pkg.manifest['model']['name']} for {pkg.target} → {out} "
          f"({size}, build {r['build']['seconds']:.1f} s)")
    if "micro" in r:
        print(_micro_summary(r["micro"]))
    if pkg.manifest["passes"]:
        _print_pass_report(r)
        print(f"model: MACs {_fmt_int(b['macs'])} → {_fmt_int(a['macs'])} ({a['macs'] / b['macs']:.3f}x), "
              f"params {_fmt_int(b['params'])} → {_fmt_int(a['params'])} ({a['params'] / b['params']:.3f}x), "
              f"weight bytes {_fmt_int(b['weight_bytes'])} → {_fmt_int(a['weight_bytes'])}")
    else:
        print(f"model: {a['layers']} layers, {a['params'] / 1e6:.3f} M params, {a['macs'] / 1e9:.3f} GMAC")
    if args.size_report and r.get("size"):
        from .size_report import format_size_report

        print(format_size_report(r["size"]))
    if "fidelity" in r:
        print("fidelity " + format_fidelity(r["fidelity"], r["fidelity"]["reference"]))
    if "evaluation" in r:
        print(f"evaluation on {r['evaluation']['folder']} " +
              format_fidelity(r["evaluation"], r["evaluation"]["reference"]))
    return 0


def _check_emit_onnx(args, out) -> None:
    from . import outputs
    from .errors import SqccError
    from .targets import resolve

    outputs.check_writable(args.emit_onnx, "--emit-onnx")
    if Path(args.emit_onnx).absolute() == Path(out).absolute():
        raise SqccError(f"--emit-onnx {args.emit_onnx}: the same path as the package (-o)")
    if resolve(args.target).family != "host":
        raise SqccError(f"--emit-onnx needs --target host (the exported file is checked against the "
                        f"package by running both; {args.target} does not run here)")


def _emit_onnx(pkg, path, out):
    from .errors import SqccError
    from .export import export_onnx

    try:
        return export_onnx(pkg, path, flag="--emit-onnx")
    except SqccError as e:
        raise SqccError(f"{e} (the package {out} was written)") from e


def _export_line(pkg, r: dict) -> str:
    worst = max(w["max_rel"] for w in r["check"]["outputs"].values())
    worst_abs = max(w["max_abs"] for w in r["check"]["outputs"].values())
    kind = "ONNX" if "opset" in r else "TFLite"
    what = f"{r['form']} {kind}" + (f", opset {r['opset']}" if "opset" in r else "")
    return (f"exported {pkg.manifest['model']['name']} ({what}, {r['nodes']} nodes, {r['bytes']:,} bytes) "
            f"→ {r['path']}; {r['check']['runtime']} matches the package on {r['check']['inputs']} input(s): "
            f"max abs err {worst_abs:.3g}, max rel err {worst:.3g} (limit: "
            f"{'; '.join(sorted({w['limit'] for w in r['check']['outputs'].values()}))})")


def _micro_summary(mc: dict) -> str:
    def pick(*keys):
        for k in keys:
            if k in mc and mc[k] is not None:
                return mc[k]
        return None

    parts = []
    for label, keys in [("flash", ("flash_bytes", "flash")), ("RAM", ("ram_bytes", "ram")),
                        ("arena", ("arena_bytes", "arena")), ("instructions", ("instructions",))]:
        v = pick(*keys)
        if isinstance(v, dict):
            v = v.get("total", v.get("bytes"))
        if v is not None:
            parts.append(f"{label} {v:,}" + (" B" if label != "instructions" else ""))
    return "micro: " + ", ".join(parts)


def _print_pass_report(r):
    recs = r.get("passes") or []
    if not recs:
        return
    rows = [("layer", "technique", "applied", "detail", "params", "MACs", "w.err", "out.err")]
    for x in recs:
        rows.append((x["layer"], x["technique"], "yes" if x["applied"] else "no", x["detail"],
                     f"{_fmt_int(x['params_before'])}→{_fmt_int(x['params_after'])}",
                     f"{_fmt_int(x['macs_before'])}→{_fmt_int(x['macs_after'])}",
                     "-" if x["weight_error"] is None else f"{x['weight_error']:.3g}",
                     "-" if x["output_error"] is None else f"{x['output_error']:.3g}"))
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(rows[0]))]
    for k, row in enumerate(rows):
        print("  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip())
        if k == 0:
            print("  ".join("-" * w for w in widths))


def _techniques(text):
    """--techniques a,b → ("a", "b"); None when not given (the budget's default set)."""
    return tuple(t.strip() for t in text.split(",") if t.strip()) if text else None


# -------------------------------------------------------------------------------------------- run

def _read_tensor(path, spec):
    from .errors import SqccError
    from .frontend import read_tensor_file

    p = Path(path)
    if not p.is_file():
        raise SqccError(f"--input {p}: no such file")
    try:
        arr = read_tensor_file(p)
    except SqccError as e:
        raise SqccError(f"--input {e}") from None
    if tuple(arr.shape) != tuple(spec.shape):
        raise SqccError(f"--input {p}: shape {list(arr.shape)}, the model input '{spec.name}' is {list(spec.shape)}")
    return arr.astype(spec.dtype)


def cmd_run(args):
    import numpy as np

    from . import outputs
    from .errors import SqccError
    from .package import load_any
    from .preprocess import imagenet_classes, load_image

    if args.output:
        outputs.check_writable(args.output, "--output")
    pkg = load_any(args.package)
    spec = pkg.inputs[0]
    if args.image and args.input:
        raise SqccError("give --image or --input, not both")
    if args.image:
        pre = pkg.preprocess
        if pre is None:
            raise SqccError(f"{args.package}: the model has no preprocessing recipe (compile it with "
                              f"--preprocess), or use --input FILE.npy")
        q = (pkg.manifest.get("quant") or {}).get("inputs", [None])[0]
        x = load_image(args.image, pre, spec.dtype, q)
    elif args.input:
        x = _read_tensor(args.input, spec)
    else:
        raise SqccError("nothing to run: give --image FILE or --input FILE.npy/.pb")
    t0 = time.perf_counter()
    if args.rpc_tracker:
        from .remote import run_remote

        out = run_remote(pkg, x, args.rpc_tracker, args.rpc_key or "aarch64", args.rpc_timeout)
    else:
        out = pkg.run(x)
    dt = (time.perf_counter() - t0) * 1e3
    outs = out if isinstance(out, list) else [out]
    if args.output:
        _save_outputs(args.output, pkg.outputs, outs)
    logits = np.asarray(outs[0]).reshape(-1)
    pre = pkg.preprocess
    offset = pre.class_offset if pre else 0
    names = None
    if pre and pre.labels == "imagenet":
        names = imagenet_classes()
    else:
        from .models import LABELS

        names = LABELS.get(pre.labels) if pre else None
    from .package import MicroPackage

    if isinstance(pkg, MicroPackage) and pkg.source is not None:
        # The ELF ran under emulation: say how far it is from the original model on the host.
        from .fidelity import output_errors, reference_for_package

        from .targets.micro import integer_reference

        iref = integer_reference(pkg)  # int8 TFLite: the integer arithmetic the micro build uses
        ref = reference_for_package(pkg).run({spec.name: x})[0]
        e = output_errors(outs[0], ref)
        how = " (XNNPACK: fp32 requantisation)" if iref is not None else ""
        print(f"checked against {reference_for_package(pkg).name}{how} on the host: max abs err "
              f"{e['max_abs']:.3g}, max rel err {e['max_rel']:.3g}")
        if iref is not None:
            e = output_errors(outs[0], iref.run(x)[0])
            print(f"checked against {iref.name}: max abs err {e['max_abs']:.3g}")
    print(f"{pkg.manifest['model']['name']} on {pkg.target}: {len(outs)} output(s) "
          f"({dt:.1f} ms, first run)")
    from .fidelity import is_class_scores

    for spec_o, o in zip(pkg.outputs, outs):
        o = np.asarray(o)
        print(f"output {spec_o.name} {list(o.shape)} {o.dtype}: min {float(o.min()):.4g} "
              f"max {float(o.max()):.4g} mean {float(o.astype(np.float64).mean()):.4g}")
    if not is_class_scores(np.asarray(outs[0]).shape):
        return 0  # not a class-score vector: no top-k to print
    k = min(args.print_top, logits.size)
    order = np.argsort(-logits.astype(np.float64), kind="stable")[:k]
    for rank, i in enumerate(order, 1):
        cls = int(i) - offset
        label = names[cls] if names and 0 <= cls < len(names) else ("background" if cls < 0 else "")
        print(f"{rank}. class {cls:4d}  score {float(logits[i]):9.4f}  {label}")
    return 0


def _save_outputs(path, specs, outs) -> None:
    """``.npz``: every output by name; otherwise the first output as ``.npy``. Written atomically."""
    import numpy as np

    from .outputs import atomic_write

    if str(path).endswith(".npz"):
        atomic_write(path, lambda f: np.savez(f, **{o.name: np.asarray(v) for o, v in zip(specs, outs)}),
                     "--output")
    else:
        atomic_write(path, lambda f: np.save(f, np.asarray(outs[0])), "--output")


# ------------------------------------------------------------------------------------------ bench

def cmd_bench(args):
    from .bench import benchmark_package, format_result
    from .package import MicroPackage, load_any

    pkg = load_any(args.package)
    if isinstance(pkg, MicroPackage):
        r = pkg.benchmark()
        if args.json:
            print(json.dumps(r, indent=1))
        else:
            print(f"{pkg.manifest['model']['name']} on {pkg.target} (qemu-system-arm, deterministic)")
            for k, v in r.items():
                print(f"  {k}: {v:,}" if isinstance(v, int) else f"  {k}: {v}")
        return 0
    say = _say(args)
    if args.rpc_tracker:
        from .remote import bench_remote, format_bench

        r = bench_remote(pkg, args.rpc_tracker, args.rpc_key or "aarch64", repeat=args.repeat, timeout=args.rpc_timeout)
        print(json.dumps(r, indent=1) if args.json else format_bench(r))
        return 0
    say(f"timing {args.repeat} runs" + (f", and {args.compare} in the same run, in 5 alternating blocks "
                                        f"of {args.warmup} warm-up + timed runs each" if args.compare
                                        else f" after {args.warmup} warm-up"))
    r = benchmark_package(pkg, threads=args.threads, repeat=args.repeat, warmup=args.warmup,
                          compare=args.compare)
    print(json.dumps(r, indent=1) if args.json else format_result(r))
    return 0


# ----------------------------------------------------------------------------------------- passes

def cmd_passes(args):
    from . import passes

    infos = passes.available()
    if args.json:
        print(json.dumps({n: {"summary": i.summary, "params": [
            {"name": p.name, "type": getattr(p.type, "__name__", str(p.type)), "default": p.default,
             "doc": p.doc, "choices": list(p.choices)} for p in i.params]} for n, i in infos.items()},
            indent=1, default=str))
        return 0
    if not infos:
        print("no passes registered")
        return 0
    for name, info in infos.items():
        print(f"{name:<10} {info.summary}")
        for p in info.params:
            ch = f" ({'|'.join(p.choices)})" if p.choices else ""
            print(f"    {p.name}={p.default!s:<8} {p.doc}{ch}")
    return 0


def cmd_targets(args):
    from .targets import format_targets

    print(format_targets())
    return 0


def cmd_export(args):
    from . import outputs
    from .errors import SqccError
    from .export import check_exportable, export_onnx, export_tflite
    from .export.verify import image_feeds
    from .package import load_any

    wanted = [(flag, path) for flag, path in (("--onnx", args.onnx), ("--tflite", args.tflite)) if path]
    if not wanted:
        raise SqccError("nothing to export: give --onnx FILE and/or --tflite FILE")
    for flag, path in wanted:
        outputs.check_writable(path, flag)
    if args.onnx and args.tflite and Path(args.onnx).absolute() == Path(args.tflite).absolute():
        raise SqccError(f"--onnx and --tflite name the same file {args.onnx}")
    pkg = load_any(args.package)
    check_exportable(pkg)
    feeds = image_feeds(pkg, args.check_images, args.check_limit) if args.check_images else None
    for flag, path in wanted:
        export = export_onnx if flag == "--onnx" else export_tflite
        r = export(pkg, path, flag=flag, feeds=feeds)
        print(json.dumps(r, indent=1) if args.json else _export_line(pkg, r))
    return 0


def cmd_farm(args):
    from . import farm

    return farm.cmd(args)


def cmd_tune(args):
    from . import frontend, outputs
    from .errors import SqccError
    from .schedules.tuning import tune
    from .targets import default_records, resolve

    spec = resolve(args.target)
    if spec.family == "micro":
        raise SqccError(f"--target {args.target}: micro targets are not tuned (their cost is deterministic)")
    if args.trials < 1:
        raise SqccError(f"--trials {args.trials}: must be at least 1")
    records = args.records or default_records(spec)
    outputs.check_writable(records, "--records")
    outputs.make_parent(records, "--records")  # said like every other output's new directory
    m = frontend.load(args.model, args.input_shape)
    mod = m.mod
    if args.passes:
        from . import passes as passes_mod
        from .pipeline import run_passes

        ctx = passes_mod.PassContext()
        mod = run_passes(mod, [passes_mod.create(x, ctx) for x in args.passes], args.passes)
    runner = builder = None
    if args.rpc_tracker:
        from .remote import cross_builder, rpc_runner

        runner = rpc_runner(args.rpc_tracker, args.rpc_key or spec.rpc_key or "aarch64",
                            request_timeout=args.rpc_timeout)
        if spec.family == "arm_cpu":
            builder = cross_builder(spec.tvm())
    elif spec.family not in ("host",):
        raise SqccError(f"--target {spec.name} runs on a remote device: give --rpc-tracker HOST:PORT --rpc-key KEY")
    out = tune(mod, spec.tvm(), trials=args.trials, records_path=records,
               max_trials_per_task=args.max_trials_per_task, runner=runner, builder=builder)
    print(f"tuning records for {spec.name}: {out or records}")
    if args.revalidate:
        if runner is not None:
            raise SqccError("--revalidate measures on this machine; it cannot be combined with --rpc-tracker")
        from .schedules.tuning import revalidate

        pinned = revalidate(mod, spec.tvm(), records)
        print(f"re-measured winners pinned in {pinned} (used by --tuning-records {records})")
    print(f"use: sqcc compile {args.model} --target {spec.name} --tuning-records {out or records}")
    return 0


def cmd_sweep(args):
    from . import outputs, planning
    from .errors import SqccError

    say = _say(args)
    try:
        budgets = [float(b) for b in args.budgets.split(",")]
    except ValueError:
        raise SqccError(f"--budgets {args.budgets}: expected fractions separated by commas, e.g. 0.9,0.7,0.5") from None
    for flag, path in (("--plot", args.plot), ("--json", args.json)):
        if path:
            outputs.check_writable(path, flag)
    rows = planning.sweep(args.model, budgets, calibration_inputs=args.calibration,
                          eval_images=args.eval_images, plot=args.plot, progress=say,
                          calibration_limit=args.calibration_limit, calibration_views=args.calibration_views,
                          refine=args.refine, techniques=_techniques(args.techniques) or planning.TECHNIQUES)
    print(planning.format_rows(rows))
    if args.json:
        planning.save_rows(rows, args.json)
    if args.plot:
        print(f"Pareto plot: {args.plot}")
    return 0


# ------------------------------------------------------------------------------------------- main

def _rpc_args(p):
    p.add_argument("--rpc-tracker", metavar="HOST:PORT", help="run on a farm device through this tracker")
    p.add_argument("--rpc-key", help="device key at the tracker (default: the target's, e.g. aarch64)")
    p.add_argument("--rpc-timeout", type=float, default=60.0, help="seconds to wait for a free device")


def _common_args(p):
    p.add_argument("-v", "--verbose", action="store_true", help="show details (tracebacks) on error")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress messages")


def _inspect_args(p):
    p.add_argument("model", help="model name, .onnx/.tflite path, or package .tar")
    p.add_argument("--size", action="store_true", help="bytes per layer under Deep Compression encodings")
    p.add_argument("--input-shape", help="NAME:D1,D2,... (repeat with ;)")
    p.add_argument("--json", action="store_true")


def _compile_args(p):
    p.add_argument("model", help="model name (e.g. squeezenet1.1) or .onnx/.tflite path")
    p.add_argument("-o", "--output", help="package path (.tar)")
    p.add_argument("--target", default="host", help="host | arm_cpu:PRESET | cuda:SM | micro:CORE")
    p.add_argument("--pass", dest="passes", action="append", metavar="NAME[:k=v,...]",
                   help="a rewrite pass (repeatable; see 'sqcc passes')")
    p.add_argument("--input-shape", help="NAME:D1,D2,... overrides the model's input shape")
    p.add_argument("--preprocess", metavar="RECIPE", help="image recipe for a model without one, kept in the "
                   "package: e.g. size=224,resize=256,mean=0.485,0.456,0.406,std=0.229,0.224,0.225,"
                   "layout=NCHW (mode=torch|tf|raw|grey)")
    p.add_argument("--calibration", metavar="DIR", help="images (the model's recipe or --preprocess), or "
                   ".npy/.npz/TensorProto .pb feeds, one per file: for data-aware fitting / calibration")
    p.add_argument("--calibration-limit", type=int, default=32, metavar="N",
                   help="calibration images used, spread over the folder (default 32)")
    p.add_argument("--calibration-views", type=int, default=1, metavar="K",
                   help="views of each calibration image (1: as evaluated; 2 adds its mirror; up to 10: "
                        "the ten-crop views): more calibration data from the same images")
    p.add_argument("--budget", metavar="macs=F|params=F", help="allocate rewrites to meet a budget")
    p.add_argument("--techniques", metavar="LIST",
                   help="with --budget: the rewrites the plan may use, comma-separated (default "
                        "lowrank,dwsep,flatten,poolhoist; lowrank:weight|channel|spatial for one scheme)")
    p.add_argument("--refine", action="store_true",
                   help="with --budget and --calibration: re-choose each planned layer's technique with the "
                        "whole plan realised, fitted on half the calibration images and scored on the other "
                        "half (a refit of the plan per try)")
    p.add_argument("--eval-images", metavar="DIR", help="labelled images: report accuracy and agreement")
    p.add_argument("--tuning-records", metavar="FILE", help="apply a tuning database")
    p.add_argument("--dump-ir", metavar="DIR", help="write the Relax IR after every phase")
    p.add_argument("--force", action="store_true",
                   help="rewrite layers even when MACs do not drop; write the package even when the "
                   "compile does not match the original model (marked so in the manifest)")
    p.add_argument("--no-check", action="store_true", help="skip the comparison with the original model")
    p.add_argument("--size-report", action="store_true",
                   help="print bytes per layer: dense, pruned CSR, shared-index, Huffman-coded")
    p.add_argument("--emit-onnx", metavar="FILE", help="also export the rewritten graph as ONNX (QDQ for "
                   "int8), checked in onnxruntime against the package (see 'sqcc export')")


def _run_args(p):
    p.add_argument("package")
    p.add_argument("--image")
    p.add_argument("--input", help=".npy or ONNX TensorProto .pb")
    p.add_argument("--output", help="save the first output as .npy")
    p.add_argument("--print-top", type=int, default=5)
    _rpc_args(p)


def _bench_args(p):
    p.add_argument("package")
    p.add_argument("--compare", metavar="onnxruntime", help="time the original model in onnxruntime too")
    p.add_argument("--threads", type=int, help="threads for sqcc and the peer (default: all cores)")
    p.add_argument("--repeat", type=int, default=50)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--json", action="store_true")
    _rpc_args(p)


def _passes_args(p):
    p.add_argument("--json", action="store_true")


def _targets_args(p):
    """No arguments of its own."""


def _tune_args(p):
    p.add_argument("model")
    p.add_argument("--target", default="host")
    p.add_argument("--trials", type=int, default=2000)
    p.add_argument("--max-trials-per-task", type=int)
    p.add_argument("--records", metavar="FILE", help="tuning database (default ~/.cache/sqcc/tuning/TARGET.json)")
    p.add_argument("--pass", dest="passes", action="append", metavar="NAME[:k=v,...]",
                   help="tune the rewritten graph's kernels")
    p.add_argument("--input-shape")
    p.add_argument("--revalidate", action="store_true",
                   help="after tuning, re-measure each kernel's best candidates and the default schedule "
                        "against each other (run on a quiet machine) and pin the winners")
    _rpc_args(p)


def _sweep_args(p):
    p.add_argument("model")
    p.add_argument("--budgets", default="0.9,0.8,0.7,0.6,0.5")
    p.add_argument("--calibration", metavar="DIR", required=True)
    p.add_argument("--calibration-limit", type=int, default=64, metavar="N",
                   help="calibration images used, spread over the folder (default 64)")
    p.add_argument("--calibration-views", type=int, default=1, metavar="K",
                   help="views of each calibration image (see compile --calibration-views)")
    p.add_argument("--eval-images", metavar="DIR")
    p.add_argument("--plot", metavar="PNG")
    p.add_argument("--json", metavar="FILE", help="save the rows as JSON")
    p.add_argument("--refine", action="store_true",
                   help="re-choose each planned layer's technique end to end (see compile --refine)")
    p.add_argument("--techniques", metavar="LIST",
                   help="the rewrites the plan may use, comma-separated (default "
                        "lowrank,dwsep,flatten,poolhoist; lowrank:weight|channel|spatial for one scheme)")


def _export_args(p):
    p.add_argument("package", help="package .tar (a host package compiled by this sqcc)")
    p.add_argument("--onnx", metavar="FILE", help="the rewritten graph as ONNX (opset 17; int8: QDQ)")
    p.add_argument("--tflite", metavar="FILE", help="the rewritten graph as float TFLite")
    p.add_argument("--check-images", metavar="DIR", help="check the exported file against the package on "
                   "these images (default: one random input)")
    p.add_argument("--check-limit", type=int, default=8, metavar="N", help="images checked (default 8)")
    p.add_argument("--json", action="store_true", help="print what was written and how well it matched as JSON")


def _farm_args(p):
    from . import farm

    farm.add_arguments(p)


# verb, help, its arguments, what runs it
VERBS = [
    ("inspect", "per-layer table of a model or a package", _inspect_args, cmd_inspect),
    ("compile", "import, rewrite, build, check; write a package", _compile_args, cmd_compile),
    ("run", "run a package on an image or a tensor", _run_args, cmd_run),
    ("bench", "latency: median/min/max, and the peer in the same run", _bench_args, cmd_bench),
    ("passes", "list the rewrite passes and their parameters", _passes_args, cmd_passes),
    ("targets", "list targets and presets", _targets_args, cmd_targets),
    ("tune", "MetaSchedule tuning into a durable records file (resumable)", _tune_args, cmd_tune),
    ("sweep", "accuracy/agreement vs MACs for several budgets (Pareto plot)", _sweep_args, cmd_sweep),
    ("export", "the rewritten graph as ONNX / TFLite, checked in onnxruntime / LiteRT", _export_args,
     cmd_export),
    ("farm", "a local TVM RPC farm: tracker + host node + emulated aarch64 node", _farm_args, cmd_farm),
]


def build_parser():
    ap = argparse.ArgumentParser(prog="sqcc", description="compression compiler for trained CNNs on TVM")
    ap.add_argument("--version", action="version", version=f"sqcc {_version()}")
    sub = ap.add_subparsers(dest="cmd", metavar="COMMAND")
    for name, help_, add_args, func in VERBS:
        p = sub.add_parser(name, help=help_)
        add_args(p)
        _common_args(p)
        p.set_defaults(func=func)
    return ap


def _version():
    from . import __version__

    return __version__


def main(argv=None):
    ap = build_parser()
    args = ap.parse_args(argv)
    if not getattr(args, "func", None):
        ap.print_help()
        return EXIT_USER
    if getattr(args, "threads", None):
        os.environ["TVM_NUM_THREADS"] = str(args.threads)
    from . import interrupts
    from .errors import SqccError, one_line

    try:
        with interrupts.handling():
            try:
                return args.func(args) or 0
            except Exception:
                interrupts.check()  # an interrupt TVM's FFI turned into an error is still one
                raise
    except SqccError as e:
        print(f"sqcc: error: {e}", file=sys.stderr)
        _print_cause(args, e)
        return EXIT_USER
    except KeyboardInterrupt:
        interrupts.end_children()  # MetaSchedule's measuring workers, a qemu, an RPC server
        print("sqcc: interrupted", file=sys.stderr)
        return 128 + interrupts.signal_number()
    except BrokenPipeError:
        return 0
    except Exception as e:  # a bug in sqcc: still one line unless -v
        why = one_line(e)
        why = why if why == type(e).__name__ else f"{type(e).__name__}: {why}"
        print(f"sqcc: internal error: {why} (run with -v for details)", file=sys.stderr)
        _print_cause(args, e)
        return 1


def _print_cause(args, e: BaseException) -> None:
    if args.verbose:
        import traceback

        traceback.print_exception(e)

if __name__ == "__main__":
    sys.exit(main())
