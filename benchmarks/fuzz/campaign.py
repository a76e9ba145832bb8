"""A campaign: generate cases from a seed, run them through the runner, classify, and append one
record per case to ``DIR/cases.jsonl`` (append + flush + fsync, so a killed campaign resumes at the
first case without a record). ``DIR/meta.json`` pins the seed and limits; ``DIR/summary.md`` is
rewritten at the end (``python -m benchmarks.fuzz summary DIR`` rewrites it any time)."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import time
from pathlib import Path

from . import classify as cl
from .assets import MNIST_FEEDS, Assets
from .generators import make_case
from .runner import HARNESS_FILES, ROOT, Runner, prewarm, thread_count

LOG_BYTES = 64 << 10


# ------------------------------------------------------------------------------------ records

def read_records(path: Path) -> list:
    """The complete records of a cases.jsonl; a torn last line (a kill mid-write) is cut off."""
    if not path.exists():
        return []
    data = path.read_bytes()
    keep = data[: data.rfind(b"\n") + 1]
    if len(keep) != len(data):
        with open(path, "r+b") as f:
            f.truncate(len(keep))
    out = []
    for line in keep.splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return out


def append_record(path: Path, rec: dict) -> None:
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(rec, ensure_ascii=False) + "\n")
        f.flush()
        os.fsync(f.fileno())


def write_json(path: Path, obj) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(obj, indent=1))
    os.replace(tmp, path)


# ------------------------------------------------------------------------------ scratch diff

def listing(root: Path) -> dict:
    """{relative path: (is_dir, size, mtime_ns)} under ``root``, without the harness's own files."""
    out = {}
    for dirpath, dirs, files in os.walk(root):
        rel = os.path.relpath(dirpath, root)
        if rel == ".":
            dirs[:] = [d for d in dirs if d not in HARNESS_FILES]
            files = [f for f in files if f not in HARNESS_FILES]
        for name in dirs + files:
            p = os.path.join(dirpath, name)
            try:
                st = os.lstat(p)
            except OSError:
                continue
            out[os.path.normpath(os.path.join(rel, name))] = (name in dirs, st.st_size, st.st_mtime_ns)
    return out


def _tmp_left(scratch: Path) -> list:
    tmp = scratch / "_tmp"
    return sorted(os.path.relpath(os.path.join(d, n), tmp) for d, ds, fs in os.walk(tmp) for n in ds + fs)


# ------------------------------------------------------------------------------------ one case

def _read(path: Path, limit: int = LOG_BYTES) -> str:
    try:
        with open(path, "rb") as f:
            return f.read(limit).decode("utf-8", errors="backslashreplace")
    except OSError:
        return ""


def evaluate(case, res, scratch: Path, before: dict) -> dict:
    """The record of a finished case (outcome, flags, what it left behind, its first stderr line)."""
    stderr = _read(scratch / "_stderr.txt", 1 << 20)
    after = listing(scratch)
    new = sorted(k for k in after if k not in before)
    changed = sorted(k for k in before if after.get(k) != before[k] and not before[k][0])
    canary = bool(case.canary) and (scratch / case.canary).exists()
    ref_ok = None
    if res.exit_code == 0 and case.reference:
        try:
            ref_ok = cl.check_reference(case, scratch)
        except Exception:  # noqa: BLE001 -- an unreadable output is a wrong result
            ref_ok = False
    left = {"scratch": new, "tmp": _tmp_left(scratch)}
    outcome, flags = cl.classify(case, res, stderr, left, ref_ok, canary)
    _, other = cl.split_noise(stderr)
    error_line = next((ln for ln in other if cl.ERROR_LINE.match(ln) or cl.INTERNAL.match(ln)),
                      next((ln for ln in other if cl.SQCC_LINE.match(ln)), ""))
    return {"id": case.id, "index": case.index, "generator": case.generator, "mutation": case.mutation,
            "argv": case.argv, "api": case.api, "expect": case.expect, "outcome": outcome, "flags": flags,
            "exit_code": res.exit_code, "signal": res.signal, "duration_s": round(res.duration_s, 3),
            "max_rss_mb": round(res.max_rss_mb, 1), "stderr_first": cl.first_line(stderr),
            "error_line": error_line[:500], "stderr_lines": len(other), "new_files": new[:50],
            "tmp_left": left["tmp"][:50], "inputs_changed": changed, "reference_ok": ref_ok}


