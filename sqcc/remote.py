"""Run, time and tune packages on remote devices through TVM's RPC tracker.

``run_remote(pkg, inputs, tracker, key)`` uploads the package's ``lib.so`` to a node the tracker hands
out for ``key``, loads it there into a ``relax.VirtualMachine`` on the node's device and runs it;
``bench_remote`` times it with the remote ``time_evaluator``; ``rpc_runner`` / ``cross_builder`` give
MetaSchedule a runner on the farm and a builder that links for the node's architecture.

Figures from the local farm's emulated aarch64 node are labelled ``emulated`` (qemu-user: they measure
emulation, not ARM hardware; use them for correctness and relative comparisons only).
"""
from __future__ import annotations

import hashlib
import logging
import os
import socket
import tempfile
import time
from pathlib import Path

import numpy as np

from .bench import _stats
from .errors import SqccError, one_line
from .package import _to_numpy
from .farm import keys_from_summary, parse_address, tracker_summary

DEFAULT_TRACKER = "127.0.0.1:9190"
DEFAULT_KEY = "aarch64"

log = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------- sessions

def wait_for_free_node(tracker: str, key: str, timeout: float = 60.0) -> dict:
    """Block until the tracker has a free node for ``key``; SqccError (with why) after ``timeout`` s.

    Raises at once when the tracker cannot be reached.
    """
    host, port = parse_address(tracker)
    deadline = time.monotonic() + timeout
    info = {}
    while True:
        keys = keys_from_summary(tracker_summary(host, port))
        info = keys.get(key, {})
        if info.get("free", 0) > 0:
            return info
        if time.monotonic() >= deadline:
            break
        time.sleep(min(0.5, max(0.0, deadline - time.monotonic())))
    known = ", ".join(f"{k} ({v['free']}/{v['total']} free)" for k, v in sorted(keys.items()) if v["total"]) or "none"
    if not info.get("total"):
        raise SqccError(f"no node with key '{key}' registered at the RPC tracker {host}:{port} after waiting "
                        f"{timeout:.0f} s (registered keys: {known}); start one with `sqcc farm start` or "
                        f"`python -m tvm.exec.rpc_server --tracker {host}:{port} --key {key}`")
    raise SqccError(f"no free node for key '{key}' at the RPC tracker {host}:{port} within {timeout:.0f} s: "
                    f"all {info['total']} node(s) busy, {info.get('pending', 0)} request(s) queued; "
                    "retry later or raise --rpc-timeout")


def _request_once(host: str, port: int, key: str, timeout: float, session_timeout: float = 0):
    """Ask the tracker for a node of ``key`` once: (session, "HOST:PORT" of the node). Raises
    ``socket.timeout`` when no node is handed out within ``timeout`` s, ``OSError`` when the tracker
    cannot be reached, SqccError when the node refuses the session."""
    import struct

    from tvm import rpc
    from tvm.rpc import base

    sock = socket.create_connection((host, port), timeout=timeout)
    try:
        sock.settimeout(timeout)  # the tracker answers a request only when a node is free
        sock.sendall(struct.pack("<i", base.RPC_TRACKER_MAGIC))
        magic = struct.unpack("<i", base.recvall(sock, 4))[0]
        if magic != base.RPC_TRACKER_MAGIC:
            raise SqccError(f"{host}:{port} is not a TVM RPC tracker")
        base.sendjson(sock, [base.TrackerCode.REQUEST, key, "", 1])
        value = base.recvjson(sock)
    except struct.error as e:
        raise OSError(f"the RPC tracker at {host}:{port} closed the connection ({e})") from None
    finally:
        sock.close()  # a request still queued goes with the connection
    if not isinstance(value, list) or value[0] != base.TrackerCode.SUCCESS:
        raise SqccError(f"the RPC tracker at {host}:{port} answered {value!r} to a request for key '{key}'")
    url, nport, matchkey = value[1]
    addr = f"{url}:{nport}"
    try:
        sess = rpc.connect(url, nport, matchkey, session_timeout)
    except Exception as e:  # noqa: BLE001 -- TVM raises RuntimeError/TVMError/OSError alike
        raise SqccError(f"the node for key '{key}' at {addr} refused the session: {one_line(e)}") from None
    return sess, addr


