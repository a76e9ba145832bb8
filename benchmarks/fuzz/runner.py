"""Running cases in child processes under a wall-clock and a memory limit.

The parent is a *fork server*: it imports sqcc, TVM, onnx, onnxruntime, PIL and tflite once (module
imports only — no TVM computation, no thread pool started), then ``os.fork()``s one child per case,
which skips the ~1.3 s of imports a fresh interpreter pays. :func:`fork_selftest` checks that a
forked child can import, build, check against onnxruntime and run a model exactly as a fresh
interpreter does; if it cannot, the runner falls back to *subprocess* mode (a fresh
``python -m benchmarks.fuzz.child`` per case). Either way each child gets its own process group (the
time limit kills the whole group: compilers, worker pools), RLIMIT_AS, TMPDIR inside its scratch
directory, and stdout/stderr in files there.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from . import child

ROOT = Path(__file__).resolve().parents[2]
HARNESS_FILES = {"_stdout.txt", "_stderr.txt", "_spec.json", "_tmp"}
PREWARM = ["tvm", "tvm.relax", "tvm.relax.frontend.onnx", "tvm.relax.frontend.tflite", "onnx", "onnxruntime",
           "PIL.Image", "tflite", "numpy"]
# Every sqcc module is imported too: a forked child then never reads sqcc's sources from disk, so one
# campaign runs one version of the code even while others edit the checkout.
SQCC_PACKAGES = ["sqcc", "sqcc.passes", "sqcc.schedules", "sqcc.targets", "sqcc.planning"]


@dataclass
class Running:
    key: object
    pid: int
    start: float
    deadline: float
    scratch: Path
    popen: object = None


@dataclass
class Result:
    """How a child ended: exit code or signal, whether the harness's time limit killed it, wall time,
    peak RSS, and whether it left processes running in its group."""

    exit_code: int | None
    signal: int | None
    timed_out: bool
    duration_s: float
    max_rss_mb: float
    stray_processes: bool = False
    extra: dict = field(default_factory=dict)


def sqcc_modules() -> list:
    """The names of all of sqcc's modules (its packages walked; no ``__main__``)."""
    import importlib
    import pkgutil

    names = []
    for pkg in SQCC_PACKAGES:
        try:
            mod = importlib.import_module(pkg)
        except Exception:  # noqa: BLE001 -- reported by prewarm
            names.append(pkg)
            continue
        names.append(pkg)
        names += [i.name for i in pkgutil.walk_packages(mod.__path__, pkg + ".") if not i.name.endswith("__main__")]
    return names


def prewarm() -> list:
    """Import the heavy modules and all of sqcc once (imports only: no TVM computation, no thread
    pool). Returns the modules that failed to import."""
    import importlib

    failed = []
    for m in PREWARM + sqcc_modules():
        try:
            importlib.import_module(m)
        except Exception as e:  # noqa: BLE001 -- a missing optional module only costs the child its import
            failed.append(f"{m}: {type(e).__name__}")
    return failed


def thread_count() -> int:
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:
        return -1


def spec_for(scratch: Path, argv=None, api=None, mem_bytes=6 << 30, case_id="") -> dict:
    scratch = Path(scratch).resolve()
    (scratch / "_tmp").mkdir(exist_ok=True)
    return {"argv": argv, "api": api, "scratch": str(scratch), "tmpdir": str(scratch / "_tmp"),
            "stdout": str(scratch / "_stdout.txt"), "stderr": str(scratch / "_stderr.txt"),
            "mem_bytes": int(mem_bytes), "id": case_id}


class Runner:
    """Starts children (``mode`` "fork" or "subprocess"), enforces the time limit, reaps them."""

    def __init__(self, mode: str = "fork", time_limit: float = 30.0, mem_bytes: int = 6 << 30):
        self.mode, self.time_limit, self.mem_bytes = mode, float(time_limit), int(mem_bytes)
        self.running: dict = {}

    def start(self, key, scratch: Path, argv=None, api=None, case_id="") -> Running:
        spec = spec_for(scratch, argv, api, self.mem_bytes, case_id)
        t0 = time.monotonic()
        if self.mode == "fork":
            pid, popen = self._fork(spec), None
        else:
            popen = self._spawn(spec)
            pid = popen.pid
        try:
            os.setpgid(pid, pid)
        except OSError:  # the child did it first, or already exited
            pass
        r = Running(key, pid, t0, t0 + self.time_limit, Path(scratch), popen)
        self.running[pid] = r
        return r

    @staticmethod
    def _fork(spec) -> int:
        for f in (sys.stdout, sys.stderr):
            f.flush()
        pid = os.fork()
        if pid == 0:
            child.run_forked(spec)  # never returns
        return pid

    @staticmethod
    def _spawn(spec):
        path = Path(spec["scratch"]) / "_spec.json"
        path.write_text(json.dumps(spec))
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
        with open(spec["stdout"], "wb") as out, open(spec["stderr"], "wb") as err:
            return subprocess.Popen([sys.executable, "-m", "benchmarks.fuzz.child", str(path)], cwd=ROOT,
                                    stdin=subprocess.DEVNULL, stdout=out, stderr=err, env=env,
                                    start_new_session=True)

    def poll(self, block: bool = True) -> list:
        """Reap what finished (or ran past the limit): [(Running, Result)]. Blocks until at least one
        finished when ``block``."""
        while True:
            done = [self._check(r) for r in list(self.running.values())]
            done = [d for d in done if d is not None]
            if done or not block or not self.running:
                return done
            time.sleep(0.02)

    def _check(self, r: Running):
        pid, status, ru = os.wait4(r.pid, os.WNOHANG)
        timed_out = False
        if pid == 0:
            if time.monotonic() < r.deadline:
                return None
            timed_out = True
            _killpg(r.pid)
            pid, status, ru = os.wait4(r.pid, 0)
        dt = time.monotonic() - r.start
        stray = bool(group_members(r.pid)) and _killpg(r.pid) and not timed_out  # left running in its group
        del self.running[r.pid]
        if r.popen is not None:
            r.popen.returncode = os.waitstatus_to_exitcode(status)
        code = os.WEXITSTATUS(status) if os.WIFEXITED(status) else None
        sig = os.WTERMSIG(status) if os.WIFSIGNALED(status) else None
        return r, Result(code, sig, timed_out, dt, ru.ru_maxrss / 1024.0, stray)

    def kill_all(self) -> None:
        for r in list(self.running.values()):
            _killpg(r.pid)
        self.poll(block=True)

    def run_one(self, scratch: Path, argv=None, api=None, case_id="") -> Result:
        self.start(None, scratch, argv, api, case_id)
        return self.poll(block=True)[0][1]


def group_members(pgid: int) -> list:
    """PIDs of live (not zombie) processes in process group ``pgid``."""
    out = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                rest = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if rest[0] != "Z" and int(rest[2]) == pgid:
            out.append(int(d))
    return out


def _killpg(pgid: int) -> bool:
    """SIGKILL the process group; True if any process was still in it."""
    try:
        os.killpg(pgid, signal.SIGKILL)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
