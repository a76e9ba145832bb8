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
would otherwise be orphaned), and any descendant that left it, by PID, never by name. The
processes' own children die with them (PR_SET_PDEATHSIG, see ``_CHILD_HOOK``), so a node or
tracker killed by its PID is gone as a whole, not half-alive. ``status`` tells a tracker that is
down, hung or replaced by another process, and nodes that are dead, waiting for the tracker or
unregistered; ``start`` on a farm that is partly down brings it back (tracker restarted on its
port, nodes re-registered or restarted).

A real board joins the same farm the way TVM users already know::

    python -m tvm.exec.rpc_server --tracker HOST:9190 --key rpi4
"""
from __future__ import annotations

import contextlib
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


def farm_processes(state: dict | None = None) -> list:
    """psutil Processes of the farm now: each recorded leader, the members of its process group and
    every descendant of those (the tracker's and servers' workers, the sessions they fork, qemu)."""
    import psutil

    state = state if state is not None else (_read_state() or {})
    found = {}

    def add(p):
        try:
            if p.pid not in found and p.status() != psutil.STATUS_ZOMBIE:
                found[p.pid] = p
        except psutil.Error:
            pass

    for pr in state.get("procs", []):
        if not _ours(pr):
            continue
        roots = [pr["pid"], *group_members(pr["pgid"])]
        for pid in roots:
            try:
                p = psutil.Process(pid)
            except psutil.Error:
                continue
            add(p)
            try:
                for c in p.children(recursive=True):
                    add(c)
            except psutil.Error:
                pass
    return list(found.values())


# A farm process's children end with it (Linux PR_SET_PDEATHSIG): TVM's tracker and rpc_server do
# their work in a worker process (tvm.exec.popen_worker) and a server forks one more per session, so
# killing the PID the farm recorded would otherwise leave a node that still serves (and stays
# registered) or a tracker that still answers, while ``status`` calls them dead. The farm's
# processes load this file as ``sitecustomize`` through PYTHONPATH (with SQCC_FARM_CHILD=1); every
# process except the recorded group leader -- whose parent, ``sqcc farm start``, exits -- asks the
# kernel for SIGKILL when its parent goes, in fresh interpreters and in forked children alike.
_CHILD_HOOK = '''"""Written by sqcc farm (see sqcc/farm.py): a farm process's children end when it does."""
import os


def _sqcc_farm_child():
    if os.environ.get("SQCC_FARM_CHILD") != "1":
        return
    try:
        import ctypes
        import signal

        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError, ImportError):
        return

    def die_with_parent():
        if os.getpid() == os.getpgrp():  # the farm's recorded process: its parent exits at once
            return
        prctl(1, int(signal.SIGKILL), 0, 0, 0)  # PR_SET_PDEATHSIG
        try:
            orphan = os.getpgid(os.getppid()) != os.getpgrp()  # the parent already went
        except OSError:
            orphan = True
        if orphan:
            os._exit(1)

    die_with_parent()
    os.register_at_fork(after_in_child=die_with_parent)


_sqcc_farm_child()
del _sqcc_farm_child

# then the sitecustomize this one shadows, if any (Debian's python3 ships one)
def _sqcc_next_sitecustomize():
    import sys

    here = os.path.dirname(os.path.abspath(__file__))
    for d in sys.path:
        f = os.path.join(os.path.abspath(d or "."), "sitecustomize.py")
        if os.path.dirname(f) != here and os.path.isfile(f):
            with open(f) as fh:
                exec(compile(fh.read(), f, "exec"), {"__name__": "sitecustomize", "__file__": f})
            return


