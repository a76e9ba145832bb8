"""Python API cases: ``sqcc.compile`` with arguments of the wrong Python type (a string where a list
of passes goes, None, numbers, tuples with floats, bad budgets, bad calibration iterables) or an
in-memory ModelProto with a protobuf edit, and ``sqcc.load(...).run(x)`` / ``.benchmark(...)`` with
inputs of the wrong shape, dtype or container. The API's contract is the CLI's: SqccError for every
mistake a caller can make."""
from __future__ import annotations

from .assets import MODELS
from .case import Case

MNIST = str(MODELS / "mnist-8.onnx")
SHAPE = [1, 1, 28, 28]

COMPILE_KWARGS = [
    {"passes": "lowrank"}, {"passes": [None]}, {"passes": [123]}, {"target": None}, {"target": 123},
    {"target": ["host"]}, {"input_shapes": {"Input3": [1, 1, 28, 28.5]}}, {"input_shapes": {"Input3": "1,1,28,28"}},
    {"input_shapes": [1, 1, 28, 28]}, {"input_shapes": {"Input3": []}}, {"budget": {"macs": "x"}}, {"budget": 0.5},
    {"budget": {"macs": -1}}, {"budget": {}}, {"calibration": "__iter_empty__"}, {"calibration": [{"Input3": 1}]},
    {"calibration": [[1, 2, 3]]}, {"calibration": "nodir"}, {"calibration_limit": -1}, {"calibration_views": 0},
    {"preprocess": "size=abc"}, {"preprocess": 7}, {"techniques": ["nosuch"], "budget": "macs=0.8"},
    {"eval_images": "nodir"}, {"dump_ir": "/proc/ir"}, {"progress": "yes"},
]
RUN_X = [
    {"shape": [1, 28, 28]}, {"shape": SHAPE, "dtype": "float64"}, {"shape": SHAPE, "kind": "strings"},
    {"shape": SHAPE, "kind": "objects"}, {"kind": "none"}, {"kind": "nested_list"}, {"kind": "scalar"},
    {"shape": SHAPE, "kind": "nan"}, {"shape": SHAPE, "dtype": "complex64"}, {"shape": [0]},
    {"feed": {"wrong": {"shape": SHAPE}}}, [{"shape": SHAPE}, {"shape": SHAPE}], [],
]
BENCH_KWARGS = [{"repeat": 0}, {"repeat": -1}, {"warmup": -1}, {"threads": 0}, {"compare": "tensorflow"},
                {"compare": "onnxruntime", "repeat": 2, "warmup": 0}, {"inputs": "x"}, {"repeat": "2"}]


def compile_kwargs(ctx) -> Case:
    """sqcc.compile(mnist-8, **odd kwargs)."""
    kw = ctx.rng.choice(COMPILE_KWARGS)
    api = {"call": "compile", "model": MNIST, "kwargs": kw, "export": "out.tar"}
    return Case("api.compile_kwargs", f"sqcc.compile(mnist-8, **{kw})", api=api)


def compile_proto(ctx) -> Case:
    """sqcc.compile(onnx.ModelProto) of a model with one of the ONNX generators' edits."""
    from . import gen_onnx

    gen = ctx.rng.choice([gen_onnx.input_dim, gen_onnx.missing_init, gen_onnx.cycle, gen_onnx.dtype,
                          gen_onnx.empty_graph, gen_onnx.unknown_op, gen_onnx.missing_attr])
    inner = gen(ctx)
    path = inner.argv[1]
    return Case("api.compile_proto", f"sqcc.compile(ModelProto) of {inner.mutation}",
                api={"call": "compile", "model": path, "as_proto": True, "kwargs": {}})


def run_input(ctx) -> Case:
    """sqcc.load(mnist.tar).run(x) with x of a wrong shape, dtype or container."""
    x = ctx.rng.choice(RUN_X)
    api = {"call": "load_run", "package": str(ctx.assets.package("mnist")), "x": x}
    ok = isinstance(x, dict) and (x.get("dtype") == "float64" or x.get("kind") == "nan")
    return Case("api.run_input", f"pkg.run({x})", api=api, expect="success" if ok else None)


def bench_kwargs(ctx) -> Case:
    """sqcc.load(mnist.tar).benchmark(**odd kwargs)."""
    kw = ctx.rng.choice(BENCH_KWARGS)
    api = {"call": "load_bench", "package": str(ctx.assets.package("mnist")), "kwargs": kw}
    return Case("api.bench_kwargs", f"pkg.benchmark(**{kw})", api=api)


GENERATORS = {"api.compile_kwargs": (compile_kwargs, 3), "api.compile_proto": (compile_proto, 2),
              "api.run_input": (run_input, 2), "api.bench_kwargs": (bench_kwargs, 1)}