def _request(tracker: str, key: str, timeout: float, session_timeout: float = 0):
    """(session, node address) for ``key``: see :func:`request_session`."""
    host, port = parse_address(tracker)
    t0 = time.monotonic()
    wait_for_free_node(tracker, key, timeout)
    left = max(1.0, timeout - (time.monotonic() - t0))
    try:
        return _request_once(host, port, key, left, session_timeout)
    except SqccError:
        raise
    except socket.timeout:
        raise SqccError(f"no free node for key '{key}' at the RPC tracker {host}:{port} within "
                        f"{timeout:.0f} s (another session took it); retry later") from None
    except Exception as e:  # noqa: BLE001 -- OSError, mostly
        why = e.strerror if isinstance(e, OSError) and e.strerror else one_line(e)
        raise SqccError(f"cannot reach the RPC tracker at {host}:{port} ({why})") from None


def request_session(tracker: str = DEFAULT_TRACKER, key: str = DEFAULT_KEY, timeout: float = 60.0,
                    session_timeout: float = 0):
    """An RPC session on a node for ``key``: clear SqccErrors for an unreachable tracker, an unknown key
    and no free node within ``timeout`` seconds."""
    return _request(tracker, key, timeout, session_timeout)[0]


def node_label(tracker: str, key: str, addr: str | None) -> str:
    """``node 'KEY' at HOST:PORT`` plus the farm's PID of it when it is the local farm's node."""
    from . import farm

    text = f"node '{key}'" + (f" at {addr}" if addr else "")
    facts = farm.node_facts(tracker, key) or {}
    if facts.get("pid") and (addr is None or facts.get("addr") in (None, addr)):
        text += f" (farm node, pid {facts['pid']})"
    return text


def _session_alive(sess) -> bool:
    """Whether an RPC session still answers (one round trip)."""
    try:
        sess.listdir(".")
        return True
    except Exception:  # noqa: BLE001
        return False


def _rpc_why(err: BaseException) -> str:
    """Why a session that no longer answers failed, in words (TVM says ``code=kShutdown``)."""
    text = one_line(err)
    low = text.lower()
    if "kshutdown" in low or "connection" in low or "socket" in low or "broken pipe" in low:
        return "its RPC connection closed"
    return text


def _node_gone(tracker: str, key: str, addr: str | None, grace: float = 3.0) -> bool:
    """True when the tracker no longer lists the node at ``addr`` for ``key`` (within ``grace`` s: the
    tracker hears of a dead server when its connection closes), or cannot be reached."""
    host, port = parse_address(tracker)
    deadline = time.monotonic() + grace
    while True:
        try:
            addrs = keys_from_summary(tracker_summary(host, port, timeout=3.0)).get(key, {}).get("addrs", [])
        except SqccError:
            return True
        if addr not in addrs:
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.3)


# ---------------------------------------------------------------------------------- packages

def _spec_of(pkg):
    from .targets import resolve

    return resolve(pkg.manifest["target"]["name"])


def package_lib(pkg) -> tuple[bytes, dict]:
    """(lib.so bytes, manifest) of a Package, a package path, or (bytes, manifest)."""
    if isinstance(pkg, (str, os.PathLike)):
        from .package import load

        pkg = load(pkg)
    if isinstance(pkg, tuple):
        return pkg
    lib = getattr(pkg, "_lib_bytes", None)
    if lib is None:  # built in this process: link it for its target (cross compiler for aarch64)
        spec = _spec_of(pkg)
        with tempfile.TemporaryDirectory() as d:
            p = Path(d) / "lib.so"
            spec.export_library(pkg.executable, p)
            lib = p.read_bytes()
        pkg._lib_bytes = lib
    return lib, pkg.manifest


def _device(sess, manifest):
    fam = manifest["target"]["family"]
    if fam == "cuda":
        dev = sess.cuda(0)
        if not dev.exist:
            raise SqccError("the remote node has no CUDA GPU; this package was built for "
                            f"{manifest['target']['name']}")
        return dev
    if fam == "micro":
        raise SqccError("micro packages run under qemu-system-arm (`sqcc run DIR`), not through RPC")
    return sess.cpu(0)


