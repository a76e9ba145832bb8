"""A compiled model as one file: ``pkg.export("sq.tar")`` / ``sqcc.load("sq.tar")``.

The tar holds ``lib.so`` (the built Relax VM executable), ``manifest.json`` (what was compiled, for
which target, with which passes; input/output specs; preprocessing; versions; sha256 and byte size
of every member), ``report.json``, the source model (``model.onnx`` / ``model.tflite``, so
fidelity and the onnxruntime comparison can be re-run from the package alone) and, for host
packages, ``graph.json`` (the rewritten Relax module, ``tvm.ir.save_json``, for ``sqcc export``). It is written to a
temporary file and renamed into place.

Loading checks, in this order, before TVM sees any byte: the file is a non-empty, untruncated tar of
regular files with known names (no links, sparse entries, paths or duplicates); ``manifest.json``
(at most 16 MiB) is JSON of this format and version and matches :func:`manifest_schema` (every key
the code reads, with its type; unknown keys are allowed, for packages of a newer sqcc); every member
is listed, its tar size equals the manifest's ``member_bytes`` (packages without it: at most
``MAX_MEMBER_BYTES``) and its sha256 matches, hashed while it streams (``lib.so`` straight into the
temporary file TVM loads); ``report.json`` is a JSON object whose parts the CLI reads (layer tables,
totals, size report) have the right shape. A micro build directory (:func:`load_micro`) gets the
same manifest and report checks. Each failure is one :class:`SqccError` line naming the file, the
field (``target.family``, ``inputs[0].shape[1]``) and what is wrong.
"""
from __future__ import annotations

import hashlib
import io
import json
import lzma
import os
import tarfile
import tempfile
import zlib
from pathlib import Path

import numpy as np

from .errors import SqccError, one_line, quiet_vm_scope_warnings
from .outputs import atomic_write, make_parent
from .frontend import TensorSpec
from .models import Preprocess
from .package_schema import parse_json, parse_report, short, validate

