"""One exception type for everything a user can get wrong.

The CLI prints ``str(err)`` as a single line and exits non-zero; ``-v`` adds the chained cause.
Library code raises :class:`SqccError` with a message that names the file, node, op or flag at fault,
and never lets a TVM traceback escape for bad input.
"""
import contextlib
import os
import re


class SqccError(Exception):
    """A problem with the user's input or environment, described in one line."""


def one_line(err: BaseException) -> str:
    """The last non-empty line of an exception's message (TVM puts the reason last), or its type."""
    lines = [ln.strip() for ln in str(err).strip().splitlines() if ln.strip()]
    return lines[-1] if lines else type(err).__name__


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
def quiet_vm_scope_warnings():
    """Drop the "Scope Saving:/Scope Loaded:" lines TVM 0.27's VM executable logs (one per function,
    from C++ straight to file descriptor 2) while exporting or loading a library; every other byte
    written to stderr meanwhile is passed through."""
    import sys
    import tempfile

    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no real fd 2 (embedded interpreters): nothing to filter
        yield
        return
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield
        finally:
            try:
                sys.stderr.flush()
            except ValueError:
                pass
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            kept = [ln for ln in tmp.read().splitlines(keepends=True) if not _SCOPE_NOISE.search(ln)]
            if kept:
                os.write(2, b"".join(kept))
