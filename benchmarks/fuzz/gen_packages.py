"""Package-tar cases for ``sqcc run / inspect / bench``: a real package (mnist-8, sometimes
person_detect) rebuilt with one thing wrong — manifest fields missing or of the wrong type (no model,
no target, target as a string, ...), report.json that is not JSON or nests past the recursion limit,
a garbage or empty lib.so, missing / duplicated / unknown members, links, devices and directories,
path traversal, a GNU-sparse lib.so declaring 1 GiB, truncated and 0-byte tars, byte-level damage.
Where the edit would only trip the sha256 check, the manifest's hashes are recomputed so the case
reaches the code behind it. A package sqcc cannot trust must be refused in one line."""
from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import tarfile
import tempfile

from . import mutate
from .assets import IMAGES, MNIST_FEEDS
from .case import Case

KNOWN = ("manifest.json", "lib.so", "report.json", "model.onnx", "model.tflite")


def members_of(path) -> dict:
    """{name: bytes} of a package tar, in order."""
    with tarfile.open(path) as tar:
        return {i.name: tar.extractfile(i).read() for i in tar if i.isfile()}


def rehash(members: dict) -> dict:
    """The members with manifest.json's sha256 table (and member sizes, where the manifest lists
    them) recomputed over the other members, so a tampering gets past the integrity check."""
    m = json.loads(members["manifest.json"])
    if isinstance(m, dict):
        others = {k: v for k, v in members.items() if k != "manifest.json"}
        m["members"] = {k: hashlib.sha256(v).hexdigest() for k, v in others.items()}
        if "member_bytes" in m:
            m["member_bytes"] = {k: len(v) for k, v in others.items()}
        members = dict(members, **{"manifest.json": json.dumps(m, indent=1).encode()})
    return members