FORMAT = "sqcc-package"
FORMAT_VERSION = 1
MAX_MEMBER_BYTES = 2 << 30  # any member; the only size check for packages without member_bytes
MAX_JSON_BYTES = 16 << 20  # manifest.json, report.json: parsed in memory
CHUNK = 1 << 20  # lib.so is hashed and copied this much at a time


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class Package:
    """A built model: run it, time it, export it. Made by :func:`sqcc.compile` or :func:`load`."""

    def __init__(self, executable, manifest: dict, report: dict, source: bytes | None = None,
                 lib_bytes: bytes | None = None, graph: bytes | None = None):
        self.executable = executable  # relax VMExecutable or a loaded runtime.Module
        self.manifest = manifest
        self.report = report
        self.source = source
        self.graph = graph  # the rewritten Relax module (tvm.ir.save_json), for export_onnx/_tflite
        self._lib_bytes = lib_bytes
        self._vm = None
        self.path = None  # the tar it was loaded from or last exported to

    # ----------------------------------------------------------------------------------- facts
    @property
    def inputs(self) -> list[TensorSpec]:
        return [TensorSpec.from_json(d) for d in self.manifest["inputs"]]

    @property
    def outputs(self) -> list[TensorSpec]:
        return [TensorSpec.from_json(d) for d in self.manifest["outputs"]]

    @property
    def preprocess(self) -> Preprocess | None:
        return Preprocess.from_json(self.manifest.get("preprocess"))

    @property
    def target(self) -> str:
        return self.manifest["target"]["name"]

    def __repr__(self):
        m = self.manifest
        return (f"<sqcc.Package {m['model']['name']} target={self.target} "
                f"passes={[p['spec'] for p in m['passes']] or 'none'}>")

    # ------------------------------------------------------------------------------------- run
    @property
    def vm(self):
        if self._vm is None:
            import tvm
            from tvm import relax

            fam = self.manifest["target"]["family"]
            if fam == "cuda":
                from .targets import cuda

                self._vm = cuda.make_vm(self.executable)
                return self._vm
            if fam not in ("host",):
                raise SqccError(f"package built for target {self.target} cannot run on this host "
                                "(use --rpc-tracker HOST:PORT --rpc-key KEY for a farm device)")
            self._vm = relax.VirtualMachine(self.executable, tvm.cpu())
        return self._vm

    def _as_inputs(self, x) -> list[np.ndarray]:
        specs = self.inputs
        if isinstance(x, dict):
            missing = [s.name for s in specs if s.name not in x]
            if missing:
                raise SqccError(f"missing input(s) {', '.join(missing)}; the model takes "
                                f"{', '.join(s.name for s in specs)}")
            arrs = [x[s.name] for s in specs]
        elif isinstance(x, (list, tuple)):
            arrs = list(x)
        else:
            arrs = [x]
        if len(arrs) != len(specs):
            raise SqccError(f"the model takes {len(specs)} input(s), {len(arrs)} given")
        out = []
        for a, s in zip(arrs, specs):
            try:
                a = np.asarray(a)
            except ValueError as e:  # ragged nested lists
                raise SqccError(f"input '{s.name}': not an array ({one_line(e)})") from None
            if a.dtype.kind not in "biuf":
                raise SqccError(f"input '{s.name}': {a.dtype} values given, {s.dtype} numbers expected")
            if tuple(a.shape) != tuple(s.shape):
                raise SqccError(f"input '{s.name}': shape {list(a.shape)} given, {list(s.shape)} expected")
            out.append(np.ascontiguousarray(a.astype(s.dtype, copy=False)))
        return out

    def run(self, x):
        """numpy in (an array, a list, or {name: array}), numpy out (one array, or a list)."""
        import tvm

        arrs = self._as_inputs(x)
        dev = tvm.cpu()
        res = self.vm["main"](*[tvm.runtime.tensor(a, dev) for a in arrs])
        outs = _to_numpy(res)
        return outs[0] if len(outs) == 1 else outs

    def benchmark(self, threads: int | None = None, repeat: int = 50, warmup: int = 5,
                  compare: str | None = None, inputs=None, remote: str | None = None,
                  key: str | None = None) -> dict:
        """Median/min/max latency in ms over ``repeat`` runs after ``warmup``; optionally the peer
        (``compare="onnxruntime"``) timed in the same run with the same thread count. ``remote``:
        a tracker ``HOST:PORT`` — time on a farm device with ``key`` instead."""
        if remote:
            from .remote import bench_remote

            return bench_remote(self, remote, key or "aarch64", repeat=repeat)
        from .bench import benchmark_package

        return benchmark_package(self, threads=threads, repeat=repeat, warmup=warmup, compare=compare,
                                 inputs=inputs)

    # ---------------------------------------------------------------------------------- export
    def lib_bytes(self) -> bytes:
        if self._lib_bytes is None:
            with tempfile.TemporaryDirectory() as d:
                p = Path(d) / "lib.so"
                try:
                    with quiet_vm_scope_warnings():
                        self._export_library(p)
                except Exception as e:
                    raise SqccError(f"cannot link the compiled library: {one_line(e)}") from e
                self._lib_bytes = p.read_bytes()
        return self._lib_bytes

    def _export_library(self, p: Path) -> None:
        if self.manifest["target"]["family"] == "host":
            self.executable.export_library(str(p))
        else:  # cross compilers (aarch64), CUDA: the target knows how to link
            from .targets import resolve

            resolve(self.manifest["target"]["name"]).export_library(self.executable, str(p))

    def export(self, path) -> Path:
        """Write the package tar atomically; returns the path."""
        path = Path(path)
        lib = self.lib_bytes()
        src_name = f"model.{self.manifest['model']['format']}"
        members = {"lib.so": lib, "report.json": json.dumps(self.report, indent=1, default=_json_default).encode()}
        if self.source is not None:
            members[src_name] = self.source
        if self.graph is not None:
            members[GRAPH] = self.graph
        manifest = dict(self.manifest)
        manifest["members"] = {k: _sha256(v) for k, v in members.items()}
        # load() refuses a member of another size before reading any of it (no 1 GiB lib.so read
        # into memory only to fail its hash).
        manifest["member_bytes"] = {k: len(v) for k, v in members.items()}
        members["manifest.json"] = json.dumps(manifest, indent=1, default=_json_default).encode()

        def write(f):
            with tarfile.open(fileobj=f, mode="w") as tar:
                for name in ["manifest.json"] + sorted(k for k in members if k != "manifest.json"):
                    data = members[name]
                    info = tarfile.TarInfo(name)
                    info.size = len(data)
                    info.mode = 0o644
                    tar.addfile(info, io.BytesIO(data))

        atomic_write(path, write)
        self.manifest = manifest
        self.path = path
        return path

    def export_onnx(self, path, feeds=None) -> dict:
        """The rewritten graph as ONNX (QDQ for int8), checked in onnxruntime against this package
        before it is written; see :mod:`sqcc.export`."""
        from .export import export_onnx

        return export_onnx(self, path, feeds=feeds)

    def export_tflite(self, path, feeds=None) -> dict:
        """The rewritten graph as a float TFLite flatbuffer, checked in LiteRT against this package
        before it is written; see :mod:`sqcc.export`."""
        from .export import export_tflite

        return export_tflite(self, path, feeds=feeds)


