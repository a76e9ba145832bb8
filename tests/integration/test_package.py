"""Package format: round trip, atomic write, safe loading (traversal, links, tampering, foreign tars)."""
import io
import json
import tarfile

import numpy as np
import pytest

from sqcc import SqccError
from sqcc.package import load, read_members


def test_roundtrip_runs_identically(squeezenet_pkg, tmp_path):
    pkg, path = squeezenet_pkg
    x = np.random.default_rng(1).random((1, 3, 224, 224), dtype=np.float32)
    again = load(path)
    np.testing.assert_array_equal(pkg.run(x), again.run(x))
    m = again.manifest
    assert m["model"]["sha256"] == pkg.manifest["model"]["sha256"]
    assert m["target"]["name"] == "host"
    assert m["inputs"] == [{"name": "data", "shape": [1, 3, 224, 224], "dtype": "float32"}]
    assert m["versions"]["tvm"].startswith("0.27")
    assert again.report["before"]["totals"]["params"] == 1_235_496
    assert set(read_members(path)) == {"manifest.json", "lib.so", "report.json", "model.onnx", "graph.json"}


def test_run_checks_input_shape(squeezenet_pkg):
    pkg, _ = squeezenet_pkg
    with pytest.raises(SqccError, match=r"input 'data': shape \[1, 3, 10, 10\] given"):
        pkg.run(np.zeros((1, 3, 10, 10), np.float32))
    with pytest.raises(SqccError, match="missing input"):
        pkg.run({"x": np.zeros((1, 3, 224, 224), np.float32)})


def _rewrite_tar(src, dst, mutate):
    members = read_members(src)
    mutate(members)
    with tarfile.open(dst, "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def test_tampered_member_is_refused(squeezenet_pkg, tmp_path):
    _, path = squeezenet_pkg
    bad = tmp_path / "bad.tar"

    def flip(m):
        lib = bytearray(m["lib.so"])
        lib[len(lib) // 2] ^= 0xFF
        m["lib.so"] = bytes(lib)

    _rewrite_tar(path, bad, flip)
    with pytest.raises(SqccError, match="member 'lib.so' does not match the manifest's sha256"):
        load(bad)


def test_path_traversal_and_links_refused(tmp_path):
    evil = tmp_path / "evil.tar"
    with tarfile.open(evil, "w") as tar:
        info = tarfile.TarInfo("../../etc/evil")
        info.size = 4
        tar.addfile(info, io.BytesIO(b"evil"))
    with pytest.raises(SqccError, match=r"refusing package member '\.\./\.\./etc/evil'"):
        load(evil)
    assert not (tmp_path.parent.parent / "etc" / "evil").exists()
    link = tmp_path / "link.tar"
    with tarfile.open(link, "w") as tar:
        info = tarfile.TarInfo("lib.so")
        info.type = tarfile.SYMTYPE
        info.linkname = "/etc/passwd"
        tar.addfile(info)
    with pytest.raises(SqccError, match="refusing package member 'lib.so' \\(link\\)"):
        load(link)


def test_foreign_and_corrupt_tars(tmp_path):
    foreign = tmp_path / "foreign.tar"
    with tarfile.open(foreign, "w") as tar:
        data = json.dumps({"format": "something-else"}).encode()
        info = tarfile.TarInfo("manifest.json")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    with pytest.raises(SqccError, match="not an sqcc package"):
        load(foreign)
    junk = tmp_path / "junk.tar"
    junk.write_bytes(b"\x00garbage" * 100)
    with pytest.raises(SqccError, match="not an sqcc package|corrupt"):
        load(junk)
    with pytest.raises(SqccError, match="no such package"):
        load(tmp_path / "missing.tar")


def test_export_is_atomic(squeezenet_pkg, tmp_path, monkeypatch):
    pkg, _ = squeezenet_pkg
    out = tmp_path / "out.tar"
    out.write_bytes(b"previous contents")

    def boom(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(tarfile.TarFile, "addfile", boom)
    with pytest.raises(RuntimeError):
        pkg.export(out)
    assert out.read_bytes() == b"previous contents"  # the old file is untouched
    assert [p.name for p in tmp_path.iterdir()] == ["out.tar"]  # no temp file left behind


def test_compile_report_has_fidelity(squeezenet_pkg):
    pkg, _ = squeezenet_pkg
    f = pkg.report["fidelity"]
    assert f["reference"] == "onnxruntime"
    assert f["max_rel"] < 1e-4 and f["top1_agreement"] == 1.0
