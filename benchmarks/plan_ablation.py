"""What each rewrite of a budget plan costs end to end: realise the plan, then realise it again with
one layer left original (leave one out) or with one layer's rewrite replaced, and report held-out
top-1 agreement and KL for each, with the MACs each rewrite saves.

    python benchmarks/plan_ablation.py squeezenet1.1 --budget 0.7 \\
        --plan benchmarks/results/sweep_squeezenet1.1.json --out out/ablation_squeezenet1.1

The plan is the data-mode row of ``--budget`` in a sweep's JSON (``sweep_lowrank.py`` writes it), so the
ablation runs on exactly the plan that sweep measured. ``--layers conv3,conv6`` limits the leave-one-out
runs; ``--replace conv6=dwsep:multiplier=4`` (repeatable) adds a run with that layer's rewrite swapped.
Every run is realised the way the sweep realises a plan (sequential refit, ReLU-aware, compensation),
built with TVM (llvm) and run on all images of ``--images``; the calibration images are the sweep's
(``--calib`` spread evenly), and "held-out" means the others. One run takes 3–12 minutes on one core
for SqueezeNet (the sequential refit builds once per layer below the first rewrite).

Read the "KL per M MACs" column as the price of each rewrite: a budget allocation is balanced when
these are about equal, and a layer whose price stands out was given the wrong rank or technique.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


HERE = Path(__file__).resolve().parent
DEFAULT_IMAGES = HERE.parents[1] / "shared" / "data" / "imagenet-sample"


def without(specs: list[str], layer: str) -> list[str]:
    """The pass specs with ``layer`` dropped from every ``layers=`` list (specs left empty go)."""
    out = []
    for s in specs:
        head, sep, lay = s.rpartition("layers=")
        if not sep:
            raise SystemExit(f"plan spec '{s}' has no layers= list")
        keep = [x for x in lay.split(",") if x != layer]
        if keep:
            out.append(head + "layers=" + ",".join(keep))
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", nargs="?", default="squeezenet1.1")
    ap.add_argument("--plan", required=True, help="a sweep's JSON (sweep_lowrank.py --out PREFIX writes PREFIX.json)")
    ap.add_argument("--budget", type=float, default=0.7, help="which data-mode row of --plan")
    ap.add_argument("--images", default=str(DEFAULT_IMAGES))
    ap.add_argument("--calib", type=int, default=64)
    ap.add_argument("--layers", default=None, help="leave-one-out only these layers (default: every rewritten one)")
    ap.add_argument("--replace", action="append", default=[], metavar="LAYER=SPEC",
                    help="also run the plan with LAYER rewritten by SPEC instead, e.g. conv6=dwsep:multiplier=4")
    ap.add_argument("--out", default=None, help="output prefix (writes PREFIX.md and PREFIX.json)")
    args = ap.parse_args(argv)

    from sqcc import frontend, planning
    from sqcc.calibrate import calibration_feeds, collect_activations

    rows = json.loads(Path(args.plan).read_text())
    try:
        row = next(r for r in rows if r.get("mode") == "data" and abs(r["budget"] - args.budget) < 1e-9)
    except StopIteration:
        raise SystemExit(f"{args.plan}: no data-mode row for budget {args.budget:g}") from None
    specs, plan = row["passes"], {e["layer"]: e for e in row["plan"]}
    layers = args.layers.split(",") if args.layers else list(plan)
    unknown = [x for x in layers if x not in plan]
    if unknown:
        raise SystemExit(f"--layers: {', '.join(unknown)} not rewritten by the plan (it rewrites {', '.join(plan)})")
    runs = [("plan", specs, 0)]
    runs += [(f"without {x} ({plan[x]['technique']} {plan[x]['rank']})", without(specs, x),
              plan[x]["macs_before"] - plan[x]["macs_after"]) for x in layers]
    for rep in args.replace:
        x, sep, spec = rep.partition("=")
        if not sep or x not in plan or ":" not in spec:
            raise SystemExit(f"--replace {rep}: expected LAYER=TECHNIQUE:PARAMS with LAYER rewritten by the plan")
        runs.append((f"{x} as {spec}", without(specs, x) + [f"{spec},fit=data,layers={x}"], None))

    t0 = time.time()
    m = frontend.load(args.model)
    calib = calibration_feeds(m, args.images, limit=args.calib)
    feeds, _, _ = planning.eval_set(m, args.images)
    acts = collect_activations(m.mod, calib, max_samples=len(calib))
    ref = planning.predict_logits(m.mod, feeds)
    ho = planning.heldout_mask(calib, feeds)
    total, _ = planning.model_totals(m.mod)
    results = []
    for name, sp, saved in runs:
        t1 = time.time()
        mod, recs = planning.realise(m.mod, sp, acts, calib)
        y = planning.predict_logits(mod, feeds)
        agree = y.argmax(1) == ref.argmax(1)
        macs = total - sum(r.macs_before - r.macs_after for r in recs if r.applied)
        res = {"run": name, "specs": sp, "macs_frac": macs / total, "agreement": float(agree.mean()),
               "agreement_heldout": float(agree[ho].mean()), "kl_heldout": planning.mean_kl(ref[ho], y[ho]),
               "kl_calibration": planning.mean_kl(ref[~ho], y[~ho]), "saved": saved, "seconds": time.time() - t1}
        results.append(res)
        print(f"{name}: MACs {res['macs_frac']:.3f} agreement {res['agreement']:.3f} held-out "
              f"{res['agreement_heldout']:.3f} KL held-out {res['kl_heldout']:.4f} ({res['seconds']:.0f}s)", flush=True)

    base = results[0]
    lines = [f"{args.model}: ablation of the {args.budget:g} MAC-budget plan of {args.plan}; calibration {len(calib)} "
             f"images of {args.images}, {int(ho.sum())} held out; TVM llvm; {time.time() - t0:.0f} s", "",
             "| run | MAC frac | agreement | held-out | KL held-out | KL calibration | KL per M MACs saved |",
             "|---|---|---|---|---|---|---|"]
    for r in results:
        price = ""
        if r["saved"]:
            price = f"{(base['kl_heldout'] - r['kl_heldout']) / (r['saved'] / 1e6):.5f}"
        lines.append(f"| {r['run']} | {r['macs_frac']:.3f} | {r['agreement']:.3f} | {r['agreement_heldout']:.3f} | "
                     f"{r['kl_heldout']:.4f} | {r['kl_calibration']:.4f} | {price} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        Path(f"{out}.md").write_text(text)  # not with_suffix: "squeezenet1.1" has one
        Path(f"{out}.json").write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
