"""Image cases for ``sqcc run --image`` and image calibration folders: a real photo re-encoded in
every PIL mode a user's file can have (grey, grey+alpha, RGBA, palette, CMYK JPEG, 16-bit, 1-bit,
float TIFF), 1×1 and sliver images, truncated JPEG/PNG, headers that declare huge dimensions
(decompression bombs that stop at the header), byte-level damage, and files that are not images.
Valid images in any mode must run; everything else must be one clean error. The packages are
mnist-8 (28×28 grey), person_detect (int8 96×96 grey) and SqueezeNet 1.1 (224×224 RGB)."""
from __future__ import annotations

import io
import struct
import zlib

from . import mutate
from .assets import IMAGES
from .case import Case

PKG_WEIGHTS = {"mnist": 4, "person": 2, "squeezenet": 1}


def _pkg(ctx) -> str:
    names = list(PKG_WEIGHTS)
    return str(ctx.assets.package(ctx.rng.choices(names, weights=list(PKG_WEIGHTS.values()))[0]))


def _photo(ctx, size=None):
    from PIL import Image

    im = Image.open(io.BytesIO(ctx.assets.read(IMAGES["jpeg"])))
    im.load()
    return im.resize(size) if size else im


def _encode(im, fmt) -> bytes:
    b = io.BytesIO()
    im.save(b, format=fmt)
    return b.getvalue()


def _run(ctx, path, expect=None, what="") -> Case:
    return Case("image." + what.split(":")[0], what, argv=["run", _pkg(ctx), "--image", path], expect=expect)


def modes(ctx) -> Case:
    """The photo in another mode and format; a decodable image must run."""
    im = _photo(ctx)
    mode, fmt, ok = ctx.rng.choice([("L", "PNG", 1), ("LA", "PNG", 1), ("RGBA", "PNG", 1), ("P", "GIF", 1),
                                    ("CMYK", "JPEG", 1), ("I;16", "PNG", 0), ("1", "BMP", 1), ("F", "TIFF", 0),
                                    ("RGB", "WEBP", 1), ("I", "TIFF", 0), ("YCbCr", "JPEG", 1)])
    conv = im.convert("I") if mode == "I;16" else im.convert(mode)
    if mode == "I;16":
        conv = conv.point(lambda v: v * 200).convert("I;16")
    ext = {"PNG": "png", "GIF": "gif", "JPEG": "jpg", "BMP": "bmp", "TIFF": "tif", "WEBP": "webp"}[fmt]
    p = ctx.write(f"img.{ext}", _encode(conv, fmt))
    return _run(ctx, p, expect="success" if ok else None, what=f"modes: {mode} {fmt}")


def tiny(ctx) -> Case:
    """1×1, 1×N and N×1 images (a resize by the short side blows them up or divides by zero)."""
    size = ctx.rng.choice([(1, 1), (1, 500), (500, 1), (2, 2), (3, 1000)])
    p = ctx.write("tiny.png", _encode(_photo(ctx, size), "PNG"))
    return _run(ctx, p, expect="success", what=f"tiny: {size[0]}x{size[1]}")


