"""Shared fixtures. The real models and images live in ../shared beside the checkout (CI has them too);
their absence is an error, never a skip."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
MODELS = SHARED / "models"
DATA = SHARED / "data"
IMAGENET = DATA / "imagenet-sample"

if not MODELS.is_dir():
    raise RuntimeError(f"{MODELS} is missing: the tests need the shared models beside the checkout")


def run_cli(*args, cwd=None, check=None, env=None, timeout=900):
    """Run the installed ``sqcc`` console script as a user would; returns CompletedProcess."""
    e = dict(os.environ, **(env or {}))
    exe = Path(sys.executable).with_name("sqcc")
    p = subprocess.run([str(exe), *map(str, args)], cwd=cwd, capture_output=True, text=True, env=e,
                       timeout=timeout)
    if check is not None:
        assert p.returncode == check, f"exit {p.returncode}\nstdout:\n{p.stdout}\nstderr:\n{p.stderr}"
    return p


@pytest.fixture(scope="session")
def squeezenet_pkg(tmp_path_factory):
    """SqueezeNet 1.1 compiled once for the host and exported (used by many tests)."""
    import sqcc

    pkg = sqcc.compile("squeezenet1.1", target="host")
    path = tmp_path_factory.mktemp("pkg") / "sq.tar"
    pkg.export(path)
    return pkg, path


# ------------------------------------------------------------------ the farm's aarch64 root, early
# On a fresh machine (CI) the emulated aarch64 node's Debian root is built once (debootstrap, pip
# download, pip install under qemu: ~270 s on 2 cores, much of it network and one emulated core).
# When farm tests are collected, the build starts in the background at collection, with the same
# product function the tests use (sqcc.farm.build_aarch64_root), so it overlaps the other tests;
# test_farm's fixture then waits for it and calls build_aarch64_root() itself, which returns the
# cached root or, if the background build failed, rebuilds it and raises the real error. Nothing is
# skipped. The build holds farm's own file lock, so a worker running test_farm under xdist waits for
# it rather than building twice (only the first worker starts it). SQCC_NO_EARLY_ROOT=1 turns the
# early start off.
_EARLY_ROOT = {}


def pytest_collection_modifyitems(session, config, items):
    if os.environ.get("SQCC_NO_EARLY_ROOT") == "1" or _EARLY_ROOT:
        return
    if os.environ.get("PYTEST_XDIST_WORKER", "gw0") != "gw0":
        return
    if not any(Path(str(it.fspath)).name == "test_farm.py" for it in items):
        return
    from sqcc import farm

    if farm.root_ready():
        return
    log = farm.cache_dir() / "aarch64-root.early.log"
    code = "from sqcc import farm; farm.build_aarch64_root()"
    with open(log, "w") as f:
        _EARLY_ROOT["proc"] = subprocess.Popen([sys.executable, "-c", code], stdout=f, stderr=subprocess.STDOUT,
                                               stdin=subprocess.DEVNULL, start_new_session=True)
    _EARLY_ROOT["log"] = log


def wait_for_early_root(timeout: float = 3600) -> None:
    """Wait for the background root build started at collection (if any) to end."""
    p = _EARLY_ROOT.get("proc")
    if p is not None:
        p.wait(timeout=timeout)


def pytest_sessionfinish(session, exitstatus):
    p = _EARLY_ROOT.get("proc")
    if p is None or p.poll() is not None:
        return
    if exitstatus == pytest.ExitCode.INTERRUPTED:  # ^C: end our build (a .partial root is never used)
        import signal

        try:
            os.killpg(p.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    p.wait()  # otherwise let it finish: another xdist worker's farm tests may be waiting for it


def tuning_records_valid(records) -> int:
    """Every line of a tuning database parses, and sqcc opens it: the number of records."""
    from sqcc.build import host_target
    from sqcc.schedules.tuning import open_database

    for ln in records.read_text().splitlines():
        json.loads(ln)
    return len(open_database(str(records), host_target()))
