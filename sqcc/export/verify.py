"""An exported file is checked by running it: the peer runtime's outputs against the package's own on
the same inputs, every output, before anything is written."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np

from ..errors import SqccError, one_line
from ..fidelity import FLOAT_TOLERANCE, output_errors


def random_feed(specs, seed: int = 0) -> dict:
    """Uniform [0, 1) floats (full-range integers) for each input spec, as the compile check feeds."""
    rng = np.random.default_rng(seed)
    feed = {}
    for s in specs:
        if str(s.dtype).startswith("float"):
            feed[s.name] = rng.random(s.shape, dtype=np.float32).astype(s.dtype)
        else:
            info = np.iinfo(s.dtype)
            feed[s.name] = rng.integers(info.min, info.max + 1, s.shape).astype(s.dtype)
    return feed


def onnx_session(model_bytes: bytes, pkg, threads: int = 1):
    """onnxruntime (CPU, sequential) on exported bytes, with the package's input/output specs."""
    from ..reference import OnnxRuntimeSession

    model = SimpleNamespace(source=model_bytes, name="the exported ONNX file", inputs=pkg.inputs,
                            outputs=pkg.outputs)
    return OnnxRuntimeSession(model, threads=threads)


def compare(pkg, peer, feeds, what: str, tolerance=None) -> dict:
    """Worst errors of ``peer.run(feed)`` against ``pkg.run(feed)`` over ``feeds``, per output; a
    miss (``tolerance(output index) -> (limit, unit, key)``; default 1e-4 of the largest magnitude)
    is one SqccError."""
    tolerance = tolerance or (lambda k: (FLOAT_TOLERANCE, "of its largest magnitude", "max_rel"))
    worst: dict = {}
    for feed in feeds:
        ours = pkg.run(feed)
        ours = ours if isinstance(ours, list) else [ours]
        try:
            theirs = peer.run(feed)
        except SqccError:
            raise
        except Exception as e:  # noqa: BLE001  (the runtime's own error: one line)
            raise SqccError(f"{what} does not run in {peer.name}: {one_line(e)}") from e
        for k, (o, t) in enumerate(zip(ours, theirs)):
            name = pkg.outputs[k].name
            if np.shape(o) != np.shape(t):
                raise SqccError(f"{what}: output '{name}' has shape {list(np.shape(t))}, the package "
                                f"{list(np.shape(o))}")
            e = output_errors(t, o)
            w = worst.setdefault(name, {"max_abs": 0.0, "max_rel": 0.0})
            w["max_abs"], w["max_rel"] = max(w["max_abs"], e["max_abs"]), max(w["max_rel"], e["max_rel"])
    for k, (name, w) in enumerate(worst.items()):
        limit, unit, key = tolerance(k)
        w["limit"] = f"{key.replace('max_', '')} {limit:.3g} {unit}"
        if not w[key] <= limit:
            raise SqccError(f"{what} does not match the package: output '{name}' differs by {w[key]:.3g} "
                            f"(> {limit:.3g} {unit}) in {peer.name}; nothing written")
    return {"inputs": len(feeds), "runtime": peer.name, "outputs": worst}


def image_feeds(pkg, folder, limit: int = 8) -> list[dict]:
    """Feeds of up to ``limit`` images of ``folder`` by the package's recipe (first input)."""
    from ..preprocess import list_images, load_image

    pre = pkg.preprocess
    if pre is None:
        raise SqccError(f"--check-images {folder}: the package has no preprocessing recipe to feed images")
    spec = pkg.inputs[0]
    q = (pkg.manifest.get("quant") or {}).get("inputs", [None])[0]
    files = list_images(folder)[: max(1, int(limit))]
    feeds = []
    for f in files:
        feed = random_feed(pkg.inputs, seed=0)
        feed[spec.name] = load_image(f, pre, spec.dtype, q)
        feeds.append(feed)
    return feeds
