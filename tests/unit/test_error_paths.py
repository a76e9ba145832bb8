"""Every ``except`` branch that turns a TVM, onnxruntime, LiteRT or OS exception into an SqccError,
driven with the exceptions that break careless handlers: an empty message, a message whose reason
is on its last line after blank ones, an exception whose ``__str__`` itself raises, and one raised
with no ``__cause__``. Each must end as one SqccError line that says where, never a crash of the
handler. The real component is replaced by one that raises (monkeypatch); the graphs are tiny and
in memory."""
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import sqcc
from sqcc import frontend
from sqcc.errors import SqccError, one_line

CORPUS = Path(__file__).resolve().parents[1] / "data" / "corpus"


class _BadStr(RuntimeError):
    def __str__(self):
        raise ValueError("__str__ is broken too")


def _raisers():
    return {"empty": RuntimeError(""), "multiline": ValueError("context\n\n  at somewhere\n\nthe reason\n"),
            "bad_str": _BadStr("x"), "os": OSError(5, "Input/output error")}


@pytest.fixture(params=list(_raisers()))
def exc(request):
    return _raisers()[request.param]


def _raiser(exc):
    def f(*a, **k):
        raise exc
    return f


def _model():
    w = numpy_helper.from_array(np.ones((2, 1, 1, 1), np.float32), "w")
    g = helper.make_graph([helper.make_node("Conv", ["x", "w"], ["y"], name="conv")], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 4, 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 4, 4])], [w])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])


def _one_line_error(fn, pattern):
    with pytest.raises(SqccError) as e:
        fn()
    msg = str(e.value)
    assert "\n" not in msg and msg.strip() == msg and msg, repr(msg)
    assert pattern in msg, msg
    return msg


def test_one_line_survives_every_kind_of_exception(exc):
    got = one_line(exc)
    assert got and "\n" not in got
    assert one_line(RuntimeError("")) == "RuntimeError"
    assert one_line(ValueError("a\n\nb\n")) == "b" and one_line(ValueError("a\n\nb\n"), first=True) == "a"


# ------------------------------------------------------------------ frontends

def test_onnx_parse(monkeypatch, exc):
    monkeypatch.setattr(onnx, "load_from_string", _raiser(exc))
    _one_line_error(lambda: frontend.load(_model()), "not a valid ONNX model")


def test_onnx_checker(monkeypatch, exc):
    monkeypatch.setattr(onnx.checker, "check_model", _raiser(exc))
    _one_line_error(lambda: frontend.load(_model()), "ONNX checker rejected the model")


def test_onnx_importer(monkeypatch, exc):
    from tvm.relax.frontend.onnx import onnx_frontend

    monkeypatch.setattr(onnx_frontend, "from_onnx", _raiser(exc))
    _one_line_error(lambda: frontend.load(_model()), "TVM's ONNX importer failed")


def test_tflite_importer(monkeypatch, exc):
    import tvm.relax.frontend.tflite as tfl

    monkeypatch.setattr(tfl, "from_tflite", _raiser(exc))
    _one_line_error(lambda: frontend.load(str(CORPUS / "tfl_blazeface_like.tflite")), "TVM's TFLite importer failed")


def test_tflite_normalize(monkeypatch, exc):
    from sqcc import tflite_frontend

    monkeypatch.setattr(tflite_frontend, "normalize_tflite", _raiser(exc))
    _one_line_error(lambda: frontend.load(str(CORPUS / "tfl_blazeface_like.tflite")), "corrupt TFLite flatbuffer")


def test_size_report(monkeypatch, exc):
    from sqcc import layers
    from sqcc.size_report import size_report

    m = frontend.load(_model())
    monkeypatch.setattr(layers, "weight_arrays", _raiser(exc))
    _one_line_error(lambda: size_report(m.mod), "size report: cannot read the model's weights")


# ------------------------------------------------------------------ reference runtimes

def test_onnxruntime_session(monkeypatch, exc):
    import onnxruntime as ort

    from sqcc.reference import OnnxRuntimeSession

    m = frontend.load(_model())
    monkeypatch.setattr(ort, "InferenceSession", _raiser(exc))
    _one_line_error(lambda: OnnxRuntimeSession(m), "onnxruntime cannot load the model")


def test_litert_interpreter(monkeypatch, exc):
    import ai_edge_litert.interpreter as li

    from sqcc.reference import LiteRTSession

    m = frontend.load(str(CORPUS / "tfl_blazeface_like.tflite"))
    monkeypatch.setattr(li, "Interpreter", _raiser(exc))
    _one_line_error(lambda: LiteRTSession(m), "LiteRT cannot load the model")


