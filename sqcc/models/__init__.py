"""Named models and how to feed them.

``squeezenet1.1`` is bundled with the package (see NOTICE). The other names resolve to the project's
shared model folder (``../shared/models`` beside a checkout, or ``$SQCC_MODELS``) when it is present.
Each entry says how an image becomes an input tensor, so ``sqcc run --image`` needs no flags.
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent


@dataclass(frozen=True)
class Preprocess:
    """Image → tensor recipe.

    ``mode``: ``torch`` (x/255, then (x-mean)/std), ``tf`` (x/127.5 - 1), ``raw`` (pixel values,
    cast to the input dtype; int8 models shift by -128), ``grey`` (one channel, raw pixels),
    ``int8_bytes`` (one channel whose bytes already are the model's int8 input, as in TFLite Micro's
    test images).
    ``resize``: short side before the centre crop; ``size``: crop (H, W).
    ``class_offset``: subtract from output indices to get ImageNet-1000 indices (1 when index 0 is
    'background').
    """

    mode: str = "torch"
    size: tuple = (224, 224)
    resize: int = 256
    mean: tuple = (0.485, 0.456, 0.406)
    std: tuple = (0.229, 0.224, 0.225)
    layout: str = "NCHW"
    class_offset: int = 0
    labels: str = "imagenet"

    def to_json(self):
        return asdict(self)

    @classmethod
    def from_json(cls, d):
        if d is None:
            return None
        known = {f.name for f in dataclasses.fields(cls)}
        d = {k: v for k, v in d.items() if k in known}  # a newer sqcc's extra keys are not ours to read
        d["size"] = tuple(d.get("size", (224, 224)))
        d["mean"] = tuple(d.get("mean", ()))
        d["std"] = tuple(d.get("std", ()))
        return cls(**d)


@dataclass(frozen=True)
class ModelEntry:
    name: str
    filename: str
    description: str
    preprocess: Preprocess | None = None
    bundled: bool = False
    expected_top1: float | None = None  # on shared/data/imagenet-sample, onnxruntime
    extra: dict = field(default_factory=dict)


TORCH_224 = Preprocess()
TF = dict(mode="tf", mean=(), std=())

REGISTRY = {
    e.name: e
    for e in [
        ModelEntry("squeezenet1.1", "squeezenet1.1.onnx", "SqueezeNet 1.1, ImageNet (ONNX model zoo weights)",
                   TORCH_224, bundled=True, expected_top1=0.640),
        ModelEntry("squeezenet1.1-tflite", "squeezenet1.1.tflite", "SqueezeNet 1.1, float TFLite (NHWC)",
                   Preprocess(layout="NHWC"), expected_top1=0.640),
        ModelEntry("squeezenet1.0", "squeezenet1.0.onnx", "SqueezeNet 1.0 (TFLite-hosted weights), 1001 classes",
                   Preprocess(**TF, class_offset=1), expected_top1=0.370),
        ModelEntry("mobilenet_v1_0.5_160", "mobilenet_v1_0.5_160.onnx", "MobileNet v1 0.5/160, 1001 classes",
                   Preprocess(**TF, size=(160, 160), resize=183, class_offset=1), expected_top1=0.680),
        ModelEntry("mnist-8", "mnist-8.onnx", "ONNX model zoo MNIST CNN",
                   Preprocess(mode="raw", size=(28, 28), resize=28, mean=(), std=(), labels="digits")),
        # TFLite Micro's test images store the model's int8 input bytes (pixel - 128) as a grey BMP.
        ModelEntry("person_detect", "person_detect.tflite", "TFLite Micro person detection, int8, 96x96 grey",
                   Preprocess(mode="int8_bytes", size=(96, 96), resize=96, mean=(), std=(), layout="NHWC",
                              labels="person")),
        ModelEntry("micro_speech", "micro_speech_quantized.tflite", "TFLite Micro yes/no keyword spotting, int8"),
    ]
}

LABELS = {
    "digits": [str(i) for i in range(10)],
    "person": ["no person", "person"],
}


def shared_models_dir() -> Path | None:
    """The shared model folder: $SQCC_MODELS, else ../shared/models beside the checkout or the cwd."""
    env = os.environ.get("SQCC_MODELS")
    cands = [Path(env)] if env else []
    cands += [HERE.parents[2] / "shared" / "models", Path.cwd().parent / "shared" / "models",
              Path.cwd() / "shared" / "models"]
    for c in cands:
        if c.is_dir():
            return c
    return None


def entry_for_path(path: Path) -> ModelEntry | None:
    """The registry entry whose file has this name (so a path to a known model gets its preprocessing)."""
    for e in REGISTRY.values():
        if e.filename == path.name:
            return e
    return None


def resolve(name_or_path) -> tuple[Path, ModelEntry | None]:
    """A model name or path → (existing file path, registry entry or None). Raises SqccError."""
    from ..errors import SqccError

    p = Path(name_or_path).expanduser()
    if p.is_file():
        return p, entry_for_path(p)
    if p.exists():
        raise SqccError(f"{p}: is a directory, not a model file (.onnx or .tflite)")
    entry = REGISTRY.get(str(name_or_path))
    if entry is not None:
        if entry.bundled:
            return HERE / entry.filename, entry
        d = shared_models_dir()
        if d is not None and (d / entry.filename).is_file():
            return d / entry.filename, entry
        raise SqccError(f"model '{entry.name}' is not bundled; put {entry.filename} in $SQCC_MODELS "
                        f"or ../shared/models, or pass its path")
    known = ", ".join(sorted(REGISTRY))
    raise SqccError(f"{name_or_path}: no such file, and not a known model name ({known})")
