"""Feed-file cases: what ``sqcc run --input`` and ``sqcc compile --calibration DIR`` read — ``.npy``,
``.npz`` and ONNX TensorProto ``.pb`` files — with the wrong dtype or shape, truncated or damaged,
with hand-made headers that lie (huge shapes, unknown dtypes), object arrays whose pickle would run
code when loaded (a canary file shows whether sqcc unpickled it: it must never), TensorProtos with
external data outside the folder, and files that are not regular files. Valid feeds are cases too,
with the reference output to match."""
from __future__ import annotations

import io
import os
import pickle

from . import mutate
from .assets import MNIST_FEEDS
from .case import Case

SHAPE = (1, 1, 28, 28)  # mnist-8's input


def _npy(arr, allow_pickle=False) -> bytes:
    import numpy as np

    b = io.BytesIO()
    np.save(b, arr, allow_pickle=allow_pickle)
    return b.getvalue()


def _pb_array(path):
    from onnx import TensorProto, numpy_helper

    t = TensorProto()
    t.ParseFromString(open(path, "rb").read())
    return numpy_helper.to_array(t)


def _run(ctx, feed: str) -> list:
    return ["run", str(ctx.assets.package("mnist")), "--input", feed, "--output", "out.npy"]


def _calibrate(ctx, folder: str) -> list:
    return ["compile", "mnist-8", "--calibration", folder, "-o", "out.tar", "--no-check"]


class Canary:
    """Unpickling this calls open(name, 'w'): the file appears iff the pickle was executed."""

    def __init__(self, name):
        self.name = name

    def __reduce__(self):
        return (open, (self.name, "w"))


def valid(ctx) -> Case:
    """A real mnist input as .pb or .npy (float32 or float64): must run and match the reference."""
    k = ctx.rng.randrange(len(MNIST_FEEDS))
    src, ref = MNIST_FEEDS[k]
    fmt = ctx.rng.choice(["pb", "npy", "npy64", "npy_f_order"])
    if fmt == "pb":
        feed = ctx.write(f"set{k}.pb", ctx.assets.read(src))
    else:
        import numpy as np

        arr = _pb_array(src).astype("float64" if fmt == "npy64" else "float32")
        feed = ctx.write(f"set{k}.npy", _npy(np.asfortranarray(arr) if fmt == "npy_f_order" else arr))
    ref_kind = {"kind": "npy_close", "file": "out.npy", "ref": str(ref), "atol": 1e-3}
    return Case("feed.valid", f"mnist set{k} input as {fmt}", argv=_run(ctx, feed), expect="success",
                reference=ref_kind)


def dtype(ctx) -> Case:
    """The right shape in another dtype: casts that work, lose data, or cannot be done."""
    import numpy as np

    dt = ctx.rng.choice(["float16", "int64", "uint8", "bool", "complex64", "<U4", "datetime64[s]",
                         ">f4", "V8", "f4,f4"])
    arr = np.zeros(SHAPE, dtype=dt)
    return Case("feed.dtype", f".npy of dtype {dt}", argv=_run(ctx, ctx.write("x.npy", _npy(arr))))


def shape(ctx) -> Case:
    """The right dtype in a wrong shape (rank, size, empty, scalar, batch 2)."""
    import numpy as np

    shp = ctx.rng.choice([(1, 28, 28), (1, 1, 28, 29), (0,), (), (1, 1, 28, 28, 1), (2, 1, 28, 28), (784,)])
    arr = np.zeros(shp, dtype="float32")
    return Case("feed.shape", f".npy of shape {shp}", argv=_run(ctx, ctx.write("x.npy", _npy(arr))))


def bytes_(ctx) -> Case:
    """Byte-level damage of a real feed (.pb) or of a valid .npy."""
    src, _ = MNIST_FEEDS[0]
    if ctx.rng.random() < 0.5:
        data, what = mutate.mutate(ctx.assets.read(src), ctx.rng)
        name = "x.pb"
    else:
        data, what = mutate.mutate(_npy(_pb_array(src)), ctx.rng)
        name = "x.npy"
    return Case("feed.bytes", f"{name}: {what}", argv=_run(ctx, ctx.write(name, data)))


def npy_header(ctx) -> Case:
    """A hand-written .npy header that lies: huge shape over no data, unknown dtype, huge header
    length, a future format version, or a header that is not a dict literal."""
    how = ctx.rng.choice(["huge_shape", "bad_descr", "header_len", "version", "not_dict", "neg_shape"])
    body = {"huge_shape": "{'descr': '<f4', 'fortran_order': False, 'shape': (1099511627776, 1, 28, 28), }",
            "neg_shape": "{'descr': '<f4', 'fortran_order': False, 'shape': (1, 1, -28, 28), }",
            "bad_descr": "{'descr': '<x9', 'fortran_order': False, 'shape': (1, 1, 28, 28), }",
            "not_dict": "__import__('os').system('touch PWNED')",
            }.get(how, "{'descr': '<f4', 'fortran_order': False, 'shape': (1, 1, 28, 28), }")
    header = body.encode().ljust(118) + b"\n"
    version, hlen = b"\x01\x00", len(header).to_bytes(2, "little")
    if how == "version":
        version = b"\x09\x00"
    if how == "header_len":
        hlen = b"\xff\xff"
    data = b"\x93NUMPY" + version + hlen + header + b"\0" * 64
    return Case("feed.npy_header", f".npy header: {how}", argv=_run(ctx, ctx.write("x.npy", data)),
                canary="PWNED")