_sqcc_next_sitecustomize()
del _sqcc_next_sitecustomize
'''


def _child_hook(where: Path) -> bool:
    """Write the child hook as ``where/sitecustomize.py``; False when it cannot be written."""
    try:
        where.mkdir(parents=True, exist_ok=True)
        f = where / "sitecustomize.py"
        if not f.exists() or f.read_text() != _CHILD_HOOK:
            tmp = f.with_suffix(".tmp")
            tmp.write_text(_CHILD_HOOK)
            os.replace(tmp, f)
        return True
    except OSError:
        return False


def _with_child_hook(env: dict, hook_dir: Path | str | None) -> dict:
    """``env`` with the child hook on PYTHONPATH (``hook_dir`` as the process sees it; None: none)."""
    env = dict(env)
    if hook_dir is not None:
        env["SQCC_FARM_CHILD"] = "1"
        env["PYTHONPATH"] = os.pathsep.join(x for x in (str(hook_dir), env.get("PYTHONPATH")) if x)
    return env


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


REREGISTER_WAIT = 20.0  # a live node re-registers with a restarted tracker within TVM's retry (5 s) + ping (2 s)


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
        hook = "/opt/sqcc-farm" if _child_hook(root / "opt" / "sqcc-farm") else None
        return (["chroot", str(root), "/venv/bin/python", *server_args], _with_child_hook(cenv, hook),
                {"emulated": True, "arch": "aarch64", "threads": nthreads, "root": str(root),
                 "device": f"aarch64 emulated by qemu-user on this machine ({_host_cpu()})"})
    hook = state_dir() / "pyhook"
    return ([sys.executable, *server_args], _with_child_hook(env, hook if _child_hook(hook) else None),
            {"emulated": False, "arch": os.uname().machine, "threads": nthreads, "device": _host_cpu()})


def _host_cpu() -> str:
    try:
        m = re.search(r"^model name\s*:\s*(.*)$", Path("/proc/cpuinfo").read_text(), re.M)
        return m.group(1).strip() if m else os.uname().machine
    except OSError:
        return os.uname().machine


def _check_emulated(keys, say) -> None:
    """Root, the cached Debian root and binfmt for the emulated nodes among ``keys``."""
    if not any(k in EMULATED_KEYS for k in keys):
        return
    if os.geteuid() != 0:
        raise SqccError("the emulated aarch64 node runs TVM's rpc_server in a chroot under qemu, which needs "
                        "root; run as root or start only the native node (`--nodes host`)")
    if not root_ready():
        build_aarch64_root(say=say)
    ensure_binfmt(say)


def _start_tracker(host: str, port: int) -> dict:
    hook = state_dir() / "pyhook"
    env = _with_child_hook(os.environ, hook if _child_hook(hook) else None)
    tr = _spawn("tracker", [sys.executable, "-m", "tvm.exec.rpc_tracker", "--host", host, "--port", port,
                            "--port-end", port + 1], state_dir() / "logs" / "tracker.log", env=env)
    return tr


def _await_tracker(state: dict, tr: dict) -> None:
    host, port = state["host"], state["port"]
    _wait(lambda: port_open(host, port, 0.5), 30, lambda: _alive(tr["pid"]), "the RPC tracker", tr)


def _listen_ports(pgid: int) -> set[int]:
    """TCP ports the processes of group ``pgid`` listen on (a node's RPC port)."""
    import psutil

    ports = set()
    for pid in group_members(pgid):
        try:
            p = psutil.Process(pid)
            conns = (getattr(p, "net_connections", None) or p.connections)(kind="tcp")
        except (psutil.Error, OSError):
            continue
        ports.update(c.laddr.port for c in conns if c.status == psutil.CONN_LISTEN and c.laddr)
    return ports


def _key_addrs(host: str, port: int, key: str) -> list[str]:
    try:
        return keys_from_summary(tracker_summary(host, port)).get(key, {}).get("addrs", [])
    except SqccError:
        return []


def _node_registered(node: dict, keys: dict) -> bool:
    """Whether the farm's ``node`` is registered in the tracker's ``keys`` (by its RPC address)."""
    reg = keys.get(node["key"], {})
    if node.get("addr"):
        return node["addr"] in reg.get("addrs", [])
    return reg.get("total", 0) > 0


def _spawn_node(state: dict, key: str, threads: int | None, say) -> dict:
    """Start the node for ``key`` (replacing the state's entry for it); returns its process record."""
    host, port = state["host"], state["port"]
    cmd, env, facts = _node_cmd(key, host, port, threads)
    say(f"starting node '{key}'{' (emulated aarch64 under qemu)' if facts['emulated'] else ''}")
    before = _key_addrs(host, port, key)
    pr = _spawn(f"node:{key}", cmd, state_dir() / "logs" / f"node-{key}.log", env=env, cwd="/")
    pr.update(key=key, **facts)
    pr["_before"] = before
    state["procs"] = [p for p in state["procs"] if p.get("key") != key] + [pr]
    state["nodes"][key] = {k: v for k, v in pr.items() if k not in ("cmd", "_before")}
    _write_state(state)
    return pr


def _await_node(state: dict, pr: dict, timeout: float | None, say) -> None:
    """Wait until the node ``pr`` registers with the tracker; records its RPC address."""
    host, port, key = state["host"], state["port"], pr["key"]
    before = set(pr.pop("_before", []))
    limit = timeout or NODE_START_TIMEOUT.get(key, 60.0)
    t0 = time.monotonic()

    def registered():
        addrs = keys_from_summary(tracker_summary(host, port)).get(key, {}).get("addrs", [])
        mine = _listen_ports(pr["pgid"])
        match = [a for a in addrs if int(a.rsplit(":", 1)[1]) in mine] if mine else \
            [a for a in addrs if a not in before]
        if match:
            pr["addr"] = match[0]
        return bool(match)

    _wait(registered, limit, lambda: _alive(pr["pid"]), f"node '{key}'", pr)
    state["nodes"][key]["addr"] = pr["addr"]
    _write_state(state)
    say(f"node '{key}' registered at {pr['addr']} ({time.monotonic() - t0:.0f} s)")


def start(host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, nodes=None, threads: int | None = None,
          say=_say_default, timeout: float | None = None) -> dict:
    """Start the tracker and one RPC server per key in ``nodes``; returns the state (see :func:`status`).

    ``nodes`` holds keys: ``"host"`` (this machine, native) and ``"aarch64"`` (emulated; builds its
    root first if it is not cached); default both. Raises SqccError when a farm is already running, when the port is
    taken, or when a node does not register with the tracker in time (everything started is ended).

    On a farm that is partly down (its tracker or a node died, a node gave up on a restarted
    tracker) ``start`` repairs it instead, on the farm's own address: it restarts the tracker, waits
    for the live nodes to re-register, and restarts the nodes that are dead or do not (and starts
    the keys of ``nodes`` it does not have).
    """
    repair_only = nodes is None
    nodes = tuple(DEFAULT_NODES if nodes is None else nodes)
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
            _repair(old, () if repair_only else nodes, threads, say, timeout)
            state = old
        else:
            if old:  # a farm that died: end what is left of it (orphaned workers) before starting anew
                _stop_state(old)
            if port_open(host, port, timeout=0.5):
                raise SqccError(f"port {host}:{port} is already in use (another tracker?); choose --port")
            _check_emulated(nodes, say)
            state = {"host": host, "port": port, "started": time.time(), "procs": [], "nodes": {}}
            try:
                say(f"starting RPC tracker on {host}:{port}")
                tr = _start_tracker(host, port)
                state["procs"].append(tr)
                _write_state(state)
                _await_tracker(state, tr)
                started = [_spawn_node(state, key, threads, say) for key in nodes]
                for pr in started:
                    _await_node(state, pr, timeout, say)
            except BaseException:
                _stop_state(state)
                raise
            _write_state(state)
    say(f"farm up: tracker {state['host']}:{state['port']}, keys {', '.join(state['nodes'])} "
        f"(use --rpc-tracker {state['host']}:{state['port']} --rpc-key KEY)")
    return status()


def _tracker_answers(host: str, port: int) -> bool:
    try:
        tracker_summary(host, port, timeout=3.0)
        return True
    except SqccError:
        return False


def _repair(state: dict, nodes, threads, say, timeout) -> None:
    """Bring a partly running farm back: see :func:`start`. SqccError when nothing is down."""
    host, port = state["host"], state["port"]
    want = [*state.get("nodes", {}), *(k for k in nodes if k not in state.get("nodes", {}))]
    tr = state["procs"][0]
    tracker_ok = _proc_alive(tr) and _tracker_answers(host, port)
    if tracker_ok:
        try:
            keys = keys_from_summary(tracker_summary(host, port))
        except SqccError:
            keys = {}
        if all(k in state["nodes"] and _proc_alive(state["nodes"][k]) and _node_registered(state["nodes"][k], keys)
               for k in want):
            raise SqccError(f"a farm is already running (tracker {host}:{port}, keys {', '.join(state['nodes'])}); "
                            "`sqcc farm stop` first")
    say(f"the farm at {host}:{port} is partly down: bringing it back")
    if not tracker_ok:
        what = "does not answer" if _proc_alive(tr) else "is gone"
        if _ours(tr):
            _end_group(tr["pgid"])
            _reap(tr["pid"])
        if port_open(host, port, 0.5):
            raise SqccError(f"the farm's RPC tracker (pid {tr['pid']}) {what} and {host}:{port} is taken by another "
                            "process; end that process, or `sqcc farm stop` and start on another --port")
        say(f"the farm's RPC tracker (pid {tr['pid']}) {what}: restarting it on {host}:{port}")
        new = _start_tracker(host, port)
        state["procs"][0] = new
        state["tracker_restarts"] = state.get("tracker_restarts", 0) + 1
        _write_state(state)
        _await_tracker(state, new)
        say(f"RPC tracker back on {host}:{port} (pid {new['pid']})")
    # live nodes reconnect to a restarted tracker by themselves (TVM's server retries for 60 s)
    waiting = [k for k in want if k in state["nodes"] and _proc_alive(state["nodes"][k])]
    deadline = time.monotonic() + (REREGISTER_WAIT if not tracker_ok else 2.0)
    while waiting:
        try:
            keys = keys_from_summary(tracker_summary(host, port))
        except SqccError:
            keys = {}
        for k in [k for k in waiting if _node_registered(state["nodes"][k], keys)]:
            waiting.remove(k)
            if not tracker_ok:
                say(f"node '{k}' (pid {state['nodes'][k]['pid']}) re-registered with the tracker")
        if not waiting or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    respawn = []
    for key in want:
        n = state["nodes"].get(key)
        if n is None:
            respawn.append(key)
            continue
        if _proc_alive(n):
            if key not in waiting:
                continue
            say(f"node '{key}' (pid {n['pid']}) runs but is not registered with the tracker: restarting it")
        else:
            say(f"node '{key}' (pid {n['pid']}) is dead: restarting it")
        if _ours(n):
            _end_group(n["pgid"])
            _reap(n["pid"])
        respawn.append(key)
    _check_emulated(respawn, say)
    started = [_spawn_node(state, key, threads or (state["nodes"].get(key) or {}).get("threads"), say)
               for key in respawn]
    for pr in started:
        try:
            _await_node(state, pr, timeout, say)
        except BaseException:
            _end_group(pr["pgid"])
            _reap(pr["pid"])
            raise


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
    """Where the farm stands: the tracker's state and, per key: free / busy / dead / ...

    The tracker is *up* (the farm's process answers), *down* (it exited), *hung* (it runs but does
    not answer) or *foreign* (it exited and another process answers on its port; what that
    tracker knows is reported). A node is *dead* when its process has exited, *waiting* when it runs
    while the tracker is down (it re-registers when the tracker is back), *unregistered* when it runs
    but the tracker does not list it (re-registering, or it gave up: ``start`` restarts it), *busy*
    when it is registered but holds no free slot (a session is using it), *free* otherwise. Keys
    registered with the tracker by other machines (real boards) are listed too. Never raises for
    a farm that is down.
    """
    st = _read_state()
    if not st:
        return {"running": False, "nodes": {}}
    host, port = st["host"], st["port"]
    tr = st["procs"][0]
    tracker_alive = _proc_alive(tr)
    keys, error, answering = {}, None, False
    try:
        keys = keys_from_summary(tracker_summary(host, port, timeout=3.0))
        answering = True
    except SqccError as e:
        error = str(e) if tracker_alive else None
    if answering:
        tstate = "up" if tracker_alive else "foreign"
    else:
        tstate = "hung" if tracker_alive else "down"
    nodes = {}
    for key, n in st.get("nodes", {}).items():
        reg = keys.get(key, {})
        alive = _proc_alive(n)
        orphans = [] if alive or not _ours(n) else group_members(n["pgid"])
        if not alive:
            state = "dead"
        elif not answering:
            state = "waiting" if tstate == "down" else "unknown"
        elif not _node_registered(n, keys):
            state = "unregistered"
        elif reg.get("free", 0) > 0:
            state = "free"
        else:
            state = "busy"
        nodes[key] = {"state": state, "pid": n["pid"], "addr": n.get("addr"), "emulated": n.get("emulated", False),
                      "device": n.get("device"), "threads": n.get("threads"), "log": n.get("log"),
                      "registered": reg.get("total", 0), "free": reg.get("free", 0),
                      "pending": reg.get("pending", 0), "orphans": orphans}
    mine = {n.get("addr") for n in st.get("nodes", {}).values()}
    others = {k: {"state": "free" if v["free"] else "busy", "registered": v["total"], "free": v["free"],
                  "pending": v["pending"], "emulated": None, "addrs": [a for a in v["addrs"] if a not in mine]}
              for k, v in keys.items() if (v["total"] or v["pending"])
              and (k not in nodes or any(a not in mine for a in v["addrs"]))}
    return {"running": answering, "tracker": f"{host}:{port}", "tracker_state": tstate, "tracker_pid": tr["pid"],
            "tracker_restarts": st.get("tracker_restarts", 0), "nodes": nodes, "other_keys": others,
            "error": error, "state_file": str(_state_file())}


def format_status(s: dict) -> str:
    if not s.get("nodes") and not s.get("running"):
        return "farm: not running (`sqcc farm start`)"
    t, pid, ts = s["tracker"], s["tracker_pid"], s.get("tracker_state", "up" if s.get("running") else "down")
    again = f", restarted {s['tracker_restarts']}x" if s.get("tracker_restarts") else ""
    head = {"up": f"farm: tracker {t} (up, pid {pid}{again})",
            "down": f"farm: tracker {t} DOWN (pid {pid} exited); its nodes wait and re-register when it is back: "
                    "`sqcc farm start` restarts it",
            "hung": f"farm: tracker {t} NOT ANSWERING (pid {pid} runs): `sqcc farm stop`, then `sqcc farm start`",
            "foreign": f"farm: tracker {t} answers, but not the farm's (pid {pid} exited; another process serves "
                       "the port)"}
    lines = [head.get(ts, head["down"])]
    if s.get("error"):
        lines.append(f"  {s['error']}")
    lines.append(f"  {'key':<10} {'state':<12} {'pid':>7}  {'address':<16} device")
    for key, n in sorted(s["nodes"].items()):
        dev = (n.get("device") or "") + (f", {n['threads']} thread(s)" if n.get("threads") else "")
        lines.append(f"  {key:<10} {n['state']:<12} {n['pid']:>7}  {n.get('addr') or '-':<16} {dev}")
        why = {"dead": f"node died; log {n.get('log')}: {_log_tail(n.get('log'), 2)}",
               "waiting": "node runs, waiting for the tracker",
               "unregistered": "node runs but is not registered with the tracker (re-registering, or it gave up: "
                               "`sqcc farm start` restarts it)",
               "unknown": "the tracker does not answer"}.get(n["state"])
        if why:
            lines.append(f"  {'':<10} {why}")
        if n.get("orphans"):
            lines.append(f"  {'':<10} {len(n['orphans'])} process(es) of it still run (pid "
                         f"{', '.join(map(str, n['orphans']))}): `sqcc farm stop` ends them")
    for key, n in sorted(s.get("other_keys", {}).items()):
        lines.append(f"  {key:<10} {n['state']:<12} {'-':>7}  remote server(s) {', '.join(n['addrs'])}")
    return "\n".join(lines)


def _stop_state(state: dict, say=None) -> list[int]:
    import psutil

    snapshot = farm_processes(state)  # before anything ends: descendants that left their group too
    ended = []
    for pr in reversed(state.get("procs", [])):  # nodes first, tracker last
        if not _ours(pr):  # the PID was reused after a reboot: not ours to end
            continue
        members = _end_group(pr["pgid"])
        _reap(pr["pid"])
        ended.extend(members)
        if say and members:
            say(f"stopped {pr['name']} (pid {pr['pid']}, {len(members)} process(es))")
    strays = []
    for p in snapshot:
        try:
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:  # is_running: same process, not a reused PID
                strays.append(p)
        except psutil.Error:
            pass
    for p in strays:
        with contextlib.suppress(psutil.Error):
            p.terminate()
    _, alive = psutil.wait_procs(strays, timeout=3)
    for p in alive:
        with contextlib.suppress(psutil.Error):
            p.kill()
    psutil.wait_procs(alive, timeout=3)
    if say and strays:
        say(f"stopped {len(strays)} process(es) that had left the farm's process groups "
            f"(pid {', '.join(str(p.pid) for p in strays)})")
    return ended + [p.pid for p in strays if p.pid not in ended]


def stop(say=_say_default) -> list[int]:
    """End every process the farm started (each whole process group, by PID, and any descendant that
    left its group); returns their PIDs."""
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
    left = sorted({p.pid for p in farm_processes(st)})
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
    p.add_argument("--nodes", default=None,
                   help="comma-separated node keys to start: host, aarch64 (emulated) (default: host,aarch64; on a "
                        "farm that is partly down, `start` restarts the farm's own nodes)")
    p.add_argument("--threads", type=int, help="TVM_NUM_THREADS of each node (default: this machine's cores)")
    p.add_argument("--json", action="store_true", help="status as JSON")


def cmd(args) -> int:
    """Run ``sqcc farm ACTION`` from parsed arguments; SqccError propagates to the CLI."""
    if args.action == "start":
        nodes = None if args.nodes is None else [n.strip() for n in args.nodes.split(",") if n.strip()]
        s = start(host=args.host, port=args.port, nodes=nodes, threads=args.threads)
        print(f"tracker {s['tracker']}")
        print(format_status(s))
        print(f"use: --rpc-tracker {s['tracker']} --rpc-key aarch64   (emulated node: figures are EMULATED)")
    elif args.action == "status":
        s = status()
        print(json.dumps(s, indent=1) if args.json else format_status(s))
        bad = [k for k, n in s["nodes"].items() if n["state"] not in ("free", "busy")]
        return 1 if s["nodes"] and (s.get("tracker_state") != "up" or bad) else 0
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
