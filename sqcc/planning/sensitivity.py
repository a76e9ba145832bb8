"""Measured end-to-end sensitivity of each layer: with calibration inputs, the allocation weights each
layer's squared error by it (KL of the logits per unit squared layer error, fitted on half of the
calibration images and measured on the other half), since per-layer relative error is a poor proxy
across layers."""
from __future__ import annotations

from .measure import mean_kl, predict_logits, split_activations
from .pricing import price
from .realisation import realise
from .spec import TECHNIQUES


def layer_sensitivity(mod, priced, activations, feeds, probe: float = 0.1, progress=None,
                      holdout: bool = True, techniques=TECHNIQUES, relu: int | None = None) -> dict:
    """{layer: s}: how much a layer's relative output error moves the model's predictions, measured.
    Per layer, the candidate whose error is nearest ``probe`` is applied alone, the model is built and
    run on ``feeds``, and s = KL(softmax(original logits) ‖ softmax(new logits)) / (layer error)²
    (KL is quadratic in small logit changes, so s·error² estimates each layer's share). One build
    per layer.

    With ``holdout`` (and one activation row per feed), the probe is *fitted* on the even-indexed
    calibration inputs and its KL *measured* on the odd-indexed ones: a data-aware fit judged on the
    images it was fitted to looks much better than it is on new images (SqueezeNet's conv10, 1000
    classes, most absent from a small calibration set, is the extreme case), and that
    generalisation gap is exactly what the allocation must see."""
    split = split_activations(activations, feeds) if holdout else None
    if split is not None:
        activations, feeds = split
        priced = price(mod, activations, techniques, True)
    ref = predict_logits(mod, feeds)
    out = {}
    for lf, cands in priced:
        if not cands:
            continue
        c = min(cands, key=lambda c: abs(c.error - probe))
        if c.error <= 0:
            continue
        new, _ = realise(mod, [c.step(lf.name, "data")], activations, relu=relu)
        y = predict_logits(new, feeds)
        kl = mean_kl(ref, y)
        out[lf.name] = kl / c.error ** 2
        if progress:
            progress(f"sensitivity {lf.name}: {out[lf.name]:.3g} ({c.technique} rank {c.rank}, "
                     f"layer error {c.error:.3f} → KL {kl:.4f}, top-1 kept "
                     f"{float((y.argmax(1) == ref.argmax(1)).mean()):.2f})")
    return out
