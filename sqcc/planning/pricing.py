"""Pricing: every conv/matmul with a constant weight gets a list of candidate rewrites — lowrank
(weight/channel SVD at every rank that saves MACs; spatial SVD on a grid of ranks), dwsep
(multipliers in half steps below full, the filters shared out by energy), flatten (a few term
counts), and poolhoist where it matches — each priced by the exact MACs/params of its replacement
chain and its error: with calibration activations the relative output error ‖(W − Ŵ)P‖/‖WP‖ on the
real input patches of the layer (data-aware fits); without, the relative weight error (weight-only
fits). Pricing is the expensive part of allocation and is reused across budgets."""
from __future__ import annotations

import math

import numpy as np

from .. import passes
from ..calibrate import collect_activations
from ..passes._factor import chain_cost, layer_from_conv, layer_from_matmul, output_error, weight_error
from ..passes.base import apply_rewriter, make_conv_rewriter
from ..passes.dwsep import fit_dwsep
from ..passes.flatten import fit_flatten
from ..passes.low_rank import _channel_spectra, fit_spatial
from ..passes.pool_hoist import find_hoistable
from .measure import mean_kl, predict_logits
from .plan import Candidate
from .spec import TECHNIQUES, allows

HOIST_WINDOWS = (2, 3, 0)  # poolhoist windows priced (0: the whole map)


def layer_fits(mod, activations=None) -> list:
    """LayerFit for every conv2d/matmul with a constant weight (Σ attached where activations exist)."""
    ctx = passes.PassContext(activations=activations)
    out = []

    def on_conv(builder, conv):
        out.append(layer_from_conv(ctx, conv, activations is not None))
        return None  # nothing is rewritten: the rewriter only visits the layers

    def on_matmul(builder, name, x, w):
        out.append(layer_from_matmul(ctx, name, tuple(int(d) for d in x.ty.shape), w,
                                     activations is not None))
        return None

    apply_rewriter(mod, make_conv_rewriter(on_conv, on_matmul))
    return out


