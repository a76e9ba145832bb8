"""Fuzz smoke: a fixed-seed set of 30 hostile-input cases — the known findings of the issue
"Reliability findings to fix first" first, then one case from each of 19 generators across ONNX,
TFLite, feeds, images, packages, the command line and the Python API — run through the fuzz harness
(benchmarks/fuzz, fork server, 60 s and 6 GiB per case). Every case must end as ``clean_error`` or
``success``. A second test checks that the harness itself tells a hang, a crash, an OOM, a traceback,
a leftover file and a noisy error apart (so a green smoke run means something)."""
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.fuzz.campaign import Campaign, evaluate, listing  # noqa: E402
from benchmarks.fuzz.case import Case  # noqa: E402
from benchmarks.fuzz.classify import CLEAN  # noqa: E402
from benchmarks.fuzz.known import KNOWN  # noqa: E402
from benchmarks.fuzz.runner import Runner, prewarm  # noqa: E402

SEED = 20261204
PLAN = ["onnx.input_dim", "feed.pickle", "package.manifest_field", "image.huge_header", "cli.output",
        "tflite.shape", "feed.valid", "package.links", "onnx.bytes", "image.modes", "cli.target",
        "package.report", "feed.npy_header", "onnx.cycle", "api.run_input", "tflite.bytes", "cli.pass",
        "package.sparse", "image.truncated"]
N = len(KNOWN) + len(PLAN)


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    out = tmp_path_factory.mktemp("fuzz-smoke")
    # subprocess, not fork: this pytest worker may have started TVM's thread pool (an earlier test file
    # ran a model), and a forked child of it deadlocks in its first parallel kernel
    camp = Campaign(out, seed=SEED, time_limit=60.0, mem_bytes=6 << 30, jobs=1, plan=PLAN, mode="subprocess",
                    progress=lambda m: None)
    recs = {r["index"]: r for r in camp.run(N)}
    assert sorted(recs) == list(range(N))
    return recs


@pytest.mark.timeout(600)
@pytest.mark.parametrize("index", range(N))
def test_hostile_input_ends_cleanly(records, index):
    r = records[index]
    assert r["outcome"] in CLEAN, (
        f"{r['id']} {r['generator']} ({r['mutation']}): {r['outcome']} {r['flags']}, exit {r['exit_code']} "
        f"signal {r['signal']} after {r['duration_s']} s\n  argv: {r.get('argv') or r.get('api')}\n"
        f"  stderr: {r['stderr_first']}")


EXPECTED = {"sleep": "hang", "segv": "signal", "oom": "oom", "leave": "left_behind", "noise": "noisy",
            "traceback": "traceback", "error": "clean_error"}


@pytest.mark.timeout(120)
def test_harness_tells_outcomes_apart(tmp_path):
    prewarm()
    runner = Runner("fork", time_limit=3.0, mem_bytes=2 << 30)
    got = {}
    for how in EXPECTED:
        d = tmp_path / how
        d.mkdir()
        case = Case("harness", how, api={"call": "harness_check", "how": how})
        before = listing(d)
        got[how] = evaluate(case, runner.run_one(d, api=case.api), d, before)["outcome"]
    assert got == EXPECTED
