#!/usr/bin/env python
"""Figures for issue 8: channel shuffle and Deep Compression on SqueezeNet 1.1.

1. ``shuffle`` on the squeeze and/or expand1x1 layers for groups 1, 2, 4, 8, with weight-only and
   calibration-aware (output-energy partition + least-squares refit) fitting: model MACs, weight
   energy kept, and top-1 agreement with the original model (onnxruntime) on the image folder.
2. Deep Compression: prune 0.6 (per-layer, and sensitivity-guided) then share 8 / 6 bits: the size
   report (dense fp32 → CSR → shared → Huffman), against the paper's SqueezeNet 4.8 MB → 0.66 MB
   (8-bit) → 0.47 MB (6-bit), with top-1 agreement (and accuracy, from labels.json) at each point.
3. Dense vs sparse kernel: the same layer GEMM as dense BLAS (numpy) and as CSR (scipy.sparse) at
   the pruned density, to say whether a sparse kernel would pay on this CPU.

Calibration uses ``--calib`` images spread over the folder (they are part of the evaluated set;
agreement on the held-out rest is reported too).

    python benchmarks/compression_report.py [--images DIR] [--limit 200] [--calib 32]
        [--out compression_report.json] [--skip-shuffle] [--skip-dc]
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_IMAGES = ROOT.parent / "shared" / "data" / "imagenet-sample"


def log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def load_inputs(model, folder, limit):
    from sqcc.preprocess import list_images, load_image, load_labels

    files = list_images(folder)[:limit]
    labels = load_labels(folder) or {}
    xs = [load_image(f, model.preprocess, model.inputs[0].dtype) for f in files]
    ys = [labels.get(f.name) for f in files]
    return files, xs, ys


def run_model(mod, xs, keep_vm: dict | None = None):
    import tvm
    from tvm import relax

    from sqcc.build import build

    t0 = time.perf_counter()
    ex = build(mod, "host")
    tb = time.perf_counter() - t0
    vm = relax.VirtualMachine(ex, tvm.cpu())
    outs = []
    for x in xs:
        outs.append(vm["main"](tvm.runtime.tensor(x, tvm.cpu())).numpy().reshape(-1))
    if keep_vm is not None:
        keep_vm["vm"] = vm
    return np.stack(outs), tb


def latency_vs(vm, base_vm, x, runs=60):
    """Median latency of ``vm`` and of the original model's ``base_vm`` (alternating blocks)."""
    import tvm

    from sqcc.bench import time_blocks

    xt = tvm.runtime.tensor(x, tvm.cpu())
    t = time_blocks({"model": lambda: vm["main"](xt), "original": lambda: base_vm["main"](xt)}, runs, 5)
    return {"latency_ms": t["model"]["median_ms"], "original_ms": t["original"]["median_ms"],
            "speedup": t["original"]["median_ms"] / t["model"]["median_ms"]}


