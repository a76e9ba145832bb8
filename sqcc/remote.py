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


def request_session(tracker: str = DEFAULT_TRACKER, key: str = DEFAULT_KEY, timeout: float = 60.0,
                    session_timeout: float = 0):
    """An RPC session on a node for ``key``: clear SqccErrors for an unreachable tracker, an unknown key
    and no free node within ``timeout`` seconds."""
    from tvm import rpc

    host, port = parse_address(tracker)
    t0 = time.monotonic()
    wait_for_free_node(tracker, key, timeout)
    try:
        tsess = rpc.connect_tracker(host, port)
    except Exception as e:
        raise SqccError(f"cannot reach the RPC tracker at {host}:{port} ({one_line(e)})") from None
    left = max(1.0, timeout - (time.monotonic() - t0))
    try:
        tsess._sock.settimeout(left)  # the tracker answers a request only when a node is free
        sess = tsess.request(key, priority=1, session_timeout=session_timeout, max_retry=1)
    except (RuntimeError, OSError) as e:
        if isinstance(e, socket.timeout) or "timed out" in str(e):
            raise SqccError(f"no free node for key '{key}' at the RPC tracker {host}:{port} within "
                            f"{timeout:.0f} s (another session took it); retry later") from None
        raise SqccError(f"the node for key '{key}' at {host}:{port} refused the session: "
                        f"{one_line(e)}") from None
    finally:
        tsess.close()
    return sess


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
        self.sess = self.vm = self.dev = None

    def __enter__(self):
        from tvm import relax

        self.sess = request_session(self.tracker, self.key, self.timeout, self.session_timeout)
        self.dev = _device(self.sess, self.manifest)
        name = f"sqcc_{hashlib.sha256(self.lib).hexdigest()[:16]}.so"
        try:
            self.sess.upload(bytearray(self.lib), target=name)
            mod = self.sess.load_module(name)
        except Exception as e:
            raise SqccError(f"the node for key '{self.key}' could not load the package (built for "
                            f"{self.manifest['target']['name']}): {one_line(e)}") from None
        self.vm = relax.VirtualMachine(mod, self.dev)
        return self

    def __exit__(self, *exc):
        # the session closes (and the node is handed back to the tracker) when the last reference goes:
        # the remote device holds one (``dev._rpc_sess``), so drop everything that points at it
        self.vm = self.dev = self.sess = None
        import gc

        gc.collect()

    def _args(self, inputs):
        import tvm

        return [tvm.runtime.tensor(a, self.dev) for a in _inputs(self.manifest, inputs)]

    def run(self, inputs):
        res = self.vm["main"](*self._args(inputs))
        outs = _to_numpy(res)
        return outs[0] if len(outs) == 1 else outs

    def time(self, inputs=None, repeat: int = 30, warmup: int = 1, number: int = 1) -> dict:
        args = self._args(inputs)
        for _ in range(warmup):
            self.vm["main"](*args)
        res = self.vm.time_evaluator("main", self.dev, number=number, repeat=repeat)(*args)
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

def rpc_runner(tracker: str = DEFAULT_TRACKER, key: str = DEFAULT_KEY, session_timeout_sec: int = 300,
               number: int = 1, repeat: int = 1, min_repeat_ms: int = 0, max_workers: int = 1, check: bool = True):
    """MetaSchedule ``RPCRunner`` measuring on nodes for ``key`` (checks the tracker answers first)."""
    from tvm.s_tir import meta_schedule as ms

    host, port = parse_address(tracker)
    if check:
        tracker_summary(host, port)
    cfg = ms.runner.RPCConfig(tracker_host=host, tracker_port=port, tracker_key=key,
                              session_timeout_sec=session_timeout_sec)
    ev = ms.runner.EvaluatorConfig(number=number, repeat=repeat, min_repeat_ms=min_repeat_ms,
                                   enable_cpu_cache_flush=False)
    return ms.runner.RPCRunner(rpc_config=cfg, evaluator_config=ev, max_workers=max_workers)


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
