"""Loading a package tar or a micro build: the manifest and report are validated, sizes are checked
before any member is read, and every broken file is one SqccError line (``sqcc: error: ...``, exit 2
from the CLI), never a KeyError, a JSONDecodeError or a traceback.

The packages here are built by hand with small fake members: validation happens before TVM loads
``lib.so``, so it need not be a real library; the fake packages that load are for ``arm_cpu``, which
this host never loads. One real package (mnist-8) checks the round trip and ``member_bytes``.
"""
import copy
import hashlib
import io
import json
import os
import re
import resource
import tarfile
import time

import numpy as np
import pytest

import sqcc.package as package
from sqcc import SqccError
from sqcc.cli import main
from sqcc.package import load, load_any, load_micro

LIB = b"\x7fELF not really a library"
SRC = b"not really an onnx model"
LAYER = {"name": "conv1", "op": "relax.nn.conv2d", "in_shape": [1, 3, 8, 8], "out_shape": [1, 4, 8, 8],
         "params": 112, "macs": 6912, "weight_bytes": 448, "fused": ["relu"],
         "attrs": {"kernel": [3, 3], "strides": [1, 1], "groups": 1}}
TOTALS = {"layers": 1, "params": 112, "macs": 6912, "weight_bytes": 448, "conv_layers": 1}
REPORT = {"model": "fake", "before": {"layers": [LAYER], "totals": TOTALS},
          "after": {"layers": [LAYER], "totals": TOTALS}}
SIZE_TOTALS = {"params": 1, "density": 1.0, "bias_bytes": 0, "compression": 1.0, "dense_total_bytes": 4,
               "csr_total_bytes": 4, "shared_total_bytes": 4, "huffman_total_bytes": 4}
GIB = 1 << 30


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def members(report=None, lib=LIB) -> dict:
    rep = report if isinstance(report, bytes) else json.dumps(report or REPORT).encode()
    return {"lib.so": lib, "report.json": rep, "model.onnx": SRC}


def manifest_for(mem: dict, sizes=True, family="arm_cpu") -> dict:
    m = {"format": "sqcc-package", "format_version": 1,
         "model": {"name": "fake", "format": "onnx", "sha256": sha(SRC), "path": None},
         "target": {"name": f"{family}:rpi4" if family == "arm_cpu" else family, "family": family,
                    "preset": None},
         "passes": [{"spec": "lowrank:energy=0.9"}],
         "inputs": [{"name": "x", "shape": [1, 3, 8, 8], "dtype": "float32"}],
         "outputs": [{"name": "y", "shape": [1, 4], "dtype": "float32"}],
         "preprocess": None, "quant": {}, "future_key": {"anything": [1, 2]},  # unknown keys load
         "members": {n: sha(d) for n, d in mem.items()}}
    if sizes:
        m["member_bytes"] = {n: len(d) for n, d in mem.items()}
    return m


def entry(name: str, data: bytes) -> bytes:
    """One tar entry (header, data, padding), as tarfile writes it."""
    info = tarfile.TarInfo(name)
    info.size = len(data)
    return info.tobuf() + data + b"\0" * (-len(data) % 512)


def tar_bytes(mem: dict, manifest) -> bytes:
    raw = manifest if isinstance(manifest, bytes) else json.dumps(manifest).encode()
    body = entry("manifest.json", raw) + b"".join(entry(n, d) for n, d in sorted(mem.items()))
    return body + b"\0" * 1024


def make_pkg(tmp_path, edit=None, mem=None, sizes=True, family="arm_cpu", name="pkg.tar"):
    mem = mem or members()
    m = manifest_for(mem, sizes, family)
    if edit:
        edit(m)
    path = tmp_path / name
    path.write_bytes(tar_bytes(mem, m))
    return path


def one_line_error(excinfo) -> str:
    msg = str(excinfo.value)
    assert "\n" not in msg, msg
    return msg


