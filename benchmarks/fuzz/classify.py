"""Turning a finished case into one outcome.

Outcomes, most severe first (the first that applies wins; the others that also apply go in ``flags``):

- ``unsafe``: the input's payload ran (a pickle's canary file appeared).
- ``hang``: the harness's wall-clock limit killed the case.
- ``oom``: MemoryError / std::bad_alloc / "Cannot allocate memory" under RLIMIT_AS (not reported as
  one clean error).
- ``signal``: killed by a signal the harness did not send (SIGSEGV, SIGABRT, ...).
- ``traceback``: a Python traceback or a TVM C++ backtrace on stderr.
- ``internal_error``: ``sqcc: internal error: ...`` (exit 1).
- ``left_behind``: a failing run left files or directories in the scratch directory, or any run left
  files in its TMPDIR or processes in its process group.
- ``bad_exit``: any other exit status (1 without a message, 2 without an error line, 130, ...).
- ``noisy``: exit 2 with one clean error line, but stderr has other lines that are not known noise
  (e.g. TVM's ``BlockBuilder destroyed with remaining blocks!``, Python warnings, or other sqcc lines
  such as ``sqcc: note: ...`` beside the error).
- ``wrong_result``: the input was valid (``expect="success"``) but sqcc refused it, or exit 0 with a
  result that does not match the case's reference.
- ``clean_error``: exit 2 and stderr's sqcc lines are exactly one ``sqcc: error: ...`` line (or
  argparse's ``sqcc CMD: error: ...`` after its usage block), nothing else but known harmless noise.
- ``success``: exit 0 (and the reference, where the case has one, matches).

Known harmless stderr noise (:data:`NOISE`): sqcc's own progress lines (``[   0.5s] importing ...``,
silenced by ``-q``); argparse's ``usage:`` block (the lines of it, before its error line); TVM 0.27's
VM ``executable.cc:NNN: Warning: Scope Saving:/Scope Loaded:`` lines; LiteRT's one
``INFO: Created TensorFlow Lite XNNPACK delegate for CPU.`` line (printed whenever the TFLite reference
runtime starts, on every TFLite compile). Nothing else. In TMPDIR, onnxruntime's ``.ses`` file (its
native library writes it on import; only seen in subprocess mode) is not counted as left behind.
"""
from __future__ import annotations

import re

OUTCOMES = ["unsafe", "hang", "oom", "signal", "traceback", "internal_error", "left_behind", "bad_exit",
            "noisy", "wrong_result", "clean_error", "success"]
CLEAN = {"clean_error", "success"}

NOISE = {
    "progress": re.compile(r"^\[\s*\d+\.\d+s\] "),
    "usage": re.compile(r"^usage: sqcc\b"),
    "vm_scope": re.compile(r"executable\.cc:\d+: Warning: Scope (Saving|Loaded):"),
    "litert_xnnpack": re.compile(r"^INFO: Created TensorFlow Lite XNNPACK delegate for CPU\.$"),
}
HARMLESS_TMP = {".ses"}  # onnxruntime's native library writes $TMPDIR/.ses (a session id) when imported
ERROR_LINE = re.compile(r"^sqcc(?: [\w-]+)?: error: ")  # sqcc's, or argparse's "sqcc compile: error:"
SQCC_LINE = re.compile(r"^sqcc(?: [\w-]+)?: ")
INTERNAL = re.compile(r"^sqcc: internal error")
TRACEBACK = re.compile(r"^Traceback \(most recent call last\):|^Stack trace:|^\s*\d+: 0x[0-9a-f]{8,}|"
                       r"tvm::runtime::|^\s*File \"[^\"]+\.(?:cc|h|cpp)\", line \d+|Check failed: |"
                       r"terminate called after throwing")
OOM = re.compile(r"\bMemoryError\b|std::bad_alloc|Cannot allocate memory|[Oo]ut of memory|failed to allocate")


def split_noise(stderr: str) -> tuple[list, list]:
    """(noise lines, other lines) of stderr; a usage block's indented continuation lines are noise."""
    noise, other, in_usage = [], [], False
    for line in stderr.splitlines():
        if not line.strip():
            continue
        if NOISE["usage"].match(line) or (in_usage and line.startswith(" ")):
            in_usage = True
            noise.append(line)
            continue
        in_usage = False
        (noise if any(p.search(line) for p in NOISE.values()) else other).append(line)
    return noise, other


def first_line(stderr: str) -> str:
    """The first stderr line that is not known noise ('' if none)."""
    _, other = split_noise(stderr)
    return other[0][:500] if other else ""


def _crash_flags(res, stderr: str, other: list, one_error: bool) -> list:
    """hang / oom / signal, then traceback and internal_error, as they apply."""
    flags = []
    if res.timed_out:
        flags.append("hang")
    elif OOM.search(stderr) and not one_error:
        flags.append("oom")
    elif res.signal is not None:
        flags.append("signal")
    if any(TRACEBACK.search(line) for line in other if not SQCC_LINE.match(line)):
        flags.append("traceback")  # (a one-line sqcc error quoting TVM's "Check failed" text is not one)
    if any(INTERNAL.match(line) for line in other):
        flags.append("internal_error")
    return flags


def classify(case, res, stderr: str, left: dict, ref_ok: bool | None, canary_hit: bool) -> tuple[str, list]:
    """(outcome, flags) for a finished case. ``left``: {"scratch": [...], "tmp": [...]} new paths;
    ``ref_ok``: the reference check (None: none to make). ``flags`` holds the other outcomes that
    also apply, and ``stderr_noise`` for a success with unexplained stderr lines."""
    _, other = split_noise(stderr)
    sqcc_lines = [line for line in other if SQCC_LINE.match(line)]
    errors = [line for line in sqcc_lines if ERROR_LINE.match(line)]
    one_error = (res.exit_code == 2 and len(errors) == 1
                 and not any(INTERNAL.match(line) for line in sqcc_lines))  # other sqcc lines: noisy
    failed = res.exit_code != 0
    flags = (["unsafe"] if canary_hit else []) + _crash_flags(res, stderr, other, one_error)
    tmp = [t for t in left.get("tmp", []) if t not in HARMLESS_TMP]
    if (failed and left.get("scratch")) or tmp or res.stray_processes:
        flags.append("left_behind")
    if failed and not one_error and not flags:
        flags.append("bad_exit")
    if one_error and len(other) > 1:
        flags.append("noisy")
    if (one_error and case.expect == "success") or (res.exit_code == 0 and ref_ok is False):
        flags.append("wrong_result")
    if res.exit_code == 0 and other:
        flags.append("stderr_noise")
    for o in OUTCOMES:
        if o in flags:
            return o, [f for f in flags if f != o]
    return ("success" if res.exit_code == 0 else "clean_error"), flags


def check_reference(case, scratch) -> bool | None:
    """Evaluate ``case.reference`` in the case's scratch directory after exit 0."""
    ref = case.reference
    if not ref:
        return None
    import numpy as np

    if ref["kind"] == "npy_close":
        from onnx import TensorProto, numpy_helper

        out = scratch / ref["file"]
        if not out.is_file():
            return False
        t = TensorProto()
        t.ParseFromString(open(ref["ref"], "rb").read())
        want = numpy_helper.to_array(t)
        got = np.load(out, allow_pickle=False)
        return got.shape == want.shape and bool(np.allclose(got, want, atol=ref.get("atol", 1e-3), rtol=1e-3))
    raise ValueError(f"unknown reference kind {ref['kind']}")
