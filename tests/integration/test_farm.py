"""The device farm: TVM RPC tracker + a native node + an emulated aarch64 node (qemu-user).

CI runs as root on a fresh machine with qemu-user-static, binfmt-support, debootstrap and the aarch64
cross compilers installed: the first run builds the emulated node's Debian arm64 root (cached under
$SQCC_CACHE or ~/.cache/sqcc; several minutes, progress on stderr). Nothing here is skipped when a
tool is missing -- a missing tool is a failure with the package to install in the message.
"""
import json
import os
import signal
import socket
import time

import numpy as np
import pytest

from sqcc import farm, remote
from sqcc.errors import SqccError

pytestmark = pytest.mark.slow


def _free_port() -> int:
    """A port with its successor also free (the tracker is given [port, port+1))."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port < 65000 and not farm.port_open("127.0.0.1", port + 1, 0.2):
            return port
    raise RuntimeError("no free port")


def _alive(pid):
    return farm._alive(pid)


@pytest.fixture(scope="module")
def farm_up(tmp_path_factory):
    """A farm of our own (own state dir, own port), started and stopped by the tests."""
    old = os.environ.get("SQCC_FARM_DIR")
    os.environ["SQCC_FARM_DIR"] = str(tmp_path_factory.mktemp("farmstate"))
    t0 = time.monotonic()
    from conftest import wait_for_early_root

    wait_for_early_root()  # conftest may have started the build at collection (fresh machines)
    root = farm.build_aarch64_root()  # no-op when cached; else builds it (minutes) with progress
    built_s = time.monotonic() - t0
    port = _free_port()
    tracker = f"127.0.0.1:{port}"
    t0 = time.monotonic()
    st = farm.start(port=port, nodes=("host", "aarch64"))
    info = {"tracker": tracker, "port": port, "root": root, "root_seconds": built_s,
            "start_seconds": time.monotonic() - t0, "status": st,
            "procs": [dict(p) for p in farm._read_state()["procs"]]}
    print(f"\nfarm: root ready after {built_s:.0f} s, started in {info['start_seconds']:.0f} s at {tracker}")
    try:
        yield info
    finally:
        if farm._read_state():
            farm.stop()
        if old is None:
            os.environ.pop("SQCC_FARM_DIR", None)
        else:
            os.environ["SQCC_FARM_DIR"] = old


def test_farm_status_lists_nodes(farm_up):
    s = farm.status()
    assert s["running"] and s["tracker"] == farm_up["tracker"]
    assert s["nodes"]["host"]["state"] == "free" and not s["nodes"]["host"]["emulated"]
    assert s["nodes"]["aarch64"]["state"] == "free" and s["nodes"]["aarch64"]["emulated"]
    text = farm.format_status(s)
    assert "aarch64" in text and "emulated" in text and "free" in text
    # the tracker binds to loopback only
    assert farm_up["status"]["tracker"].startswith("127.0.0.1:")


def test_farm_cli_status(farm_up):
    import subprocess
    import sys

    p = subprocess.run([sys.executable, "-m", "sqcc.farm", "status", "--json"], capture_output=True, text=True,
                       env=dict(os.environ), timeout=120)
    assert p.returncode == 0, p.stderr
    s = json.loads(p.stdout)
    assert s["tracker"] == farm_up["tracker"] and set(s["nodes"]) == {"host", "aarch64"}


def test_start_twice_is_refused(farm_up):
    with pytest.raises(SqccError, match="already running"):
        farm.start(port=farm_up["port"], nodes=("host",))


def test_squeezenet_aarch64_on_emulated_node_matches_host(farm_up, squeezenet_pkg):
    """SqueezeNet 1.1 cross-compiled for aarch64 (rpi4 preset) runs on the emulated node through the
    tracker and matches the host build within 1e-4."""
    import sqcc

    host_pkg, _ = squeezenet_pkg
    arm_pkg = sqcc.compile("squeezenet1.1", target="arm_cpu:rpi4")
    assert arm_pkg.manifest["target"]["family"] == "arm_cpu"
    lib, _ = remote.package_lib(arm_pkg)
    assert lib[:4] == b"\x7fELF" and int.from_bytes(lib[18:20], "little") == 0xB7  # aarch64
    x = np.random.default_rng(1).random((1, 3, 224, 224), dtype=np.float32)
    ref = host_pkg.run(x)
    with remote.RemoteVM(arm_pkg, farm_up["tracker"], "aarch64", timeout=120) as r:
        out = r.run(x)
        assert out.shape == ref.shape == (1, 1000)
        err = float(np.abs(out - ref).max())
        assert err <= 1e-4, f"aarch64 vs host max |diff| {err}"
        assert int(out.argmax()) == int(ref.argmax())
    b = remote.bench_remote(arm_pkg, farm_up["tracker"], "aarch64", repeat=2, warmup=0, inputs=x)
    assert b["emulated"] is True and "EMULATED" in b["note"]
    assert b["sqcc"]["runs"] == 2 and b["sqcc"]["median_ms"] > 0
    assert "EMULATED" in remote.format_bench(b)
    print(f"\nSqueezeNet 1.1 arm_cpu:rpi4 on the emulated aarch64 node (EMULATED, {b['threads']} threads): "
          f"median {b['sqcc']['median_ms']:.0f} ms, max |diff| vs host {err:.1e}")


def test_int8_dot_product_kernels_on_emulated_node(farm_up, tmp_path):
    """ARM dot-product int8 kernels run on the emulated node (qemu's 'max' CPU has them): an int8 conv
    with sdot (+dotprod) is exact against numpy; person_detect (uint8 activations after QDQ folding)
    with usdot on arm_cpu:graviton3 equals the host build exactly; SqueezeNet int8 agrees."""
    import tvm
    from tvm import relax

    import sqcc
    from sqcc.build import build
    from sqcc.targets import arm_cpu

    def asm(ex):
        def modules(m):
            yield m
            for i in m.imports:
                yield from modules(i)
        return "".join(m.inspect_source("asm") for m in modules(ex.mod) if m.kind == "llvm")

    # sdot: int8 activations x int8 weights, 3x3 conv, full-range data
    rng = np.random.default_rng(0)
    wt = rng.integers(-128, 128, (32, 16, 3, 3)).astype("int8")
    bb = relax.BlockBuilder()
    xv = relax.Var("x", relax.TensorType((1, 16, 9, 9), "int8"))
    with bb.function("main", [xv]):
        with bb.dataflow():
            out = bb.emit_output(relax.op.nn.conv2d(xv, relax.const(wt), padding=1, out_dtype="int32"))
        bb.emit_func_output(out)
    ex = build(bb.get(), tvm.target.Target(arm_cpu.target_dict("generic")))
    assert "sdot" in asm(ex)
    lib = arm_cpu.export_library(ex, str(tmp_path / "conv.so"))
    manifest = {"target": {"family": "arm_cpu", "name": "arm_cpu:generic"},
                "inputs": [{"name": "x", "shape": [1, 16, 9, 9], "dtype": "int8"}]}
    x = rng.integers(-128, 128, (1, 16, 9, 9)).astype("int8")
    with remote.RemoteVM((open(lib, "rb").read(), manifest), farm_up["tracker"], "aarch64", timeout=120) as r:
        y = r.run(x)
    xp = np.pad(x.astype(np.int64), ((0, 0), (0, 0), (1, 1), (1, 1)))
    ref = sum(np.einsum("nchw,oc->nohw", xp[:, :, i:i + 9, j:j + 9], wt[:, :, i, j].astype(np.int64))
              for i in range(3) for j in range(3))
    np.testing.assert_array_equal(y, ref)

    shared = os.path.join(os.path.dirname(__file__), "..", "..", "..", "shared")
    pd = os.path.join(shared, "models", "person_detect.tflite")
    host = sqcc.compile(pd, check=False)
    arm = sqcc.compile(pd, target="arm_cpu:graviton3", check=False)
    assert "usdot" in asm(arm.executable)
    x = rng.integers(-128, 128, (1, 96, 96, 1)).astype(np.int8)
    with remote.RemoteVM(arm, farm_up["tracker"], "aarch64", timeout=120) as r:
        np.testing.assert_array_equal(r.run(x), host.run(x))

    images = os.path.join(shared, "data", "imagenet-sample")
    q = dict(passes=["int8"], calibration=images, calibration_limit=4, check=False)
    q_host = sqcc.compile("squeezenet1.1", **q)
    q_arm = sqcc.compile("squeezenet1.1", target="arm_cpu:graviton3", **q)
    assert "usdot" in asm(q_arm.executable)
    xs = rng.random((1, 3, 224, 224), dtype=np.float32)
    with remote.RemoteVM(q_arm, farm_up["tracker"], "aarch64", timeout=300) as r:
        out = r.run(xs)
    ref = q_host.run(xs)
    assert int(out.argmax()) == int(ref.argmax())
    assert float(np.abs(out - ref).max()) <= 0.02 * float(np.abs(ref).max())  # float requant rounding


def test_tune_through_farm_writes_records(farm_up, tmp_path):
    """sqcc's tuner, unchanged, measuring a few SqueezeNet conv candidates on the emulated aarch64
    node through the tracker (cross-linked here, run there): records land in the database."""
    from sqcc import frontend
    from sqcc.schedules.tuning import tune
    from sqcc.targets import resolve

    m = frontend.load("squeezenet1.1")
    target = resolve("arm_cpu:rpi4").tvm()
    records = tmp_path / "tune" / "records.json"
    tune(m.mod, target, trials=3, records_path=str(records), max_trials_per_task=3,
         runner=remote.rpc_runner(farm_up["tracker"], "aarch64"), builder=remote.cross_builder(target),
         task_names=["conv2d"], num_trials_per_iter=2, search_strategy="replay-trace", cost_model="random",
         progress=False)
    recs = [json.loads(ln) for ln in records.read_text().splitlines() if ln.strip()]
    assert recs, "no tuning records written"
    secs = [r[1][1] for r in recs]  # [workload index, [trace, run_secs, target, args_info]]
    measured = [s for s in secs if s and all(0 < t < 1e9 for t in s)]
    assert measured, f"no trial was measured on the node: {secs}"
    assert "aarch64" in json.dumps(recs[0][1][2])  # recorded for the aarch64 target


def test_no_free_node_times_out(farm_up):
    tr = farm_up["tracker"]
    held = remote.request_session(tr, "host", timeout=30)  # the only 'host' node is now busy
    try:
        assert farm.status()["nodes"]["host"]["state"] == "busy"
        t0 = time.monotonic()
        with pytest.raises(SqccError, match="no free node for key 'host'.*within 2 s"):
            remote.request_session(tr, "host", timeout=2)
        assert time.monotonic() - t0 < 20
    finally:
        del held
    with pytest.raises(SqccError, match="no node with key 'rpi4' registered"):
        remote.request_session(tr, "rpi4", timeout=1)


def test_tracker_unreachable():
    port = _free_port()
    with pytest.raises(SqccError, match=f"cannot reach the RPC tracker at 127.0.0.1:{port}"):
        remote.request_session(f"127.0.0.1:{port}", "aarch64", timeout=1)
    with pytest.raises(SqccError, match="cannot reach the RPC tracker"):
        remote.rpc_runner(f"127.0.0.1:{port}", "aarch64")
    with pytest.raises(SqccError, match="expected HOST:PORT"):
        remote.request_session("127.0.0.1:notaport", "aarch64")


def test_dead_node_reported_and_stop_leaves_no_process(farm_up):
    procs = farm_up["procs"]
    groups = {p["pgid"]: farm.group_members(p["pgid"]) for p in procs}
    all_pids = {pid for members in groups.values() for pid in members}
    assert all(_alive(p["pid"]) for p in procs)
    host_node = next(p for p in procs if p.get("key") == "host")
    os.killpg(host_node["pgid"], signal.SIGKILL)  # a node dies
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and farm.status()["nodes"]["host"]["state"] != "dead":
        time.sleep(0.5)
    s = farm.status()
    assert s["nodes"]["host"]["state"] == "dead"
    assert s["nodes"]["aarch64"]["state"] in ("free", "busy")
    assert "node died" in farm.format_status(s)
    ended = farm.stop()
    assert set(p["pid"] for p in procs if p.get("key") != "host") <= set(ended)
    time.sleep(0.5)
    left = [pid for pid in all_pids if _alive(pid)]
    assert not left, f"processes left behind: {left}"
    assert all(not farm.group_members(g) for g in groups)
    assert not farm.status()["running"]
    assert not farm.port_open("127.0.0.1", farm_up["port"], 0.5)