def _inputs(manifest, inputs) -> list[np.ndarray]:
    """Inputs checked against the package's specs (random ones when None), as Package.run does."""
    from types import SimpleNamespace

    from .package import Package

    specs = manifest["inputs"]
    if inputs is None:
        rng = np.random.default_rng(0)
        inputs = [rng.random(s["shape"], dtype=np.float32).astype(s["dtype"]) for s in specs]
    return Package._as_inputs(SimpleNamespace(inputs=Package.inputs.fget(SimpleNamespace(manifest=manifest))),
                              inputs)


class RemoteVM:
    """``with RemoteVM(pkg, tracker, key) as r: r.run(x)`` -- one session, the library uploaded once."""

    def __init__(self, pkg, tracker: str = DEFAULT_TRACKER, key: str = DEFAULT_KEY, timeout: float = 60.0,
                 session_timeout: float = 0):
        self.lib, self.manifest = package_lib(pkg)
        if self.manifest["target"]["family"] == "micro":
            raise SqccError("micro packages run under qemu-system-arm (`sqcc run DIR`), not through RPC")
        self.tracker, self.key = tracker, key
        self.timeout, self.session_timeout = timeout, session_timeout
        self.sess = self.vm = self.dev = self.addr = None

    def __enter__(self):
        from tvm import relax

        self.sess, self.addr = _request(self.tracker, self.key, self.timeout, self.session_timeout)
        try:
            self.dev = _device(self.sess, self.manifest)
            name = f"sqcc_{hashlib.sha256(self.lib).hexdigest()[:16]}.so"
            try:
                self.sess.upload(bytearray(self.lib), target=name)
                mod = self.sess.load_module(name)
            except Exception as e:  # noqa: BLE001
                self._raise_lost(e, "while the package was uploaded")
                raise SqccError(f"the node for key '{self.key}' could not load the package (built for "
                                f"{self.manifest['target']['name']}): {one_line(e)}") from None
            self.vm = relax.VirtualMachine(mod, self.dev)
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc):
        # the session closes (and the node is handed back to the tracker) when the last reference goes:
        # the remote device holds one (``dev._rpc_sess``), so drop everything that points at it
        self.vm = self.dev = self.sess = None
        import gc

        gc.collect()

    def _args(self, inputs):
        import tvm

        arrays = _inputs(self.manifest, inputs)
        return self._call("while the inputs were sent", lambda: [tvm.runtime.tensor(a, self.dev) for a in arrays])

    def _raise_lost(self, err: BaseException, when: str) -> None:
        """SqccError naming the node when ``err`` means the node went away (its session no longer
        answers); returns when the node is fine (the error is the package's or the input's)."""
        from . import interrupts

        interrupts.check()
        if self.sess is not None and _session_alive(self.sess):
            return
        label = node_label(self.tracker, self.key, self.addr)
        gone = _node_gone(self.tracker, self.key, self.addr)
        why = "it is no longer registered with the RPC tracker" if gone else \
            "its RPC session closed, though the tracker still lists it"
        raise SqccError(f"{label} went away {when} ({why}; {_rpc_why(err)}); check `sqcc farm status` "
                        f"(`sqcc farm start` restarts a dead farm node) and run again") from None

    def _call(self, when: str, f, *args):
        try:
            return f(*args)
        except SqccError:
            raise
        except Exception as e:  # noqa: BLE001 -- TVM's RPC errors: the node, or the package?
            self._raise_lost(e, when)
            raise SqccError(f"{node_label(self.tracker, self.key, self.addr)}: the package failed {when}: "
                            f"{one_line(e)}") from None

    def run(self, inputs):
        args = self._args(inputs)
        res = self._call("during the run", lambda: self.vm["main"](*args))
        outs = self._call("while the outputs were read back", _to_numpy, res)
        return outs[0] if len(outs) == 1 else outs

    def time(self, inputs=None, repeat: int = 30, warmup: int = 1, number: int = 1) -> dict:
        args = self._args(inputs)
        for _ in range(warmup):
            self._call("during a warm-up run", lambda: self.vm["main"](*args))
        res = self._call("mid-benchmark", lambda: self.vm.time_evaluator("main", self.dev, number=number,
                                                                           repeat=repeat)(*args))
        return _stats(list(res.results))