def depthwise_multiplier_latency(runs=100):
    """dwsep's depthwise 3x3 conv with channel multiplier M, followed by its 1x1 pointwise conv:
    latency with and without sqcc's multiplier split (:func:`sqcc.schedules.layout.split_depthwise_multiplier`)."""
    import tvm
    from tvm import relax

    import sqcc.schedules.layout as layout
    from sqcc.bench import time_blocks
    from sqcc.build import build, host_target

    target = host_target()
    rng = np.random.default_rng(0)
    rows = []
    split = layout.split_depthwise_multiplier
    for c, hw in [(64, 55), (128, 27)]:
        x = tvm.runtime.tensor(rng.standard_normal((1, c, hw, hw)).astype("float32"))
        fns, outs = {}, {}
        for m in (1, 2, 4):
            wd = rng.standard_normal((c * m, 1, 3, 3)).astype("float32")
            wp = rng.standard_normal((64, c * m, 1, 1)).astype("float32")
            bb = relax.BlockBuilder()
            xv = relax.Var("x", relax.TensorType((1, c, hw, hw), "float32"))
            with bb.function("main", [xv]):
                with bb.dataflow():
                    d = bb.emit(relax.op.nn.relu(relax.op.nn.conv2d(xv, relax.const(wd), groups=c, padding=1)))
                    out = bb.emit_output(relax.op.nn.conv2d(d, relax.const(wp)))
                bb.emit_func_output(out)
            for on in ((True,) if m == 1 else (True, False)):
                layout.split_depthwise_multiplier = split if on else (lambda: tvm.transform.Sequential([]))
                try:
                    vm = relax.VirtualMachine(build(bb.get(), target), tvm.cpu())
                finally:
                    layout.split_depthwise_multiplier = split
                key = f"M={m}" + ("" if m == 1 else (" split" if on else " as is"))
                fns[key] = lambda vm=vm: vm["main"](x)
                outs[key] = vm["main"](x).numpy()
        t = time_blocks(fns, runs, 10)
        for k, v in t.items():
            m = int(k[2])
            rel = float(np.abs(outs[k] - outs[f"M={m}" + ("" if m == 1 else " as is")]).max() /
                        np.abs(outs[k]).max())
            rows.append({"shape": f"dw3x3 {c}ch @{hw}x{hw} + 1x1 to 64", "variant": k,
                         "median_us": v["median_ms"] * 1e3, "macs": c * m * hw * hw * (9 + 64),
                         "max_rel_diff_vs_unsplit": rel})
            log(f"{c}@{hw} {k}: {v['median_ms'] * 1e3:.0f} us")
    return rows


