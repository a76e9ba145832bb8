"""A local device farm on TVM's RPC tracker: ``start()``, ``status()``, ``stop()``.

TVM's RPC tracker is the distributed engine (DESIGN.md, "Device farm"): a device runs
``python -m tvm.exec.rpc_server --tracker HOST:PORT --key KEY`` and clients ask the tracker for a
device by key. ``start`` launches, as separate processes,

* the tracker (``python -m tvm.exec.rpc_tracker``, needs ``tornado``),
* a native node for this machine (key ``host``),
* an **emulated aarch64 node** (key ``aarch64``): TVM's own ``rpc_server`` running inside a Debian
  arm64 root under qemu-user (binfmt). The root is made once with debootstrap from Debian's packages,
  the aarch64 wheels of apache-tvm / apache-tvm-ffi / numpy / ... are downloaded by pip on the host
  and installed into ``/venv`` inside the root; it is cached under ``$SQCC_CACHE/aarch64-root``
  (default ``~/.cache/sqcc/aarch64-root``). Its timings are emulation, not ARM hardware: every
  figure taken on it is labelled "emulated".

Everything binds to loopback unless ``host`` is given (an RPC server executes whatever it is sent).
Each process is started in its own session (process group); its PID and group are recorded in
``$SQCC_CACHE/farm/state.json`` and ``stop`` ends the whole group (the servers fork workers that
would otherwise be orphaned), by PID, never by name.

A real board joins the same farm the way TVM users already know::

    python -m tvm.exec.rpc_server --tracker HOST:9190 --key rpi4
"""
from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

from .errors import SqccError

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 9190
DEFAULT_NODES = ("host", "aarch64")
EMULATED_KEYS = ("aarch64",)

# What the emulated node needs inside its root (TVM-NOTES: apache-tvm-ffi 0.1.15.x segfaults on JSON).
AARCH64_WHEELS = ["apache-tvm==0.27.0.post1", "apache-tvm-ffi==0.1.14.post1", "numpy", "psutil",
                  "cloudpickle", "ml_dtypes", "scipy", "typing_extensions"]
DEBIAN_SUITE = "bookworm"
DEBIAN_INCLUDE = "python3,python3-venv,libgomp1"
ROOT_FORMAT = 1  # bump when the recipe changes: an older cached root is rebuilt

NODE_START_TIMEOUT = {"host": 60.0, "aarch64": 300.0}


# ------------------------------------------------------------------------------------------ paths

def cache_dir() -> Path:
    """``$SQCC_CACHE`` or ``~/.cache/sqcc`` (created)."""
    d = Path(os.environ.get("SQCC_CACHE") or Path.home() / ".cache" / "sqcc")
    d.mkdir(parents=True, exist_ok=True)
    return d


def state_dir() -> Path:
    """Where the farm keeps its PIDs and logs: ``$SQCC_FARM_DIR`` or ``$SQCC_CACHE/farm``."""
    d = Path(os.environ["SQCC_FARM_DIR"]) if os.environ.get("SQCC_FARM_DIR") else cache_dir() / "farm"
    (d / "logs").mkdir(parents=True, exist_ok=True)
    return d


def root_dir() -> Path:
    """The emulated aarch64 node's Debian root (built by :func:`build_aarch64_root`)."""
    return cache_dir() / "aarch64-root"


def _state_file() -> Path:
    return state_dir() / "state.json"


def _say_default(msg: str) -> None:
    print(f"[sqcc farm] {msg}", file=sys.stderr, flush=True)


