"""Measuring a model the way the planner judges it: its MAC and parameter totals, its logits on
calibration or evaluation inputs (built for the host), how far its predictions moved from the
original's (mean KL of the softmaxes), and the even/odd split of the calibration inputs that lets a
fit be judged on inputs it was not fitted to."""
from __future__ import annotations

import numpy as np
import tvm
from tvm import relax

from ..build import build
from ..layers import layers, totals


def model_totals(mod) -> tuple[int, int]:
    """(MACs, params) of the whole model."""
    t = totals(layers(mod))
    return t["macs"], t["params"]


def build_runner(mod):
    """``run(feed) → logits``: ``mod`` built for the host and run on one ``{input: array}`` feed."""
    ex = build(mod, "host")
    vm = relax.VirtualMachine(ex, tvm.cpu())
    names = [p.name for p in mod["main"].params]

    def run(feed):
        out = vm["main"](*[tvm.runtime.tensor(np.ascontiguousarray(feed[n])) for n in names])
        if hasattr(out, "numpy"):
            return out.numpy()
        return out[0].numpy()

    return run


def predict_logits(mod, feeds, progress=None, label="") -> np.ndarray:
    """The logits of ``mod`` on every feed, one flattened row each (one build)."""
    run = build_runner(mod)
    out = []
    for k, f in enumerate(feeds):
        out.append(np.asarray(run(f)).reshape(-1))
        if progress and (k + 1) % 50 == 0:
            progress(f"{label} {k + 1}/{len(feeds)}")
    return np.stack(out)


def mean_kl(ref, y) -> float:
    """Mean KL(softmax(ref) ‖ softmax(y)) over rows: how far the predictions moved."""
    def logsm(z):
        z = z - z.max(1, keepdims=True)
        return z - np.log(np.exp(z).sum(1, keepdims=True))
    lp, lq = logsm(np.asarray(ref, np.float64)), logsm(np.asarray(y, np.float64))
    return float((np.exp(lp) * (lp - lq)).sum(1).mean())


def split_activations(activations, feeds):
    """(activations of the even-indexed feeds, the odd-indexed feeds), or None when the activations
    are not one row per feed (then no split is possible)."""
    n = len(feeds)
    if n < 4 or not activations or any(len(v) != n for v in activations.values()):
        return None
    return {k: v[0::2] for k, v in activations.items()}, list(feeds)[1::2]
