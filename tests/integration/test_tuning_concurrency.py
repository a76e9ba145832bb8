"""Two `sqcc tune` processes on one tuning database, as a team sharing ~/.cache/sqcc runs them."""
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from conftest import tuning_records_valid


def test_two_tuners_on_one_database_both_keep_their_records(tmp_path):
    """Two `sqcc tune` runs on one records file (a team sharing ~/.cache/sqcc): the second waits for
    the first (saying for whom), then adds its own model's records; the file stays valid and holds
    both."""
    w = numpy_helper.from_array(np.ones((8, 4, 3, 3), np.float32), "w")
    g = helper.make_graph([helper.make_node("Conv", ["x", "w"], ["y"], name="conv", pads=[1, 1, 1, 1])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 8, 8])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 8, 8])], [w])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)]), tmp_path / "conv.onnx")
    exe = str(Path(sys.executable).with_name("sqcc"))
    runs = [subprocess.Popen([exe, "tune", model, "--trials", str(n), "--records", "r.json"], cwd=tmp_path,
                             text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            for model, n in (("mnist-8", 6), ("conv.onnx", 3))]
    outs = [p.communicate(timeout=600) for p in runs]
    assert [p.returncode for p in runs] == [0, 0], outs
    waited = [err for _, err in outs if "is being tuned by PID" in err]
    assert len(waited) == 1, outs  # exactly one of them found the other holding the database
    n = tuning_records_valid(tmp_path / "r.json")
    assert n >= 6 + 3 - 1  # each run's trials (a default schedule may fail to build, at most one)
    from sqcc import frontend
    from sqcc.build import host_target
    from sqcc.schedules.tuning import _count_records, open_database

    db = open_database(str(tmp_path / "r.json"), host_target())
    conv = frontend.load(str(tmp_path / "conv.onnx"))
    from sqcc.build import lower_to_tir
    from tvm.s_tir import meta_schedule as ms

    tasks = ms.relax_integration.extract_tasks(lower_to_tir(conv.mod, host_target()), host_target())
    assert any(_count_records(db, t.dispatched[0])[0] > 0 for t in tasks)  # the second model's records