def keep_logs(out: Path, rec: dict, scratch: Path) -> None:
    """stdout/stderr of a non-clean case, kept under DIR/logs/ (64 KiB each)."""
    logs = out / "logs"
    logs.mkdir(exist_ok=True)
    for name in ("_stdout.txt", "_stderr.txt"):
        (logs / f"{rec['id']}.{name[1:-4]}.txt").write_text(_read(scratch / name))


# ---------------------------------------------------------------------------- fork self-test

def fork_selftest(work: Path, time_limit: float, mem_bytes: int) -> dict:
    """Whether a forked child of this (pre-imported) process builds, checks and runs mnist-8 right,
    and what a trivial case costs forked vs in a fresh interpreter."""
    info = {"threads_at_fork": thread_count()}
    fork, sub = Runner("fork", time_limit, mem_bytes), Runner("subprocess", time_limit, mem_bytes)
    d = work / "selftest"
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir(parents=True)
    feed, ref = MNIST_FEEDS[0]
    r1 = fork.run_one(d, ["compile", "mnist-8", "-o", "out.tar", "-q"])
    r2 = fork.run_one(d, ["run", "out.tar", "--input", str(feed), "--output", "out.npy"])
    from .case import Case

    probe = Case("selftest", "", reference={"kind": "npy_close", "file": "out.npy", "ref": str(ref)})
    ok = r1.exit_code == 0 and r2.exit_code == 0 and bool(cl.check_reference(probe, d))
    info.update(fork_ok=ok, fork_compile_s=round(r1.duration_s, 2), fork_run_s=round(r2.duration_s, 2))
    if not ok:
        info["fork_stderr"] = _read(d / "_stderr.txt", 4000)
    info["fork_inspect_s"] = round(fork.run_one(d, ["inspect", "mnist-8"]).duration_s, 3)
    info["subprocess_inspect_s"] = round(sub.run_one(d, ["inspect", "mnist-8"]).duration_s, 3)
    shutil.rmtree(d, ignore_errors=True)
    return info


def choose_mode(mode: str, work: Path, time_limit: float, mem_bytes: int) -> tuple[str, dict]:
    """'fork' if requested or (auto) the self-test passes; else 'subprocess'."""
    if mode == "subprocess":
        return "subprocess", {}
    failed = prewarm()
    info = fork_selftest(work, max(time_limit, 60.0), mem_bytes)
    info["prewarm_failed"] = failed
    if mode == "fork" or info["fork_ok"]:
        return "fork", info
    return "subprocess", info


# ------------------------------------------------------------------------------------ campaign

def tree_state() -> dict:
    """The code the campaign ran against: HEAD, and a hash of the uncommitted changes and new files
    in sqcc's sources (others edit them while campaigns run). Read-only git commands."""
    paths = ["sqcc", "passes", "schedules", "targets"]

    def git(*args):
        p = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, timeout=60)
        return p.stdout if p.returncode == 0 else b""

    h = hashlib.sha256(git("diff", "HEAD", "--", *paths))
    new = sorted(git("ls-files", "--others", "--exclude-standard", "--", *paths).decode().split())
    for f in new:
        h.update(f.encode() + (ROOT / f).read_bytes() if (ROOT / f).is_file() else b"")
    dirty = git("diff", "HEAD", "--name-only", "--", *paths).decode().split()
    return {"head": git("rev-parse", "HEAD").decode().strip(), "uncommitted_sha256": h.hexdigest()[:16],
            "modified": dirty, "untracked": new}


def _meta(out: Path, seed: int, time_limit: float, mem_bytes: int, known: bool, only, plan) -> dict:
    """meta.json: created on the first run; a resumed run must use the same seed and limits."""
    path = out / "meta.json"
    want = {"seed": seed, "time_limit_s": time_limit, "mem_bytes": mem_bytes, "known": known, "only": only,
            "plan": plan}
    if path.exists():
        meta = json.loads(path.read_text())
        diff = {k: (meta.get(k), v) for k, v in want.items() if meta.get(k) != v}
        if diff:
            raise SystemExit(f"{out} holds a campaign with other settings {diff}; use another --out")
        return meta
    meta = dict(want, runs=[])
    write_json(path, meta)
    return meta


