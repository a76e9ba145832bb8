"""Regenerate the model corpus in tests/data/corpus/ (developer tool, not run by CI).

The corpus is real CNN architectures for sqcc's tests and the zoo benchmark:
  * ONNX exported here from torchvision architectures (random seeded weights, narrowed widths,
    small inputs; TorchScript and dynamo exporters, opsets 11/13/17/18, static and symbolic
    batch / spatial dims)                                             -> export_torch.py
  * float TFLite (NHWC) made here with Keras + TFLiteConverter (multi-output detector, fp16
    weights behind DEQUANTIZE, PReLU, HardSwish, resize, transpose conv, ...)  -> export_tflite.py
  * pretrained third-party models from PyPI wheels (rapidocr-onnxruntime 1.4.4, mediapipe
    0.10.21), the small ones committed, the large ones to a cache dir  -> fetch_wheels.py
  * corpus.json (inputs/outputs with symbolic dims, ops, features, sources, licenses) and NOTICE
                                                                      -> manifest.py

Each step runs in the interpreter that has its packages; none of them is the project's .venv
except the manifest step, which only needs onnx + tflite (the .venv has both):

    python3 -m venv /work/corpus-venv && /work/corpus-venv/bin/pip install torch==2.14.1 \
        torchvision==0.29.1 onnx==1.23.2 onnxruntime onnxscript
    python3 -m venv /work/corpus-tf-venv && /work/corpus-tf-venv/bin/pip install tensorflow-cpu==2.21.0

    python benchmarks/corpus/make_corpus.py \
        --torch-python /work/corpus-venv/bin/python --tf-python /work/corpus-tf-venv/bin/python \
        [--steps torch,tflite,wheels,manifest] [--large-dir ~/.cache/sqcc/corpus-large]

Exports are deterministic for a given torch / tensorflow version (seeded weights and inputs); the
wheel models are checked against recorded sha256s.  The inventory of what sqcc does with each
model is benchmarks/corpus/inventory.py.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))

NOTICE_HEAD = """Third-party models in this folder
=================================

Files prefixed tv_ and tfl_ are made by benchmarks/corpus/ (export_torch.py, export_tflite.py)
from random, seeded weights: no third-party weights.  tv_ models use torchvision's architecture
code (BSD-3-Clause, Copyright (c) Soumith Chintala 2016, and contributors); tfl_keras_* uses
keras.applications (Apache-2.0).  They are released as CC0 by this project.

The following files are copied unchanged from PyPI wheels (benchmarks/corpus/fetch_wheels.py):

"""


def run(cmd):
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, cwd=ROOT)


def write_notice(out):
    import json
    es = json.load(open(os.path.join(out, "corpus.json")))
    lines = [NOTICE_HEAD]
    for e in es:
        if "PyPI wheel" in e["source"]:
            lines.append(f"- {e['file']}\n    from: {e['source']}\n    license: {e['license']}\n")
    lines.append(
        "\nmediapipe (https://github.com/google/mediapipe): Copyright Google LLC, Apache License 2.0.\n"
        "RapidOCR (https://github.com/RapidAI/RapidOCR): Apache License 2.0; the OCR models are\n"
        "PaddleOCR's (https://github.com/PaddlePaddle/PaddleOCR), Apache License 2.0.\n"
        "Full license text: https://www.apache.org/licenses/LICENSE-2.0 (also in each wheel's\n"
        "dist-info).\n")
    with open(os.path.join(out, "NOTICE"), "w") as f:
        f.write("\n".join(lines))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=os.path.join(ROOT, "tests", "data", "corpus"))
    ap.add_argument("--large-dir", default=os.path.expanduser("~/.cache/sqcc/corpus-large"))
    ap.add_argument("--torch-python", default="/work/corpus-venv/bin/python")
    ap.add_argument("--tf-python", default="/work/corpus-tf-venv/bin/python")
    ap.add_argument("--manifest-python", default=sys.executable,
                    help="an interpreter with onnx and tflite (the project's .venv has both)")
    ap.add_argument("--steps", default="torch,tflite,wheels,manifest")
    a = ap.parse_args(argv)
    steps = a.steps.split(",")
    os.makedirs(a.out, exist_ok=True)
    if "torch" in steps:
        run([a.torch_python, os.path.join(HERE, "export_torch.py"), "--out", a.out])
    if "tflite" in steps:
        run([a.tf_python, os.path.join(HERE, "export_tflite.py"), "--out", a.out])
    if "wheels" in steps:
        run([sys.executable, os.path.join(HERE, "fetch_wheels.py"), "--out", a.out,
             "--large-dir", a.large_dir])
    if "manifest" in steps:
        run([a.manifest_python, os.path.join(HERE, "manifest.py"), a.out])
        if os.path.isdir(os.path.join(a.large_dir, ".partial")) or os.path.exists(
                os.path.join(a.large_dir, "corpus.json")):
            run([a.manifest_python, os.path.join(HERE, "manifest.py"), a.large_dir])
        write_notice(a.out)


if __name__ == "__main__":
    main()