# ------------------------------------------------------------------ build, passes, link, load

def test_invalid_target_string():
    from sqcc.build import as_target

    _one_line_error(lambda: as_target("no-such-kind -mcpu=x"), "invalid target")


def test_relax_build(monkeypatch, exc):
    import tvm

    from sqcc.build import build

    m = frontend.load(_model())
    monkeypatch.setattr(tvm.relax, "build", _raiser(exc))
    _one_line_error(lambda: build(m.mod, "llvm"), "build for llvm failed")


def test_compile_build_phase(monkeypatch, exc):
    from sqcc import build

    monkeypatch.setattr(build, "build", _raiser(exc))  # the pipeline's build phase imports it by name
    _one_line_error(lambda: sqcc.compile(_model()), "build for host failed")


def test_a_pass_that_crashes(exc):
    from sqcc.pipeline import run_passes

    m = frontend.load(_model())
    _one_line_error(lambda: run_passes(m.mod, [_raiser(exc)], ["lowrank:rank=1"]), "pass lowrank:rank=1 failed")


def test_link_and_load_library(monkeypatch, tmp_path, exc):
    import tvm

    from sqcc import package
    from sqcc.targets import export_with

    class Exe:
        export_library = staticmethod(_raiser(exc))

    _one_line_error(lambda: export_with(Exe(), tmp_path / "x.so", "the aarch64 library"),
                    "linking the aarch64 library failed")
    monkeypatch.setattr(package, "elf_problem", lambda lib: None)  # past the ELF check: TVM's loader raises
    monkeypatch.setattr(tvm.runtime, "load_module", _raiser(exc))
    _one_line_error(lambda: package._load_library(tmp_path / "p.tar", tmp_path / "lib.so", "host"),
                    "cannot load the compiled library")


def test_package_link(exc):
    from sqcc.package import Package

    class Exe:
        export_library = staticmethod(_raiser(exc))

    pkg = Package(Exe(), {"target": {"family": "host", "name": "host"}}, {})
    _one_line_error(pkg.lib_bytes, "cannot link the compiled library")


def test_cuda_build(monkeypatch, exc):
    import tvm

    from sqcc.targets import cuda

    m = frontend.load(_model())
    monkeypatch.setattr(tvm.relax, "build", _raiser(exc))
    _one_line_error(lambda: cuda.build(m.mod, "sm_80"), "CUDA build for sm_80 failed")


def test_tuning_database(monkeypatch, tmp_path, exc):
    from tvm.s_tir import meta_schedule as ms

    from sqcc.build import host_target
    from sqcc.schedules.tuning import open_database

    (tmp_path / "r.json").write_text("")
    monkeypatch.setattr(ms.database, "JSONDatabase", _raiser(exc))
    _one_line_error(lambda: open_database(tmp_path / "r.json", host_target()), "not a usable MetaSchedule database")


# ------------------------------------------------------------------ micro, remote, CLI

def test_micro_lowering_and_codegen(monkeypatch, exc):
    from sqcc.targets.micro import build as micro_build
    from sqcc.targets.micro.kernels import codegen_error

    monkeypatch.setattr(micro_build, "relax_lower", _raiser(exc))
    _one_line_error(lambda: micro_build._lower(None), "micro: lowering the model with TVM")
    msg = codegen_error(exc, {})
    assert msg.startswith("micro: TVM's C code generator failed: ") and "\n" not in msg


def test_rpc_tracker_unreachable(monkeypatch, exc):
    from tvm import rpc

    from sqcc import remote

    monkeypatch.setattr(remote, "wait_for_free_node", lambda *a, **k: {})
    monkeypatch.setattr(rpc, "connect_tracker", _raiser(exc))
    monkeypatch.setattr(remote.socket, "create_connection", _raiser(exc))  # sqcc's own tracker client
    _one_line_error(lambda: remote.request_session("127.0.0.1:9", "aarch64", timeout=1),
                    "cannot reach the RPC tracker at 127.0.0.1:9")


def test_cli_internal_error_is_one_line(monkeypatch, capsys, exc):
    from sqcc import cli, targets

    monkeypatch.setattr(targets, "format_targets", _raiser(exc))  # a bug inside `sqcc targets`
    assert cli.main(["targets"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("sqcc: internal error: ") and "-v" in err, err