def _rank_grid(lo: int, hi: int, k: int = 20) -> list[int]:
    """Up to ~k ranks in [lo, hi]: all of them when few, else a mix of linear and geometric steps."""
    if hi < lo:
        return []
    if hi - lo + 1 <= k:
        return list(range(lo, hi + 1))
    geo = np.unique(np.round(np.geomspace(lo, hi, k // 2)).astype(int))
    lin = np.unique(np.round(np.linspace(lo, hi, k // 2)).astype(int))
    return sorted(set(geo.tolist()) | set(lin.tolist()))


def _fit_error(layer, f, data: bool) -> float:
    """A fitted factorisation's relative output error on the calibration patches (``data``), else
    (or where the output error is not available) its relative weight error."""
    e = output_error(layer, f.dense) if data else None
    return e if e is not None else weight_error(layer, f.dense)


def _svd_candidates(layer, tech: str, data: bool) -> list[Candidate]:
    """Channel/weight SVD: MACs and error in closed form for every rank that saves MACs."""
    n, cg, kh, kw = layer.weight.shape
    g = layer.groups
    d = cg * kh * kw
    full = min(n // g, d)
    if layer.kind == "matmul":
        rows = int(np.prod(layer.in_shape[:-1]))
        macs_r = lambda r: rows * r * (d + n)  # noqa: E731
        params_r = lambda r: r * (d + n)  # noqa: E731
    else:
        bsz, _, ho, wo = layer.out_shape
        macs_r = lambda r: bsz * ho * wo * (g * r * d + n * r)  # noqa: E731
        params_r = lambda r: g * r * d + n * r  # noqa: E731
    spectra = _channel_spectra(layer, data)
    if data:  # output energy E‖Wp‖² (the centred spectra leave out what the bias correction fixes)
        tot = sum(float(np.sum((wg @ layer.cov[i]) * wg)) for i, wg in enumerate(layer.group_matrices()))
    else:
        tot = sum(float(lam.sum()) for lam, _ in spectra)
    out = []
    for r in range(1, full):
        m = macs_r(r)
        if m >= layer.macs:
            break
        lost = sum(float(lam[r:].sum()) for lam, _ in spectra)
        out.append(Candidate(tech, r, int(m), int(params_r(r)), math.sqrt(max(lost, 0) / tot) if tot else 0.0))
    return out


def _spatial_candidates(layer, data: bool) -> list[Candidate]:
    """Spatial SVD (Kh×1 then 1×Kw) on a grid of up to 14 ranks that save MACs."""
    n, cg, kh, kw = layer.weight.shape
    full_s = min(cg * kh, (n // layer.groups) * kw)
    # MACs grow linearly in r: find the largest r that still saves MACs
    f1 = fit_spatial(layer, 1, None, data)
    m1, _ = chain_cost(layer, f1)
    rmax = min(full_s - 1, int((layer.macs - 1) // max(m1, 1)))
    out = []
    for r in _rank_grid(1, rmax, 14):
        f = f1 if r == 1 else fit_spatial(layer, r, None, data)
        m, p = chain_cost(layer, f)
        if m < layer.macs:
            out.append(Candidate("lowrank:spatial", r, m, p, _fit_error(layer, f, data)))
    return out


def _dwsep_candidates(layer, data: bool) -> list[Candidate]:
    """Depthwise-separable at multipliers in half steps: the filters are shared out by energy, so any
    C·M count is a candidate."""
    n, _, kh, kw = layer.weight.shape
    mults = [int(m) if m == int(m) else float(m)
             for m in np.arange(0.5, min(n // layer.groups, kh * kw), 0.5)]
    return _price_settings(layer, "dwsep", mults, lambda mlt: fit_dwsep(layer, mlt, data), data)


def _flatten_candidates(layer, data: bool) -> list[Candidate]:
    """Flattened 1-D convolutions with 1, 2, 3, 4 or 6 terms per filter (30 CP-ALS iterations)."""
    _, cg, kh, kw = layer.weight.shape
    terms = [rr for rr in (1, 2, 3, 4, 6) if rr < kh * min(cg, kw)]  # exact beyond: nothing to price
    return _price_settings(layer, "flatten", terms,
                           lambda rr: fit_flatten(layer, rr, data, iters=30, restarts=0), data)


def _price_settings(layer, technique: str, settings, fit, data: bool) -> list[Candidate]:
    """A Candidate per setting, in increasing cost, until the fit does not apply (it returns its
    reason, a str) or the chain no longer saves MACs."""
    out = []
    for setting in settings:
        f = fit(setting)
        if isinstance(f, str):
            break
        m, p = chain_cost(layer, f)
        if m >= layer.macs:
            break
        out.append(Candidate(technique, setting, m, p, _fit_error(layer, f, data)))
    return out


def candidates(layer, techniques=TECHNIQUES, use_data=True) -> list[Candidate]:
    """Priced rewrites of one layer that use fewer MACs than it."""
    data = use_data and layer.cov is not None
    techniques = set(techniques)
    n, cg, kh, kw = layer.weight.shape
    ng = n // layer.groups
    out: list[Candidate] = []
    tech = "lowrank:weight" if (kh, kw) == (1, 1) else "lowrank:channel"
    if allows(techniques, tech) or (layer.kind == "matmul" and allows(techniques, "lowrank:channel")):
        out += _svd_candidates(layer, tech, data)
    if allows(techniques, "lowrank:spatial") and layer.kind == "conv" and kh > 1 and kw > 1:
        out += _spatial_candidates(layer, data)
    if layer.kind == "conv" and kh * kw > 1 and not (cg == 1 and ng == 1):
        if allows(techniques, "dwsep"):
            out += _dwsep_candidates(layer, data)
        if allows(techniques, "flatten"):
            out += _flatten_candidates(layer, data)
    return out


def price(mod, activations=None, techniques=TECHNIQUES, use_data=True, progress=None) -> list:
    """[(LayerFit, [Candidate])] for every rewritable layer: the expensive part of allocation, reusable
    across budgets (``allocate(..., priced=...)``)."""
    out = []
    for lf in layer_fits(mod, activations if use_data else None):
        cands = candidates(lf, techniques, use_data)
        out.append((lf, cands))
        if progress:
            progress(f"budget: priced {lf.name} ({len(cands)} candidates)")
    return out


def hoist_candidates(mod, priced, feeds, sensitivity: dict | None = None, windows=HOIST_WINDOWS,
                     progress=None) -> list:
    """Price ``poolhoist`` (:mod:`passes.pool_hoist`) for the layers it matches and add its candidates
    to ``priced`` (in place; returns [(layer, candidate, KL)]). It has nothing to fit, so its effect is
    measured directly: the model with the hoist alone is built and run on the calibration ``feeds``,
    and the candidate's error is set so that the allocation's currency, s·error², equals that KL (s
    the layer's ``sensitivity``, KL per unit squared layer error). Without sensitivities the error is
    the pass's own: the relative error of the pooled output on the feeds. One build per window."""
    by_name = {lf.name: cands for lf, cands in priced}
    layers = [n for n in find_hoistable(mod["main"]) if n in by_name]
    if not layers:
        return []
    ref = predict_logits(mod, feeds) if sensitivity else None
    # without sensitivities the pass measures the pooled outputs' error itself, on the layers' inputs
    acts = None if sensitivity else collect_activations(mod, feeds, layers=layers, max_samples=len(feeds))
    added = []
    for w in windows:
        ctx = passes.PassContext(activations=acts)
        new = passes.create(("poolhoist", {"window": w}), ctx)(mod)
        recs = [r for r in ctx.records if r.applied and r.layer in by_name]
        kl = mean_kl(ref, predict_logits(new, feeds)) if recs and sensitivity else None
        for r in recs:
            if sensitivity and r.layer in sensitivity:
                err = math.sqrt(max(kl, 0.0) / max(float(sensitivity[r.layer]), 1e-30))
            else:
                err = float(r.output_error or 0.0)
            c = Candidate("poolhoist", int(w), r.macs_after, r.params_after, err)
            by_name[r.layer].append(c)
            added.append((r.layer, c, kl))
            if progress:
                progress(f"poolhoist {r.layer} window {w}: MACs {r.macs_before:,} → {r.macs_after:,}"
                         + (f", KL {kl:.4f} on {len(feeds)} calibration inputs" if kl is not None else "")
                         + f" (error {err:.4f})")
    return added
