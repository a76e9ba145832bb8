"""The child side of a case: limits, a clean environment, then ``sqcc.cli.main(argv)`` or one Python
API call. The same code runs in a forked child of the fork server and, in subprocess mode, as
``python -m benchmarks.fuzz.child SPEC.json`` (a fresh interpreter). It never returns to the
caller's code in fork mode: :func:`run_forked` ends the process with ``os._exit``."""
from __future__ import annotations

import gc
import json
import os
import resource
import signal
import sys
import tempfile
import traceback


def _redirect(spec) -> None:
    """fds 0/1/2 → /dev/null, the case's stdout file, its stderr file; sys.std* rebuilt over them
    (the fork server's may be a pytest capture object, not fd 1)."""
    fd_in = os.open(os.devnull, os.O_RDONLY)
    fd_out = os.open(spec["stdout"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    fd_err = os.open(spec["stderr"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    for fd, target in ((fd_in, 0), (fd_out, 1), (fd_err, 2)):
        os.dup2(fd, target)
        os.close(fd)
    sys.stdin = open(0, "r", closefd=False)
    sys.stdout = open(1, "w", buffering=1, closefd=False, encoding="utf-8", errors="backslashreplace")
    sys.stderr = open(2, "w", buffering=1, closefd=False, encoding="utf-8", errors="backslashreplace")


def _die_with_parent() -> None:
    """SIGKILL this child when the process that started it dies (a campaign killed with -9 must not
    leave a hung case running forever)."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _limit(spec) -> None:
    _die_with_parent()
    mem = int(spec["mem_bytes"])
    resource.setrlimit(resource.RLIMIT_AS, (mem, mem))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    for s in (signal.SIGINT, signal.SIGTERM, signal.SIGCHLD):
        signal.signal(s, signal.SIG_DFL)


def _environment(spec) -> None:
    os.chdir(spec["scratch"])
    os.environ["TMPDIR"] = spec["tmpdir"]
    os.environ["SQCC_FUZZ_CASE"] = spec.get("id", "")
    tempfile.tempdir = None  # tempfile caches the temp dir of the fork server: look again


def _run_argv(argv) -> int:
    from sqcc.cli import main

    try:
        return int(main(list(argv)) or 0)
    except SystemExit as e:  # argparse (usage errors: 2; --help/--version: 0)
        code = e.code
        return code if isinstance(code, int) else (0 if code is None else 1)


def _run_api(api) -> int:
    from sqcc.errors import SqccError

    from .api_calls import API_CALLS

    try:
        API_CALLS[api["call"]](api)
        return 0
    except SqccError as e:
        print(f"sqcc: error: {e}", file=sys.stderr)
        return 2
    except Exception as e:  # noqa: BLE001 -- anything else from the API is a bug, said like the CLI does
        msg = str(e).strip().splitlines()
        print(f"sqcc: internal error: {type(e).__name__}: {msg[-1] if msg else ''} (python API)",
              file=sys.stderr)
        return 1


def execute(spec) -> int:
    """Set the case up and run it; returns the exit code (a Python traceback escaping sqcc is printed
    and gives 1)."""
    _limit(spec)
    _environment(spec)
    try:
        rc = _run_argv(spec["argv"]) if spec.get("argv") is not None else _run_api(spec["api"])
    except BaseException:  # noqa: BLE001 -- an exception sqcc's main let through: the classifier's "traceback"
        traceback.print_exc()
        rc = 1
    gc.collect()  # destructors that print (TVM's BlockBuilder) run now, as at a real interpreter exit
    return rc


def _finish(rc: int) -> None:
    for f in (sys.stdout, sys.stderr):
        try:
            f.flush()
        except Exception:  # noqa: BLE001 -- a closed or broken stream: nothing left to say
            pass
    os._exit(rc if 0 <= rc < 256 else 1)


def run_forked(spec) -> None:
    """In the forked child: own process group, redirect, run, and exit with the case's code."""
    rc = 1
    try:
        os.setpgid(0, 0)
        _redirect(spec)
        rc = execute(spec)
    except BaseException:  # noqa: BLE001 -- harness failure inside the child: say it on the case's stderr
        try:
            traceback.print_exc()
        finally:
            rc = 1
    finally:
        _finish(rc)


def main() -> None:
    """Subprocess mode: ``python -m benchmarks.fuzz.child SPEC.json`` (stdio set up by the parent)."""
    with open(sys.argv[1]) as f:
        spec = json.load(f)
    _finish(execute(spec))


if __name__ == "__main__":
    main()
