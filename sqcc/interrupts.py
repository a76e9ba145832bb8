"""Ctrl-C that stops a long job (tuning, a build, a benchmark) and leaves nothing running.

Python raises ``KeyboardInterrupt`` only between bytecodes of the main thread, and where that happens
inside a callback TVM's C++ called (MetaSchedule's builder and runner are Python called from the
task scheduler), TVM's FFI hands it back as ``RuntimeError('')``: the interrupt is lost, or arrives
as an empty "internal error". So the signal is also *recorded*: :func:`check` re-raises it wherever
sqcc code runs again, and code that catches ``Exception`` asks :func:`requested` before treating an
error as a failure. :func:`end_children` kills what is left of the measuring worker processes, and
:func:`die_with_parent` (run in each worker) ends a worker whose parent was killed outright.
"""
from __future__ import annotations

import contextlib
import os
import signal
import threading

_requested = threading.Event()
_depth = 0  # nesting of handling(): the outermost one installs the handlers and starts afresh


def requested() -> bool:
    """True once SIGINT/SIGTERM arrived inside :func:`handling`."""
    return _requested.is_set()


def check() -> None:
    """Raise ``KeyboardInterrupt`` if an interrupt was requested (call it where TVM may have eaten one)."""
    if _requested.is_set():
        raise KeyboardInterrupt


_signum = [signal.SIGINT]


def signal_number() -> int:
    """The signal that interrupted (SIGINT for a Ctrl-C): the CLI exits with 128 + it."""
    return int(_signum[0])


def _on_signal(signum, frame):
    _signum[0] = signum
    _requested.set()
    raise KeyboardInterrupt


@contextlib.contextmanager
def handling():
    """Record SIGINT and SIGTERM while the block runs (main thread only; elsewhere a no-op).

    The outermost block forgets an interrupt handled before it, so a notebook can tune again."""
    global _depth
    if threading.current_thread() is not threading.main_thread() or _depth:
        yield
        return
    _requested.clear()
    old = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    for s in old:
        signal.signal(s, _on_signal)
    _depth += 1
    try:
        yield
    finally:
        _depth -= 1
        for s, h in old.items():
            signal.signal(s, h)


def end_children(timeout: float = 3.0, of: int | None = None) -> list[int]:
    """Terminate, then kill, every descendant process of this one (or of PID ``of``); their PIDs."""
    import psutil

    try:
        kids = psutil.Process(of).children(recursive=True)
    except psutil.Error:
        return []
    for p in kids:
        with contextlib.suppress(psutil.Error):
            p.terminate()
    _, alive = psutil.wait_procs(kids, timeout=timeout)
    for p in alive:
        with contextlib.suppress(psutil.Error):
            p.kill()
    psutil.wait_procs(alive, timeout=timeout)
    return [p.pid for p in kids]


def die_with_parent(poll_s: float = 0.5) -> None:
    """In a worker process: exit as soon as the process that started it is gone (SIGKILLed, say).

    Linux's PR_SET_PDEATHSIG would do it without a thread, but it fires when the parent *thread*
    that started the worker ends, and MetaSchedule starts its workers from pool threads."""
    parent = os.getppid()

    def watch():
        import time

        while True:
            time.sleep(poll_s)
            if os.getppid() != parent:
                os._exit(1)

    threading.Thread(target=watch, name="sqcc-die-with-parent", daemon=True).start()
