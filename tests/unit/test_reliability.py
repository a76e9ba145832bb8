"""What a hostile or unlucky user hits before any real work: shapes too large to hold, output paths
that cannot be written, an empty --target, an importer's noise after its error, a Ctrl-C. Small
in-memory graphs and plain files only."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from sqcc import frontend, interrupts, outputs
from sqcc.errors import SqccError, quiet_when_refused
from sqcc.schedules.common import divisors
from sqcc.targets import resolve


def _conv_model(batch: int) -> onnx.ModelProto:
    w = numpy_helper.from_array(np.ones((4, 3, 3, 3), np.float32), "w")
    g = helper.make_graph([helper.make_node("Conv", ["x", "w"], ["y"], name="conv", pads=[1, 1, 1, 1])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 3, 64, 64])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, 4, 64, 64])], [w])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])


# ------------------------------------------------------------------ shapes that cannot fit

def test_a_batch_of_2_to_the_31_is_refused_at_import_with_the_numbers():
    t0 = time.monotonic()
    with pytest.raises(SqccError, match=r"tensor '.*' of shape \(2147483648, 4, 64, 64\) \(float32\) needs "
                                        r"128\.0 TiB, this machine has .* of memory .*'x' \(2147483648, 3, 64, 64\)"):
        frontend.load(_conv_model(2 ** 31))
    assert time.monotonic() - t0 < 20  # refused, not lowered


def test_size_limit_is_the_largest_tensor_against_memory():
    m = frontend.load(_conv_model(1))  # largest tensor: y, 4*64*64 floats = 64 KiB
    frontend.check_tensor_sizes(m, "m", memory=64 * 1024)
    with pytest.raises(SqccError, match=r"needs 64\.0 KiB, this machine has 63\.0 KiB"):
        frontend.check_tensor_sizes(m, "m", memory=63 * 1024)


def test_divisors_of_huge_extents_are_quick_and_exact():
    for n in (1, 2, 12, 36, 97, 360, 1024):
        assert divisors(n) == [d for d in range(1, n + 1) if n % d == 0]
    t0 = time.monotonic()
    assert len(divisors(2 ** 31)) == 32 and divisors(2 ** 31 - 1) == [1, 2 ** 31 - 1]
    assert time.monotonic() - t0 < 1


# ------------------------------------------------------------------ output paths

def test_output_under_a_file_is_refused(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(SqccError, match=r"^-o .*/f/o\.tar: .*/f is not a directory$"):
        outputs.check_writable(tmp_path / "f" / "o.tar", "-o")


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="Linux /proc")
def test_output_where_no_file_can_be_created_is_refused():
    with pytest.raises(SqccError, match=r"^-o /proc/x\.tar: cannot write in /proc \("):
        outputs.check_writable("/proc/x.tar", "-o")


def test_output_kinds_and_empty_path(tmp_path):
    with pytest.raises(SqccError, match="is a directory; give a file name"):
        outputs.check_writable(tmp_path, "-o")
    (tmp_path / "f").write_text("x")
    with pytest.raises(SqccError, match="exists and is not a directory"):
        outputs.check_writable(tmp_path / "f", "-o", "directory")
    with pytest.raises(SqccError, match="^--output: empty path$"):
        outputs.check_writable("", "--output")


def test_missing_directories_are_checked_but_made_only_when_written(tmp_path, capfd):
    out = tmp_path / "new" / "deeper" / "o.npy"
    outputs.check_writable(out, "--output")
    assert not (tmp_path / "new").exists()  # a run that fails later leaves nothing behind
    outputs.atomic_write(out, lambda f: f.write(b"data"), "--output")
    assert out.read_bytes() == b"data"
    assert f"sqcc: created directory {out.parent}" in capfd.readouterr().err
    assert [p.name for p in out.parent.iterdir()] == ["o.npy"]  # no temp file left


def test_atomic_write_failure_keeps_the_old_file_and_leaves_no_temp(tmp_path):
    out = tmp_path / "o.bin"
    out.write_bytes(b"old")

    def broken(f):
        f.write(b"half")
        raise OSError(28, "No space left on device")

    with pytest.raises(SqccError, match=r"o\.bin: cannot write \(No space left on device\)"):
        outputs.atomic_write(out, broken, "-o")
    assert out.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["o.bin"]


# ------------------------------------------------------------------ targets, importer noise

@pytest.mark.parametrize("name", ["", "  "])
def test_empty_target_is_refused(name):
    with pytest.raises(SqccError, match=r"--target '\s*': empty \(known: .*host"):
        resolve(name)
    assert resolve(None).family == "host"  # the API's default


def test_importer_noise_is_dropped_when_sqcc_reports_the_error(capfd):
    with pytest.raises(SqccError):
        with quiet_when_refused():
            os.write(2, b"[12:00:00] block_builder.cc:67: Warning: BlockBuilder destroyed with remaining blocks!\n")
            print("Error converting operator Slice, with inputs: [x]")
            raise SqccError("m.onnx: TVM's ONNX importer failed at node 'n' (Slice): ...")
    got = capfd.readouterr()
    assert got.out == "" and got.err == ""
    with quiet_when_refused():
        os.write(2, b"kept on success\n")
    assert capfd.readouterr().err == "kept on success\n"


def test_a_failed_import_says_one_thing():
    """onnx's own test model that TVM's ONNX importer rejects: the error, and nothing else -- no
    importer prints, no "BlockBuilder destroyed with remaining blocks!" at exit."""
    model = Path(onnx.__file__).parent / "backend/test/data/pytorch-operator/test_operator_index/model.onnx"
    code = ("import sys\nfrom sqcc import frontend\nfrom sqcc.errors import SqccError\n"
            "try:\n    frontend.load(sys.argv[1])\nexcept SqccError as e:\n    print('ERR', e)\n")
    p = subprocess.run([sys.executable, "-c", code, str(model)], capture_output=True, text=True, timeout=120)
    assert p.stdout.startswith("ERR ") and "importer failed at node" in p.stdout, p.stdout
    assert p.stdout.count("\n") == 1, p.stdout
    assert p.stderr == "", p.stderr


# ------------------------------------------------------------------ interrupts

def test_an_interrupt_is_recorded_and_reraised_where_tvm_ate_it():
    before = signal.getsignal(signal.SIGINT)  # pytest-xdist workers have their own
    with pytest.raises(KeyboardInterrupt):
        with interrupts.handling():
            try:
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(5)
            except KeyboardInterrupt:
                pass  # what TVM's FFI does: the interrupt becomes something else, or nothing
            assert interrupts.requested()
            interrupts.check()
    assert interrupts.signal_number() == signal.SIGINT
    with interrupts.handling():
        assert not interrupts.requested()  # a new job starts afresh
    assert signal.getsignal(signal.SIGINT) is before  # the handler is put back


def test_end_children_ends_every_descendant():
    import psutil

    p = subprocess.Popen([sys.executable, "-c", "import subprocess, sys, time\n"
                          "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\ntime.sleep(60)"])
    try:
        deadline = time.monotonic() + 20
        while not psutil.Process(p.pid).children() and time.monotonic() < deadline:
            time.sleep(0.05)
        kids = [k.pid for k in psutil.Process(p.pid).children(recursive=True)]
        assert kids
        assert interrupts.end_children(of=p.pid) == kids
        assert not [k for k in kids if psutil.pid_exists(k) and psutil.Process(k).status() != psutil.STATUS_ZOMBIE]
    finally:
        p.kill()
        p.wait(timeout=10)


# ------------------------------------------------------------------ one tuner per database

def test_a_second_tuner_on_the_same_records_waits_and_says_for_whom(tmp_path, capfd):
    from sqcc.schedules.tuning import tuning_lock

    records = tmp_path / "db" / "host.json"
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time\nfrom sqcc.schedules.tuning import tuning_lock\n"
                               "with tuning_lock(sys.argv[1]):\n    print('held', flush=True)\n    time.sleep(3)\n",
                               str(records)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        t0 = time.monotonic()
        with tuning_lock(records):
            waited = time.monotonic() - t0
            assert (records.parent / "host.json.lock").read_text().startswith(f"PID {os.getpid()} on ")
        assert waited > 1.0  # it waited for the other run to let go
        assert holder.wait(timeout=20) == 0
        assert f"{records} is being tuned by PID {holder.pid} on " in capfd.readouterr().err
    finally:
        holder.kill()
        holder.wait()
    with tuning_lock(records):  # released: taken at once, nothing said
        pass
    assert "being tuned" not in capfd.readouterr().err


# ------------------------------------------------------------------ a kill while writing

def test_a_kill_in_the_middle_of_writing_leaves_the_previous_file(tmp_path):
    """Every output goes through sqcc.outputs.atomic_write (packages, --output, plots, sweep rows,
    IR dumps): SIGKILL a writer half way and the file it was replacing is untouched."""
    out = tmp_path / "o.tar"
    out.write_bytes(b"previous package")
    code = ("import sys, time\nfrom sqcc.outputs import atomic_write\n"
            "def slow(f):\n    f.write(b'half of a new package')\n    f.flush()\n"
            "    print('writing', flush=True)\n    time.sleep(60)\n"
            "atomic_write(sys.argv[1], slow)\n")
    p = subprocess.Popen([sys.executable, "-c", code, str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().strip() == "writing"
        p.send_signal(signal.SIGKILL)
        p.wait(timeout=10)
    finally:
        p.kill()
    assert out.read_bytes() == b"previous package"
    leftovers = [q.name for q in tmp_path.iterdir() if q.name != "o.tar"]
    assert all(n.startswith(".o.tar.") and n.endswith(".tmp") for n in leftovers), leftovers  # hidden, never read
    from sqcc.outputs import atomic_write

    atomic_write(out, lambda f: f.write(b"next package"))  # the next run writes over it normally
    assert out.read_bytes() == b"next package"


# ------------------------------------------------------------------ fuzz findings (benchmarks/fuzz, smoke500)

def test_decompression_bomb_image_is_one_line(tmp_path):
    """c00237: a 64x64 PNG whose header declares 2^31 - 1 pixels."""
    import struct
    import zlib

    from sqcc.models import Preprocess
    from sqcc.preprocess import load_image

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    png = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 2 ** 31 - 1, 1, 8, 2, 0, 0, 0))
           + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))
    (tmp_path / "bomb.png").write_bytes(png)
    with pytest.raises(SqccError, match=r"bomb\.png: image too large to decode \(2147483647 pixels\)"):
        load_image(tmp_path / "bomb.png", Preprocess())


def test_output_name_longer_than_the_file_system_allows(tmp_path):
    """c00091: -o with a 304-character name."""
    with pytest.raises(SqccError, match=r"file name too long \(304 bytes; at most \d+ here\)"):
        outputs.check_writable(tmp_path / ("a" * 300 + ".tar"), "-o")
    with pytest.raises(SqccError, match=r"^--output .*characters\): File name too long$"):
        outputs.check_writable(tmp_path / ("a/" * 3000 + "x.npy"), "--output")


def test_onnx_input_without_a_numeric_type_and_graph_without_outputs():
    """c00421 (elem_type 0) and c00280 (graph.output removed)."""
    m = _conv_model(1)
    m.graph.input[0].type.tensor_type.elem_type = 0
    with pytest.raises(SqccError, match="input 'x' has element type 0, not a numeric tensor type"):
        frontend.load(m, name="m")
    m = _conv_model(1)
    del m.graph.output[:]
    with pytest.raises(SqccError, match=r"the graph declares no outputs"):
        frontend.load(m, name="m")


def test_tensor_file_of_records_or_strings_is_refused(tmp_path):
    """c00172: a .npy of dtype V8 (np.load reads it without pickle; it is still not a tensor)."""
    np.save(tmp_path / "v.npy", np.zeros(3, dtype="V8"))
    np.save(tmp_path / "s.npy", np.array(["a", "b"]))
    for f, kind in (("v.npy", "V8"), ("s.npy", "<U1")):
        with pytest.raises(SqccError, match=f"holds \\|?{kind} values, not a numeric tensor"):
            frontend.read_tensor_file(tmp_path / f)


@pytest.mark.parametrize("kwargs, why", [({"passes": [123]}, r"passes\[0\]=123: expected a pass spec"),
                                         ({"passes": "lowrank"}, "passes='lowrank': expected a list"),
                                         ({"preprocess": 7}, "preprocess=7: expected a recipe"),
                                         ({"target": 5}, "target=5: expected a target name"),
                                         ({"calibration_limit": 0}, "calibration_limit=0: expected a positive"),
                                         ({"input_shapes": [1, 1, 28, 28]}, r"input_shapes=\[1, 1, 28, 28\]: ")])
def test_api_arguments_of_the_wrong_kind(kwargs, why):
    """c00214, c00257: sqcc.compile(..., passes=[123]) / preprocess=7 raised TypeError / AttributeError."""
    import sqcc

    with pytest.raises(SqccError, match=why):
        sqcc.compile(_conv_model(1), **kwargs)


def test_benchmark_arguments_of_the_wrong_kind():
    """run10k c00313: pkg.benchmark(repeat='2') raised TypeError."""
    import sqcc

    pkg = sqcc.compile(_conv_model(1))
    for kwargs, why in (({"repeat": "2"}, "--repeat '2': expected an integer"),
                        ({"warmup": -1}, r"--warmup -1 --repeat 50: each must be in \[0, 100000\]"),
                        ({"repeat": 10 ** 20}, r"--repeat 100000000000000000000: each must be in"),
                        ({"threads": 1.5}, "--threads 1.5: expected an integer")):
        with pytest.raises(SqccError, match=why):
            pkg.benchmark(**kwargs)


def test_an_input_declared_empty_is_refused_and_a_failed_reference_run_is_one_line(monkeypatch):
    """run10k c00554: mnist-8 with input dim 0 = 0 went on as a 'dynamic batch', then onnxruntime
    refused the run (an internal error); c00418: bench --repeat 10^20 ran for ever."""
    m = _conv_model(1)
    m.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 0
    with pytest.raises(SqccError, match=r"input 'x' declares axis 0 of size 0 \(an empty tensor\)"):
        frontend.load(m, name="m")
    import onnxruntime as ort

    from sqcc.reference import OnnxRuntimeSession

    model = frontend.load(_conv_model(1))
    sess = OnnxRuntimeSession(model)

    class Broken:
        def run(self, *a):
            raise ort.capi.onnxruntime_pybind11_state.InvalidArgument("Got invalid dimensions\n index: 0\n Fix it.")

    sess.sess = Broken()
    with pytest.raises(SqccError, match="onnxruntime cannot run the model: Got invalid dimensions index: 0 Fix it"):
        sess.run(frontend.random_inputs(model))