def truncated(ctx) -> Case:
    """A JPEG or PNG cut short (headers intact, pixel data missing, or the header itself cut)."""
    fmt = ctx.rng.choice(["JPEG", "PNG"])
    data = _encode(_photo(ctx), fmt)
    cut = ctx.rng.choice([8, 30, 200, len(data) // 2, len(data) - 10])
    p = ctx.write("cut." + ("jpg" if fmt == "JPEG" else "png"), data[:cut])
    return _run(ctx, p, what=f"truncated: {fmt} cut at {cut} of {len(data)} bytes")


def _png_with_size(data: bytes, w: int, h: int) -> bytes:
    """The PNG with its IHDR width/height replaced (CRC recomputed, so only the size lies)."""
    buf = bytearray(data)
    struct.pack_into(">II", buf, 16, w, h)
    struct.pack_into(">I", buf, 29, zlib.crc32(bytes(buf[12:29])) & 0xFFFFFFFF)
    return bytes(buf)


def _jpeg_with_size(data: bytes, w: int, h: int) -> bytes:
    buf = bytearray(data)
    for marker in (b"\xff\xc0", b"\xff\xc2"):
        k = buf.find(marker)
        if k >= 0:
            struct.pack_into(">HH", buf, k + 5, h, w)
            break
    return bytes(buf)


def huge_header(ctx) -> Case:
    """A small file whose header declares 65535², 20000², 10000² or 2^31-1 pixels (or 0)."""
    w, h = ctx.rng.choice([(65535, 65535), (20000, 20000), (10000, 10000), (2**31 - 1, 1), (0, 0), (1, 2**31 - 1)])
    if ctx.rng.random() < 0.6:
        p = ctx.write("bomb.png", _png_with_size(_encode(_photo(ctx, (64, 64)), "PNG"), w, h))
        fmt = "PNG"
    else:
        w, h = min(w, 65535), min(h, 65535)
        p = ctx.write("bomb.jpg", _jpeg_with_size(_encode(_photo(ctx, (64, 64)), "JPEG"), w, h))
        fmt = "JPEG"
    return _run(ctx, p, what=f"huge_header: {fmt} declares {w}x{h}")


def bytes_(ctx) -> Case:
    """Byte-level damage of a JPEG, PNG or BMP."""
    fmt = ctx.rng.choice(["JPEG", "PNG", "BMP"])
    src = ctx.assets.read(IMAGES["bmp"]) if fmt == "BMP" else _encode(_photo(ctx, (96, 96)), fmt)
    data, what = mutate.mutate(src, ctx.rng)
    p = ctx.write("img." + {"JPEG": "jpg", "PNG": "png", "BMP": "bmp"}[fmt], data)
    return _run(ctx, p, what=f"bytes: {fmt}: {what}")


def not_image(ctx) -> Case:
    """Text named .jpg, an empty .png, a directory named .png, /dev/null, /dev/zero, a missing file."""
    how = ctx.rng.choice(["text", "empty", "dir", "dev_null", "dev_zero", "missing", "svg"])
    path = {"dev_null": "/dev/null", "dev_zero": "/dev/zero", "missing": "nope.jpg"}.get(how)
    if how == "text":
        path = ctx.write("x.jpg", b"hello, I am not a JPEG\n")
    elif how == "empty":
        path = ctx.write("x.png", b"")
    elif how == "svg":
        path = ctx.write("x.svg", b'<svg xmlns="http://www.w3.org/2000/svg" width="1e9" height="1e9"/>')
    elif how == "dir":
        (ctx.dir / "d.png").mkdir()
        ctx.written.append("d.png")
        path = "d.png"
    return _run(ctx, path, what=f"not_image: {how}")


def calibration(ctx) -> Case:
    """An image calibration folder holding one damaged or odd image among good ones."""
    good = _encode(_photo(ctx, (40, 40)), "PNG")
    ctx.write("calib/a.png", good)
    bad = ctx.rng.choice(["truncated", "text", "empty", "bomb", "cmyk"])
    data = {"truncated": good[: len(good) // 3], "text": b"not an image", "empty": b"",
            "bomb": _png_with_size(good, 65535, 65535),
            "cmyk": _encode(_photo(ctx, (40, 40)).convert("CMYK"), "JPEG")}[bad]
    ctx.write("calib/b." + ("jpg" if bad == "cmyk" else "png"), data)
    argv = ["compile", "mnist-8", "--calibration", "calib", "-o", "out.tar", "--no-check"]
    return Case("image.calibration", f"calibration: one {bad} image beside a good one", argv=argv,
                expect="success" if bad == "cmyk" else None)


GENERATORS = {
    "image.modes": (modes, 3), "image.tiny": (tiny, 1), "image.truncated": (truncated, 2),
    "image.huge_header": (huge_header, 2), "image.bytes": (bytes_, 3), "image.not_image": (not_image, 1),
    "image.calibration": (calibration, 1),
}
