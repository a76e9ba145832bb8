"""The tuning database: MetaSchedule's ``JSONDatabase`` in two JSON-lines files, checked on open,
one writer at a time, read as a snapshot.

``records_path`` holds the tuning records and ``<records_path minus .json>.workloads.json`` the
kernels they belong to. Both are only ever appended to, one line per record, so a run killed at any
point loses at most the candidate being written; the next ``tune`` on the same path resumes. On
open, every line is checked: a file that is not MetaSchedule JSON lines, or whose records were tuned
for another CPU/target, is refused with a one-line ``SqccError`` and left untouched. The one repair
(by a tuner, under :func:`tuning_lock`) is dropping a torn last line left by a kill.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import tempfile
from pathlib import Path

import tvm

from sqcc.errors import SqccError, one_line

log = logging.getLogger(__name__)


def database_paths(records_path: str | os.PathLike) -> tuple[Path, Path]:
    """(tuning-record file, workload file) for a records path."""
    p = Path(records_path)
    stem = p.name[:-5] if p.name.endswith(".json") else p.name
    return p, p.with_name(stem + ".workloads.json")


def _target_key(target_json) -> dict:
    """The target fields that decide whether a record applies: kind, CPU, triple, features, cores."""
    if isinstance(target_json, tvm.target.Target):
        t = target_json
        target_json = {"kind": t.kind.name, **{str(k): _plain(t.attrs[k]) for k in t.attrs}}
    keys = ("kind", "mcpu", "mtriple", "mattr", "num-cores")
    out = {}
    for k in keys:
        v = target_json.get(k) if isinstance(target_json, dict) else None
        if v in (None, "", []):
            continue
        out[k] = sorted(v) if isinstance(v, list) else v
    return out


def _plain(v):
    """A target attribute as plain Python (str/int/list)."""
    if isinstance(v, (str, int, float, bool)) or v is None:
        return v
    if hasattr(v, "value") and isinstance(getattr(v, "value"), (int, float)):
        return v.value
    try:
        return [_plain(x) for x in v] if not isinstance(v, str) and hasattr(v, "__iter__") \
            and not hasattr(v, "items") else str(v)
    except TypeError:
        return str(v)


def _check_lines(path: Path, what: str, repair_tail: bool = True, shown=None) -> list:
    """Parse a JSON-lines file; SqccError (naming it ``shown``) on anything but a torn last line
    (dropped)."""
    shown = shown or path
    if not path.exists():
        return []
    try:
        data = path.read_bytes()
    except OSError as err:
        raise SqccError(f"{shown}: cannot read {what}: {err.strerror}") from err
    if not data.strip():
        return []
    lines = data.split(b"\n")
    torn = None
    if not data.endswith(b"\n"):
        torn = lines[-1]
    body = lines[:-1]  # the piece after the last newline (empty or torn)
    out = []
    for i, raw in enumerate(body, 1):
        if not raw.strip():
            continue
        try:
            out.append(json.loads(raw))
        except ValueError:
            raise SqccError(f"{shown}: line {i} is not JSON: not a MetaSchedule {what} file "
                            f"(corrupt?); refusing to use or overwrite it") from None
    if torn is not None and torn.strip():
        try:
            out.append(json.loads(torn))
            # a complete last line without its newline: add the newline so appends stay valid
            if repair_tail:
                with path.open("ab") as f:
                    f.write(b"\n")
        except ValueError:
            if not repair_tail:
                raise SqccError(f"{shown}: last line is incomplete") from None
            # a kill mid-append: the record never finished, drop just that partial line
            log.warning("%s: dropping an incomplete last line (interrupted write)", shown)
            with path.open("r+b") as f:
                f.truncate(len(data) - len(torn))
    return out


def _validate(records: Path, workloads: Path, target: tvm.target.Target, shown=None) -> int:
    """Check both files; return the number of tuning records. Raises SqccError naming the files
    as ``shown`` (the user's paths, when ``records``/``workloads`` are snapshots)."""
    rn, wn = shown or (records, workloads)
    wl = _check_lines(workloads, "workload", shown=wn)
    for i, w in enumerate(wl, 1):
        if not (isinstance(w, list) and len(w) == 2 and isinstance(w[0], str)):
            raise SqccError(f"{wn}: line {i} is not a MetaSchedule workload "
                            f"(corrupt or not a tuning database); refusing to use it")
    recs = _check_lines(records, "tuning record", shown=rn)
    want = _target_key(target)
    for i, r in enumerate(recs, 1):
        if not (isinstance(r, list) and len(r) == 2 and isinstance(r[0], int)
                and isinstance(r[1], list) and len(r[1]) >= 3):
            raise SqccError(f"{rn}: line {i} is not a MetaSchedule tuning record "
                            f"(corrupt or not a tuning database); refusing to use it")
        if not 0 <= r[0] < len(wl):
            raise SqccError(f"{rn}: line {i} refers to workload {r[0]} but "
                            f"{Path(wn).name} has {len(wl)}: the two files do not belong together")
        tgt = r[1][2] if isinstance(r[1][2], dict) else None
        if tgt is None:
            raise SqccError(f"{rn}: line {i} has no target: not a MetaSchedule tuning record")
        have = _target_key(tgt)
        if have != want:
            desc = lambda k: ", ".join(f"{a}={b}" for a, b in k.items())  # noqa: E731
            raise SqccError(f"{rn}: records were tuned for a different target ({desc(have)}), "
                            f"not this one ({desc(want)}); use another records file")
    return len(recs)


def open_database(records_path, target, create: bool = False):
    """Open (and check) the JSON database at ``records_path`` for ``target``.

    ``create=False`` (build time): a missing database is an error, and what is opened is a snapshot
    of the files' complete lines (records read before workloads, which a tuner writes first), so a
    build never reads a half-written line of a tuning run going on meanwhile, nor repairs the
    files under it. ``create=True`` (tuning, under :func:`tuning_lock`): the directory and files
    are created, a torn last line is repaired, and the database appends to the files themselves.
    """
    if not isinstance(target, tvm.target.Target):
        target = tvm.target.Target(target)
    records, workloads = database_paths(records_path)
    if not records.exists() and not create:
        raise SqccError(f"tuning records {records} not found (run sqcc tune first)")
    if records.is_dir():
        raise SqccError(f"tuning records {records} is a directory; give a .json file path")
    if create:
        try:
            records.parent.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise SqccError(f"cannot create {records.parent}: {err.strerror}") from err
        _validate(records, workloads, target)
        return _json_database(records, workloads, create)
    with tempfile.TemporaryDirectory(prefix="sqcc-records-") as tmp:
        snap_rec, snap_wl = Path(tmp) / "r.json", Path(tmp) / "w.json"
        snap_rec.write_bytes(_complete_lines(records))
        snap_wl.write_bytes(_complete_lines(workloads))
        _validate(snap_rec, snap_wl, target, shown=(records, workloads))
        return _json_database(snap_rec, snap_wl, create, shown=records)  # read in full when made


def _json_database(records: Path, workloads: Path, create: bool, shown=None):
    from tvm.s_tir import meta_schedule as ms

    try:
        return ms.database.JSONDatabase(str(workloads), str(records), allow_missing=create)
    except Exception as err:  # TVM's own parser: anything it still rejects is a bad database
        raise SqccError(f"{shown or records}: not a usable MetaSchedule database: {one_line(err)}") from err


def _complete_lines(path: Path) -> bytes:
    """The file up to its last newline (a line being appended right now is left out)."""
    try:
        data = path.read_bytes() if path.exists() else b""
    except OSError as err:
        raise SqccError(f"{path}: cannot read tuning records: {err.strerror}") from err
    return data[:data.rfind(b"\n") + 1]


@contextlib.contextmanager
def tuning_lock(records_path):
    """One tuning run per database at a time (a team sharing ``~/.cache/sqcc``, a farm tuning two
    targets into one file): MetaSchedule's records point at workloads by line number, so two
    writers interleaving workloads would make records name the wrong kernels. An exclusive
    ``flock`` on ``<records>.lock``, held for the run and released by the kernel if the process
    dies; a second run says whose it is and waits (Ctrl-C stops the wait)."""
    import fcntl
    import socket

    records = Path(records_path)
    records.parent.mkdir(parents=True, exist_ok=True)
    with open(records.with_name(records.name + ".lock"), "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "another process"
            print(f"sqcc: {records} is being tuned by {holder}; waiting for it to finish", file=sys.stderr)
            fcntl.flock(f, fcntl.LOCK_EX)
        f.seek(0)
        f.truncate()
        f.write(f"PID {os.getpid()} on {socket.gethostname()}\n")
        f.flush()
        try:
            yield
        finally:
            f.seek(0)
            f.truncate()
            fcntl.flock(f, fcntl.LOCK_UN)


def pinned_paths(records_path) -> tuple[Path, Path]:
    """(records, workloads) of the pinned database written by :func:`revalidate` next to ``records_path``."""
    rec, _ = database_paths(records_path)
    stem = rec.name[:-5] if rec.name.endswith(".json") else rec.name
    return database_paths(rec.with_name(stem + ".pinned.json"))
