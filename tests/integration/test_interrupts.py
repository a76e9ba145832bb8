"""Stopping `sqcc tune` as users do: Ctrl-C (SIGINT) or a kill of the process. Real subprocesses,
real MetaSchedule workers; every PID the run started is checked afterwards."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil

from conftest import tuning_records_valid

TUNE = ["tune", "mnist-8", "--target", "host", "--trials", "64"]


def _start_tune(tmp_path):
    exe = Path(sys.executable).with_name("sqcc")
    return subprocess.Popen([str(exe), *TUNE, "--records", "r.json"], cwd=tmp_path, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _wait_measuring(proc, records: Path, lines: int = 2, timeout: float = 240) -> list[int]:
    """Wait until ``records`` holds ``lines`` records and measuring workers run; their PIDs."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        assert proc.poll() is None, proc.communicate()
        kids = psutil.Process(proc.pid).children(recursive=True)
        if records.exists() and len(records.read_text().splitlines()) >= lines and kids:
            return [k.pid for k in kids]
        time.sleep(0.2)
    raise AssertionError("tuning never started measuring")


def _gone(pids, timeout: float = 10) -> list[int]:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        alive = [p for p in pids if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
        if not alive:
            return []
        time.sleep(0.2)
    return alive


def test_ctrl_c_stops_tuning_with_130_and_ends_its_workers(tmp_path):
    proc = _start_tune(tmp_path)
    kids = _wait_measuring(proc, tmp_path / "r.json")  # default schedules being measured: the old trap
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, (out, err)
    assert err.strip().splitlines()[-1] == "sqcc: interrupted", err
    assert "Traceback" not in err and "internal error" not in err, err
    assert "tuning records for host" not in out  # it stopped, it did not finish
    assert not _gone(kids)
    n = tuning_records_valid(tmp_path / "r.json")
    assert 2 <= n < 64
    time.sleep(1)
    assert len((tmp_path / "r.json").read_text().splitlines()) == n  # nothing writes after exit


def test_killed_tuning_leaves_no_worker_and_valid_records(tmp_path):
    proc = _start_tune(tmp_path)
    kids = _wait_measuring(proc, tmp_path / "r.json")
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=30)
    assert not _gone(kids), "a measuring worker outlived its killed parent"
    n = tuning_records_valid(tmp_path / "r.json")
    assert n >= 2
