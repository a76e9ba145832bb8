"""Images → input tensors, by a model's :class:`~sqcc.models.Preprocess` recipe, and labelled folders.

A labelled folder has the layout of ``shared/data/imagenet-sample``: images plus ``labels.json``
mapping file name → class index.
"""
from __future__ import annotations

import json
import re
import warnings
from pathlib import Path

import numpy as np

from .errors import SqccError, one_line
from .models import Preprocess

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".ppm", ".pgm"}


# The ten-crop views of an image (Krizhevsky et al. 2012; torchvision's TenCrop), in the order calibration
# takes them: the evaluation view first, then its mirror, then the corners and their mirrors.
VIEWS = ("center", "center+flip", "top-left", "bottom-right+flip", "top-right", "bottom-left+flip",
         "bottom-right", "top-left+flip", "bottom-left", "top-right+flip")


def load_image(path, pre: Preprocess, dtype: str = "float32", quant: dict | None = None,
               view: str = "center") -> np.ndarray:
    """Decode ``path`` and return a batch-1 tensor in the model's layout and dtype. ``view`` (one of
    ``VIEWS``) picks the crop of the resized image and whether it is mirrored; "center" is the
    evaluation recipe (an image already at the input size has only the centre and its mirror)."""
    from PIL import Image, UnidentifiedImageError

    if view not in VIEWS:
        raise SqccError(f"unknown image view '{view}' (one of {', '.join(VIEWS)})")
    path = Path(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)  # PIL's "maybe a bomb": refuse
            with Image.open(path) as im:
                im.load()
                img = im.convert("L" if pre.mode in ("grey", "int8_bytes") or pre.size == (28, 28) else "RGB")
    except FileNotFoundError:
        raise SqccError(f"{path}: no such image") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        pixels = re.search(r"\((\d+) pixels\)", one_line(e))
        size = f"{pixels.group(1)} pixels" if pixels else one_line(e)
        raise SqccError(f"{path}: image too large to decode ({size})") from None
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise SqccError(f"{path}: cannot decode image ({e.__class__.__name__})") from None
    crop, _, flip = view.partition("+")
    h, w = pre.size
    if img.size != (w, h):
        # Resize the short side, then centre-crop (the torchvision/TF-slim evaluation recipe).
        scale = pre.resize / min(img.size)
        nw, nh = max(w, round(img.size[0] * scale)), max(h, round(img.size[1] * scale))
        img = img.resize((nw, nh), Image.BILINEAR)
        left, top = (nw - w) // 2, (nh - h) // 2
        if crop != "center":
            top = 0 if crop.startswith("top") else nh - h
            left = 0 if crop.endswith("left") else nw - w
        img = img.crop((left, top, left + w, top + h))
    if flip:
        img = img.transpose(Image.FLIP_LEFT_RIGHT)
    if pre.mode == "int8_bytes":
        x = np.asarray(img, dtype=np.uint8).view(np.int8)[:, :, None].astype(dtype)
        return (x.transpose(2, 0, 1) if pre.layout == "NCHW" else x)[None]
    x = np.asarray(img, dtype=np.float32)
    if x.ndim == 2:
        x = x[:, :, None]
    if pre.mode == "torch":
        x = (x / 255.0 - np.asarray(pre.mean, np.float32)) / np.asarray(pre.std, np.float32)
    elif pre.mode == "tf":
        x = x / 127.5 - 1.0
    elif pre.mode in ("raw", "grey"):
        pass
    else:
        raise SqccError(f"unknown preprocessing mode '{pre.mode}'")
    if dtype in ("int8", "uint8"):
        if quant and pre.mode in ("raw", "grey"):
            # Pixels as reals in [0, 1], quantised with the model's input scale and zero point
            # (person_detect: scale 1/255, zero point -128, i.e. TFLite Micro's pixel - 128).
            x = np.round(x / 255.0 / quant["scale"] + quant["zero_point"])
        elif quant:
            x = np.round(x / quant["scale"] + quant["zero_point"])
        elif dtype == "int8":
            x = x - 128
        info = np.iinfo(dtype)
        x = np.clip(x, info.min, info.max)
    x = x.astype(dtype)
    if pre.layout == "NCHW":
        x = x.transpose(2, 0, 1)
    return x[None]