def grouped_conv_latency(groups=(1, 2, 4, 8), runs=200):
    """Latency of SqueezeNet 1.1's squeeze/expand1x1 shapes as dense and g-group 1x1 convs (+ReLU),
    sqcc default schedules, and of a channel shuffle (one gather) on the same tensor."""
    import tvm
    from tvm import relax

    from sqcc.bench import time_blocks
    from sqcc.build import build, host_target

    target = host_target()
    rows = []
    rng = np.random.default_rng(0)

    def vm_for(c, hw, body):
        bb = relax.BlockBuilder()
        x = relax.Var("x", relax.TensorType((1, c, hw, hw), "float32"))
        with bb.function("main", [x]):
            with bb.dataflow():
                out = bb.emit_output(body(bb, x))
            bb.emit_func_output(out)
        return relax.VirtualMachine(build(bb.get(), target), tvm.cpu())

    for name, c, o, hw in [("fire9/squeeze", 512, 64, 13), ("fire9/expand1x1", 64, 256, 13),
                           ("fire5/squeeze", 256, 32, 27), ("fire2/expand1x1", 16, 64, 55)]:
        fns = {}
        for g in groups:
            if c % g or o % g:
                continue
            w = rng.standard_normal((o, c // g, 1, 1)).astype("float32")
            fns[f"g={g}"] = vm_for(c, hw, lambda bb, x, w=w, g=g: bb.emit(
                relax.op.nn.relu(relax.op.nn.conv2d(x, relax.const(w), groups=g))))
        perm = np.arange(o).reshape(4, -1).T.reshape(-1).astype("int64")  # ShuffleNet's g=4 shuffle
        fns["shuffle (gather)"] = vm_for(o, hw, lambda bb, x: bb.emit(
            relax.op.take(x, relax.const(perm), axis=1)))
        xs = {k: tvm.runtime.tensor(rng.standard_normal((1, o if k.startswith("shuffle") else c, hw, hw))
                                    .astype("float32")) for k in fns}
        t = time_blocks({k: (lambda vm=vm, k=k: vm["main"](xs[k])) for k, vm in fns.items()}, runs, 20)
        dense = t["g=1"]["median_ms"]
        for k, v in t.items():
            rows.append({"layer": name, "shape": f"{c}->{o} @{hw}x{hw}", "variant": k,
                         "median_us": v["median_ms"] * 1e3, "speedup_vs_dense": dense / v["median_ms"],
                         "mac_ratio": (int(k[2:]) if k.startswith("g=") else None)})
            log(f"{name} {k}: {v['median_ms'] * 1e3:.1f} us ({dense / v['median_ms']:.2f}x of dense)")
    return rows


def agreement(logits, ref, labels, calib_idx, offset=0):
    top = logits.argmax(1)
    rtop = ref.argmax(1)
    agree = top == rtop
    held = np.setdiff1d(np.arange(len(top)), calib_idx)
    d = {"images": int(len(top)), "top1_agreement": float(agree.mean()),
         "top1_agree_count": int(agree.sum()), "heldout_images": int(len(held)),
         "heldout_top1_agreement": float(agree[held].mean()) if len(held) else None,
         "rel_l2": float(np.linalg.norm(logits - ref) / np.linalg.norm(ref))}
    lab = [(i, y) for i, y in enumerate(labels) if y is not None]
    if lab:
        idx = np.array([i for i, _ in lab])
        yy = np.array([y for _, y in lab]) + offset
        d["top1_accuracy"] = float((top[idx] == yy).mean())
        d["ref_top1_accuracy"] = float((rtop[idx] == yy).mean())
    return d


def model_macs(mod):
    from sqcc import layers

    return layers.totals(layers.layers(mod))["macs"]


def shuffle_figures(m, xs, ref, labels, acts, calib_idx, groups, sets, offset, base_vm=None):
    from sqcc import passes

    rows = []
    base_macs = model_macs(m.mod)
    stats_cache = {}
    for layer_set in sets:
        for g in groups:
            if g == 1 and layer_set != sets[-1]:
                continue  # groups=1 is exact (identity partition): measured once
            for fit in (("weight",) if g == 1 else ("weight", "data")):
                ctx = passes.PassContext(activations=acts)  # fit=weight uses them only to report errors
                ctx.extra["shuffle_stats"] = stats_cache
                t0 = time.perf_counter()
                mod = passes.create(f"shuffle:groups={g},layers={layer_set},fit={fit}", ctx)(m.mod)
                tp = time.perf_counter() - t0
                keep = {}
                logits, tb = run_model(mod, xs, keep)
                recs = [r for r in ctx.records if r.technique == "shuffle" and r.applied]
                sh = ctx.extra.get("shuffle", {})
                kept = [v["kept_weight_energy"] for v in sh.values()]
                oerr = [v["output_error"] for v in sh.values() if v["output_error"] is not None]
                gathers = sum(("gather" in v["input"]) + ("gather" in v["output"]) for v in sh.values())
                row = {"layers": layer_set, "groups": g, "fit": fit, "rewritten": len(recs),
                       "macs": model_macs(mod), "macs_ratio": model_macs(mod) / base_macs,
                       "layer_macs_before": int(sum(r.macs_before for r in recs)),
                       "layer_macs_after": int(sum(r.macs_after for r in recs)),
                       "mean_weight_energy_kept": float(np.mean(kept)) if kept else 1.0,
                       "mean_output_error": float(np.mean(oerr)) if oerr else None,
                       "gathers": int(gathers), "pass_s": tp, "build_s": tb,
                       **agreement(logits, ref, labels, calib_idx, offset)}
                if base_vm is not None:
                    row.update(latency_vs(keep["vm"], base_vm, xs[0]))
                rows.append(row)
                log(f"shuffle {layer_set} g={g} fit={fit}: MACs {row['macs_ratio']:.3f}, agreement "
                    f"{row['top1_agreement']:.3f} (held-out {row['heldout_top1_agreement']:.3f}), energy kept "
                    f"{row['mean_weight_energy_kept']:.3f}, gathers {gathers}")
    return rows


def dc_figures(m, xs, ref, labels, acts, calib_idx, offset):
    from sqcc import passes
    from sqcc.size_report import size_report

    points = [("original", []),
              ("prune 0.6 magnitude (Han, no refit)", ["prune:sparsity=0.6,fit=weight"]),
              ("prune 0.6 magnitude + share 8", ["prune:sparsity=0.6,fit=weight", "share:bits=8"]),
              ("prune 0.6 magnitude + share 6", ["prune:sparsity=0.6,fit=weight", "share:bits=6"]),
              ("prune 0.6 data-aware", ["prune:sparsity=0.6"]),
              ("prune 0.6 data-aware + share 8", ["prune:sparsity=0.6", "share:bits=8"]),
              ("prune 0.6 data-aware + share 6", ["prune:sparsity=0.6", "share:bits=6"]),
              ("prune 0.6 global data-aware", ["prune:sparsity=0.6,scope=global"]),
              ("prune 0.6 global data-aware + share 8", ["prune:sparsity=0.6,scope=global", "share:bits=8"]),
              ("prune 0.6 global data-aware + share 6", ["prune:sparsity=0.6,scope=global", "share:bits=6"]),
              ("prune 0.6 sensitivity data-aware + share 6", ["prune:sparsity=0.6,sensitivity=true", "share:bits=6"]),
              ("share 8 (no pruning)", ["share:bits=8"]),
              ("share 6 (no pruning)", ["share:bits=6"])]
    cov_cache = {}
    rows = []
    for label, specs in points:
        ctx = passes.PassContext(activations=acts)
        ctx.extra["dc_patch_moments"] = cov_cache
        mod = m.mod
        t0 = time.perf_counter()
        for s in specs:
            mod = passes.create(s, ctx)(mod)
        tp = time.perf_counter() - t0
        rep = size_report(mod).to_json()
        logits, tb = run_model(mod, xs)
        row = {"point": label, "passes": specs, "pass_s": tp, "size": rep["totals"],
               "size_layers": rep["layers"], **agreement(logits, ref, labels, calib_idx, offset)}
        rows.append(row)
        t = rep["totals"]
        log(f"{label}: dense {t['dense_total_bytes'] / 2**20:.3f} MiB, csr {t['csr_total_bytes'] / 2**20:.3f}, "
            f"shared {t['shared_total_bytes'] / 2**20:.3f}, huffman {t['huffman_total_bytes'] / 2**20:.3f} MiB; "
            f"agreement {row['top1_agreement']:.3f}")
    return rows


def paper_model_sizes(model="squeezenet1.0"):
    """Size report of the paper's own model (SqueezeNet 1.0) at the paper's 33% density and at 40%,
    magnitude-pruned, shared at 8 and 6 bits (sizes only: no run)."""
    from sqcc import frontend, passes
    from sqcc.size_report import size_report

    m = frontend.load(model)
    rows = []
    for sp, bits in ((0.67, 8), (0.67, 6), (0.6, 8), (0.6, 6)):
        ctx = passes.PassContext()
        mod = passes.create(f"prune:sparsity={sp},fit=weight", ctx)(m.mod)
        mod = passes.create(f"share:bits={bits}", ctx)(mod)
        t = size_report(mod).to_json()["totals"]
        rows.append({"model": model, "sparsity": sp, "bits": bits, **t})
        log(f"{model} density {1 - sp:.2f}, {bits} bits: dense {t['dense_total_bytes'] / 2**20:.3f} MiB → "
            f"CSR {t['csr_total_bytes'] / 2**20:.3f} → shared {t['shared_total_bytes'] / 2**20:.3f} → "
            f"Huffman {t['huffman_total_bytes'] / 2**20:.3f} MiB")
    return rows


def sparse_vs_dense(m, density=0.4, repeat=50):
    """One GEMM per layer shape, dense (numpy BLAS) vs CSR (scipy.sparse), at the pruned density:
    minimum of ``repeat`` interleaved runs each."""
    import scipy.sparse as sp

    from sqcc.layers import layers, weight_arrays

    ws = weight_arrays(m.mod)
    info = {l.name: l for l in layers(m.mod)}
    rng = np.random.default_rng(0)
    out = []
    for name in ("conv21", "conv24", "conv25", "conv9"):
        w = ws[name]
        n = w.shape[0]
        k = int(np.prod(w.shape[1:]))
        hw = int(np.prod(info[name].out_shape[2:]))
        a = w.reshape(n, k).copy()
        a[np.abs(a) < np.quantile(np.abs(a), 1 - density)] = 0
        x = rng.standard_normal((k, hw)).astype(np.float32)
        csr = sp.csr_matrix(a)

        def timed(fn):
            t0 = time.perf_counter()
            fn()
            return time.perf_counter() - t0

        dense_fn, csr_fn = (lambda: a @ x), (lambda: csr @ x)
        dense_fn(), csr_fn()
        tds, tss = [], []
        for _ in range(repeat):  # interleaved: the machine is shared and drifts
            tds.append(timed(dense_fn))
            tss.append(timed(csr_fn))
        td, ts_ = float(np.min(tds)), float(np.min(tss))
        out.append({"layer": name, "gemm": [n, k, hw], "density": float(np.count_nonzero(a) / a.size),
                    "dense_ms": td * 1e3, "csr_ms": ts_ * 1e3, "csr_over_dense": ts_ / td})
        log(f"{name} GEMM {n}×{k}×{hw} at density {out[-1]['density']:.2f}: dense {td * 1e3:.3f} ms, "
            f"CSR {ts_ * 1e3:.3f} ms ({ts_ / td:.2f}×), min of {repeat}")
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="squeezenet1.1")
    ap.add_argument("--images", default=str(DEFAULT_IMAGES))
    ap.add_argument("--limit", type=int, default=200)
    ap.add_argument("--calib", type=int, default=32)
    ap.add_argument("--groups", default="1,2,4,8")
    ap.add_argument("--sets", default="squeeze,expand1x1,squeeze+expand1x1")
    ap.add_argument("--out", default="compression_report.json")
    ap.add_argument("--skip-shuffle", action="store_true")
    ap.add_argument("--skip-dc", action="store_true")
    ap.add_argument("--only-latency", action="store_true", help="only the grouped-conv latency table")
    ap.add_argument("--only-offline", action="store_true",
                    help="only what needs no model runs: SqueezeNet 1.0 size table (the paper's model) and "
                         "the dense-vs-sparse GEMM timing")
    args = ap.parse_args(argv)

    from sqcc import frontend
    from sqcc.calibrate import collect_activations
    from sqcc.reference import reference_session

    m = frontend.load(args.model)
    if args.only_latency:
        r = {"grouped_conv_latency": grouped_conv_latency(),
             "depthwise_multiplier_latency": depthwise_multiplier_latency(),
             "tvm_threads": __import__("os").environ.get("TVM_NUM_THREADS", "default")}
        Path(args.out).write_text(json.dumps(r, indent=1))
        print_tables(r)
        return
    if args.only_offline:
        r = {"model": args.model, "paper_model_sizes": paper_model_sizes(), "sparse_vs_dense": sparse_vs_dense(m)}
        Path(args.out).write_text(json.dumps(r, indent=1))
        print_tables(r)
        return
    files, xs, labels = load_inputs(m, args.images, args.limit)
    log(f"{len(xs)} images from {args.images}")
    sess = reference_session(m)
    ref = np.stack([sess.run({m.inputs[0].name: x})[0].reshape(-1) for x in xs])
    calib_idx = np.unique(np.linspace(0, len(xs) - 1, args.calib).round().astype(int))
    log(f"calibrating on {len(calib_idx)} images")
    acts = collect_activations(m.mod, [{m.inputs[0].name: xs[i]} for i in calib_idx])
    offset = m.preprocess.class_offset if m.preprocess else 0
    result = {"model": args.model, "images": len(xs), "calibration_images": int(len(calib_idx)),
              "tvm_threads": __import__("os").environ.get("TVM_NUM_THREADS", "default")}
    keep = {}
    base, _ = run_model(m.mod, xs, keep)
    result["baseline"] = agreement(base, ref, labels, calib_idx, offset)
    log(f"baseline (unmodified, TVM vs onnxruntime): {result['baseline']}")
    if not args.skip_shuffle:
        sets = [s.replace("+", ",") for s in args.sets.split(",") if s]
        groups = [int(g) for g in args.groups.split(",")]
        result["shuffle"] = shuffle_figures(m, xs, ref, labels, acts, calib_idx, groups, sets, offset,
                                            keep["vm"])
        result["grouped_conv_latency"] = grouped_conv_latency()
    if not args.skip_dc:
        result["deep_compression"] = dc_figures(m, xs, ref, labels, acts, calib_idx, offset)
        result["paper_model_sizes"] = paper_model_sizes()
        result["sparse_vs_dense"] = sparse_vs_dense(m)
    Path(args.out).write_text(json.dumps(result, indent=1, default=float))
    log(f"wrote {args.out}")
    print_tables(result)


def print_tables(r):
    if "shuffle" in r:
        print("\nshuffle (SqueezeNet 1.1): layers | groups | fit | model MACs (ratio) | energy kept | "
              "output err | gathers | top-1 agreement (held-out) | latency ms (speed-up vs original)")
        for x in r["shuffle"]:
            oe = f"{x['mean_output_error']:.3f}" if x["mean_output_error"] is not None else "-"
            lat = f" {x['latency_ms']:.3f} ({x['speedup']:.2f}x)" if "latency_ms" in x else ""
            print(f"{x['layers']:<18} {x['groups']} {x['fit']:<6} {x['macs'] / 1e6:8.1f}M ({x['macs_ratio']:.3f}) "
                  f"{x['mean_weight_energy_kept']:.3f} {oe:>6} {x['gathers']:>2} "
                  f"{x['top1_agreement']:.3f} ({x['heldout_top1_agreement']:.3f}){lat}")
    if "grouped_conv_latency" in r:
        print("\ngrouped 1x1 conv + ReLU latency (sqcc default schedules): layer | shape | variant | median us | "
              "speed-up vs dense (MACs ratio)")
        for x in r["grouped_conv_latency"]:
            print(f"{x['layer']:<16} {x['shape']:<16} {x['variant']:<17} {x['median_us']:8.1f} "
                  f"{x['speedup_vs_dense']:5.2f}x" + (f" (MACs /{x['mac_ratio']})" if x["mac_ratio"] else ""))
    if "depthwise_multiplier_latency" in r:
        print("\ndepthwise multiplier M (dwsep) + pointwise: shape | variant | median us | GMAC/s | max rel diff")
        for x in r["depthwise_multiplier_latency"]:
            print(f"{x['shape']:<30} {x['variant']:<10} {x['median_us']:8.1f} "
                  f"{x['macs'] / x['median_us'] / 1e3:6.1f} {x['max_rel_diff_vs_unsplit']:.1e}")
    if "deep_compression" in r:
        print("\nDeep Compression (SqueezeNet 1.1): point | density | dense | CSR | shared | Huffman (MiB) | "
              "ratio | top-1 agreement | top-1 acc")
        for x in r["deep_compression"]:
            t = x["size"]
            print(f"{x['point']:<32} {t['density']:.3f} " + " ".join(
                f"{t[k + '_total_bytes'] / 2**20:6.3f}" for k in ("dense", "csr", "shared", "huffman"))
                  + f" {t['compression']:5.1f}× {x['top1_agreement']:.3f} {x.get('top1_accuracy', float('nan')):.3f}")
        print("paper (SqueezeNet 1.0, 33% density, retrained): 4.8 MB → 0.66 MB (8-bit) → 0.47 MB (6-bit)")
    if "paper_model_sizes" in r:
        print("\nthe paper's model (SqueezeNet 1.0), magnitude pruned + shared: density | bits | dense | CSR | "
              "shared | Huffman (MiB)")
        for x in r["paper_model_sizes"]:
            print(f"{1 - x['sparsity']:.2f} {x['bits']} " + " ".join(
                f"{x[k + '_total_bytes'] / 2**20:6.3f}" for k in ("dense", "csr", "shared", "huffman")))
        print("paper: 4.8 MB → 0.66 MB (8-bit) → 0.47 MB (6-bit) at 33% density")
    if "sparse_vs_dense" in r:
        print("\nsparse vs dense GEMM (numpy BLAS vs scipy CSR):")
        for x in r["sparse_vs_dense"]:
            print(f"{x['layer']:<8} {x['gemm']} density {x['density']:.2f}: dense {x['dense_ms']:.3f} ms, "
                  f"CSR {x['csr_ms']:.3f} ms ({x['csr_over_dense']:.2f}×)")


if __name__ == "__main__":
    main()
