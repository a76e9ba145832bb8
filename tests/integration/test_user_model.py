"""A user's own model, as a new user runs it: a torchvision-style export with a dynamic batch and no
named preprocessing recipe, compiled with --preprocess and calibrated on a JPEG folder; its package
classifies an image like onnxruntime does on the same preprocessed input."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from sqcc.package import load
from sqcc.preprocess import load_image, parse_preprocess

ROOT = Path(__file__).resolve().parents[2]
MODEL = ROOT / "tests" / "data" / "corpus" / "tv_mobilenet_v2_015.onnx"  # [batch,3,96,96]
IMAGES = ROOT.parent / "shared" / "data" / "imagenet-sample"
RECIPE = "size=96,resize=110,mean=0.485,0.456,0.406,std=0.229,0.224,0.225,layout=NCHW"


def sqcc(*args, cwd):
    return subprocess.run([sys.executable, "-m", "sqcc.cli", *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=600)


def test_own_model_with_preprocess_calibration_and_run(tmp_path):
    p = sqcc("compile", MODEL, "--preprocess", RECIPE, "--calibration", IMAGES,
             "--calibration-limit", "4", "-o", "m.tar", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert "dynamic batch dimension 'batch' set to 1" in p.stderr
    assert re.search(r"fidelity vs onnxruntime on 6 input\(s\)", p.stdout), p.stdout  # 2 random + 4 images
    pkg = load(tmp_path / "m.tar")
    assert pkg.preprocess == parse_preprocess(RECIPE)  # the recipe went into the package
    image = IMAGES / "000_tench.jpg"
    p = sqcc("run", "m.tar", "--image", image, "--print-top", "5", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    ours = [int(c) for c in re.findall(r"^\d\. class\s+(\d+)", p.stdout, re.M)]
    x = load_image(image, parse_preprocess(RECIPE))
    logits = ort.InferenceSession(str(MODEL)).run(None, {"input": x})[0].reshape(-1)
    assert ours == list(np.argsort(-logits, kind="stable")[:5])


def test_image_flags_without_a_recipe_name_the_flag(tmp_path):
    p = sqcc("compile", MODEL, "--eval-images", IMAGES, "-o", "m.tar", cwd=tmp_path)
    assert p.returncode != 0
    assert "--preprocess" in p.stderr.strip().splitlines()[-1]
    assert not (tmp_path / "m.tar").exists()


def test_calibration_from_npy_and_npz_feeds_without_a_recipe(tmp_path):
    """A folder of tensor feeds needs no image recipe; they are checked and used like images."""
    import sqcc
    from sqcc.errors import SqccError

    feeds = tmp_path / "feeds"
    feeds.mkdir()
    rng = np.random.default_rng(0)
    for k in range(3):
        np.save(feeds / f"x{k}.npy", rng.standard_normal((1, 3, 96, 96)).astype(np.float32))
    np.savez(feeds / "x3.npz", input=rng.standard_normal((1, 3, 96, 96)).astype(np.float32))
    pkg = sqcc.compile(str(MODEL), calibration=str(feeds), calibration_limit=4)
    assert pkg.report["fidelity"]["inputs"] == 2 + 4  # two random inputs, then every feed
    # an iterable of feed dicts from Python, and a wrong shape named with its file
    pkg = sqcc.compile(str(MODEL), calibration=({"input": np.zeros((1, 3, 96, 96), np.float32)}
                                                for _ in range(2)))
    assert pkg.report["fidelity"]["inputs"] == 4
    np.save(feeds / "x4.npy", np.zeros((1, 3, 64, 64), np.float32))
    with pytest.raises(SqccError, match=r"x4.npy: input 'input' has shape \[1, 3, 64, 64\], the model "
                                        r"expects \[1, 3, 96, 96\]"):
        sqcc.compile(str(MODEL), calibration=str(feeds), calibration_limit=8)
