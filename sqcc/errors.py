"""One exception type for everything a user can get wrong.

The CLI prints ``str(err)`` as a single line and exits non-zero; ``-v`` adds the chained cause.
Library code raises :class:`SqccError` with a message that names the file, node, op or flag at fault,
and never lets a TVM traceback escape for bad input.
"""
import contextlib
import io
import os
import re


class SqccError(Exception):
    """A problem with the user's input or environment, described in one line."""


def text_of(err: BaseException) -> str:
    """``str(err)``, or "" for an exception whose ``__str__`` itself raises."""
    try:
        return str(err)
    except Exception:  # noqa: BLE001
        return ""


def one_line(err: BaseException, first: bool = False) -> str:
    """The last (``first``: the first) non-empty line of an exception's message -- TVM puts the
    reason last, the ONNX checker first -- or, for an empty message, the exception's type."""
    text = text_of(err)
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    if not lines:
        return type(err).__name__
    return lines[0] if first else lines[-1]


class UnsupportedOpsError(SqccError):
    """The model uses operators the frontend cannot convert (all of them are listed)."""

    def __init__(self, path, ops):
        self.ops = list(ops)  # [(node_name, op_type)]
        kinds = sorted({op for _, op in self.ops})
        listing = ", ".join(f"{name} ({op})" for name, op in self.ops)
        super().__init__(
            f"{path}: unsupported operator(s) {', '.join(kinds)} in {len(self.ops)} node(s): {listing}")


def _register_with_tvm():
    """Let a SqccError raised inside a TVM module pass cross TVM's FFI as itself, not RuntimeError."""
    try:
        import tvm_ffi

        for cls in (SqccError, UnsupportedOpsError):
            tvm_ffi.register_error(cls.__name__, cls)
    except Exception:  # noqa: BLE001  (an older tvm_ffi: errors still arrive, as RuntimeError)
        pass


_register_with_tvm()


_SCOPE_NOISE = re.compile(rb"executable\.cc:\d+: Warning: Scope (Saving|Loaded):")


@contextlib.contextmanager
def _held_fds(fds, keep):
    """Send what is written to file descriptors ``fds`` (C++ and Python alike) to temporary files
    while the block runs; afterwards write back the lines ``keep(line, error)`` accepts, where
    ``error`` is the exception the block raised (or None)."""
    import sys
    import tempfile

    streams = {1: sys.stdout, 2: sys.stderr}
    try:
        for fd in fds:
            streams[fd].flush()
        saved = {fd: os.dup(fd) for fd in fds}
    except (OSError, ValueError, AttributeError):  # no real fds (embedded interpreters): nothing to hold
        yield
        return
    tmps = {fd: tempfile.TemporaryFile() for fd in fds}
    # Python's writes, too, even where sys.stdout is not fd 1 (a test's capture, a notebook)
    texts = {fd: io.TextIOWrapper(os.fdopen(fd, "wb", closefd=False), write_through=True) for fd in fds}
    error = None
    try:
        for fd in fds:
            os.dup2(tmps[fd].fileno(), fd)
        with contextlib.ExitStack() as stack:
            if 1 in fds:
                stack.enter_context(contextlib.redirect_stdout(texts[1]))
            if 2 in fds:
                stack.enter_context(contextlib.redirect_stderr(texts[2]))
            yield
    except BaseException as e:
        error = e
        raise
    finally:
        for fd in fds:
            texts[fd].flush()
            try:
                streams[fd].flush()
            except (ValueError, AttributeError):
                pass
            os.dup2(saved[fd], fd)
            os.close(saved[fd])
            tmps[fd].seek(0)
            kept = [ln for ln in tmps[fd].read().splitlines(keepends=True) if keep(ln, error)]
            tmps[fd].close()
            if kept:
                os.write(fd, b"".join(kept))


def quiet_vm_scope_warnings():
    """Drop the "Scope Saving:/Scope Loaded:" lines TVM 0.27's VM executable logs (one per function,
    from C++ straight to file descriptor 2) while exporting or loading a library; every other byte
    written to stderr meanwhile is passed through."""
    return _held_fds((2,), lambda line, error: not _SCOPE_NOISE.search(line))


def quiet_when_refused():
    """Hold what an importer prints (TVM's "Error converting operator ...", its UserWarnings,
    onnxruntime's log, "BlockBuilder destroyed with remaining blocks!") while the block runs: passed
    through if it succeeds, dropped if it raises :class:`SqccError` -- whose one line already says
    what went wrong. Code inside must free the failed importer's objects (their destructors log)
    before leaving the block: see :func:`release_frames`."""
    return _held_fds((1, 2), lambda line, error: not isinstance(error, SqccError))


def release_frames(err: BaseException) -> None:
    """Let go of what ``err``'s traceback keeps alive (TVM's half-built BlockBuilder, the importer's
    graph: frames hold their functions, closures and locals) now, so their C++ destructors run --
    and log -- here, not at exit. The traceback's text stays on the exception, as a note that
    ``-v`` prints."""
    import gc
    import traceback

    seen = set()
    while err is not None and id(err) not in seen:  # the exception and those it was raised during
        seen.add(id(err))
        if err.__traceback__ is not None:
            err.add_note("Traceback (released):\n" + "".join(traceback.format_tb(err.__traceback__)).rstrip())
            err.__traceback__ = None
        err = err.__cause__ or err.__context__
    gc.collect()
