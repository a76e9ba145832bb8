"""A compiled model as one file: ``pkg.export("sq.tar")`` / ``sqcc.load("sq.tar")``.

The tar holds ``lib.so`` (the built Relax VM executable), ``manifest.json`` (what was compiled, for
which target, with which passes; input/output specs; preprocessing; versions; sha256 of every member),
``report.json`` and the source model (``model.onnx`` / ``model.tflite``, so fidelity and the
onnxruntime comparison can be re-run from the package alone). It is written to a temporary file and
renamed into place, and loading refuses links, absolute or ``..`` paths, unknown members and members
whose hash does not match the manifest.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
import tempfile
from pathlib import Path

import numpy as np

from .errors import SqccError, one_line, quiet_vm_scope_warnings
from .frontend import TensorSpec
from .models import Preprocess

FORMAT = "sqcc-package"
FORMAT_VERSION = 1
MAX_MEMBER_BYTES = 2 << 30


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def atomic_write(path: Path, write) -> None:
    """Call ``write(fileobj)`` on a temp file beside ``path``, fsync, then rename over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the file the user's usual mode
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


class Package:
    """A built model: run it, time it, export it. Made by :func:`sqcc.compile` or :func:`load`."""

    def __init__(self, executable, manifest: dict, report: dict, source: bytes | None = None,
                 lib_bytes: bytes | None = None):
        self.executable = executable  # relax VMExecutable or a loaded runtime.Module
        self.manifest = manifest
        self.report = report
        self.source = source
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
            a = np.asarray(a)
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
        manifest = dict(self.manifest)
        manifest["members"] = {k: _sha256(v) for k, v in members.items()}
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


ALLOWED = {"manifest.json", "lib.so", "report.json", "model.onnx", "model.tflite"}


def read_members(path) -> dict[str, bytes]:
    """The members of a package tar, checked: regular files with known names only."""
    path = Path(path)
    if not path.exists():
        raise SqccError(f"{path}: no such package")
    if path.is_dir():
        raise SqccError(f"{path}: is a directory, not a package tar")
    try:
        tar = tarfile.open(path, mode="r:*")
    except (tarfile.TarError, OSError) as e:
        raise SqccError(f"{path}: not an sqcc package (not a tar file: {e})") from None
    members = {}
    with tar:
        try:
            for info in tar:
                name = info.name
                if (not info.isfile() or name.startswith("/") or ".." in Path(name).parts
                        or "/" in name or name not in ALLOWED):
                    raise SqccError(f"{path}: refusing package member '{name}' "
                                    f"({'link' if info.issym() or info.islnk() else 'unexpected entry'}); "
                                    "not an sqcc package or tampered with")
                if info.size > MAX_MEMBER_BYTES:
                    raise SqccError(f"{path}: member '{name}' is too large ({info.size} bytes)")
                if name in members:
                    raise SqccError(f"{path}: member '{name}' appears twice; tampered with")
                members[name] = tar.extractfile(info).read()
        except tarfile.TarError as e:
            raise SqccError(f"{path}: corrupt package tar ({e})") from None
    return members


def load(path) -> Package:
    """Load a package written by :meth:`Package.export` (checks format, hashes and target)."""
    import tvm

    path = Path(path)
    members = read_members(path)
    if "manifest.json" not in members:
        raise SqccError(f"{path}: not an sqcc package (no manifest.json)")
    try:
        manifest = json.loads(members["manifest.json"])
    except ValueError:
        raise SqccError(f"{path}: manifest.json is not valid JSON; tampered with or corrupt") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise SqccError(f"{path}: not an sqcc package (manifest format is not '{FORMAT}')")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise SqccError(f"{path}: package format version {manifest.get('format_version')} is not supported "
                        f"(this sqcc reads version {FORMAT_VERSION})")
    hashes = manifest.get("members") or {}
    for name, data in members.items():
        if name == "manifest.json":
            continue
        if hashes.get(name) != _sha256(data):
            raise SqccError(f"{path}: member '{name}' does not match the manifest's sha256; tampered with or corrupt")
    for name in hashes:
        if name not in members:
            raise SqccError(f"{path}: member '{name}' listed in the manifest is missing")
    if "lib.so" not in members:
        raise SqccError(f"{path}: package has no compiled library")
    report = json.loads(members.get("report.json", b"{}"))
    source = members.get(f"model.{manifest['model']['format']}")
    executable = None
    fam = manifest["target"]["family"]
    if fam == "cuda":
        from .targets import cuda

        if not cuda.gpu_present():
            executable = None  # runs only where a GPU is; run() says so
            fam = "none"
    if fam in ("host", "cuda"):
        with tempfile.TemporaryDirectory() as d:
            lib = Path(d) / "lib.so"
            lib.write_bytes(members["lib.so"])
            try:
                with quiet_vm_scope_warnings():
                    executable = tvm.runtime.load_module(str(lib))
            except Exception as e:
                raise SqccError(f"{path}: cannot load the compiled library ({one_line(e)})") from e
    pkg = Package(executable, manifest, report, source=source, lib_bytes=members["lib.so"])
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
        path.parent.mkdir(parents=True, exist_ok=True)
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


def load_micro(path) -> MicroPackage:
    path = Path(path)
    try:
        manifest = json.loads((path / "manifest.json").read_text())
        report = json.loads((path / "report.json").read_text()) if (path / "report.json").exists() else {}
    except (OSError, ValueError):
        raise SqccError(f"{path}: not an sqcc micro build (no valid manifest.json)") from None
    if manifest.get("format") != FORMAT or manifest.get("target", {}).get("family") != "micro":
        raise SqccError(f"{path}: not an sqcc micro build")
    src = path / f"model.{manifest['model']['format']}"
    pkg = MicroPackage(path, manifest, report, source=src.read_bytes() if src.exists() else None)
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