def run_remote(pkg, inputs=None, tracker: str = DEFAULT_TRACKER, key: str = DEFAULT_KEY, timeout: float = 60.0):
    """Run a package on a node for ``key``; numpy out (one array, or a list). ``timeout``: seconds to
    wait for a free node."""
    with RemoteVM(pkg, tracker, key, timeout) as r:
        return r.run(inputs)


def bench_remote(pkg, tracker: str = DEFAULT_TRACKER, key: str = DEFAULT_KEY, repeat: int = 30,
                 warmup: int = 1, inputs=None, timeout: float = 60.0) -> dict:
    """Median/min/max latency on a remote node (remote ``time_evaluator``), labelled ``emulated`` when
    the node is the local farm's qemu node."""
    from . import farm

    if repeat < 1:
        raise SqccError(f"--repeat {repeat}: must be at least 1")
    with RemoteVM(pkg, tracker, key, timeout) as r:
        stats = r.time(inputs, repeat=repeat, warmup=warmup)
        manifest = r.manifest
    facts = farm.node_facts(tracker, key) or {}
    emulated = bool(facts.get("emulated"))
    out = {"model": manifest["model"]["name"], "target": manifest["target"]["name"], "tracker": tracker,
           "key": key, "emulated": emulated,
           "device": facts.get("device") or f"remote node '{key}' via {tracker}",
           "threads": facts.get("threads"),
           "batch": int(manifest["inputs"][0]["shape"][0]) if manifest["inputs"] else 1,
           "sqcc": stats}
    if emulated:
        out["note"] = ("EMULATED (qemu-user on this machine): not ARM hardware speed; for correctness and "
                       "relative comparison only")
    return out


def format_bench(r: dict) -> str:
    s = r["sqcc"]
    label = " [EMULATED]" if r.get("emulated") else ""
    lines = [f"model {r['model']}  target {r['target']}  node '{r['key']}' via {r['tracker']}{label}",
             f"device {r['device']}" + (f", {r['threads']} thread(s)" if r.get("threads") else ""),
             f"sqcc{label} median {s['median_ms']:9.2f} ms   min {s['min_ms']:9.2f}   max {s['max_ms']:9.2f}   "
             f"({s['runs']} runs)"]
    if r.get("note"):
        lines.append(r["note"])
    return "\n".join(lines)


# ---------------------------------------------------------------------------------- tuning
#
# MetaSchedule's RPCRunner asks the tracker for a node per candidate and waits for one without end:
# a node killed mid-tune left its request queued at the tracker for ever (the tune hung), and a
# dead tracker cost 5 x 60 s of reconnecting per candidate. sqcc's runner measures each candidate
# the same way (upload, random inputs, time_evaluator, clean-up: MetaSchedule's own functions) but
# knows which node it got. When a node goes away mid-measurement the candidate is measured again on
# another node of the key, and tuning goes on (one warning per lost node); when no node of the key
# is left (after ``lost_grace`` s), the tracker stops answering, or no node is free within
# ``request_timeout`` s, the runner turns fatal: the batch's results so far are handed to
# MetaSchedule as usual (so they land in the database) and the tuner stops with one SqccError
# naming the node (``check()``, called by sqcc's tuner after each batch; ``run`` raises it too).

TRACKER_GRACE = 30.0  # seconds a tracker may be away (a `sqcc farm start` restarting it) before tuning stops


class _Gone(Exception):
    def __init__(self, kind: str, msg: str, registered=()):
        super().__init__(msg)
        self.kind, self.registered = kind, list(registered)


def _session_for(host: str, port: int, key: str, request_timeout: float, grace: float, session_timeout: float):
    """(session, node address) for ``key``, in a measuring worker; ``_Gone`` when there is none to have."""
    t0 = time.monotonic()
    no_node = down = None
    while True:
        now = time.monotonic()
        try:
            info = keys_from_summary(tracker_summary(host, port, timeout=5.0)).get(key, {})
            down = None
        except SqccError:
            down = down or now
            if now - down > TRACKER_GRACE:
                raise _Gone("tracker", f"the RPC tracker at {host}:{port} stopped answering (waited "
                                       f"{TRACKER_GRACE:.0f} s)") from None
            time.sleep(1.0)
            continue
        if not info.get("total"):
            no_node = no_node or now
            if now - no_node >= grace:
                raise _Gone("key", f"no node with key '{key}' is registered at the RPC tracker {host}:{port} "
                                   f"(waited {grace:.0f} s)")
            time.sleep(0.5)
            continue
        no_node = None
        if now - t0 > request_timeout:
            raise _Gone("busy", f"no free node for key '{key}' at the RPC tracker {host}:{port} within "
                                f"{request_timeout:.0f} s: all {info['total']} node(s) busy",
                        registered=info.get("addrs", []))
        if not info.get("free"):
            time.sleep(0.5)
            continue
        try:
            return _request_once(host, port, key, min(5.0, max(1.0, request_timeout - (now - t0))), session_timeout)
        except (OSError, SqccError):  # another session took it, the node just died, the tracker blinked
            time.sleep(0.5)