def list_images(folder) -> list[Path]:
    folder = Path(folder)
    if not folder.is_dir():
        raise SqccError(f"{folder}: not a directory of images")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise SqccError(f"{folder}: contains no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
    return files


def load_labels(folder) -> dict[str, int] | None:
    f = Path(folder) / "labels.json"
    if not f.is_file():
        return None
    try:
        labels = json.loads(f.read_text())
        return {str(k): int(v) for k, v in labels.items()}
    except (ValueError, AttributeError, TypeError) as e:
        raise SqccError(f"{f}: not a JSON object mapping file name to class index ({e})") from None


def imagenet_classes() -> list[str] | None:
    from .models import shared_models_dir

    d = shared_models_dir()
    for cand in ([d.parent / "data" / "imagenet_classes.json"] if d else []):
        if cand.is_file():
            return json.loads(cand.read_text())
    return None


PREPROCESS_KEYS = ("mode", "size", "resize", "mean", "std", "layout", "class_offset", "labels")


def parse_preprocess(text: str) -> Preprocess:
    """``--preprocess "size=224,resize=256,mean=0.485,0.456,0.406,std=0.229,0.224,0.225,layout=NCHW"``
    → :class:`Preprocess`. A value without ``key=`` continues the previous key's list (mean, std,
    size as H,W). ``mode``: torch (x/255, (x−mean)/std; the default), tf (x/127.5 − 1), raw, grey."""
    fields, key = {}, None
    for tok in (t.strip() for t in text.split(",")):
        if not tok:
            continue
        if "=" in tok:
            key, _, val = tok.partition("=")
            key = key.strip()
            if key not in PREPROCESS_KEYS:
                raise SqccError(f"--preprocess: unknown key '{key}' (keys: {', '.join(PREPROCESS_KEYS)})")
            fields[key] = [val.strip()]
        elif key is None:
            raise SqccError(f"--preprocess: '{tok}' has no key (expected KEY=VALUE, ...)")
        else:
            fields[key].append(tok)
    try:
        return _preprocess_from_fields(fields)
    except ValueError as e:
        raise SqccError(f"--preprocess '{text}': {e}") from None


def _preprocess_from_fields(f: dict) -> Preprocess:
    def one(key, cast):
        if len(f[key]) != 1:
            raise ValueError(f"{key} takes one value")
        return cast(f[key][0])

    kw = {}
    if "size" in f:
        size = [int(v) for v in f["size"]]
        kw["size"] = (size[0], size[0]) if len(size) == 1 else tuple(size[:2])
    kw["resize"] = one("resize", int) if "resize" in f else max(kw.get("size", (224, 224)))
    for key in ("mean", "std"):
        if key in f:
            vals = tuple(float(v) for v in f[key])
            if len(vals) not in (1, 3):
                raise ValueError(f"{key} takes 1 or 3 values")
            kw[key] = vals * 3 if len(vals) == 1 else vals
    if "layout" in f:
        kw["layout"] = one("layout", str).upper()
        if kw["layout"] not in ("NCHW", "NHWC"):
            raise ValueError("layout is NCHW or NHWC")
    if "mode" in f:
        kw["mode"] = one("mode", str)
        if kw["mode"] not in ("torch", "tf", "raw", "grey"):
            raise ValueError("mode is torch, tf, raw or grey")
    if "class_offset" in f:
        kw["class_offset"] = one("class_offset", int)
    kw["labels"] = one("labels", str) if "labels" in f else "none"
    if any(v <= 0 for v in kw.get("size", (1,))) or kw["resize"] <= 0:
        raise ValueError("size and resize must be positive")
    return Preprocess(**kw)