def cli_error(capsys, argv) -> str:
    capsys.readouterr()
    rc = main(argv)
    out, err = capsys.readouterr()
    assert rc == 2, (rc, out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("sqcc: error:"), err
    assert "internal error" not in err
    return lines[0]


# ----------------------------------------------------------------------------------------- manifest
def _set(path, value):
    def edit(m):
        *parents, last = path
        d = m
        for k in parents:
            d = d[k]
        if value is KeyError:
            del d[last]
        else:
            d[last] = value
    return edit


MANIFEST_CASES = [
    ("missing model", _set(["model"], KeyError), r"manifest\.json: model: missing$"),
    ("missing target", _set(["target"], KeyError), r"manifest\.json: target: missing$"),
    ("target a string", _set(["target"], "host"), r"target: is a string, expected an object$"),
    ("no family", _set(["target", "family"], KeyError), r"target\.family: missing$"),
    ("unknown family", _set(["target", "family"], "tpu"), r'target\.family: "tpu" is not one of "arm_cpu"'),
    ("micro family in a tar", _set(["target", "family"], "micro"), r'target\.family: "micro" is not one of'),
    ("name a number", _set(["target", "name"], 3), r"target\.name: is an integer, expected a string$"),
    ("model format", _set(["model", "format"], "pt"), r'model\.format: "pt" is not one of "onnx", "tflite"'),
    ("model sha", _set(["model", "sha256"], None), r"model\.sha256: is null, expected a string$"),
    ("inputs a dict", _set(["inputs"], {"x": [1, 3]}), r"inputs: is an object, expected an array$"),
    ("inputs empty", _set(["inputs"], []), r"inputs: has 0 item\(s\), at least 1 expected$"),
    ("input not an object", _set(["inputs"], ["x"]), r"inputs\[0\]: is a string, expected an object$"),
    ("input no dtype", _set(["inputs", 0, "dtype"], KeyError), r"inputs\[0\]\.dtype: missing$"),
    ("input name", _set(["inputs", 0, "name"], 7), r"inputs\[0\]\.name: is an integer, expected a string$"),
    ("shape a string", _set(["inputs", 0, "shape"], "1x3"), r"inputs\[0\]\.shape: is a string, expected an array"),
    ("shape float", _set(["inputs", 0, "shape"], [1, 2.5]),
     r"inputs\[0\]\.shape\[1\]: is a number, expected an integer or a string$"),
    ("shape negative", _set(["inputs", 0, "shape"], [1, -3]), r"inputs\[0\]\.shape\[1\]: .*minimum"),
    ("dtype unknown", _set(["outputs", 0, "dtype"], "float33"),
     r'outputs\[0\]\.dtype: "float33" is not a numeric numpy dtype name$'),
    ("dtype a string type", _set(["inputs", 0, "dtype"], "U5"), r'inputs\[0\]\.dtype: "U5" is not a numeric numpy'),
    ("no outputs", _set(["outputs"], KeyError), r"outputs: missing$"),
    ("passes", _set(["passes"], [{"name": "lowrank"}]), r"passes\[0\]\.spec: missing$"),
    ("preprocess size", _set(["preprocess"], {"size": [224]}), r"preprocess\.size: has 1 item\(s\), at least 2"),
    ("quant scale", _set(["quant"], {"inputs": [{"scale": "1/255", "zero_point": 0}]}),
     r"quant\.inputs\[0\]\.scale: is a string, expected a number or an array$"),
    ("no members", _set(["members"], KeyError), r"manifest\.json: members: missing$"),
    ("member hash", _set(["members", "lib.so"], "abc"), r'members\["lib\.so"\]: "abc" is not a lowercase hex sha256$'),
    ("member size type", _set(["member_bytes", "lib.so"], "26"),
     r'member_bytes\["lib\.so"\]: is a string, expected an integer$'),
]


@pytest.mark.parametrize("what,edit,message", MANIFEST_CASES, ids=[c[0] for c in MANIFEST_CASES])
def test_manifest_is_validated(tmp_path, what, edit, message):
    path = make_pkg(tmp_path, edit)
    with pytest.raises(SqccError) as e:
        load(path)
    msg = one_line_error(e)
    assert msg.startswith(f"{path}: manifest.json: "), msg
    assert re.search(message, msg), msg


@pytest.mark.parametrize("raw,message", [
    (b"{not json", r"manifest\.json: is not valid JSON \(line 1 column 2"),
    (b'{"a": "\xff"}', r"manifest\.json: is not valid JSON \(not UTF-8"),
    (b"[1, 2]", r"not an sqcc package \(manifest format is not 'sqcc-package'\)"),
    (json.dumps({"format": "sqcc-package", "format_version": 2}).encode(),
     r"package format version 2 is not supported"),
    (b"[" * 100_000 + b"]" * 100_000, r"manifest\.json: is not JSON sqcc can read"),
    (b'{"format": "sqcc-package", "format_version": ' + b"9" * 5000 + b"}", r"is not JSON sqcc can read"),
])
def test_manifest_that_is_not_a_manifest(tmp_path, raw, message):
    path = tmp_path / "pkg.tar"
    path.write_bytes(tar_bytes(members(), raw))
    with pytest.raises(SqccError, match=message) as e:
        load(path)
    one_line_error(e)


def test_unknown_keys_are_allowed_and_a_valid_fake_package_loads(tmp_path):
    def edit(m):
        m["target"]["new_field"] = 1
        m["inputs"][0]["layout"] = "NCHW"
        m["inputs"][0]["shape"] = ["batch", 3, 8, 8]  # symbolic dimensions are strings
    pkg = load(make_pkg(tmp_path, edit))
    assert pkg.executable is None  # arm_cpu: not loaded on this host
    assert pkg.manifest["future_key"] == {"anything": [1, 2]}
    assert pkg.report == REPORT and pkg.source == SRC and pkg.lib_bytes() == LIB
    assert [s.name for s in pkg.inputs] == ["x"] and pkg.target == "arm_cpu:rpi4"


# ------------------------------------------------------------------------------------------- report
REPORT_CASES = [
    ("not JSON", b"{'model': 1}", r"report\.json: is not valid JSON \(line 1 column 2"),
    ("an array", b"[1, 2, 3]", r"report\.json: is an array, expected an object$"),
    ("a string", b'"report"', r"report\.json: is a string, expected an object$"),
    ("no before", {"after": REPORT["after"]}, r"report\.json: before: missing$"),
    ("stage a list", {**REPORT, "after": []}, r"report\.json: after: is an array, expected an object$"),
    ("no totals", {**REPORT, "after": {"layers": []}}, r"report\.json: after\.totals: missing$"),
    ("layer no macs", {"before": {"layers": [{k: v for k, v in LAYER.items() if k != "macs"}], "totals": TOTALS}},
     r"report\.json: before\.layers\[0\]\.macs: missing$"),
    ("params a string", {**REPORT, "after": {"layers": [{**LAYER, "params": "112"}], "totals": TOTALS}},
     r"report\.json: after\.layers\[0\]\.params: is a string, expected a number$"),
    ("kernel without strides", {**REPORT, "after": {"layers": [{**LAYER, "attrs": {"kernel": [3, 3], "groups": 1}}],
                                          "totals": TOTALS}},
     r"report\.json: after\.layers\[0\]\.attrs\.strides: missing$"),
    ("totals a string", {**REPORT, "after": {"layers": [], "totals": {**TOTALS, "layers": "1"}}},
     r"report\.json: after\.totals\.layers: is a string, expected a number$"),
    ("totals no macs", {**REPORT, "after": {"layers": [], "totals": {"layers": 0, "params": 0, "weight_bytes": 0}}},
     r"report\.json: after\.totals\.macs: missing$"),
    ("size layers", {**REPORT, "size": {"layers": {}, "totals": SIZE_TOTALS}},
     r"report\.json: size\.layers: is an object"),
    ("size totals", {**REPORT, "size": {"layers": [], "totals": {**SIZE_TOTALS, "compression": None}}},
     r"report\.json: size\.totals\.compression: is null, expected a number$"),
]


@pytest.mark.parametrize("what,report,message", REPORT_CASES, ids=[c[0] for c in REPORT_CASES])
def test_report_is_validated(tmp_path, what, report, message):
    path = make_pkg(tmp_path, mem=members(report))  # the hashes match: the content is what is wrong
    with pytest.raises(SqccError) as e:
        load(path)
    msg = one_line_error(e)
    assert msg.startswith(f"{path}: report.json: "), msg
    assert re.search(message, msg), msg


def test_a_loose_report_loads(tmp_path):
    report = {"model": "fake", "before": REPORT["before"],
              "after": {"layers": [{**LAYER, "attrs": {}, "extra": 1}], "totals": TOTALS},
              "whatever": [1, "two"]}
    assert load(make_pkg(tmp_path, mem=members(report))).report == report


# ------------------------------------------------------------------------------ sizes, before reading
def _maxrss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def test_member_larger_than_the_manifest_says_is_refused_before_reading(tmp_path):
    """A 1 GiB lib.so (a hole in the file: no disk used) where the manifest says 25 bytes."""
    mem = {"lib.so": LIB}
    path = tmp_path / "huge.tar"
    with open(path, "wb") as f:
        f.write(entry("manifest.json", json.dumps(manifest_for(mem)).encode()))
        info = tarfile.TarInfo("lib.so")
        info.size = GIB
        f.write(info.tobuf())
        f.seek(GIB, os.SEEK_CUR)
        f.write(b"\0" * 1024)
    assert path.stat().st_size > GIB
    rss, t0 = _maxrss_bytes(), time.perf_counter()
    with pytest.raises(SqccError, match=r"member 'lib\.so' is 1,073,741,824 bytes in the tar, the manifest "
                                        f"says {len(LIB)} bytes; tampered with") as e:
        load(path)
    assert time.perf_counter() - t0 < 2
    assert _maxrss_bytes() - rss < 64 << 20
    one_line_error(e)


def _gnu_sparse_header(name: str, realsize: int) -> bytes:
    """A GNU sparse entry with no stored data that expands to ``realsize`` zero bytes."""
    info = tarfile.TarInfo(name)
    info.type = tarfile.GNUTYPE_SPARSE
    buf = bytearray(info.tobuf(format=tarfile.GNU_FORMAT))
    buf[483:495] = b"%011o\0" % realsize  # realsize; the sparse map (offset 386) stays empty
    buf[148:156] = b" " * 8
    buf[148:156] = b"%06o\0 " % sum(buf)
    return bytes(buf)


@pytest.mark.parametrize("sizes", [True, False], ids=["member_bytes", "old package"])
def test_sparse_member_is_refused_fast(tmp_path, sizes):
    """A 3 KB tar whose lib.so reads as 1 GiB (the issue's case): refused from its header."""
    mem = {"lib.so": LIB}
    path = tmp_path / "sparse.tar"
    path.write_bytes(entry("manifest.json", json.dumps(manifest_for(mem, sizes)).encode())
                     + _gnu_sparse_header("lib.so", GIB) + b"\0" * 1024)
    assert path.stat().st_size < 4096
    with tarfile.open(path) as tar:  # what the old loader read: a 1 GiB member
        assert tar.getmember("lib.so").size == GIB
    rss, t0 = _maxrss_bytes(), time.perf_counter()
    with pytest.raises(SqccError, match=r"refusing package member 'lib\.so' \(sparse entry\)") as e:
        load(path)
    assert time.perf_counter() - t0 < 2
    assert _maxrss_bytes() - rss < 64 << 20
    one_line_error(e)


def test_old_package_without_member_bytes_loads_under_the_global_cap(tmp_path, monkeypatch):
    path = make_pkg(tmp_path, sizes=False)
    pkg = load(path)
    assert "member_bytes" not in pkg.manifest and pkg.lib_bytes() == LIB
    monkeypatch.setattr(package, "MAX_MEMBER_BYTES", len(LIB) - 1)
    with pytest.raises(SqccError, match=rf"member 'lib\.so' is too large \({len(LIB)} bytes, at most {len(LIB) - 1}\)"):
        load(path)


def test_manifest_and_report_are_bounded(tmp_path, monkeypatch):
    path = make_pkg(tmp_path)
    monkeypatch.setattr(package, "MAX_JSON_BYTES", 500)
    with pytest.raises(SqccError, match=r"member 'manifest\.json' is too large"):
        load(path)
    big = {**REPORT, "padding": "x" * 2000}
    monkeypatch.setattr(package, "MAX_JSON_BYTES", 1800)
    with pytest.raises(SqccError, match=r"member 'report\.json' is too large"):
        load(make_pkg(tmp_path, mem=members(big), name="big.tar"))


def test_listing_and_hash_checks(tmp_path):
    mem = members()
    m = manifest_for(mem)
    cases = [
        ({**mem}, _set(["members", "lib.so"], sha(b"other")),
         r"member 'lib\.so' does not match the manifest's sha256"),
        ({k: v for k, v in mem.items() if k != "model.onnx"}, None,
         r"member 'model\.onnx' listed in the manifest is missing; truncated or tampered with"),
        ({**mem, "model.tflite": b"x"}, None, r"member 'model\.tflite' is not listed in the manifest"),
        ({k: v for k, v in mem.items() if k != "lib.so"}, _set(["members", "lib.so"], KeyError),
         r"package has no compiled library"),
        ({**mem}, _set(["member_bytes", "model.onnx"], KeyError),
         r"member 'model\.onnx' is 24 bytes in the tar, the manifest says nothing"),
        ({**mem}, _set(["member_bytes", "report.json"], 3), r"member 'report\.json' is \d+ bytes in the tar, the "
                                                             r"manifest says 3 bytes"),
    ]
    for i, (tar_members, edit, message) in enumerate(cases):
        mm = copy.deepcopy(m)
        if edit:
            edit(mm)
        path = tmp_path / f"case{i}.tar"
        path.write_bytes(tar_bytes(tar_members, mm))
        with pytest.raises(SqccError, match=message) as e:
            load(path)
        one_line_error(e)


def test_duplicate_and_foreign_entries_are_refused(tmp_path):
    mem = members()
    raw = tar_bytes(mem, manifest_for(mem))
    dup = tmp_path / "dup.tar"
    dup.write_bytes(raw[:-1024] + entry("lib.so", LIB) + b"\0" * 1024)
    with pytest.raises(SqccError, match=r"member 'lib\.so' appears twice"):
        load(dup)
    odd = tmp_path / "odd.tar"
    odd.write_bytes(raw[:-1024] + entry("a\nb", b"x") + b"\0" * 1024)
    with pytest.raises(SqccError, match=r"refusing package member 'a\\nb' \(unexpected entry\)") as e:
        load(odd)
    one_line_error(e)


# ------------------------------------------------------------------------------ empty and truncated
def test_empty_file_is_one_line(tmp_path, capsys):
    path = tmp_path / "x.tar"
    path.write_bytes(b"")
    with pytest.raises(SqccError, match=r"x\.tar: empty file, not an sqcc package$") as e:
        load(path)
    one_line_error(e)
    assert cli_error(capsys, ["inspect", str(path)]).endswith("empty file, not an sqcc package")


def _offsets(raw: bytes) -> dict:
    with tarfile.open(fileobj=io.BytesIO(raw)) as tar:
        return {i.name: (i.offset, i.offset_data) for i in tar}


TRUNCATIONS = {
    "inside the first header": (lambda o: 100, r"truncated package tar \(the file ends inside the first header\)$"),
    "inside manifest data": (lambda o: o["manifest.json"][1] + 10,
                             r"truncated package tar \(the file ends inside member 'manifest\.json'\)"),
    "inside lib data": (lambda o: o["lib.so"][1] + 3, r"the file ends inside member 'lib\.so'"),
    "inside a later header": (lambda o: o["model.onnx"][0] + 100, r"member '(model\.onnx|report\.json)' listed in "
                                                                   r"the manifest is missing; truncated"),
    "at a member boundary": (lambda o: o["report.json"][0], r"member 'report\.json' listed in the manifest is missing"),
    "inside the last member": (lambda o: o["report.json"][1] + 5, r"the file ends inside member 'report\.json'"),
}


@pytest.mark.parametrize("where", list(TRUNCATIONS))
def test_truncated_tar_is_one_line(tmp_path, where):
    mem = members()
    raw = tar_bytes(mem, manifest_for(mem))
    cut, message = TRUNCATIONS[where]
    path = tmp_path / "cut.tar"
    path.write_bytes(raw[:cut(_offsets(raw))])
    with pytest.raises(SqccError, match=message) as e:
        load(path)
    one_line_error(e)


def test_garbage_and_truncated_compressed_tars(tmp_path):
    junk = tmp_path / "junk.tar"
    junk.write_bytes(b"\x01garbage" * 100)
    with pytest.raises(SqccError, match=r"not an sqcc package \(not a tar file: ") as e:
        load(junk)
    one_line_error(e)
    import gzip

    mem = members()
    gz = gzip.compress(tar_bytes(mem, manifest_for(mem)))
    ok, cut = tmp_path / "ok.tar.gz", tmp_path / "cut.tar.gz"
    ok.write_bytes(gz)
    assert load(ok).lib_bytes() == LIB
    cut.write_bytes(gz[: len(gz) // 2])
    with pytest.raises(SqccError, match="truncated package tar|corrupt package tar") as e:
        load(cut)
    one_line_error(e)


# ---------------------------------------------------------------------------------------------- CLI
CLI_BROKEN = {
    "missing target": lambda t: make_pkg(t, _set(["target"], KeyError), family="host"),
    "target a string": lambda t: make_pkg(t, _set(["target"], "host"), family="host"),
    "shape wrong": lambda t: make_pkg(t, _set(["inputs", 0, "shape"], {"n": 1}), family="host"),
    "report not JSON": lambda t: make_pkg(t, mem=members(b"not json"), family="host"),
    "report an array": lambda t: make_pkg(t, mem=members(b"[]"), family="host"),
}


@pytest.mark.parametrize("what", list(CLI_BROKEN))
@pytest.mark.parametrize("command", ["inspect", "run", "bench"])
def test_cli_prints_one_line_and_exits_2(tmp_path, capsys, what, command):
    path = CLI_BROKEN[what](tmp_path)
    x = tmp_path / "x.npy"
    np.save(x, np.zeros((1, 3, 8, 8), np.float32))
    argv = {"inspect": ["inspect", str(path)], "run": ["run", str(path), "--input", str(x)],
            "bench": ["bench", str(path), "--repeat", "1"]}[command]
    line = cli_error(capsys, argv)
    assert str(path) in line


def test_cli_truncated_package(tmp_path, capsys):
    mem = members()
    raw = tar_bytes(mem, manifest_for(mem, family="host"))
    path = tmp_path / "cut.tar"
    path.write_bytes(raw[:_offsets(raw)["lib.so"][1] + 3])
    x = tmp_path / "x.npy"
    np.save(x, np.zeros((1, 3, 8, 8), np.float32))
    assert "truncated package tar" in cli_error(capsys, ["run", str(path), "--input", str(x)])


# -------------------------------------------------------------------------------------------- micro
def make_micro(tmp_path, edit=None, report=None, elf=True):
    d = tmp_path / "build"
    d.mkdir(exist_ok=True)
    m = manifest_for({}, sizes=False, family="micro")
    m["target"]["name"] = "micro:cortex-m4"
    del m["members"]
    if edit:
        edit(m)
    (d / "manifest.json").write_text(json.dumps(m))
    (d / "report.json").write_bytes(report if isinstance(report, bytes) else json.dumps(report or REPORT).encode())
    if elf:
        (d / "micro.json").write_text("{}")
        (d / "model.elf").write_bytes(b"\x7fELF")
    return d


def test_micro_build_loads_and_is_validated(tmp_path, capsys):
    d = make_micro(tmp_path)
    pkg = load_any(d)
    assert pkg.report == REPORT and pkg.target == "micro:cortex-m4"
    cases = [
        (lambda m: m.pop("model"), None, r"build: manifest\.json: model: missing$"),
        (_set(["target"], "micro"), None, r"build: manifest\.json: target: is a string, expected an object$"),
        (_set(["target", "family"], "host"), None, r"not an sqcc micro build \(manifest\.json: target\.family is "
                                                   r"'host'\)"),
        (None, b"{{", r"build: report\.json: is not valid JSON"),
        (None, b"7", r"build: report\.json: is an integer, expected an object$"),
    ]
    for edit, report, message in cases:
        d = make_micro(tmp_path, edit, report)
        with pytest.raises(SqccError, match=message) as e:
            load_micro(d)
        one_line_error(e)
        cli_error(capsys, ["run", str(d), "--input", str(d / "none.npy")])
    (d / "manifest.json").unlink()
    with pytest.raises(SqccError, match=r"not an sqcc micro build \(no manifest\.json\)"):
        load_micro(d)


# ------------------------------------------------------------------------------------- export, real
def test_export_writes_member_bytes_and_reloads(tmp_path):
    pkg = load(make_pkg(tmp_path, sizes=False))
    out = pkg.export(tmp_path / "again.tar")
    with tarfile.open(out) as tar:
        sizes = {i.name: i.size for i in tar}
        m = json.loads(tar.extractfile("manifest.json").read())
    assert m["member_bytes"] == {k: v for k, v in sizes.items() if k != "manifest.json"}
    again = load(out)
    assert again.lib_bytes() == LIB and again.source == SRC and again.report == REPORT


def test_real_package_round_trip(tmp_path, capsys):
    import sqcc

    pkg = sqcc.compile("mnist-8", target="host")
    path = pkg.export(tmp_path / "mnist.tar")
    again = load(path)
    assert set(again.manifest["member_bytes"]) == {"lib.so", "report.json", "model.onnx", "graph.json"}
    assert again.manifest["member_bytes"]["lib.so"] == len(again.lib_bytes())
    x = np.random.default_rng(0).random((1, 1, 28, 28), dtype=np.float32)
    np.testing.assert_array_equal(pkg.run(x), again.run(x))
    np.save(tmp_path / "x.npy", x)
    assert main(["run", str(path), "--input", str(tmp_path / "x.npy")]) == 0
    assert main(["inspect", str(path)]) == 0
    assert "mnist-8" in capsys.readouterr().out


def test_truncated_library_is_refused_before_dlopen(tmp_path, capsys):
    """Fuzz finding c00417: a lib.so cut short, with the manifest's hashes and sizes made to match,
    killed `sqcc run` with SIGBUS inside dlopen. Now the ELF is checked first."""
    import sqcc

    lib = sqcc.compile("mnist-8", target="host").lib_bytes()
    for cut in (len(lib) // 2, len(lib) - 64, 40):
        path = make_pkg(tmp_path, mem=members(lib=lib[:cut]), family="host", name=f"cut{cut}.tar")
        with pytest.raises(SqccError) as e:
            load(path)
        assert "lib.so is not a loadable shared library" in one_line_error(e)
    assert load(make_pkg(tmp_path, mem=members(lib=lib), family="host", name="whole.tar")).executable is not None
