"""The device farm: TVM RPC tracker + a native node + an emulated aarch64 node (qemu-user).

CI runs as root on a fresh machine with qemu-user-static, binfmt-support, debootstrap and the aarch64
cross compilers installed: the first run builds the emulated node's Debian arm64 root (cached under
$SQCC_CACHE or ~/.cache/sqcc; several minutes, progress on stderr). Nothing here is skipped when a
tool is missing -- a missing tool is a failure with the package to install in the message.
"""
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
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


# ------------------------------------------------------------------------------ farm faults
# Processes are started the way users start them (`sqcc farm start`, `python -m tvm.exec.rpc_server`,
# `sqcc tune/bench`) and ended by PID. The tests below run in this order and share the module's farm:
# each brings back what an earlier one killed with `farm.start()` (which repairs a partly dead farm).

def _cli(*args, timeout=300):
    """`sqcc ARGS` as a user runs it: the CompletedProcess (stdout, stderr as text)."""
    return subprocess.run([sys.executable, "-m", "sqcc.cli", *args], capture_output=True, text=True,
                          env=dict(os.environ), timeout=timeout)


def _one_error_line(stderr: str) -> str:
    """What the CLI said: one line, 'sqcc: error: ...', nothing else (no traceback, no noise)."""
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("sqcc: error: "), stderr
    return lines[0]


def _repaired(farm_up) -> dict:
    """The module's farm with every node up: `sqcc farm start` again restarts what an earlier test killed."""
    s = farm.status()
    if s.get("tracker_state") != "up" or any(n["state"] not in ("free", "busy") for n in s["nodes"].values()):
        farm.start(port=farm_up["port"])
        s = farm.status()
    assert s["tracker_state"] == "up" and all(n["state"] == "free" for n in s["nodes"].values()), s
    return s


def _lines(path) -> int:
    try:
        return sum(1 for ln in open(path) if ln.strip())
    except OSError:
        return 0


