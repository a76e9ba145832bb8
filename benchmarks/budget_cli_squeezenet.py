"""The budget CLI flow end to end on the real SqueezeNet 1.1 (the test suite runs it on a miniature:
tests/test_budget.py::test_cli_compile_with_budget_end_to_end).

    python benchmarks/budget_cli_squeezenet.py [--budget 0.7] [--images DIR] [--limit 8] [--out DIR]

Runs, through the installed ``sqcc`` console script as a user would,

    sqcc compile squeezenet1.1 --budget macs=F --calibration DIR --calibration-limit N \\
        --eval-images DIR -o OUT/c.tar
    sqcc run OUT/c.tar --image DIR/000_tench.jpg --print-top 1

and checks what the test checks: the plan is data-aware with held-out sensitivity, meets the budget,
contains the classifier's pool hoist and at least one factorisation, the sequential refit ran, the
manifest records the plan's passes, and the package runs. Prints the wall time of each step.
About 460 s on 2 Zen 5 cores, 712 s on a 2-core CI machine (TVM_NUM_THREADS=2): pricing every
candidate (dwsep in half steps, each fitted by ALS) twice, then the sequential refit of all 26 convs.
Exit status 0 when every check holds, 1 otherwise.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEFAULT_IMAGES = HERE.parents[1] / "shared" / "data" / "imagenet-sample"


def sqcc(*args, env=None):
    exe = Path(sys.executable).with_name("sqcc")
    t0 = time.monotonic()
    p = subprocess.run([str(exe), *map(str, args)], capture_output=True, text=True,
                       env=dict(os.environ, **(env or {})))
    dt = time.monotonic() - t0
    if p.returncode != 0:
        sys.stderr.write(p.stderr)
        raise SystemExit(f"sqcc {' '.join(map(str, args))}: exit {p.returncode}")
    return p, dt


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--budget", type=float, default=0.7, help="MAC budget fraction (default 0.7)")
    ap.add_argument("--images", type=Path, default=DEFAULT_IMAGES, help="labelled image folder")
    ap.add_argument("--limit", type=int, default=8, help="calibration images (default 8)")
    ap.add_argument("--threads", default="2", help="TVM_NUM_THREADS (default 2)")
    ap.add_argument("--out", type=Path, help="keep the package here (default: a temporary folder)")
    args = ap.parse_args(argv)

    out = args.out or Path(tempfile.mkdtemp(prefix="budget_cli_"))
    out.mkdir(parents=True, exist_ok=True)
    pkg = out / "c.tar"
    env = {"TVM_NUM_THREADS": args.threads}
    p, t_compile = sqcc("compile", "squeezenet1.1", "--budget", f"macs={args.budget}", "--calibration",
                        args.images, "--calibration-limit", args.limit, "--eval-images", args.images,
                        "-o", pkg, env=env)
    print(p.stdout)
    with tarfile.open(pkg) as t:
        report = json.load(t.extractfile("report.json"))
        manifest = json.load(t.extractfile("manifest.json"))
    plan = report["budget"]
    after, before = report["after"]["totals"]["macs"], report["before"]["totals"]["macs"]
    first = sorted(f for f in args.images.iterdir() if f.suffix.lower() in (".jpg", ".jpeg", ".png"))[0]
    r, t_run = sqcc("run", pkg, "--image", first, "--print-top", "1", env=env)
    checks = {
        "sequential refit ran": "refitted to the rewritten model's inputs" in p.stdout,
        "data-aware plan with held-out sensitivity": plan["fit"] == "data" and bool(plan["sensitivity"]),
        f"achieved <= {args.budget}": plan["achieved"] <= args.budget,
        "plan hoists the classifier's pool": any(s.startswith("poolhoist:") for s in plan["passes"]),
        "plan factorises": any(s.startswith(("dwsep:", "lowrank:", "flatten:")) for s in plan["passes"]),
        f"MACs after <= {args.budget} x before": after <= args.budget * before,
        "manifest records the plan's passes":
            [x["spec"] for x in manifest["passes"]][:len(plan["passes"])] == plan["passes"],
        "package runs": "1. class" in r.stdout,
    }
    print(f"compile {t_compile:.0f} s, run {t_run:.1f} s (TVM_NUM_THREADS={args.threads}); "
          f"MACs {before:,} -> {after:,} ({after / before:.3f}x); package {pkg}")
    for name, ok in checks.items():
        print(f"  {'ok  ' if ok else 'FAIL'} {name}")
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