class Campaign:
    """Runs cases 0..n-1 of a seed that have no record yet, ``jobs`` at a time."""

    def __init__(self, out, seed=0, time_limit=30.0, mem_bytes=6 << 30, jobs=1, mode="auto", known=True,
                 only=None, plan=None, keep=False, progress=print):
        self.out, self.seed, self.jobs = Path(out), seed, max(1, jobs)
        self.time_limit, self.mem_bytes, self.known, self.only = float(time_limit), int(mem_bytes), known, only
        self.plan = list(plan) if plan else None
        self.keep, self.progress, self.mode = keep, progress, mode
        self.out.mkdir(parents=True, exist_ok=True)
        self.meta = _meta(self.out, seed, self.time_limit, self.mem_bytes, known, only, self.plan)
        self.jsonl = self.out / "cases.jsonl"
        self.work = self.out / "scratch"
        self.assets = Assets(self.out / "base")

    def run(self, n: int) -> list:
        self.assets.check()
        done = {r["index"] for r in read_records(self.jsonl)}
        todo = [i for i in range(n) if i not in done]
        t0 = time.time()
        mode, info = choose_mode(self.mode, self.work, self.time_limit, self.mem_bytes)
        run_info = {"started": time.strftime("%Y-%m-%dT%H:%M:%S"), "mode": mode, "selftest": info,
                    "jobs": self.jobs, "todo": len(todo), "cases_run": 0, "tree": tree_state()}
        self.meta["runs"].append(run_info)
        self.progress(f"fuzz: {len(done)} done, {len(todo)} to run, mode {mode} {info}")
        runner = Runner(mode, self.time_limit, self.mem_bytes)
        t_cases = time.time()
        try:
            self._loop(runner, todo, run_info)
        finally:
            runner.kill_all()
            run_info["wall_s"] = round(time.time() - t0, 1)
            run_info["cases_wall_s"] = round(time.time() - t_cases, 1)
            run_info["tree_end"] = tree_state()
            write_json(self.out / "meta.json", self.meta)
        return read_records(self.jsonl)

    def _loop(self, runner, todo, run_info) -> None:
        pending, state = list(todo), {}
        while pending or runner.running:
            while pending and len(runner.running) < self.jobs:
                self._start(runner, pending.pop(0), state)
            for r, res in runner.poll(block=True):
                case, before = state.pop(r.key)
                self._finish(case, res, r.scratch, before)
                run_info["cases_run"] += 1

    def _start(self, runner, index, state) -> None:
        from .generators import case_id

        scratch = self.work / case_id(index)
        try:
            case = make_case(self.seed, index, scratch, self.assets, self.known, self.only, self.plan)
        except Exception as e:  # noqa: BLE001 -- a generator bug: recorded, the campaign goes on
            append_record(self.jsonl, {"id": case_id(index), "index": index, "generator": "?", "mutation": "",
                                       "argv": None, "api": None, "outcome": "harness_error", "flags": [],
                                       "exit_code": None, "signal": None, "duration_s": 0.0, "error_line": "",
                                       "stderr_first": f"{type(e).__name__}: {e}"[:2000]})
            return
        before = listing(scratch)
        runner.start(index, scratch, case.argv, case.api, case.id)
        state[index] = (case, before)

    def _finish(self, case, res, scratch, before) -> None:
        rec = evaluate(case, res, scratch, before)
        rec["regenerate"] = f"python -m benchmarks.fuzz materialize {self.out} {case.id} --into /tmp/{case.id}"
        if rec["outcome"] not in cl.CLEAN:
            keep_logs(self.out, rec, scratch)
        append_record(self.jsonl, rec)
        if not self.keep:
            shutil.rmtree(scratch, ignore_errors=True)
        self.progress(f"{case.id} {rec['outcome']:<14} {rec['duration_s']:6.2f}s {case.generator:<24} "
                      f"{rec['stderr_first'][:90]}")
