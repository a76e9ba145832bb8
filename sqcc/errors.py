"""One exception type for everything a user can get wrong.

The CLI prints ``str(err)`` as a single line and exits non-zero; ``-v`` adds the chained cause.
Library code raises :class:`SqccError` with a message that names the file, node, op or flag at fault,
and never lets a TVM traceback escape for bad input.
"""


class SqccError(Exception):
    """A problem with the user's input or environment, described in one line."""


class UnsupportedOpsError(SqccError):
    """The model uses operators the frontend cannot convert (all of them are listed)."""

    def __init__(self, path, ops):
        self.ops = list(ops)  # [(node_name, op_type)]
        kinds = sorted({op for _, op in self.ops})
        listing = ", ".join(f"{name} ({op})" for name, op in self.ops)
        super().__init__(
            f"{path}: unsupported operator(s) {', '.join(kinds)} in {len(self.ops)} node(s): {listing}")