def tar_bytes(entries) -> bytes:
    """A tar of [(TarInfo, bytes or None)] entries."""
    b = io.BytesIO()
    with tarfile.open(fileobj=b, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for info, data in entries:
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return b.getvalue()


def _entries(members: dict):
    out = []
    for name, data in members.items():
        info = tarfile.TarInfo(name)
        info.mode = 0o644
        out.append((info, data))
    return out


def _base(ctx):
    name = "person" if ctx.rng.random() < 0.2 else "mnist"
    return name, members_of(ctx.assets.package(name))


def _argv(ctx, path: str, base: str) -> list:
    """run (on the base's real input), inspect (table, --json, --size) or bench."""
    r = ctx.rng.random()
    if r < 0.45:
        if base == "mnist":
            return ["run", path, "--input", str(MNIST_FEEDS[0][0])]
        return ["run", path, "--image", str(IMAGES["bmp"])]
    if r < 0.65:
        return ["inspect", path]
    if r < 0.75:
        return ["inspect", path, "--json"]
    if r < 0.85:
        return ["inspect", path, "--size"]
    return ["bench", path, "--repeat", "2", "--warmup", "0"]


def _emit(ctx, base, members, gen, what, fix_hashes=True) -> Case:
    members = rehash(members) if fix_hashes else members
    p = ctx.write("pkg.tar", tar_bytes(_entries(members)))
    return Case(f"package.{gen}", f"{base}.tar: {what}", argv=_argv(ctx, p, base))


def _edit_manifest(m: dict, ctx) -> str:
    """One tampering of the manifest dict, in place; returns what was done."""
    field = ctx.rng.choice(["model", "target", "inputs", "outputs", "passes", "format_version", "members",
                            "preprocess", "quant", "target.family", "target.name", "inputs.shape",
                            "inputs.dtype", "model.format", "model.name"])
    value = ctx.rng.choice(["__delete__", "host", None, [], {}, 7, "x" * 300, [1, 2], {"a": 1}])
    top, _, sub = field.partition(".")
    holder = m
    if sub:
        holder = m.get(top)
        if isinstance(holder, list):
            holder = holder[0] if holder else {}
        if not isinstance(holder, dict):
            return f"{field}: parent is not an object (unchanged)"
    key = sub or top
    if value == "__delete__":
        holder.pop(key, None)
        return f"manifest {field} deleted"
    holder[key] = value
    return f"manifest {field} = {json.dumps(value)[:40]}"


def manifest_field(ctx) -> Case:
    """A manifest field deleted or given a value of the wrong type (hashes kept consistent)."""
    base, members = _base(ctx)
    m = json.loads(members["manifest.json"])
    what = _edit_manifest(m, ctx)
    members["manifest.json"] = json.dumps(m).encode()
    return _emit(ctx, base, members, "manifest_field", what, fix_hashes="members" not in what)


def manifest_json(ctx) -> Case:
    """manifest.json that is not JSON, is a JSON list, or is JSON with the wrong format name."""
    base, members = _base(ctx)
    how = ctx.rng.choice(["not_json", "list", "format", "version", "nan"])
    m = json.loads(members["manifest.json"])
    data = {"not_json": b"{not json", "list": b"[1, 2, 3]", "nan": members["manifest.json"].replace(b"1", b"NaN", 1)}.get(how)
    if how == "format":
        m["format"] = "zip"
    elif how == "version":
        m["format_version"] = 99
    members["manifest.json"] = data if data is not None else json.dumps(m).encode()
    return _emit(ctx, base, members, "manifest_json", f"manifest.json {how}", fix_hashes=False)


def report(ctx) -> Case:
    """report.json not JSON, a JSON list, missing keys, or nested 100000 deep (hashes updated)."""
    base, members = _base(ctx)
    how = ctx.rng.choice(["not_json", "list", "empty_object", "deep", "missing"])
    if how == "missing":
        del members["report.json"]
    else:
        members["report.json"] = {"not_json": b"this is not json", "list": b"[]", "empty_object": b"{}",
                                  "deep": b"[" * 100000 + b"]" * 100000}[how]
    return _emit(ctx, base, members, "report", f"report.json {how}")


def library(ctx) -> Case:
    """lib.so replaced by garbage, an ELF header only, another model's library, or 0 bytes."""
    base, members = _base(ctx)
    how = ctx.rng.choice(["garbage", "elf_header", "empty", "truncated"])
    lib = members["lib.so"]
    members["lib.so"] = {"garbage": bytes(ctx.rng.randrange(256) for _ in range(4096)),
                         "elf_header": lib[:64], "empty": b"", "truncated": lib[: len(lib) // 2]}[how]
    return _emit(ctx, base, members, "library", f"lib.so {how}")


def member_set(ctx) -> Case:
    """A member missing, duplicated, unknown, in a subdirectory, absolute, or with '..' in its name."""
    base, members = _base(ctx)
    how = ctx.rng.choice(["missing_lib", "missing_manifest", "duplicate", "unknown", "subdir", "absolute",
                          "traversal", "missing_model"])
    members = rehash(members)
    entries = _entries(members)
    if how == "missing_lib":
        entries = [e for e in entries if e[0].name != "lib.so"]
    elif how == "missing_manifest":
        entries = [e for e in entries if e[0].name != "manifest.json"]
    elif how == "missing_model":
        entries = [e for e in entries if not e[0].name.startswith("model.")]
    elif how == "duplicate":
        entries.append(entries[1])
    else:
        name = {"unknown": "evil.py", "subdir": "a/lib.so", "absolute": "/tmp/sqcc-fuzz-abs.so",
                "traversal": "../../sqcc-fuzz-traversal.so"}[how]
        info = tarfile.TarInfo(name)
        entries.append((info, b"payload"))
    p = ctx.write("pkg.tar", tar_bytes(entries))
    return Case("package.member_set", f"{base}.tar: {how}", argv=_argv(ctx, p, base))


def links(ctx) -> Case:
    """lib.so as a symlink or hardlink (to /etc/passwd), a directory, a FIFO or a device node."""
    base, members = _base(ctx)
    how = ctx.rng.choice(["symlink", "hardlink", "dir", "fifo", "chardev"])
    members = rehash(members)
    entries = [e for e in _entries(members) if e[0].name != "lib.so"]
    info = tarfile.TarInfo("lib.so")
    info.type = {"symlink": tarfile.SYMTYPE, "hardlink": tarfile.LNKTYPE, "dir": tarfile.DIRTYPE,
                 "fifo": tarfile.FIFOTYPE, "chardev": tarfile.CHRTYPE}[how]
    info.linkname = "/etc/passwd" if how in ("symlink", "hardlink") else ""
    if how == "chardev":
        info.devmajor, info.devminor = 1, 5  # /dev/zero
    entries.append((info, None))
    p = ctx.write("pkg.tar", tar_bytes(entries))
    return Case("package.links", f"{base}.tar: lib.so is a {how}", argv=_argv(ctx, p, base))


def sparse_tar(members: dict, lib_size: int = 1 << 30) -> bytes:
    """The package with lib.so as a GNU sparse member of ``lib_size`` bytes (GNU tar --sparse)."""
    with tempfile.TemporaryDirectory(prefix="sqcc-fuzz-sparse-") as d:
        for name, data in members.items():
            if name != "lib.so":
                with open(os.path.join(d, name), "wb") as f:
                    f.write(data)
        with open(os.path.join(d, "lib.so"), "wb") as f:
            f.truncate(lib_size)
        out = os.path.join(d, "pkg.tar")
        names = ["manifest.json", "lib.so"] + sorted(n for n in members if n not in ("manifest.json", "lib.so"))
        subprocess.run(["tar", "--sparse", "--format=gnu", "-cf", out, "-C", d, *names], check=True)
        with open(out, "rb") as f:
            return f.read()


def sparse(ctx) -> Case:
    """lib.so as a GNU sparse member declaring 1 GiB (a few KB on disk), or a header claiming 1 GiB
    with the data missing."""
    base, members = _base(ctx)
    if ctx.rng.random() < 0.7:
        p = ctx.write("pkg.tar", sparse_tar(members))
        return Case("package.sparse", f"{base}.tar: GNU sparse lib.so of 1 GiB", argv=_argv(ctx, p, base))
    entries = [e for e in _entries(members) if e[0].name != "lib.so"]
    data = tar_bytes(entries)[:-1024]  # without the end-of-archive blocks
    info = tarfile.TarInfo("lib.so")
    info.size = 1 << 30
    p = ctx.write("pkg.tar", data + info.tobuf(format=tarfile.GNU_FORMAT) + b"\0" * 4096)
    return Case("package.sparse", f"{base}.tar: lib.so header declares 1 GiB, 4 KiB follow",
                argv=_argv(ctx, p, base))


def truncated(ctx) -> Case:
    """The package cut at a random point, or 0 bytes, or one header block."""
    base = "mnist"
    data = ctx.assets.read(ctx.assets.package(base))
    cut = ctx.rng.choice([0, 1, 100, 512, 1024, ctx.rng.randrange(len(data)), len(data) - 1024])
    p = ctx.write("pkg.tar", data[:cut])
    return Case("package.truncated", f"{base}.tar cut to {cut} of {len(data)} bytes", argv=_argv(ctx, p, base))


def bytes_(ctx) -> Case:
    """Byte-level damage of the package tar."""
    base = "mnist"
    data, what = mutate.mutate(ctx.assets.read(ctx.assets.package(base)), ctx.rng)
    return Case("package.bytes", f"{base}.tar: {what}", argv=_argv(ctx, ctx.write("pkg.tar", data), base))


def not_a_package(ctx) -> Case:
    """A directory, an ONNX model, /dev/null, a gzip of the package, or a text file given as the package."""
    how = ctx.rng.choice(["dir", "onnx", "dev_null", "gzip", "text", "missing"])
    if how == "dir":
        (ctx.dir / "pkg.tar").mkdir()
        ctx.written.append("pkg.tar")
        p = "pkg.tar"
    elif how == "onnx":
        from .assets import MODELS

        p = ctx.write("pkg.tar", ctx.assets.read(MODELS / "mnist-8.onnx"))
    elif how == "gzip":
        import gzip

        p = ctx.write("pkg.tar.gz", gzip.compress(ctx.assets.read(ctx.assets.package("mnist"))))
    elif how == "text":
        p = ctx.write("pkg.tar", b"not a tar\n")
    else:
        p = {"dev_null": "/dev/null", "missing": "nothing.tar"}[how]
    return Case("package.not_a_package", f"package argument: {how}", argv=_argv(ctx, p, "mnist"))


GENERATORS = {
    "package.manifest_field": (manifest_field, 5), "package.manifest_json": (manifest_json, 1),
    "package.report": (report, 2), "package.library": (library, 2), "package.member_set": (member_set, 2),
    "package.links": (links, 2), "package.sparse": (sparse, 1), "package.truncated": (truncated, 2),
    "package.bytes": (bytes_, 2), "package.not_a_package": (not_a_package, 1),
}
