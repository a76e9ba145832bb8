"""Where sqcc writes what a user asked for (``-o``, ``--output``, ``--records``, ``--plot``, ``--json``,
``--dump-ir``): checked before any work, created the same way by every verb, written atomically.

The rule, the same for every flag: the path's nearest existing ancestor must be a directory this
process can create files in -- checked up front by creating (and removing) a probe file there, so
a compile does not run for minutes and then fail to write. Missing directories below it are
created only when the output is written (nothing is left behind by a run that fails first), and
a line on stderr says which. An existing directory where a file is expected (or the reverse) is an
error. Every problem is a one-line :class:`SqccError` naming the flag and the path.
"""
from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

from .errors import SqccError


def _nearest_existing(p: Path) -> Path:
    p = p.absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def check_writable(path, flag: str, kind: str = "file") -> Path:
    """Fail now, with one line, if ``path`` could not be written as a ``kind`` ("file" or
    "directory") later. Returns ``path`` as a Path."""
    p = Path(path)
    if not str(path).strip():
        raise SqccError(f"{flag}: empty path")
    try:
        return _check_writable(p, path, flag, kind)
    except OSError as e:  # a name too long, a loop of links: whatever the file system says
        raise SqccError(f"{flag} {_short(path)}: {e.strerror or type(e).__name__}") from None


_TEMP_EXTRA = len("..") + 8 + len(".tmp")  # atomic_write's ".NAME.XXXXXXXX.tmp"


def _short(path) -> str:
    s = str(path)
    return s if len(s) <= 80 else s[:60] + f"…({len(s)} characters)"


def _check_writable(p: Path, path, flag: str, kind: str) -> Path:
    name_max = os.pathconf(_nearest_existing(p.parent), "PC_NAME_MAX")
    if len(os.fsencode(p.name)) + _TEMP_EXTRA > name_max:  # atomic_write's temp name must fit too
        raise SqccError(f"{flag} {_short(path)}: file name too long ({len(os.fsencode(p.name))} bytes; "
                        f"at most {name_max - _TEMP_EXTRA} here)")
    if p.exists():
        if kind == "file" and p.is_dir():
            raise SqccError(f"{flag} {path}: is a directory; give a file name")
        if kind == "directory" and not p.is_dir():
            raise SqccError(f"{flag} {path}: exists and is not a directory")
    base = _nearest_existing(p.parent)
    if not base.is_dir():
        raise SqccError(f"{flag} {path}: {base} is not a directory")
    try:
        fd, probe = tempfile.mkstemp(prefix=".sqcc-probe.", dir=base)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise SqccError(f"{flag} {path}: cannot write in {base} ({e.strerror or type(e).__name__})") from None
    return p


def make_parent(path, flag: str | None = None) -> None:
    """Create ``path``'s missing parent directories, saying so on stderr."""
    parent = Path(path).parent
    if parent.is_dir():
        return
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        where = f"{flag} {path}" if flag else str(path)
        raise SqccError(f"{where}: cannot create directory {parent} ({e.strerror or type(e).__name__})") from None
    print(f"sqcc: created directory {parent}", file=sys.stderr)


def atomic_write(path, write, flag: str | None = None) -> None:
    """Call ``write(fileobj)`` on a temp file beside ``path``, fsync, then rename over ``path``
    (missing parent directories created, see :func:`make_parent`)."""
    path = Path(path)
    make_parent(path, flag)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        where = f"{flag} {path}" if flag else str(path)
        raise SqccError(f"{where}: cannot write ({e.strerror or type(e).__name__})") from None
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the file the user's usual mode
        os.replace(tmp, path)
    except BaseException as e:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(e, OSError):
            where = f"{flag} {path}" if flag else str(path)
            raise SqccError(f"{where}: cannot write ({e.strerror or type(e).__name__})") from None
        raise