def _json_default(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if hasattr(o, "to_json"):
        return o.to_json()
    return str(o)


def _to_numpy(res) -> list[np.ndarray]:
    if hasattr(res, "numpy"):
        return [res.numpy()]
    out = []
    for r in res:
        out.extend(_to_numpy(r))
    return out


GRAPH = "graph.json"  # the rewritten Relax module (host packages), read by sqcc.export
ALLOWED = {"manifest.json", "lib.so", "report.json", "model.onnx", "model.tflite", GRAPH}
# What a damaged or foreign file raises while tarfile reads it (gz/bz2/xz streams included).
_CORRUPT = (tarfile.TarError, EOFError, OSError, zlib.error, lzma.LZMAError)


# ----------------------------------------------------------------------------------- reading tars
def _open_tar(path: Path) -> tarfile.TarFile:
    if not path.exists():
        raise SqccError(f"{path}: no such package")
    if path.is_dir():
        raise SqccError(f"{path}: is a directory, not a package tar")
    if path.stat().st_size == 0:
        raise SqccError(f"{path}: empty file, not an sqcc package")
    if not os.access(path, os.R_OK):
        raise SqccError(f"{path}: cannot read the package (permission denied)")
    try:
        return tarfile.open(path, mode="r:*")
    except _CORRUPT:
        pass
    # "r:*" lists why each compression failed, over five lines; sqcc writes plain tars, so say why
    # it is not one of those.
    try:
        tarfile.open(path, mode="r:").close()
        why = "unreadable"
    except _CORRUPT as e:
        why = one_line(e)
    if "truncated" in why:
        raise SqccError(f"{path}: truncated package tar (the file ends inside the first header)")
    raise SqccError(f"{path}: not an sqcc package (not a tar file: {why})")


def _corrupt(path: Path, err: BaseException, member: str | None) -> SqccError:
    why = one_line(err)
    if isinstance(err, EOFError) or "unexpected end of data" in why:
        where = f" inside member '{member}'" if member else ""
        return SqccError(f"{path}: truncated package tar (the file ends{where}); copy or export it again")
    return SqccError(f"{path}: corrupt package tar ({why})")


def _check_entry(path: Path, info: tarfile.TarInfo, seen) -> None:
    """Refuse what sqcc never writes: links, devices, directories, sparse files (a small tar that
    expands to gigabytes), paths (``/``, ``..``), other names, a name twice."""
    name = info.name
    if info.issym() or info.islnk():
        why = "link"
    elif info.isfile() and info.issparse():
        why = "sparse entry"
    elif not info.isfile() or name not in ALLOWED:
        why = "unexpected entry"
    elif name in seen:
        raise SqccError(f"{path}: member '{name}' appears twice; tampered with")
    else:
        return
    raise SqccError(f"{path}: refusing package member {name!r} ({why}); not an sqcc package or tampered with")


def _scan(path: Path, tar: tarfile.TarFile) -> dict[str, tarfile.TarInfo]:
    """Every entry's header, checked, before any data is read. A truncated member shows here too:
    tarfile seeks past each member's data to reach the next header."""
    infos, last = {}, None
    try:
        for info in tar:
            _check_entry(path, info, infos)
            infos[info.name] = last = info
    except _CORRUPT as e:
        raise _corrupt(path, e, last.name if last else None) from None
    return infos


def _cap(name: str) -> int:
    return MAX_JSON_BYTES if name in ("manifest.json", "report.json") else MAX_MEMBER_BYTES


def _check_cap(path: Path, info: tarfile.TarInfo) -> None:
    if info.size > _cap(info.name):
        raise SqccError(f"{path}: member '{info.name}' is too large ({info.size:,} bytes, at most "
                        f"{_cap(info.name):,}); not an sqcc package or tampered with")


def _read(path: Path, tar: tarfile.TarFile, info: tarfile.TarInfo) -> bytes:
    """A member's bytes; its size was checked first (caps, the manifest's member_bytes)."""
    try:
        with tar.extractfile(info) as f:
            data = f.read()
    except _CORRUPT as e:
        raise _corrupt(path, e, info.name) from None
    if len(data) != info.size:
        raise _corrupt(path, EOFError(), info.name)
    return data


def _chunks(path: Path, tar: tarfile.TarFile, info: tarfile.TarInfo):
    """A member's data, CHUNK bytes at a time; a read error is the tar's fault (a write error where
    the chunks go is not, and passes as itself)."""
    try:
        with tar.extractfile(info) as f:
            while chunk := f.read(CHUNK):
                yield chunk
    except _CORRUPT as e:
        raise _corrupt(path, e, info.name) from None


def _stream(path: Path, tar: tarfile.TarFile, info: tarfile.TarInfo, out) -> str:
    """Copy a member into ``out``, hashing as it goes; its sha256 (the member is never all in memory)."""
    h = hashlib.sha256()
    for chunk in _chunks(path, tar, info):
        h.update(chunk)
        out.write(chunk)
    return h.hexdigest()


def _check_hash(path: Path, name: str, got: str, manifest: dict) -> None:
    if got != manifest["members"][name]:
        raise SqccError(f"{path}: member '{name}' does not match the manifest's sha256; tampered with or corrupt")


def read_members(path) -> dict[str, bytes]:
    """Every member of a package tar in memory, after the checks on its entries (regular files with
    known names, each under its size cap), for tools and tests. :func:`load` does not use it: it
    checks sizes against the manifest first and streams ``lib.so``."""
    path = Path(path)
    with _open_tar(path) as tar:
        infos = _scan(path, tar)
        for info in infos.values():
            _check_cap(path, info)
        return {name: _read(path, tar, info) for name, info in infos.items()}


# ---------------------------------------------------------------------------------------- loading
def _check_manifest(where: str, manifest, kind: str) -> None:
    what = "package" if kind == "package" else "micro build"
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise SqccError(f"{where}: not an sqcc {what} (manifest format is not '{FORMAT}')")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise SqccError(f"{where}: {what} format version {short(manifest.get('format_version'))} is not "
                        f"supported (this sqcc reads version {FORMAT_VERSION})")
    validate(f"{where}: manifest.json", manifest, kind)


def _read_manifest(path: Path, tar: tarfile.TarFile, infos: dict) -> dict:
    info = infos.get("manifest.json")
    if info is None:
        raise SqccError(f"{path}: not an sqcc package (no manifest.json)")
    _check_cap(path, info)
    manifest = parse_json(f"{path}: manifest.json", _read(path, tar, info))
    _check_manifest(str(path), manifest, "package")
    return manifest


def _check_listing(path: Path, manifest: dict, infos: dict) -> None:
    """Every member listed, every listed one present, each of the size the manifest says (under the
    caps) -- all from the headers, before any member's data is read."""
    hashes, sizes = manifest["members"], manifest.get("member_bytes")
    for name in hashes:
        if name not in infos:
            raise SqccError(f"{path}: member '{name}' listed in the manifest is missing; truncated or "
                            "tampered with")
    if "lib.so" not in infos:
        raise SqccError(f"{path}: package has no compiled library")
    for name, info in infos.items():
        if name == "manifest.json":
            continue
        if name not in hashes:
            raise SqccError(f"{path}: member '{name}' is not listed in the manifest; tampered with")
        if sizes is not None and sizes.get(name) != info.size:
            said = f"{sizes[name]:,} bytes" if name in sizes else "nothing"
            raise SqccError(f"{path}: member '{name}' is {info.size:,} bytes in the tar, the manifest "
                            f"says {said}; tampered with or corrupt")
        _check_cap(path, info)


def _load_library(path: Path, lib: Path, family: str):
    """The runtime module of ``lib``, or None where this host cannot run it (run() says why)."""
    if family == "cuda":
        from .targets import cuda

        if not cuda.gpu_present():
            return None
    if family not in ("host", "cuda"):
        return None
    import tvm

    why = elf_problem(lib)
    if why is not None:  # dlopen maps the file: a truncated one kills the process with SIGBUS
        raise SqccError(f"{path}: lib.so is not a loadable shared library ({why}); tampered with or corrupt")
    try:
        with quiet_vm_scope_warnings():
            return tvm.runtime.load_module(str(lib))
    except Exception as e:
        raise SqccError(f"{path}: cannot load the compiled library ({one_line(e)})") from e


def elf_problem(lib: Path) -> str | None:
    """Why ``lib`` is not a whole ELF shared object (None when it is): the header, and every
    program segment and the section table inside the file. A sha256 only proves the file is what
    the manifest says, and a hostile manifest can say anything."""
    import struct

    size = lib.stat().st_size
    with open(lib, "rb") as f:
        head = f.read(64)
        if len(head) < 64 or head[:4] != b"\x7fELF" or head[4] != 2 or head[5] != 1:
            return "not a 64-bit little-endian ELF file"
        e_type, = struct.unpack_from("<H", head, 16)
        phoff, shoff = struct.unpack_from("<QQ", head, 32)
        phentsize, phnum, shentsize, shnum = struct.unpack_from("<HHHH", head, 54)
        if e_type != 3:
            return f"ELF type {e_type}, not a shared object"
        if phoff + phnum * phentsize > size or shoff + shnum * shentsize > size or phentsize < 56:
            return f"headers reach past the end of the file ({size} bytes)"
        f.seek(phoff)
        table = f.read(phnum * phentsize)
    for k in range(phnum):
        _, _, offset, _, _, filesz = struct.unpack_from("<IIQQQQ", table, k * phentsize)
        if offset + filesz > size:
            return f"segment {k} reaches past the end of the file (truncated: {size} bytes)"
    return None


def load(path) -> Package:
    """Load a package written by :meth:`Package.export`, checked as the module docstring says."""
    path = Path(path)
    with _open_tar(path) as tar:
        infos = _scan(path, tar)
        manifest = _read_manifest(path, tar, infos)
        _check_listing(path, manifest, infos)
        small = {}  # the report and the source model: needed in memory anyway
        for name, info in infos.items():
            if name not in ("manifest.json", "lib.so"):
                small[name] = _read(path, tar, info)
                _check_hash(path, name, _sha256(small[name]), manifest)
        report = parse_report(f"{path}: report.json", small.get("report.json"))
        with tempfile.TemporaryDirectory() as d:
            lib = Path(d) / "lib.so"
            with open(lib, "wb") as f:
                _check_hash(path, "lib.so", _stream(path, tar, infos["lib.so"], f), manifest)
            executable = _load_library(path, lib, manifest["target"]["family"])
            lib_bytes = lib.read_bytes()  # kept for re-export and RPC upload
    pkg = Package(executable, manifest, report, source=small.get(f"model.{manifest['model']['format']}"),
                  lib_bytes=lib_bytes, graph=small.get(GRAPH))
    pkg.path = path
    return pkg


class MicroPackage:
    """A Cortex-M build: a directory of C sources, Makefile, model.elf and micro.json (flash, RAM,
    arena plan). Runs under qemu-system-arm; ``export`` copies the directory into place atomically."""

    def __init__(self, build_dir, manifest: dict, report: dict, source: bytes | None = None, owned=None):
        self.build_dir = Path(build_dir)
        self.manifest = manifest
        self.report = report
        self.source = source
        self._owned = owned  # a TemporaryDirectory kept alive while the package lives
        self.path = None

    @property
    def inputs(self):
        return [TensorSpec.from_json(d) for d in self.manifest["inputs"]]

    @property
    def outputs(self):
        return [TensorSpec.from_json(d) for d in self.manifest["outputs"]]

    @property
    def preprocess(self):
        return Preprocess.from_json(self.manifest.get("preprocess"))

    @property
    def target(self) -> str:
        return self.manifest["target"]["name"]

    @property
    def micro(self) -> dict:
        return json.loads((self.build_dir / "micro.json").read_text())

    def __repr__(self):
        return f"<sqcc.MicroPackage {self.manifest['model']['name']} target={self.target} dir={self.build_dir}>"

    def run(self, x):
        from .targets.micro import run_micro

        arrs = Package._as_inputs(self, x)
        outs = run_micro(str(self.build_dir.resolve()), {s.name: a for s, a in zip(self.inputs, arrs)})
        return outs[0] if len(outs) == 1 else outs

    def benchmark(self, **_ignored) -> dict:
        from .targets.micro import bench_micro

        return bench_micro(str(self.build_dir.resolve()))

    def export(self, path) -> Path:
        import shutil

        path = Path(path)
        if path.exists() and not path.is_dir():
            raise SqccError(f"-o {path}: exists and is not a directory (a micro build is a directory)")
        make_parent(path)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
        try:
            shutil.copytree(self.build_dir, tmp, dirs_exist_ok=True)
            (tmp / "manifest.json").write_text(json.dumps(self.manifest, indent=1, default=_json_default))
            (tmp / "report.json").write_text(json.dumps(self.report, indent=1, default=_json_default))
            if self.source is not None:
                (tmp / f"model.{self.manifest['model']['format']}").write_bytes(self.source)
            old = None
            if path.exists():
                old = path.with_name(f".{path.name}.old")
                shutil.rmtree(old, ignore_errors=True)
                os.replace(path, old)
            os.replace(tmp, path)
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        self.path = path
        return path


def _read_json_file(path: Path, name: str) -> bytes | None:
    """The bytes of ``path/name`` (None when absent), refused over MAX_JSON_BYTES before reading."""
    f = path / name
    try:
        if not f.is_file():
            return None
        if f.stat().st_size > MAX_JSON_BYTES:
            raise SqccError(f"{f}: too large ({f.stat().st_size:,} bytes, at most {MAX_JSON_BYTES:,})")
        return f.read_bytes()
    except OSError as e:
        raise SqccError(f"{f}: cannot read ({e.strerror or e})") from None


def load_micro(path) -> MicroPackage:
    """A micro build directory; its manifest and report are checked as a package's are."""
    path = Path(path)
    data = _read_json_file(path, "manifest.json")
    if data is None:
        raise SqccError(f"{path}: not an sqcc micro build (no manifest.json)")
    manifest = parse_json(f"{path}: manifest.json", data)
    _check_manifest(str(path), manifest, "micro")
    if manifest["target"]["family"] != "micro":
        raise SqccError(f"{path}: not an sqcc micro build (manifest.json: target.family is "
                        f"'{manifest['target']['family']}')")
    report = parse_report(f"{path}: report.json", _read_json_file(path, "report.json"))
    src = path / f"model.{manifest['model']['format']}"
    pkg = MicroPackage(path, manifest, report, source=src.read_bytes() if src.is_file() else None)
    pkg.path = path
    return pkg


def load_any(path):
    """A package tar, or a micro build directory."""
    p = Path(path)
    if p.is_dir():
        from .targets.micro import is_micro_build

        if is_micro_build(str(p)):
            return load_micro(p)
        raise SqccError(f"{p}: is a directory, but not an sqcc micro build (no micro.json / model.elf)")
    return load(p)
