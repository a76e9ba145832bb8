"""Export of real compiled packages: the exported ONNX / TFLite file run in onnxruntime / LiteRT
matches sqcc's built package on real images (1e-4 of the largest logit; QDQ: one quantisation step
of the last int8 activations), from the CLI and the API; and the refusals a user meets.

Compiles are kept few and small: the plain SqueezeNet (the session fixture), one SqueezeNet with
every factorisation kind in it (depthwise-separable with its channel gather, spatial low-rank Kh×1 /
1×Kw, flattened 1-D convs, a grouped shuffle, the pool-hoisted classifier, Deep Compression pruning
and sharing), MobileNet v1 0.5/160, and an int8 SqueezeNet calibrated on 2 images.
"""
import io
import json
import tarfile

import numpy as np
import onnx
import pytest

from conftest import IMAGENET, run_cli
from sqcc.export.verify import image_feeds
from sqcc.package import load, read_members

REWRITES = ["dwsep:multiplier=1,layers=conv3", "lowrank:scheme=spatial,energy=0.9,layers=conv6",
            "flatten:rank=2,layers=conv9", "shuffle:groups=2,layers=conv23", "poolhoist:window=2",
            "prune:sparsity=0.5,scope=global", "share:bits=6"]


def ort_run(path, feed):
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, feed)[0]


def rel(a, b):
    return float(np.abs(a - b).max() / np.abs(b).max())


@pytest.fixture(scope="module")
def rewritten(tmp_path_factory):
    import sqcc

    pkg = sqcc.compile("squeezenet1.1", passes=REWRITES)
    path = tmp_path_factory.mktemp("rw") / "rw.tar"
    pkg.export(path)
    return load(path), path


def test_plain_squeezenet_cli_onnx_and_tflite_on_images(squeezenet_pkg, tmp_path):
    _, path = squeezenet_pkg
    onnx_path, tfl = tmp_path / "sq.onnx", tmp_path / "sq.tflite"
    p = run_cli("export", path, "--onnx", onnx_path, "--tflite", tfl, "--check-images", IMAGENET,
                "--check-limit", 4, check=0)
    assert "onnxruntime matches the package on 4 input(s)" in p.stdout and "litert matches" in p.stdout
    model = onnx.load(str(onnx_path))
    onnx.checker.check_model(model, full_check=True)
    props = {m.key: m.value for m in model.metadata_props}
    assert json.loads(props["sqcc.preprocess"])["mean"] == pytest.approx([0.485, 0.456, 0.406])
    assert json.loads(props["sqcc.report"])["before"]["params"] == 1_235_496
    assert {"conv0.weight", "conv0.bias", "conv25.weight"} <= {i.name for i in model.graph.initializer}
    pkg = load(path)
    for feed in image_feeds(pkg, IMAGENET, 3):
        assert rel(ort_run(onnx_path, feed), pkg.run(feed)) <= 1e-4


def test_every_rewrite_kind_exports_and_matches(rewritten, tmp_path):
    pkg, _ = rewritten
    feeds = image_feeds(pkg, IMAGENET, 4)
    r = pkg.export_onnx(tmp_path / "rw.onnx", feeds=feeds)
    t = pkg.export_tflite(tmp_path / "rw.tflite", feeds=feeds)
    assert r["check"]["outputs"]["logits"]["max_rel"] <= 1e-4 and t["check"]["outputs"]["logits"]["max_rel"] <= 1e-4
    model = onnx.load(str(tmp_path / "rw.onnx"))
    convs = {n.name: {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute}
             for n in model.graph.node if n.op_type == "Conv"}
    kernels = {tuple(a["kernel_shape"]) for a in convs.values()}
    assert {(3, 1), (1, 3)} <= kernels  # spatial low-rank / flattened 1-D factors
    assert any(a["group"] > 1 for a in convs.values())  # depthwise / grouped
    ops = {n.op_type for n in model.graph.node}
    assert {"Gather", "AveragePool"} <= ops  # dwsep's channel gather, the hoisted classifier's pool
    w = {i.name: onnx.numpy_helper.to_array(i) for i in model.graph.initializer}["conv12.weight"]
    assert (w == 0).mean() > 0.3 and len(np.unique(w)) <= 64  # pruned and shared, as dense values
    for feed in feeds[:2]:
        assert rel(ort_run(tmp_path / "rw.onnx", feed), pkg.run(feed)) <= 1e-4


def test_mobilenet_exports(tmp_path):
    import sqcc

    pkg = sqcc.compile("mobilenet_v1_0.5_160", check=False)
    feeds = image_feeds(pkg, IMAGENET, 3)
    r = pkg.export_onnx(tmp_path / "mb.onnx", feeds=feeds)
    t = pkg.export_tflite(tmp_path / "mb.tflite", feeds=feeds)
    assert "Clip" in r["ops"] and t["check"]["outputs"][pkg.outputs[0].name]["max_rel"] <= 1e-4


def test_int8_squeezenet_as_qdq(tmp_path):
    import sqcc

    pkg = sqcc.compile("squeezenet1.1", passes=["int8"], calibration=IMAGENET, calibration_limit=2, check=False)
    feeds = image_feeds(pkg, IMAGENET, 6)
    r = pkg.export_onnx(tmp_path / "q.onnx", feeds=feeds)
    step = r["check"]["outputs"]["logits"]
    assert r["form"] == "int8 QDQ" and step["max_abs"] <= float(step["limit"].split()[1])
    model = onnx.load(str(tmp_path / "q.onnx"))
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in model.graph.initializer}
    assert inits["conv1.weight_quantized"].dtype == np.int8 and inits["conv1.weight_scale"].shape == (16,)
    agree = sum(int(ort_run(tmp_path / "q.onnx", f).argmax() == pkg.run(f).argmax()) for f in feeds)
    assert agree == len(feeds)
    assert (tmp_path / "q.onnx").stat().st_size < 0.3 * 4.9e6  # int8 weights


def test_compile_emit_onnx_and_refusals(squeezenet_pkg, tmp_path):
    _, path = squeezenet_pkg
    # a package made before export existed: no graph member
    members = read_members(path)
    manifest = json.loads(members.pop("manifest.json"))
    del members["graph.json"]
    manifest["members"].pop("graph.json")
    manifest["member_bytes"].pop("graph.json")
    old = tmp_path / "old.tar"
    with tarfile.open(old, "w") as tar:
        for name, data in [("manifest.json", json.dumps(manifest).encode()), *members.items()]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    p = run_cli("export", old, "--onnx", tmp_path / "x.onnx", check=2)
    assert p.stderr.strip().endswith("re-compile with this sqcc to export") and len(p.stderr.splitlines()) == 1
    (tmp_path / "dir.onnx").mkdir()
    p = run_cli("export", path, "--onnx", tmp_path / "dir.onnx", check=2)
    assert "is a directory; give a file name" in p.stderr
    p = run_cli("compile", "squeezenet1.1", "--target", "cuda:sm_90", "-o", tmp_path / "c.tar",
                "--emit-onnx", tmp_path / "c.onnx", check=2)
    assert "--emit-onnx needs --target host" in p.stderr and not (tmp_path / "c.tar").exists()
    assert sorted(q.name for q in tmp_path.iterdir()) == ["dir.onnx", "old.tar"]
    p = run_cli("compile", "squeezenet1.1", "-o", tmp_path / "e.tar", "--emit-onnx", tmp_path / "e.onnx", "-q",
                "--no-check", check=0)
    assert "exported squeezenet1.1 (float ONNX, opset 17" in p.stdout and (tmp_path / "e.onnx").is_file()