@contextmanager
def _lock(name: str, where: Path | None = None):
    with open((where or cache_dir()) / f".{name}.lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


# ------------------------------------------------------------------------- the emulated arm64 root

def _require_tool(exe: str, package: str, what: str) -> str:
    path = shutil.which(exe)
    if not path:
        raise SqccError(f"{what} needs '{exe}', which is not installed "
                        f"(Debian: apt-get install {package})")
    return path


def debian_mirror() -> str:
    """The Debian mirror this machine's apt uses (``/etc/apt/sources.list.d``, then sources.list)."""
    cands = []
    for p in sorted(Path("/etc/apt/sources.list.d").glob("*.sources")):
        try:
            text = p.read_text()
        except OSError:
            continue
        for stanza in re.split(r"\n\s*\n", text):
            uris = re.search(r"^URIs:\s*(\S+)", stanza, re.M)
            suites = re.search(r"^Suites:\s*(.*)$", stanza, re.M)
            if uris and suites and DEBIAN_SUITE in suites.group(1).split() and "security" not in uris.group(1):
                cands.append(uris.group(1))
    for p in [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*.list"))]:
        try:
            text = p.read_text()
        except OSError:
            continue
        for m in re.finditer(r"^deb\s+(?:\[[^\]]*\]\s+)?(\S+)\s+(\S+)", text, re.M):
            if m.group(2) == DEBIAN_SUITE and "security" not in m.group(1):
                cands.append(m.group(1))
    return cands[0] if cands else "http://deb.debian.org/debian"


def ensure_binfmt(say=_say_default) -> None:
    """Make the kernel run aarch64 ELF files through qemu-user (register binfmt_misc if needed)."""
    _require_tool("qemu-aarch64-static", "qemu-user-static", "the emulated aarch64 node")
    bm = Path("/proc/sys/fs/binfmt_misc")
    if not (bm / "register").exists():
        say("mounting binfmt_misc")
        r = subprocess.run(["mount", "-t", "binfmt_misc", "binfmt_misc", str(bm)], capture_output=True, text=True)
        if r.returncode != 0 and not (bm / "register").exists():
            raise SqccError(f"cannot mount binfmt_misc ({r.stderr.strip()}); the emulated aarch64 node needs "
                            "root and binfmt_misc (apt-get install binfmt-support qemu-user-static)")
    entry = bm / "qemu-aarch64"
    if entry.exists():
        if entry.read_text().splitlines()[0].strip() == "enabled":
            return
        entry.write_text("1")
        return
    conf = Path("/usr/lib/binfmt.d/qemu-aarch64.conf")
    if not conf.exists():
        raise SqccError("no binfmt rule for aarch64 (/usr/lib/binfmt.d/qemu-aarch64.conf is missing; "
                        "apt-get install qemu-user-static binfmt-support)")
    say("registering qemu-aarch64 with binfmt_misc")
    try:
        with open(bm / "register", "w") as f:
            f.write(conf.read_text().strip())
    except OSError as e:
        raise SqccError(f"cannot register qemu-aarch64 with binfmt_misc: {e}") from e


def root_ready(root: Path | None = None) -> bool:
    root = Path(root or root_dir())
    try:
        info = json.loads((root / ".sqcc-root.json").read_text())
    except (OSError, ValueError):
        return False
    return info.get("format") == ROOT_FORMAT and (root / "venv/bin/python").exists()


def _run_step(cmd, say, what, log: Path, env=None, timeout=3600):
    """Run one build step, streaming a line of progress now and then; SqccError with the log tail."""
    t0 = time.monotonic()
    with open(log, "a") as lf:
        lf.write(f"\n$ {' '.join(map(str, cmd))}\n")
        lf.flush()
        p = subprocess.Popen([str(c) for c in cmd], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             env=env, bufsize=1)
        last = 0.0
        try:
            for line in p.stdout:
                lf.write(line)
                now = time.monotonic()
                if now - last > 10:  # progress without flooding
                    say(f"  {what}: {line.strip()[:100]} ({now - t0:.0f} s)")
                    last = now
                if now - t0 > timeout:
                    p.kill()
                    raise SqccError(f"{what} took more than {timeout} s; see {log}")
            rc = p.wait()
        finally:
            if p.poll() is None:
                p.kill()
    if rc != 0:
        tail = log.read_text().splitlines()[-8:]
        raise SqccError(f"{what} failed (exit {rc}); see {log}: " + " | ".join(t.strip() for t in tail))
    return time.monotonic() - t0


def download_aarch64_wheels(dest: Path, say=_say_default) -> list[Path]:
    """``pip download`` the aarch64 / cp311 wheels the node needs, on the host."""
    dest.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--only-binary=:all:", "--platform", "manylinux_2_28_aarch64",
           "--platform", "manylinux_2_17_aarch64", "--platform", "manylinux2014_aarch64",
           "--python-version", "3.11", "--implementation", "cp", "-d", str(dest), *AARCH64_WHEELS]
    _run_step(cmd, say, "pip download (aarch64 wheels)", dest / "download.log", timeout=1800)
    return sorted(dest.glob("*.whl"))


def build_aarch64_root(force: bool = False, say=_say_default) -> Path:
    """Build (once; cached) the Debian arm64 root with TVM in ``/venv``. Returns its path.

    Steps: binfmt registration, ``debootstrap --arch=arm64 --variant=minbase`` from this machine's
    Debian mirror (~300 MB), ``pip download`` of the aarch64 wheels on the host, ``python3 -m venv``
    and ``pip install --no-index`` of those wheels inside the root under emulation, a smoke import.
    Built in ``aarch64-root.partial`` and renamed into place, so an interrupted build is never used.
    """
    root = root_dir()
    with _lock("aarch64-root"):
        if root_ready(root) and not force:
            return root
        if os.geteuid() != 0:
            raise SqccError("building the emulated aarch64 root needs root (debootstrap, chroot); "
                            "run `sqcc farm start` as root once, or start only the native node (`--nodes host`)")
        _require_tool("debootstrap", "debootstrap", "building the emulated aarch64 root")
        ensure_binfmt(say)
        t_all = time.monotonic()
        part = root.with_name(root.name + ".partial")
        if part.exists():
            shutil.rmtree(part)
        if root.exists():
            shutil.rmtree(root)
        log = cache_dir() / "aarch64-root.log"
        log.write_text("")
        mirror = debian_mirror()
        say(f"building the emulated aarch64 node's root in {root} (once; a few minutes; log: {log})")
        say(f"[1/4] debootstrap arm64 {DEBIAN_SUITE} from {mirror}")
        dt = _run_step(["debootstrap", "--arch=arm64", "--variant=minbase", f"--include={DEBIAN_INCLUDE}",
                        DEBIAN_SUITE, part, mirror], say, "debootstrap", log)
        say(f"[1/4] debootstrap done in {dt:.0f} s")
        say("[2/4] pip download of the aarch64 wheels: " + " ".join(AARCH64_WHEELS))
        wheels_dir = cache_dir() / "wheels-aarch64"
        t0 = time.monotonic()
        wheels = download_aarch64_wheels(wheels_dir, say)
        say(f"[2/4] {len(wheels)} wheels in {time.monotonic() - t0:.0f} s")
        inside = part / "opt" / "sqcc-wheels"
        inside.mkdir(parents=True, exist_ok=True)
        for w in wheels:
            shutil.copy2(w, inside / w.name)
        env = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/root",
               "LANG": "C.UTF-8", "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
        say("[3/4] python venv + pip install inside the root (emulated)")
        t0 = time.monotonic()
        _run_step(["chroot", part, "/usr/bin/python3", "-m", "venv", "/venv"], say, "venv (emulated)", log, env=env)
        _run_step(["chroot", part, "/venv/bin/pip", "install", "--no-index", "--no-cache-dir", "--no-compile",
                   "--find-links",
                   "/opt/sqcc-wheels", *AARCH64_WHEELS], say, "pip install (emulated)", log, env=env)
        say(f"[3/4] installed in {time.monotonic() - t0:.0f} s")
        say("[4/4] smoke test: import tvm under emulation")
        r = subprocess.run(["chroot", str(part), "/venv/bin/python", "-c",
                            "import tvm, platform; print(tvm.__version__, platform.machine())"],
                           capture_output=True, text=True, env=env, timeout=600)
        if r.returncode != 0 or "aarch64" not in r.stdout:
            raise SqccError(f"the aarch64 root does not import tvm: {(r.stderr or r.stdout).strip()[-300:]}")
        shutil.rmtree(inside, ignore_errors=True)
        total = time.monotonic() - t_all
        (part / ".sqcc-root.json").write_text(json.dumps({
            "format": ROOT_FORMAT, "suite": DEBIAN_SUITE, "mirror": mirror, "wheels": [w.name for w in wheels],
            "tvm": r.stdout.split()[0], "built": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "build_seconds": round(total, 1)}, indent=1))
        os.replace(part, root)
        say(f"aarch64 root ready in {total:.0f} s ({r.stdout.strip()})")
        return root


# --------------------------------------------------------------------------------- processes

def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie is dead for our purposes
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def _starttime(pid: int) -> int | None:
    """Kernel start time of ``pid`` (clock ticks since boot): tells a reused PID from ours."""
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def _ours(pr: dict) -> bool:
    """True unless the recorded leader PID now belongs to a different process (PID reuse)."""
    st = _starttime(pr["pid"])
    return st is None or pr.get("starttime") in (None, st)


def _proc_alive(pr: dict) -> bool:
    return _alive(pr["pid"]) and _ours(pr)


def group_members(pgid: int) -> list[int]:
    """PIDs (alive, not zombies) whose process group is ``pgid``."""
    out = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            out.append(int(d.name))
    return out


def _spawn(name: str, cmd: list, log: Path, env: dict | None = None, cwd: str | None = None) -> dict:
    lf = open(log, "wb")  # a fresh log per start: its tail explains this run, not an older one
    try:
        p = subprocess.Popen([str(c) for c in cmd], stdout=lf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                             start_new_session=True, env=env, cwd=cwd)
    finally:
        lf.close()
    return {"name": name, "pid": p.pid, "pgid": p.pid, "cmd": [str(c) for c in cmd], "log": str(log),
            "started": time.time(), "starttime": _starttime(p.pid)}


def _end_group(pgid: int, grace: float = 5.0) -> list[int]:
    """SIGTERM the process group, wait, SIGKILL what is left. Returns the PIDs that were in it."""
    members = group_members(pgid)
    if not members:
        return []
    try:
        os.killpg(pgid, signal.SIGTERM)
    except ProcessLookupError:
        return members
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and group_members(pgid):
        time.sleep(0.1)
    if group_members(pgid):
        try:
            os.killpg(pgid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and group_members(pgid):
            time.sleep(0.1)
    return members


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


# ------------------------------------------------------------------------------- tracker queries

def parse_address(addr, default_port: int = DEFAULT_PORT) -> tuple[str, int]:
    """``"HOST:PORT"`` (or a (host, port) tuple) → (host, port); SqccError when malformed."""
    if isinstance(addr, (tuple, list)):
        return str(addr[0]), int(addr[1])
    text = str(addr or "").strip()
    host, sep, port = text.rpartition(":")
    if not sep:
        host, port = text, str(default_port)
    try:
        port = int(port)
    except ValueError:
        raise SqccError(f"--rpc-tracker {addr!r}: expected HOST:PORT (e.g. 127.0.0.1:9190)") from None
    if not host or not 0 < port < 65536:
        raise SqccError(f"--rpc-tracker {addr!r}: expected HOST:PORT (e.g. 127.0.0.1:9190)")
    return host, port


def port_open(host: str, port: int, timeout: float = 1.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def tracker_summary(host: str, port: int, timeout: float = 5.0) -> dict:
    """The tracker's summary (``server_info``, ``queue_info``); SqccError when it cannot be reached."""
    from tvm.rpc import base

    try:
        sock = socket.create_connection((host, port), timeout=timeout)
    except OSError as e:
        raise SqccError(f"cannot reach the RPC tracker at {host}:{port} ({e.strerror or e}); "
                        "start one with `sqcc farm start` or check --rpc-tracker") from None
    try:
        sock.settimeout(timeout)
        import struct

        sock.sendall(struct.pack("<i", base.RPC_TRACKER_MAGIC))
        magic = struct.unpack("<i", base.recvall(sock, 4))[0]
        if magic != base.RPC_TRACKER_MAGIC:
            raise SqccError(f"{host}:{port} is not a TVM RPC tracker")
        base.sendjson(sock, [base.TrackerCode.SUMMARY])
        value = base.recvjson(sock)
        if value[0] != base.TrackerCode.SUCCESS:
            raise SqccError(f"the RPC tracker at {host}:{port} answered {value!r}")
        return value[1]
    except (OSError, struct.error) as e:
        raise SqccError(f"the RPC tracker at {host}:{port} did not answer ({e})") from None
    finally:
        sock.close()


def keys_from_summary(summary: dict) -> dict:
    """{key: {"total": n, "free": n, "pending": n, "addrs": [...]}} from a tracker summary."""
    out = {}
    for item in summary.get("server_info", []):
        key = item["key"].split(":", 1)[1] if ":" in item["key"] else item["key"]
        e = out.setdefault(key, {"total": 0, "free": 0, "pending": 0, "addrs": []})
        e["total"] += 1
        e["addrs"].append(":".join(map(str, item["addr"])))
    for key, q in summary.get("queue_info", {}).items():
        e = out.setdefault(key, {"total": 0, "free": 0, "pending": 0, "addrs": []})
        e["free"], e["pending"] = q["free"], q["pending"]
    return out


# ----------------------------------------------------------------------------------- the farm

def _read_state() -> dict | None:
    try:
        return json.loads(_state_file().read_text())
    except (OSError, ValueError):
        return None


def _write_state(state: dict) -> None:
    tmp = _state_file().with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=1))
    os.replace(tmp, _state_file())


def _node_cmd(key: str, host: str, port: int, threads: int | None) -> tuple[list, dict, dict]:
    """(command, env, facts) for a node with ``key``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TVM_NUM_THREADS")}
    nthreads = threads or len(os.sched_getaffinity(0))
    env["TVM_NUM_THREADS"] = str(nthreads)
    server_args = ["-m", "tvm.exec.rpc_server", "--host", host, "--port", "9090", "--port-end", "9189",
                   "--tracker", f"{host}:{port}", "--key", key]
    if key in EMULATED_KEYS:
        root = root_dir()
        cenv = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/root", "LANG": "C.UTF-8",
                "TVM_NUM_THREADS": str(nthreads)}
        return (["chroot", str(root), "/venv/bin/python", *server_args], cenv,
                {"emulated": True, "arch": "aarch64", "threads": nthreads, "root": str(root),
                 "device": f"aarch64 emulated by qemu-user on this machine ({_host_cpu()})"})
    return ([sys.executable, *server_args], env,
            {"emulated": False, "arch": os.uname().machine, "threads": nthreads, "device": _host_cpu()})


def _host_cpu() -> str:
    try:
        m = re.search(r"^model name\s*:\s*(.*)$", Path("/proc/cpuinfo").read_text(), re.M)
        return m.group(1).strip() if m else os.uname().machine
    except OSError:
        return os.uname().machine


def start(host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, nodes=DEFAULT_NODES, threads: int | None = None,
          say=_say_default, timeout: float | None = None) -> dict:
    """Start the tracker and one RPC server per key in ``nodes``; returns the state (see :func:`status`).

    ``nodes`` holds keys: ``"host"`` (this machine, native) and ``"aarch64"`` (emulated; builds its
    root first if it is not cached). Raises SqccError when a farm is already running, when the port is
    taken, or when a node does not register with the tracker in time (everything started is ended).
    """
    nodes = tuple(nodes)
    unknown = [n for n in nodes if n not in ("host", *EMULATED_KEYS)]
    if unknown:
        raise SqccError(f"unknown farm node(s) {', '.join(unknown)} (known: host, {', '.join(EMULATED_KEYS)}); "
                        "a real device joins with `python -m tvm.exec.rpc_server --tracker HOST:PORT --key KEY`")
    try:
        import tornado  # noqa: F401
    except ImportError:
        raise SqccError("the RPC tracker needs the Python package 'tornado' (pip install tornado)") from None
    with _lock("farm", state_dir()):
        old = _read_state()
        if old and any(_proc_alive(p) for p in old.get("procs", [])):
            raise SqccError(f"a farm is already running (tracker {old['host']}:{old['port']}); "
                            "`sqcc farm stop` first")
        if old:  # a farm that died: end what is left of it (orphaned workers) before starting anew
            _stop_state(old)
        if port_open(host, port, timeout=0.5):
            raise SqccError(f"port {host}:{port} is already in use (another tracker?); choose --port")
        if any(n in EMULATED_KEYS for n in nodes) and os.geteuid() != 0:
            raise SqccError("the emulated aarch64 node runs TVM's rpc_server in a chroot under qemu, which needs "
                            "root; run as root or start only the native node (`--nodes host`)")
        if any(n in EMULATED_KEYS for n in nodes) and not root_ready():
            build_aarch64_root(say=say)
        if any(n in EMULATED_KEYS for n in nodes):
            ensure_binfmt(say)
        logs = state_dir() / "logs"
        state = {"host": host, "port": port, "started": time.time(), "procs": [], "nodes": {}}
        try:
            say(f"starting RPC tracker on {host}:{port}")
            tr = _spawn("tracker", [sys.executable, "-m", "tvm.exec.rpc_tracker", "--host", host, "--port", port,
                                    "--port-end", port + 1], logs / "tracker.log")
            state["procs"].append(tr)
            _write_state(state)
            _wait(lambda: port_open(host, port, 0.5), 30, lambda: _alive(tr["pid"]), "the RPC tracker", tr)
            for key in nodes:
                cmd, env, facts = _node_cmd(key, host, port, threads)
                say(f"starting node '{key}'{' (emulated aarch64 under qemu)' if facts['emulated'] else ''}")
                pr = _spawn(f"node:{key}", cmd, logs / f"node-{key}.log", env=env, cwd="/")
                pr.update(key=key, **facts)
                state["procs"].append(pr)
                state["nodes"][key] = {k: v for k, v in pr.items() if k not in ("cmd",)}
                _write_state(state)
            for pr in state["procs"][1:]:
                key = pr["key"]
                limit = timeout or NODE_START_TIMEOUT.get(key, 60.0)
                t0 = time.monotonic()
                _wait(lambda: keys_from_summary(tracker_summary(host, port)).get(key, {}).get("total", 0) > 0,
                      limit, lambda: _alive(pr["pid"]), f"node '{key}'", pr)
                say(f"node '{key}' registered ({time.monotonic() - t0:.0f} s)")
        except BaseException:
            _stop_state(state)
            raise
        _write_state(state)
    say(f"farm up: tracker {host}:{port}, keys {', '.join(nodes)} "
        f"(use --rpc-tracker {host}:{port} --rpc-key KEY)")
    return status()


def _wait(cond, limit: float, alive, what: str, proc: dict) -> None:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if not alive():
            _reap(proc["pid"])
            tail = _log_tail(proc["log"])
            raise SqccError(f"{what} exited while starting; last log lines ({proc['log']}): {tail}")
        try:
            if cond():
                return
        except SqccError:
            pass
        time.sleep(0.5)
    raise SqccError(f"{what} did not come up within {limit:.0f} s; log: {proc['log']}: {_log_tail(proc['log'])}")


def _log_tail(path, n: int = 5) -> str:
    try:
        lines = [ln.strip() for ln in Path(path).read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return "(no log)"
    return " | ".join(lines[-n:]) or "(empty log)"


def status() -> dict:
    """Where the farm stands: tracker address and liveness, and per key: free / busy / dead.

    A node is *dead* when its process has exited (or it is no longer registered with the tracker),
    *busy* when it is registered but holds no free slot (a session is using it), *free* otherwise.
    Keys registered with the tracker by other machines (real boards) are listed too.
    """
    st = _read_state()
    if not st:
        return {"running": False, "nodes": {}}
    host, port = st["host"], st["port"]
    tr = st["procs"][0]
    tracker_alive = _proc_alive(tr)
    keys, error = {}, None
    if tracker_alive:
        try:
            keys = keys_from_summary(tracker_summary(host, port))
        except SqccError as e:
            error = str(e)
    nodes = {}
    for key, n in st.get("nodes", {}).items():
        reg = keys.get(key, {})
        if not _proc_alive(n) or not tracker_alive:
            state = "dead"
        elif reg.get("total", 0) == 0:
            state = "dead" if error is None else "unknown"
        elif reg.get("free", 0) > 0:
            state = "free"
        else:
            state = "busy"
        nodes[key] = {"state": state, "pid": n["pid"], "emulated": n.get("emulated", False),
                      "device": n.get("device"), "threads": n.get("threads"), "log": n.get("log"),
                      "registered": reg.get("total", 0), "free": reg.get("free", 0),
                      "pending": reg.get("pending", 0)}
    others = {k: {"state": "free" if v["free"] else "busy", "registered": v["total"], "free": v["free"],
                  "pending": v["pending"], "emulated": None, "addrs": v["addrs"]}
              for k, v in keys.items() if k not in nodes and (v["total"] or v["pending"])}
    return {"running": tracker_alive, "tracker": f"{host}:{port}", "tracker_pid": tr["pid"],
            "nodes": nodes, "other_keys": others, "error": error, "state_file": str(_state_file())}


def format_status(s: dict) -> str:
    if not s.get("nodes") and not s.get("running"):
        return "farm: not running (`sqcc farm start`)"
    lines = [f"farm: tracker {s['tracker']} ({'up' if s['running'] else 'DEAD'}, pid {s['tracker_pid']})"]
    if s.get("error"):
        lines.append(f"  {s['error']}")
    lines.append(f"  {'key':<10} {'state':<6} {'pid':>7}  device")
    for key, n in sorted(s["nodes"].items()):
        dev = (n.get("device") or "") + (f", {n['threads']} thread(s)" if n.get("threads") else "")
        lines.append(f"  {key:<10} {n['state']:<6} {n['pid']:>7}  {dev}")
        if n["state"] == "dead":
            lines.append(f"  {'':<10} node died; log {n.get('log')}: {_log_tail(n.get('log'), 2)}")
    for key, n in sorted(s.get("other_keys", {}).items()):
        lines.append(f"  {key:<10} {n['state']:<6} {'-':>7}  remote server(s) {', '.join(n['addrs'])}")
    return "\n".join(lines)


def _stop_state(state: dict, say=None) -> list[int]:
    ended = []
    for pr in reversed(state.get("procs", [])):  # nodes first, tracker last
        if not _ours(pr):  # the PID was reused after a reboot: not ours to end
            continue
        members = _end_group(pr["pgid"])
        _reap(pr["pid"])
        ended.extend(members)
        if say and members:
            say(f"stopped {pr['name']} (pid {pr['pid']}, {len(members)} process(es))")
    return ended


def stop(say=_say_default) -> list[int]:
    """End every process the farm started (each whole process group, by PID); returns their PIDs."""
    with _lock("farm", state_dir()):
        st = _read_state()
        if not st:
            say("farm: not running")
            return []
        ended = _stop_state(st, say)
        try:
            _state_file().unlink()
        except FileNotFoundError:
            pass
    left = [p for pr in st.get("procs", []) if _ours(pr) for p in group_members(pr["pgid"])]
    if left:
        raise SqccError(f"processes still alive after stop: {left}")
    say(f"farm stopped ({len(ended)} process(es) ended)")
    return ended


def emulated_keys(tracker: str | None = None) -> set[str]:
    """Keys served by emulated nodes of the local farm (when ``tracker`` is the local farm's)."""
    st = _read_state()
    if not st:
        return set()
    if tracker is not None:
        try:
            h, p = parse_address(tracker)
        except SqccError:
            return set()
        if p != st["port"] or h not in (st["host"], "localhost", "127.0.0.1"):
            return set()
    return {k for k, n in st.get("nodes", {}).items() if n.get("emulated")}


def node_facts(tracker: str, key: str) -> dict | None:
    """What the local farm knows about ``key`` (device, threads, emulated) when ``tracker`` is its tracker."""
    st = _read_state()
    if not st or key not in st.get("nodes", {}):
        return None
    try:
        h, p = parse_address(tracker)
    except SqccError:
        return None
    if p != st["port"] or h not in (st["host"], "localhost", "127.0.0.1"):
        return None
    return st["nodes"][key]


# ------------------------------------------------------------------------------------------ CLI

def add_arguments(p) -> None:
    """Arguments of ``sqcc farm`` (the lead's CLI calls this on its ``farm`` sub-parser)."""
    p.add_argument("action", choices=["start", "status", "stop", "build-root"])
    p.add_argument("--host", default=DEFAULT_HOST, help="address to bind (default loopback: an RPC server "
                   "runs whatever it is sent)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help="tracker port (default 9190)")
    p.add_argument("--nodes", default=",".join(DEFAULT_NODES),
                   help="comma-separated node keys to start: host, aarch64 (emulated) (default: host,aarch64)")
    p.add_argument("--threads", type=int, help="TVM_NUM_THREADS of each node (default: this machine's cores)")
    p.add_argument("--json", action="store_true", help="status as JSON")


def cmd(args) -> int:
    """Run ``sqcc farm ACTION`` from parsed arguments; SqccError propagates to the CLI."""
    if args.action == "start":
        s = start(host=args.host, port=args.port, nodes=[n.strip() for n in args.nodes.split(",") if n.strip()],
                  threads=args.threads)
        print(f"tracker {s['tracker']}")
        print(format_status(s))
        print(f"use: --rpc-tracker {s['tracker']} --rpc-key aarch64   (emulated node: figures are EMULATED)")
    elif args.action == "status":
        s = status()
        print(json.dumps(s, indent=1) if args.json else format_status(s))
        dead = [k for k, n in s["nodes"].items() if n["state"] == "dead"]
        return 1 if s["nodes"] and (not s.get("running") or dead) else 0
    elif args.action == "stop":
        stop()
    elif args.action == "build-root":
        build_aarch64_root(force=True)
    return 0


def main(argv=None) -> int:
    import argparse

    ap = argparse.ArgumentParser(prog="python -m sqcc.farm", description="local TVM RPC device farm")
    add_arguments(ap)
    args = ap.parse_args(argv)
    try:
        return cmd(args)
    except SqccError as e:
        print(f"sqcc: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