def _cleanup(sess, remote_path) -> None:
    from tvm.s_tir.meta_schedule.runner.rpc_runner import default_cleanup

    try:
        default_cleanup(sess, remote_path)
    except Exception:  # noqa: BLE001 -- a session that just died has nothing left to clean
        pass


def _measure(tracker: str, key: str, session_timeout: float, request_timeout: float, grace: float,
             evaluator_config, alloc_repeat: int, artifact_path: str, device_type: str, args_info) -> dict:
    """Measure one candidate on a node of ``key`` (runs in a worker process). A plain dict back:
    ``secs`` (measured), ``error`` (this candidate failed), ``gone`` (no node to measure on); ``lost``
    lists the nodes that went away under it, ``addr`` the node that measured it."""
    from tvm.s_tir.meta_schedule.runner.rpc_runner import (default_alloc_argument, default_run_evaluator,
                                                          default_upload_module)

    host, port = parse_address(tracker)
    lost = []
    for _ in range(3):
        try:
            sess, addr = _session_for(host, port, key, request_timeout, grace, session_timeout)
        except _Gone as g:
            return {"gone": g.kind, "why": str(g), "lost": lost, "registered": g.registered}
        remote_path = os.path.basename(artifact_path)
        try:
            dev = sess.device(device_type, 0)
            rt_mod = default_upload_module(sess, artifact_path, remote_path)
            args = default_alloc_argument(sess, dev, args_info, alloc_repeat)
            secs = default_run_evaluator(sess, rt_mod, dev, evaluator_config, args)
        except Exception as e:  # noqa: BLE001 -- the candidate's failure, or the node's?
            why = one_line(e)
            if _session_alive(sess):
                _cleanup(sess, remote_path)
                return {"error": f"on node {addr}: {why}", "lost": lost, "addr": addr}
            if not _node_gone(tracker, key, addr):
                return {"error": f"the candidate ended its RPC session on node {addr} (the node is still "
                                 f"registered): {why}", "lost": lost, "addr": addr}
            lost.append({"addr": addr, "why": _rpc_why(e)})
            continue  # measure it again on another node, if the key has one
        _cleanup(sess, remote_path)
        return {"secs": [float(x) for x in secs], "lost": lost, "addr": addr}
    return {"error": f"{len(lost)} nodes went away while measuring this candidate", "lost": lost}


