"""The seed inputs the generators mutate: real models from shared/ and the test corpus, real images
and feeds, and base packages compiled once per campaign directory (in a subprocess, never in the
fork server) so that package, feed and image cases have a valid package to start from."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SHARED = Path(os.environ.get("SQCC_SHARED", ROOT.parent / "shared"))
MODELS = SHARED / "models"
DATA = SHARED / "data"
CORPUS = ROOT / "tests" / "data" / "corpus"
BUNDLED = ROOT / "sqcc" / "models"

ONNX_SEEDS = {  # name → (path, weight): small, fast-compiling models most often
    "mnist-8.onnx": (MODELS / "mnist-8.onnx", 6),
    "tv_squeezenet_quarter.onnx": (CORPUS / "tv_squeezenet_quarter.onnx", 3),
    "squeezenet1.1.onnx": (BUNDLED / "squeezenet1.1.onnx", 1),
}
TFLITE_SEEDS = {
    "person_detect.tflite": (MODELS / "person_detect.tflite", 4),
    "micro_speech_quantized.tflite": (MODELS / "micro_speech_quantized.tflite", 2),
    "tfl_resnet_avgpool.tflite": (CORPUS / "tfl_resnet_avgpool.tflite", 2),
    "tfl_blazeface_like.tflite": (CORPUS / "tfl_blazeface_like.tflite", 1),
}
# base package name → (model argument to `sqcc compile`, input feed, reference output)
PACKAGES = {
    "mnist": ("mnist-8", DATA / "mnist-8" / "set0_input_0.pb", DATA / "mnist-8" / "set0_output_0.pb"),
    "person": ("person_detect", None, None),
    "squeezenet": ("squeezenet1.1", None, None),
}
IMAGES = {
    "jpeg": DATA / "imagenet-sample" / "000_tench.jpg",
    "bmp": DATA / "person-detection" / "person.bmp",
}
MNIST_FEEDS = [(DATA / "mnist-8" / f"set{k}_input_0.pb", DATA / "mnist-8" / f"set{k}_output_0.pb")
               for k in range(3)]


class Assets:
    """Seed files and lazily built base packages (``base_dir/NAME.tar``)."""

    def __init__(self, base_dir):
        self.base_dir = Path(base_dir).resolve()
        self._cache: dict = {}
        self._failed: dict = {}

    def read(self, path: Path) -> bytes:
        if path not in self._cache:
            self._cache[path] = Path(path).read_bytes()
        return self._cache[path]

    def package(self, name: str) -> Path:
        """The base package ``name`` (see PACKAGES), compiled on first use and kept in base_dir."""
        out = self.base_dir / f"{name}.tar"
        if name in self._failed:
            raise RuntimeError(self._failed[name])
        if not out.is_file():
            self.base_dir.mkdir(parents=True, exist_ok=True)
            model = PACKAGES[name][0]
            cmd = [sys.executable, "-m", "sqcc.cli", "compile", model, "-o", str(out), "-q"]
            p = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=self.base_dir)
            if p.returncode != 0 or not out.is_file():
                self._failed[name] = f"building the base package {name} failed: {p.stderr.strip()[-500:]}"
                raise RuntimeError(self._failed[name])
        return out

    def check(self) -> None:
        """Every seed file is present (the harness needs shared/ beside the checkout)."""
        seeds = [p for p, _ in ONNX_SEEDS.values()] + [p for p, _ in TFLITE_SEEDS.values()]
        seeds += list(IMAGES.values()) + [f for pair in MNIST_FEEDS for f in pair]
        missing = [str(p) for p in seeds if not Path(p).is_file()]
        if missing:
            raise RuntimeError(f"fuzz seed files missing (is shared/ beside the checkout?): {missing}")


def weighted(rng, table: dict):
    """A (name, path) from a {name: (path, weight)} table."""
    names = list(table)
    name = rng.choices(names, weights=[table[n][1] for n in names])[0]
    return name, table[name][0]
