"""Budget sweep of the factorisation rewrites: MACs, params, top-1 agreement with the original and top-1
accuracy for weight-only and data-aware fitting, plus the Pareto PNG.

    python benchmarks/sweep_lowrank.py squeezenet1.1 --budgets 0.9,0.8,0.7,0.6,0.5 \\
        --images ../shared/data/imagenet-sample --out out/sweep_squeezenet

Calibration uses ``--calib N`` images of the folder spread evenly over it (default 64); evaluation
uses all its images (``--eval-limit`` to cut). Agreement is also reported on the held-out images (those
not used for calibration) — the headline figure. Data-aware mode weights the allocation by measured
held-out sensitivity (``--no-sensitivity`` to turn off) and refits the rewritten layers sequentially
(``--no-sequential`` / ``--refit-rounds N`` for the alternatives), ReLU-aware where a ReLU follows
(``--relu 0`` for linear fits) and compensates the layers it does not rewrite (``--no-compensate``);
``--refine`` re-chooses each rewritten layer's technique with the whole plan realised on a
calibration split. ``--techniques`` (default lowrank,dwsep,flatten,poolhoist) limits the rewrites;
poolhoist (SqueezeNet's classifier on pooled input) is priced in data mode only, by measured KL.
Every number comes from building and running the rewritten model with TVM (llvm, untuned — ~0.15–0.3 s
per SqueezeNet image here, so the default sweep takes ~10–15 minutes).
Set TVM_NUM_THREADS to the cores you want (say which in any figure).
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEFAULT_IMAGES = HERE.parents[1] / "shared" / "data" / "imagenet-sample"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", nargs="?", default="squeezenet1.1")
    ap.add_argument("--budgets", default="0.9,0.8,0.7,0.6,0.5")
    ap.add_argument("--metric", default="macs", choices=["macs", "params"])
    ap.add_argument("--images", default=str(DEFAULT_IMAGES), help="labelled image folder (labels.json)")
    ap.add_argument("--calib", type=int, default=64, help="calibration images taken from --images")
    ap.add_argument("--calib-views", type=int, default=1,
                    help="views of each calibration image (2: + mirror; up to 10: ten-crop)")
    ap.add_argument("--eval-limit", type=int, default=None)
    ap.add_argument("--modes", default="weight,data")
    ap.add_argument("--techniques", default="lowrank,dwsep,flatten,poolhoist")
    ap.add_argument("--no-sensitivity", dest="sensitivity", action="store_false",
                    help="allocate by per-layer relative error alone (default: weight each layer's error "
                         "by its end-to-end sensitivity, fitted on half the calibration images and "
                         "measured on the other half; one build per layer)")
    ap.add_argument("--no-sequential", dest="sequential", action="store_false",
                    help="no sequential refit of the rewritten layers to the rewritten model's inputs")
    ap.add_argument("--refit-rounds", type=int, default=0,
                    help="round-wise refit instead of sequential (measured worse)")
    ap.add_argument("--no-compensate", dest="compensate", action="store_false",
                    help="do not refit the un-rewritten layers below the first rewrite (default: each gets "
                         "a full-rank refit to the original outputs, ridge-shrunk towards its weight by a "
                         "strength chosen by 2-fold cross-validation on the calibration images)")
    ap.add_argument("--relu", type=int, default=None, metavar="N",
                    help="ReLU-aware refit iterations for layers a ReLU follows (default: the passes' "
                         "default, 3; 0: plain linear fits)")
    ap.add_argument("--refine", action="store_true",
                    help="re-choose each rewritten layer's technique end to end, fitted on half the "
                         "calibration images and scored on the other half (a refit of the plan per try)")
    ap.add_argument("--out", default=None, help="output prefix (default out/sweep_<model>)")
    args = ap.parse_args(argv)

    from sqcc import frontend, planning
    from sqcc.calibrate import calibration_feeds

    t0 = time.perf_counter()
    say = lambda msg: print(f"[{time.perf_counter() - t0:7.1f}s] {msg}", file=sys.stderr, flush=True)  # noqa: E731
    out = Path(args.out or f"out/sweep_{args.model.replace('/', '_')}")
    out.parent.mkdir(parents=True, exist_ok=True)
    m = frontend.load(args.model)
    calib = calibration_feeds(m, args.images, limit=args.calib, views=args.calib_views)
    rows = planning.sweep(m, [float(b) for b in args.budgets.split(",")], calib, args.images,
                          modes=tuple(args.modes.split(",")), metric=args.metric,
                          techniques=tuple(args.techniques.split(",")), plot=str(out) + ".png",
                          eval_limit=args.eval_limit, refit_rounds=args.refit_rounds,
                          sensitivity=args.sensitivity, sequential=args.sequential,
                          compensate=args.compensate, relu=args.relu, refine=args.refine, progress=say)
    planning.save_rows(rows, str(out) + ".json")
    table = planning.format_rows(rows)
    threads = os.environ.get("TVM_NUM_THREADS", "default")
    data = ("data-aware fits" + (", allocation weighted by held-out sensitivity" if args.sensitivity else "")
            + (f", {args.refit_rounds} refit round(s)" if args.refit_rounds else
               ", sequential refit" if args.sequential else "")
            + (", ReLU-aware fits" if args.relu != 0 else ", linear fits")
            + ", dwsep/spatial factors fitted jointly (alternating least squares)"
            + (", un-rewritten layers compensated (cross-validated ridge)"
               if args.compensate and args.sequential and not args.refit_rounds else "")
            + (", techniques re-chosen end to end on a calibration split" if args.refine else ""))
    views = f" × {args.calib_views} views" if args.calib_views > 1 else ""
    header = (f"{m.name}: {args.metric} budgets {args.budgets}; calibration {len(calib) // args.calib_views} "
              f"images{views} of "
              f"{args.images} (spread evenly), evaluation all {rows[0]['n_eval']} images, of which "
              f"{rows[0]['n_heldout']} held out (never used for calibration; the headline column); "
              f"techniques {args.techniques}; data mode: {data}; TVM llvm untuned, TVM_NUM_THREADS={threads}; "
              f"{time.perf_counter() - t0:.0f} s")
    Path(str(out) + ".md").write_text(header + "\n\n" + table + "\n")
    print(header)
    print(table)
    print(f"\nwrote {out}.png, {out}.json, {out}.md")


if __name__ == "__main__":
    main()