class _Farm:
    """What sqcc's farm runner knows and decides; the MetaSchedule classes of :func:`_runner_classes`
    are thin shells around it."""

    def __init__(self, tracker, key, evaluator_config, session_timeout_sec, request_timeout, lost_grace,
                 max_workers, known=()):
        from tvm.support.popen_pool import PopenPoolExecutor

        from . import interrupts

        self.tracker, self.key = tracker, key
        self.evaluator_config = evaluator_config
        self.session_timeout_sec = session_timeout_sec
        self.request_timeout, self.lost_grace = request_timeout, lost_grace
        self.worker_timeout = request_timeout + session_timeout_sec + TRACKER_GRACE + 60
        self.known = list(known)  # addresses of the key's nodes seen so far
        self.fatal = None
        self.warned = set()
        self.batch = []
        self.pool = PopenPoolExecutor(max_workers=max_workers, timeout=self.worker_timeout,
                                      initializer=interrupts.die_with_parent)

    def submit(self, runner_inputs) -> list:
        self.check()
        self.batch = [self.pool.submit(
            _measure, self.tracker, self.key, self.session_timeout_sec, self.request_timeout,
            self.lost_grace, self.evaluator_config, 1, str(ri.artifact_path), str(ri.device_type),
            tuple(a.as_json() for a in ri.args_info)) for ri in runner_inputs]
        return self.batch

    def check(self) -> None:
        """Raise the SqccError that ended this runner's use (no node of the key left ...), if any."""
        if self.fatal is not None:
            raise SqccError(self.fatal)

    def result(self, future, RunnerResult):
        try:
            out = future.result()
        except TimeoutError:
            return RunnerResult(None, error_msg=f"sqcc: no result from a node of key '{self.key}' "
                                                f"within {self.worker_timeout:.0f} s (a hung node?)")
        except Exception as e:  # noqa: BLE001 -- cancelled or killed once the runner turned fatal, too
            if self.fatal is not None:
                return RunnerResult(None, error_msg="sqcc: not measured: tuning stopped (see the error)")
            return RunnerResult(None, error_msg=f"sqcc: the measuring worker failed: {one_line(e)}")
        return self.absorb(out, RunnerResult)

    def absorb(self, out: dict, RunnerResult):
        """RunnerResult of one worker answer; notes lost nodes and, when none is left, the fatal error."""
        for a in [out.get("addr"), *(x["addr"] for x in out.get("lost", []))]:
            if a and a not in self.known:
                self.known.append(a)
        for x in out.get("lost", []):
            if x["addr"] not in self.warned and "gone" not in out:
                self.warned.add(x["addr"])
                log.warning("%s went away mid-measurement (%s); tuning goes on with the other node(s) of "
                            "key '%s'", node_label(self.tracker, self.key, x["addr"]), x["why"], self.key)
        if "secs" in out:
            return RunnerResult(out["secs"], None)
        if "gone" in out:
            if self.fatal is None:
                self.fatal = self._fatal_message(out)
                self._stop()
            return RunnerResult(None, error_msg=f"sqcc: {out['why']}")
        return RunnerResult(None, error_msg=f"sqcc: {out['error']}")

    def _stop(self) -> None:
        """The rest of the batch is not measured: each would wait ``lost_grace`` s for a node."""
        for f in self.batch:
            f.cancel()  # not started yet
        self.pool.shutdown(wait=False)  # ends the worker measuring now

    def _fatal_message(self, out: dict) -> str:
        keep = "the records measured so far are kept"
        if out["gone"] == "tracker":
            return f"tuning stopped: {out['why']}; {keep}: restart it (`sqcc farm start`) and run the same tune again"
        if out["gone"] == "busy":
            return f"tuning stopped: {out['why']}; {keep}: run the same tune again when a node is free"
        lost = [x["addr"] for x in out.get("lost", [])]
        gone = lost or [a for a in self.known if a not in out.get("registered", [])] or [None]
        what = "went away mid-measurement" if lost else "is gone"
        nodes = ", ".join(node_label(self.tracker, self.key, a) for a in dict.fromkeys(gone))
        return (f"tuning stopped: {nodes} {what} and {out['why']}; {keep}: restart the node (`sqcc farm start` "
                "for the local farm) and run the same tune again to resume")


_CLASSES = {}


def _runner_classes():
    """(FarmRunner, FarmRunnerFuture): MetaSchedule runner classes, made on first use (imports tvm)."""
    if _CLASSES:
        return _CLASSES["runner"], _CLASSES["future"]
    from tvm.ir.utils import derived_object
    from tvm.s_tir.meta_schedule.runner import PyRunner, PyRunnerFuture, RunnerResult

    @derived_object
    class FarmRunnerFuture(PyRunnerFuture):
        def __init__(self, future, farm: _Farm) -> None:
            super().__init__()
            self.future, self.farm = future, farm

        def done(self) -> bool:
            return self.future.done()

        def result(self) -> RunnerResult:
            return self.farm.result(self.future, RunnerResult)

    @derived_object
    class FarmRunner(PyRunner):
        """MetaSchedule runner on the farm: see the comment above ``TRACKER_GRACE`` in sqcc/remote.py."""

        def __init__(self, *args) -> None:
            super().__init__()
            self.farm = _Farm(*args)

        def run(self, runner_inputs):
            return [FarmRunnerFuture(f, self.farm) for f in self.farm.submit(runner_inputs)]

        def check(self) -> None:
            self.farm.check()

    _CLASSES.update(runner=FarmRunner, future=FarmRunnerFuture)
    return FarmRunner, FarmRunnerFuture