def _gone(pgid: int, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while farm.group_members(pgid) and time.monotonic() < deadline:
        time.sleep(0.1)
    return not farm.group_members(pgid)


def _kill_when_serving(pid: int, when=lambda: True, group: bool = False, delay: float = 0.0, before=None,
                       linking: bool = False, timeout: float = 300.0) -> dict:
    """In a thread: once ``when()`` holds, SIGKILL the RPC server ``pid`` (or its process group) as soon
    as it serves a session (its worker has forked the session's process), ``delay`` s into it;
    ``linking``: once the session runs a child of its own (the host node links an uploaded .tar with
    g++ in ``load_module``: the client is waiting mid-measurement). Calls ``before()`` just before the
    kill. Returns a dict that gets "at" (when) and "thread"."""
    import psutil

    out = {}

    def watch():
        deadline = time.monotonic() + timeout
        server = psutil.Process(pid)
        while time.monotonic() < deadline:
            try:
                sessions = [c for w in server.children() for c in w.children()]
                if when() and sessions and (not linking or any(c.children() for c in sessions)):
                    break
            except psutil.Error:
                pass
            time.sleep(0.02)
        else:
            return
        time.sleep(delay)
        if before:
            before()
        out["at"] = time.monotonic()
        os.killpg(pid, signal.SIGKILL) if group else os.kill(pid, signal.SIGKILL)

    out["thread"] = threading.Thread(target=watch, daemon=True)
    out["thread"].start()
    return out


def test_tune_goes_on_when_a_node_dies_and_stops_when_none_is_left(farm_up, tmp_path, caplog):
    """Key 'host' served by the farm's node and by a second server a user started. The farm's node is
    killed (its PID) while it measures a candidate: the candidate is measured again on the other node
    and tuning goes on, with one warning naming the lost node. Then the other server dies too: tuning
    stops with one SqccError naming it, and every record measured so far is in the database."""
    from sqcc import frontend
    from sqcc.schedules.tuning import tune
    from sqcc.targets import resolve

    _repaired(farm_up)
    tr = farm_up["tracker"]
    host_node = farm._read_state()["nodes"]["host"]
    extra = subprocess.Popen([sys.executable, "-m", "tvm.exec.rpc_server", "--host", "127.0.0.1", "--port", "9300",
                              "--port-end", "9400", "--tracker", tr, "--key", "host"], start_new_session=True,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while len(farm.keys_from_summary(farm.tracker_summary("127.0.0.1", farm_up["port"]))
                   .get("host", {}).get("addrs", [])) < 2:
            assert time.monotonic() < deadline and extra.poll() is None, "the second 'host' server did not register"
            time.sleep(0.3)
        addrs = farm.keys_from_summary(farm.tracker_summary("127.0.0.1", farm_up["port"]))["host"]["addrs"]
        extra_addr = next(a for a in addrs if a != host_node["addr"])
        records = tmp_path / "records.json"
        first = _kill_when_serving(host_node["pid"], when=lambda: _lines(records) >= 1, linking=True)
        # a server the farm did not start lacks the farm's child hook: killing its PID would leave its
        # worker serving (TVM's rpc_server), so the whole server dies here, as a crashed machine would
        second = _kill_when_serving(extra.pid, group=True, when=lambda: "at" in first and _lines(records) >= 3)
        m = frontend.load("squeezenet1.1")
        t0 = time.monotonic()
        with caplog.at_level(logging.WARNING, logger="sqcc.remote"), pytest.raises(SqccError) as ei:
            tune(m.mod, resolve("host").tvm(), trials=40, records_path=str(records), max_trials_per_task=40,
                 runner=remote.rpc_runner(tr, "host", lost_grace=3), task_names=["fused_conv2d_add_relu"],
                 num_trials_per_iter=2, search_strategy="replay-trace", cost_model="random", progress=False)
        took = time.monotonic() - t0
    finally:
        if extra.poll() is None:
            os.killpg(extra.pid, signal.SIGKILL)
        extra.wait()
    assert "at" in first and "at" in second, "the nodes were not killed mid-tune"
    warned = [r.getMessage() for r in caplog.records if "went away mid-measurement" in r.getMessage()]
    assert len(warned) == 1, warned
    assert f"node 'host' at {host_node['addr']} (farm node, pid {host_node['pid']})" in warned[0]
    assert "goes on" in warned[0] and "\n" not in warned[0]
    msg = str(ei.value)
    assert "\n" not in msg and msg.startswith("tuning stopped:"), msg
    assert f"node 'host' at {extra_addr}" in msg and "no node with key 'host' is registered" in msg, msg
    assert "records measured so far are kept" in msg
    assert time.monotonic() - second["at"] < 60 and took < 600
    recs = [json.loads(ln) for ln in records.read_text().splitlines() if ln.strip()]
    measured = [r for r in recs if r[1][1] and all(0 < t < 1e9 for t in r[1][1])]
    assert len(measured) >= 3, [r[1][1] for r in recs]  # measured on the second node after the first died
    assert _gone(host_node["pgid"]), "the farm node's workers outlived its killed server"
    s = farm.status()
    assert s["nodes"]["host"]["state"] == "dead" and "node died" in farm.format_status(s)
    print(f"\nnode faults mid-tune: {len(recs)} records, {len(measured)} measured, {took:.0f} s")


def test_tracker_restart_survived_by_status(farm_up):
    """The tracker is killed (its PID): `sqcc farm status` says it is down, in one line, no traceback,
    and the live node waits for it. A tracker the user starts on the port is reported as not the
    farm's, and the nodes re-register with it. `sqcc farm start` again restarts the farm's tracker and
    the dead node; status then shows the new tracker, restarted once, every node free."""
    port = farm_up["port"]
    st = farm._read_state()
    old = st["procs"][0]
    os.kill(old["pid"], signal.SIGKILL)
    assert _gone(old["pgid"]), "the tracker's worker outlived its killed process"
    deadline = time.monotonic() + 20  # the kernel closes the listening socket with its last holder
    while farm.port_open("127.0.0.1", port, 0.5) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not farm.port_open("127.0.0.1", port, 0.5)
    p = _cli("farm", "status", timeout=120)
    assert p.returncode == 1 and "Traceback" not in p.stdout + p.stderr, p.stdout + p.stderr
    head = p.stdout.splitlines()[0]
    assert f"tracker 127.0.0.1:{port} DOWN (pid {old['pid']} exited)" in head and "`sqcc farm start`" in head
    s = farm.status()
    assert not s["running"] and s["tracker_state"] == "down"
    assert s["nodes"]["aarch64"]["state"] == "waiting"  # alive; re-registers when a tracker is back

    mine = subprocess.Popen([sys.executable, "-m", "tvm.exec.rpc_tracker", "--host", "127.0.0.1", "--port", str(port),
                             "--port-end", str(port + 1)], start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while farm.status()["nodes"]["aarch64"]["state"] != "free":
            assert time.monotonic() < deadline, farm.format_status(farm.status())
            time.sleep(0.5)
        s = farm.status()
        assert s["running"] and s["tracker_state"] == "foreign"
        assert "not the farm's" in farm.format_status(s).splitlines()[0]
        with pytest.raises(SqccError, match=f"127.0.0.1:{port} is taken by another process"):
            farm.start(port=port)
    finally:
        os.killpg(mine.pid, signal.SIGKILL)
        mine.wait()

    p = _cli("farm", "start", "--port", str(port), timeout=400)
    assert p.returncode == 0, p.stderr
    assert f"restarting it on 127.0.0.1:{port}" in p.stderr and "Traceback" not in p.stderr
    s = farm.status()
    assert s["running"] and s["tracker_state"] == "up" and s["tracker_pid"] != old["pid"]
    assert s["tracker_restarts"] == 1 and all(n["state"] == "free" for n in s["nodes"].values()), s
    p = _cli("farm", "status", "--json", timeout=120)
    assert p.returncode == 0 and json.loads(p.stdout)["tracker_pid"] == s["tracker_pid"]
    assert "restarted 1x" in farm.format_status(s)


def test_bench_and_run_fail_clearly_when_the_node_dies(farm_up, squeezenet_pkg):
    """`sqcc bench --rpc-tracker`: the node killed mid-benchmark ends it with one line naming the node
    (not a hang, not a traceback); a run whose node died after the session opened says the same."""
    host_pkg, path = squeezenet_pkg
    tr = farm_up["tracker"]
    _repaired(farm_up)
    node = farm._read_state()["nodes"]["host"]
    killer = _kill_when_serving(node["pid"], delay=3.0)
    t0 = time.monotonic()
    p = _cli("bench", str(path), "--rpc-tracker", tr, "--rpc-key", "host", "--repeat", "100000", timeout=300)
    assert "at" in killer, "the node was not killed mid-benchmark"
    assert p.returncode == 2 and time.monotonic() - killer["at"] < 60
    err = _one_error_line(p.stderr)
    assert f"node 'host' at {node['addr']} (farm node, pid {node['pid']}) went away mid-benchmark" in err, err
    assert "RPC connection closed" in err and "sqcc farm status" in err
    print(f"\nbench, node killed: {time.monotonic() - t0:.0f} s: {err}")

    _repaired(farm_up)
    node = farm._read_state()["nodes"]["host"]
    x = np.random.default_rng(0).random((1, 3, 224, 224), dtype=np.float32)
    with remote.RemoteVM(host_pkg, tr, "host", timeout=60) as r:
        os.kill(node["pid"], signal.SIGKILL)
        assert _gone(node["pgid"])
        with pytest.raises(SqccError, match=f"node 'host' at {node['addr']} .*went away") as ei:
            r.run(x)
    assert "\n" not in str(ei.value)


def test_node_killed_mid_tune_one_error_and_stop_leaves_no_process(farm_up, tmp_path):
    """`sqcc tune --target arm_cpu:rpi4 --rpc-key aarch64`, the emulated node killed (its PID) while it
    measures: the tune exits with one line naming the node, keeping the records it had; the killed
    node leaves no process behind (qemu-run workers included). Then `sqcc farm stop` ends every
    process the farm started -- tracker, servers, their workers, the sessions they forked -- all
    collected with psutil while they ran."""
    import psutil

    _repaired(farm_up)
    tr, port = farm_up["tracker"], farm_up["port"]
    node = farm._read_state()["nodes"]["aarch64"]
    held = remote.request_session(tr, "host", timeout=60)  # the host node forks a session process
    records = tmp_path / "rpi4.json"
    seen = {}

    def collect():
        for p in farm.farm_processes():
            try:
                seen[p.pid] = (p.create_time(), " ".join(p.cmdline()))
            except psutil.Error:
                pass

    killer = _kill_when_serving(node["pid"], when=lambda: _lines(records) >= 1, delay=0.5, before=collect)
    p = _cli("tune", "squeezenet1.1", "--target", "arm_cpu:rpi4", "--trials", "4", "--records", str(records),
             "--rpc-tracker", tr, "--rpc-key", "aarch64", timeout=500)
    assert "at" in killer, f"the node was not killed mid-tune: {p.stderr[-2000:]}"
    assert p.returncode == 2 and time.monotonic() - killer["at"] < 90, p.stderr[-2000:]
    err = _one_error_line(p.stderr)
    assert f"node 'aarch64' at {node['addr']} (farm node, pid {node['pid']})" in err, err
    assert "tuning stopped" in err and "records measured so far are kept" in err
    assert _lines(records) >= 1 and all(json.loads(ln) for ln in records.read_text().splitlines())
    assert _gone(node["pgid"]), "the emulated node's workers outlived its killed server"
    s = farm.status()
    assert s["nodes"]["aarch64"]["state"] == "dead" and s["nodes"]["host"]["state"] == "busy"

    # what ran: tracker + its worker, each server + its worker, the sessions, qemu for the aarch64 ones
    assert len(seen) >= 7, seen
    assert any("aarch64" in cmd or "qemu" in cmd for _, cmd in seen.values())
    p = _cli("farm", "stop", timeout=120)
    assert p.returncode == 0, p.stderr
    time.sleep(0.5)
    left = []
    for pid, (created, cmd) in seen.items():
        try:
            q = psutil.Process(pid)
            if q.create_time() == created and q.status() != psutil.STATUS_ZOMBIE:
                left.append((pid, cmd))
        except psutil.NoSuchProcess:
            pass
    assert not left, f"processes left behind: {left}"
    assert not farm.status()["running"]
    assert not farm.port_open("127.0.0.1", port, 0.5)
    del held
