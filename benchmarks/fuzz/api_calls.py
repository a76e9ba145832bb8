"""The Python API calls a case can make in the child (``Case.api = {"call": NAME, ...}``): the
library entry points with values of the wrong Python type or shape, which must raise SqccError."""
from __future__ import annotations


def _array(desc):
    """An input value from its description: {"shape": [...], "dtype": "..."} or a special kind."""
    import numpy as np

    kind = desc.get("kind", "array")
    if kind == "none":
        return None
    if kind == "nested_list":
        return [[0.5] * 28] * 28
    if kind == "scalar":
        return 1.0
    if kind == "strings":
        return np.full(desc["shape"], "x", dtype="<U1")
    if kind == "objects":
        return np.empty(desc["shape"], dtype=object)
    if kind == "nan":
        return np.full(desc["shape"], np.nan, dtype="float32")
    return np.zeros(desc["shape"], dtype=desc.get("dtype", "float32"))


def compile_call(api):
    """sqcc.compile(model, **kwargs); kwargs come straight from the case (odd types included)."""
    import sqcc

    model = api["model"]
    if api.get("as_proto"):
        import onnx

        model = onnx.load(model)
    kwargs = dict(api.get("kwargs") or {})
    if kwargs.get("calibration") == "__iter_empty__":
        kwargs["calibration"] = iter([])
    pkg = sqcc.compile(model, **kwargs)
    if api.get("export"):
        pkg.export(api["export"])


def load_run(api):
    """sqcc.load(tar).run(x) with ``x`` built by :func:`_array` (or a dict / list of them)."""
    import sqcc

    pkg = sqcc.load(api["package"])
    x = api["x"]
    if isinstance(x, dict) and "feed" in x:
        value = {k: _array(v) for k, v in x["feed"].items()}
    elif isinstance(x, list):
        value = [_array(v) for v in x]
    else:
        value = _array(x)
    pkg.run(value)


def load_bench(api):
    """sqcc.load(tar).benchmark(**kwargs) with odd repeat / warmup / threads / compare values."""
    import sqcc

    sqcc.load(api["package"]).benchmark(**(api.get("kwargs") or {}))


def harness_check(api):
    """Misbehave on purpose, so tests can see the harness classify it: ``how`` is sleep (hang),
    segv (signal), oom (MemoryError), leave (a file left behind on failure), noise (an extra stderr
    line beside the error), traceback (a Python traceback), error (a clean error)."""
    import ctypes
    import sys
    import time

    from sqcc.errors import SqccError

    how = api["how"]
    if how == "sleep":
        time.sleep(3600)
    if how == "segv":
        ctypes.string_at(0)
    if how == "oom":
        chunks = []
        while True:
            chunks.append(bytearray(256 << 20))
    if how == "leave":
        open("half-written.tar", "wb").close()
    if how == "noise":
        print("[12:00:00] /src/relax/ir/block_builder.cc:65: Warning: BlockBuilder destroyed with remaining "
              "blocks!", file=sys.stderr)
    if how == "traceback":
        import traceback

        try:
            raise KeyError("harness")
        except KeyError:
            traceback.print_exc()
        sys.exit(1)
    raise SqccError(f"harness check '{how}'")


API_CALLS = {"compile": compile_call, "load_run": load_run, "load_bench": load_bench,
             "harness_check": harness_check}
