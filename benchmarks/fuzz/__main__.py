"""``python -m benchmarks.fuzz``: run a campaign, replay or regenerate one case, rewrite a summary.

    python -m benchmarks.fuzz run --cases 500 --seed 1 --jobs 1 --time-limit 30 --out DIR
    python -m benchmarks.fuzz replay DIR c00042          # re-run one case in the foreground
    python -m benchmarks.fuzz materialize DIR c00042 --into /tmp/c42   # write its inputs, print argv
    python -m benchmarks.fuzz summary DIR
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _meta(out: Path) -> dict:
    p = Path(out) / "meta.json"
    if not p.exists():
        raise SystemExit(f"{out}: no meta.json (not a fuzz campaign directory)")
    return json.loads(p.read_text())


def _index(case_id: str) -> int:
    return int(case_id.lstrip("c"))


def _say(msg: str) -> None:
    try:
        print(msg, flush=True)
    except (BrokenPipeError, OSError):  # a closed pipe (| head) must not stop the campaign
        pass


def cmd_run(a) -> int:
    from .campaign import Campaign
    from .report import write_summary

    only = [s for s in a.only.split(",") if s] if a.only else None
    c = Campaign(a.out, seed=a.seed, time_limit=float(a.time_limit), mem_bytes=int(a.mem_gb * 2**30), jobs=a.jobs,
                 mode=a.mode, known=not a.no_known, only=only, keep=a.keep,
                 progress=(lambda m: None) if a.quiet else _say)
    c.run(a.cases)
    print(f"summary: {write_summary(Path(a.out))}")
    return 0


def _materialize(out: Path, case_id: str, into: Path):
    from .assets import Assets
    from .generators import make_case

    meta = _meta(out)
    return make_case(meta["seed"], _index(case_id), into, Assets(Path(out) / "base"), meta.get("known", True),
                     meta.get("only"), meta.get("plan"))


def cmd_materialize(a) -> int:
    case = _materialize(Path(a.out), a.case_id, Path(a.into))
    print(json.dumps({"dir": str(a.into), "generator": case.generator, "mutation": case.mutation,
                      "inputs": case.inputs}, ensure_ascii=False))
    print(f"cd {a.into} && {case.command()}")
    return 0


def cmd_replay(a) -> int:
    from .campaign import _read, evaluate, listing
    from .runner import Runner, prewarm

    out = Path(a.out)
    meta = _meta(out)
    into = Path(a.into or out / "replay" / a.case_id)
    case = _materialize(out, a.case_id, into)
    print(f"{case.id} {case.generator}: {case.mutation}\n  {case.command()}", flush=True)
    if a.mode == "fork":
        prewarm()
    before = listing(into)
    res = Runner(a.mode, a.time_limit or meta["time_limit_s"], meta["mem_bytes"]).run_one(into, case.argv, case.api,
                                                                                          case.id)
    sys.stdout.write(_read(into / "_stdout.txt"))
    sys.stderr.write(_read(into / "_stderr.txt"))
    rec = evaluate(case, res, into, before)
    print(json.dumps({k: rec[k] for k in ("outcome", "flags", "exit_code", "signal", "duration_s",
                                         "new_files", "tmp_left")}, ensure_ascii=False))
    return 0


def cmd_summary(a) -> int:
    from .report import write_summary

    print(write_summary(Path(a.out)))
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.fuzz", description="fuzz sqcc with hostile inputs")
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("run", help="run (or resume) a campaign")
    p.add_argument("--cases", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--jobs", type=int, default=1)
    p.add_argument("--time-limit", type=float, default=30.0, help="wall-clock seconds per case")
    p.add_argument("--mem-gb", type=float, default=6.0, help="RLIMIT_AS per case, GiB")
    p.add_argument("--mode", choices=["auto", "fork", "subprocess"], default="auto")
    p.add_argument("--out", required=True)
    p.add_argument("--only", help="comma-separated generator prefixes (e.g. onnx,package.sparse)")
    p.add_argument("--no-known", action="store_true", help="leave out the known cases (indices 0..10)")
    p.add_argument("--keep", action="store_true", help="keep every case's scratch directory")
    p.add_argument("-q", "--quiet", action="store_true")
    p.set_defaults(func=cmd_run)
    for name, fn in (("replay", cmd_replay), ("materialize", cmd_materialize)):
        p = sub.add_parser(name)
        p.add_argument("out")
        p.add_argument("case_id")
        p.add_argument("--into", required=name == "materialize")
        if name == "replay":
            p.add_argument("--mode", choices=["fork", "subprocess"], default="subprocess")
            p.add_argument("--time-limit", type=float)
        p.set_defaults(func=fn)
    p = sub.add_parser("summary")
    p.add_argument("out")
    p.set_defaults(func=cmd_summary)
    a = ap.parse_args(argv)
    return a.func(a)


if __name__ == "__main__":
    sys.exit(main())