def pickled(ctx) -> Case:
    """An object-array .npy (or .npz, for calibration) whose pickle would create a canary file."""
    import numpy as np

    arr = np.empty(SHAPE, dtype=object)
    arr.flat[0] = Canary("PWNED")
    if ctx.rng.random() < 0.6:
        return Case("feed.pickle", "object-array .npy with a pickled payload", canary="PWNED",
                    argv=_run(ctx, ctx.write("x.npy", _npy(arr, allow_pickle=True))))
    b = io.BytesIO()
    np.savez(b, Input3=arr)
    ctx.write("calib/a.npz", b.getvalue())
    if ctx.rng.random() < 0.5:  # a raw pickle named .npy beside it
        ctx.write("calib/b.npy", pickle.dumps(Canary("PWNED")))
    return Case("feed.pickle", "calibration folder with a pickled object-array .npz", canary="PWNED",
                argv=_calibrate(ctx, "calib"))


def tensorproto(ctx) -> Case:
    """A TensorProto whose dims disagree with its data, with no or an unknown type, huge dims, or
    data in an external file outside the folder."""
    from onnx import TensorProto

    t = TensorProto()
    t.ParseFromString(ctx.assets.read(MNIST_FEEDS[0][0]))
    how = ctx.rng.choice(["dims", "no_type", "unknown_type", "string", "huge", "external", "float_data"])
    if how == "dims":
        t.dims[3] = 29
    elif how in ("no_type", "unknown_type", "string"):
        t.data_type = {"no_type": 0, "unknown_type": 999, "string": TensorProto.STRING}[how]
    elif how == "huge":
        t.dims[:] = [2**31, 2**31, 1, 1]
    elif how == "external":
        t.ClearField("raw_data")
        t.data_location = TensorProto.EXTERNAL
        e = t.external_data.add()
        e.key, e.value = "location", ctx.rng.choice(["/etc/passwd", "../../../../etc/passwd", "/dev/zero"])
    else:
        t.float_data.extend([1.0, 2.0])
    return Case("feed.tensorproto", f"TensorProto .pb: {how}",
                argv=_run(ctx, ctx.write("x.pb", t.SerializeToString())))


def npz_calibration(ctx) -> Case:
    """A calibration folder of .npz feeds: wrong key, extra arrays, empty archive, a member that is
    not .npy, truncated zip."""
    import zipfile

    import numpy as np

    arr = _pb_array(MNIST_FEEDS[0][0])
    how = ctx.rng.choice(["wrong_key", "extra", "empty", "not_npy", "truncated", "valid"])
    b = io.BytesIO()
    if how in ("wrong_key", "extra", "valid"):
        arrays = {"wrong": arr} if how == "wrong_key" else {"Input3": arr}
        if how == "extra":
            arrays["Other"] = arr
        np.savez(b, **arrays)
    else:
        with zipfile.ZipFile(b, "w") as z:
            if how == "not_npy":
                z.writestr("Input3.npy", b"this is not an npy file")
            elif how == "truncated":
                z.writestr("Input3.npy", _npy(arr))
    data = b.getvalue()
    if how == "truncated":
        data = data[: len(data) // 2]
    ctx.write("calib/feed.npz", data)
    return Case("feed.npz_calibration", f"calibration .npz: {how}", argv=_calibrate(ctx, "calib"),
                expect="success" if how == "valid" else None)


def not_regular(ctx) -> Case:
    """--input naming a directory, a FIFO, /dev/zero, a missing file, or a file of another suffix."""
    how = ctx.rng.choice(["dir", "fifo", "dev_zero", "missing", "npz", "txt"])
    name = {"dir": "d.npy", "fifo": "f.npy", "dev_zero": "/dev/zero", "missing": "nothing.npy",
            "npz": "x.npz", "txt": "x.txt"}[how]
    if how == "dir":
        (ctx.dir / name).mkdir()
        ctx.written.append(name)
    elif how == "fifo":
        os.mkfifo(ctx.dir / name)
        ctx.written.append(name)
    elif how in ("npz", "txt"):
        ctx.write(name, b"PK\x03\x04" if how == "npz" else b"1 2 3\n")
    return Case("feed.not_regular", f"--input {how}", argv=_run(ctx, name))


GENERATORS = {
    "feed.valid": (valid, 2), "feed.dtype": (dtype, 2), "feed.shape": (shape, 1), "feed.bytes": (bytes_, 3),
    "feed.npy_header": (npy_header, 2), "feed.pickle": (pickled, 2), "feed.tensorproto": (tensorproto, 2),
    "feed.npz_calibration": (npz_calibration, 2), "feed.not_regular": (not_regular, 1),
}