def rpc_runner(tracker: str = DEFAULT_TRACKER, key: str = DEFAULT_KEY, session_timeout_sec: int = 300,
               number: int = 1, repeat: int = 1, min_repeat_ms: int = 0, max_workers: int = 1, check: bool = True,
               request_timeout: float = 300.0, lost_grace: float = 10.0):
    """MetaSchedule runner measuring on nodes for ``key`` through the tracker (sqcc's ``FarmRunner``:
    MetaSchedule's RPC measuring, plus: a candidate whose node dies is measured again on another node
    of the key; no node of the key left for ``lost_grace`` s, no free node within ``request_timeout``
    s or a tracker gone for 30 s stop the tuner with one SqccError, the records so far kept).
    ``check``: the tracker must answer now and list a node for ``key`` (waits ``lost_grace`` s for one).
    """
    from tvm.s_tir import meta_schedule as ms

    host, port = parse_address(tracker)
    known = []
    if check:
        deadline = time.monotonic() + lost_grace
        while True:
            keys = keys_from_summary(tracker_summary(host, port))
            known = keys.get(key, {}).get("addrs", [])
            if known:
                break
            if time.monotonic() >= deadline:
                reg = ", ".join(f"{k} ({v['total']})" for k, v in sorted(keys.items()) if v["total"]) or "none"
                raise SqccError(f"--rpc-key {key}: no node with key '{key}' is registered at the RPC tracker "
                                f"{host}:{port} (registered keys: {reg}); start one with `sqcc farm start` or "
                                f"`python -m tvm.exec.rpc_server --tracker {host}:{port} --key {key}`")
            time.sleep(0.5)
    ev = ms.runner.EvaluatorConfig(number=number, repeat=repeat, min_repeat_ms=min_repeat_ms,
                                   enable_cpu_cache_flush=False)
    FarmRunner, _ = _runner_classes()
    return FarmRunner(f"{host}:{port}", key, ev, session_timeout_sec, request_timeout, lost_grace, max_workers,
                      known)


def export_aarch64(mod) -> str:
    """MetaSchedule export function: link a candidate kernel into an aarch64 .so (cross compiler)."""
    from tvm.support import cc

    from .targets.arm_cpu import CROSS_CXX, find_cross_compiler

    find_cross_compiler(CROSS_CXX)
    path = os.path.join(tempfile.mkdtemp(prefix="sqcc_ms_"), "tvm_tmp_mod.so")
    mod.export_library(path, fcompile=cc.cross_compiler(CROSS_CXX))
    return path


def build_candidate(mod, target, _params=None):
    """MetaSchedule build function: MetaSchedule's default minus its eager ``import
    tvm.s_tir.tensor_intrin`` (25-50 s in every fresh builder worker), imported only when the
    candidate uses a tensor intrinsic."""
    from tvm.driver import build as tvm_build
    from tvm.s_tir.transform import RemoveWeightLayoutRewriteBlock

    if "tensorize" in mod.script(show_meta=False) or "intrin" in mod.script(show_meta=False):
        import tvm.s_tir.tensor_intrin  # noqa: F401
    mod = RemoveWeightLayoutRewriteBlock(skip_tensor_rewrite=True)(mod)
    return tvm_build(mod, target=target)


def cross_builder(target, max_workers: int | None = None, timeout_sec: float = 600.0):
    """MetaSchedule ``LocalBuilder`` whose artifacts load on the target's nodes: for an aarch64 llvm
    target the candidates are linked here with ``aarch64-linux-gnu-g++`` (the default builder exports
    a .tar, which a node could only load with a compiler of its own)."""
    import tvm
    from tvm.s_tir import meta_schedule as ms

    t = target if isinstance(target, tvm.target.Target) else tvm.target.Target(target)
    mtriple = str(t.attrs.get("mtriple", "")) if t.kind.name == "llvm" else ""
    f_export = None
    if mtriple.startswith("aarch64"):
        from .targets.arm_cpu import find_cross_compiler

        find_cross_compiler()
        f_export = export_aarch64
    return ms.builder.LocalBuilder(f_build=build_candidate, f_export=f_export, max_workers=max_workers,
                                   timeout_sec=timeout_sec)
