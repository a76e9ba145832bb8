"""``dwsep``: factor a Kh×Kw conv into a depthwise conv with channel multiplier M and a 1×1 conv.

For each input channel c the N×(Kh·Kw) matrix W[:, c] has an SVD W[:, c] = Σ_m u_m s_m v_mᵀ; keep M
terms: the depthwise filters of channel c are the rows B_c = U_Mᵀ·W[:, c] (M×Kh·Kw; groups=C, original
stride/padding/dilation) and the pointwise 1×1 conv C·M→N has weight A[n, (c, m)] = U_M[n, m]. So
y = Σ_c W[:, c] ∗ x_c = Σ_c A_c (B_c ∗ x_c), exact when M = min(N, Kh·Kw); M = 1 is MobileNet's block
(Howard et al. 2017; the per-channel SVD view follows the depthwise-separable decompositions of
Guo et al. 2018 / "network decoupling"). MACs: HoWo·C·M·(Kh·Kw + N) instead of HoWo·C·N·Kh·Kw.
Grouped convs keep their groups (the pointwise conv is grouped the same way).

Data-aware fit: per channel, U_M from the SVD of W[:, c]·Σ_c^½ (Σ_c the Kh·Kw patch moments of
channel c), then alternating least squares over the whole layer (``als`` rounds): with the depthwise
filters B fixed, the pointwise A is the least-squares fit on the full patch moments Σ (cross-channel
correlations included); with A fixed, the layer's output is linear in B, and B solves the normal
equations [(AᵀA)_(cm,c'm')·Σ_(ck,c'k')]·vec B = vec (Aᵀ·T·Σ)_(cm,ck), minimising E‖T p − A·(B∗p)‖² (T the
target of :meth:`LayerFit.target`: W, or its asymmetric / ReLU-aware form). The per-channel SVD picks
each channel's filters on their own, ignoring the other channels and what the pointwise conv can
recombine; the joint solve lets them share the work (8–18% less output error on SqueezeNet's fire
modules at M = 4; SqueezeNet's predictions at a 0.7× MAC budget then move 23% less, KL 0.045 → 0.035).

Per-channel multipliers (``spread=energy``, the default): the C·M filters need not be M per channel.
Filter k of channel c captures s²_{c,k}, the k-th squared singular value of channel c's (whitened)
N×Kh·Kw slice, so the C·M largest s²_{c,k} over all channels decide how many each channel gets
(water-filling; the MACs, HoWo·C·M·(Kh·Kw + N), do not change). A channel gather feeds the depthwise
conv; M may be fractional. On SqueezeNet's fire modules at M = 4 (fitted on 32 calibration images,
measured on 32 others) the output error falls 2–13% (conv3 0.111 → 0.097, conv9 0.105 → 0.095;
conv24, whose channels' spectra are alike, not at all).
"""
from __future__ import annotations

import numpy as np
import tvm

from . import Param, register
from ._factor import (ConvSpec, Factorization, FactorPassBase, LayerFit, alternate, final_refit, ridge_solve,
                      RELU_ITERS)
from ..errors import SqccError


def _sqrtm_psd(s):
    lam, v = np.linalg.eigh(s)
    return (v * np.sqrt(np.clip(lam, 0, None))[..., None, :]) @ np.swapaxes(v, -1, -2)


def _dwsep_svd(layer: LayerFit, use_data: bool):
    """Per group: (U (cg, ng, q), s² (cg, q), W as cg × ng × kk) from the SVDs of W[:, c]·Σ_c^½ (or
    W[:, c] without data)."""
    key = ("dwsep_svd", use_data and layer.cov is not None)
    if key in layer.cache:
        return layer.cache[key]
    n, cg, kh, kw = layer.weight.shape
    g = layer.groups
    ng = n // g
    kk = kh * kw
    out = []
    for i in range(g):
        tg, s = layer.target(i, use_data)  # W (or its asymmetric target) and the covariance
        wg = tg.reshape(ng, cg, kk).transpose(1, 0, 2)
        if s is not None:
            sc = np.stack([s[c * kk:(c + 1) * kk, c * kk:(c + 1) * kk] for c in range(cg)])
            m = wg @ _sqrtm_psd(sc)
        else:
            m = wg
        u, sv, _ = np.linalg.svd(m, full_matrices=False)  # u: cg × ng × q
        out.append((u, sv ** 2, wg))
    layer.cache[key] = out
    return out


ALS_ROUNDS = 6  # alternating least-squares rounds of the data-aware fit (0: per-channel SVD + LS only)
ALS_MAX_DIM = 6000  # the B-step solves a (C·M·Kh·Kw)² system: skipped above this size
SPREADS = ("energy", "uniform")


def spread_filters(s2: np.ndarray, total: int, cap: int) -> np.ndarray:
    """Depthwise filters per input channel (C,), ``total`` in all and at most ``cap`` each: water-filling
    by the energy each filter adds — filter k of channel c captures s²[c, k], its k-th squared singular
    value, so the ``total`` largest of all s²[c, k] win. Channels whose spectra fall fast (or carry
    little signal) give their filters to those that need more; a channel may get none."""
    cg = s2.shape[0]
    flat = s2[:, :cap].reshape(-1)
    top = np.argsort(-flat, kind="stable")[:total]
    return np.bincount(top // min(cap, s2.shape[1]), minlength=cg)


def _depthwise_features(b, ch, cg):
    """G (J × C·Kh·Kw): the depthwise filters ``b`` (J × Kh·Kw), filter j reading input channel
    ``ch[j]``, as a map from patches to features."""
    j_, kk = b.shape
    gm = np.zeros((j_, cg, kk))
    gm[np.arange(j_), ch] = b
    return gm.reshape(j_, cg * kk)


def _als(layer: LayerFit, i: int, b, ch, rounds: int):
    """Alternating least squares for group i from depthwise filters ``b`` (J × Kh·Kw, filter j on input
    channel ``ch[j]``): returns the improved filters (the caller refits the pointwise weight last).
    Minimises E‖T p − A·G(B)p‖² with (T, Σ) = ``layer.target(i)`` (so upstream rewrites and ReLU-aware
    targets are honoured)."""
    j_, kk = b.shape
    if j_ * kk > ALS_MAX_DIM:
        return b
    t, c = layer.target(i)
    cg = c.shape[0] // kk
    cols = (ch[:, None] * kk + np.arange(kk)[None]).reshape(-1)  # (j, k) → its patch column
    c_sub = c[np.ix_(cols, cols)].reshape(j_, kk, j_, kk)
    tc = t @ c

    def step(b):
        gm = _depthwise_features(b, ch, cg)
        a = ridge_solve(gm @ c @ gm.T, (tc @ gm.T).T, 1e-9).T  # the pointwise conv, B fixed
        h = ((a.T @ a)[:, None, :, None] * c_sub).reshape(j_ * kk, j_ * kk)
        r = (a.T @ tc)[np.repeat(np.arange(j_), kk), cols]
        b = ridge_solve(h, r, 1e-9).reshape(j_, kk)
        # rescale each filter to unit norm: A absorbs the scale, and the system stays well conditioned
        return b / np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-30)

    return alternate(b, t, rounds, step)


def filters_per_group(layer: LayerFit, multiplier: float) -> int:
    """Depthwise filters per group for an (average) channel multiplier: round(M·C/g), at least 1."""
    cg = layer.weight.shape[1]
    return max(1, int(round(float(multiplier) * cg)))


def fit_dwsep(layer: LayerFit, multiplier: float = 1, use_data=True, refit=True,
              als: int = ALS_ROUNDS, spread: str = "energy") -> Factorization | str:
    """Depthwise (M filters per input channel on average) + pointwise fit of ``layer``. ``spread``:
    "uniform" gives every channel M filters (M an integer: a plain depthwise conv with channel
    multiplier M); "energy" shares the C·M filters out by :func:`spread_filters` (a channel gather then
    feeds the depthwise conv; when every channel gets M it is the plain one)."""
    if layer.kind == "matmul":
        return "dwsep applies to convs only"
    w = layer.weight
    n, cg, kh, kw = w.shape
    g = layer.groups
    ng = n // g
    kk = kh * kw
    if kk == 1:
        return "1×1 kernel: no spatial part to separate"
    if cg == 1 and ng == 1:
        return "already depthwise"
    full = min(ng, kk)
    if spread == "uniform":
        if float(multiplier) != int(multiplier):
            return f"multiplier {multiplier:g} is not an integer (spread=uniform)"
        total = cg * max(1, min(int(multiplier), full))
    else:
        total = min(filters_per_group(layer, multiplier), cg * full)
    c_all = cg * g
    svd = _dwsep_svd(layer, use_data)
    counts = [np.full(cg, total // cg) if spread == "uniform" else spread_filters(s2, total, full)
              for _, s2, _ in svd]
    plain = all(np.all(k == total / cg) for k in counts)  # M each: a plain depthwise conv
    dw = np.zeros((g * total, 1, kh, kw))
    pw = np.zeros((n, total, 1, 1))
    index = []
    dense = np.empty_like(w, dtype=np.float64)
    kept = tot = 0.0
    for i, ((u, s2, wg), cnt) in enumerate(zip(svd, counts)):
        ch = np.repeat(np.arange(cg), cnt)
        b = np.concatenate([np.swapaxes(u[c, :, :cnt[c]], 0, 1) @ wg[c] for c in range(cg)])  # J × kk
        a = np.stack([u[c, :, k] for c in range(cg) for k in range(cnt[c])], 1)  # ng × J, columns (c, k)
        s = layer.cov_reg(i) if use_data else None
        if refit and s is not None and (np.any(cnt < full) or layer.hat is not None or layer.tcross is not None):
            if np.any(cnt < full):
                b = _als(layer, i, b, ch, als)
            wflat = layer.group_matrices()[i]  # the original W: the refit targets its outputs
            a = final_refit(layer, i, wflat, _depthwise_features(b, ch, cg))
        dw[i * total:(i + 1) * total, 0] = b.reshape(total, kh, kw)
        pw[i * ng:(i + 1) * ng, :, 0, 0] = a
        dense[i * ng:(i + 1) * ng] = (a @ _depthwise_features(b, ch, cg)).reshape(ng, cg, kh, kw)
        index.append(i * cg + ch)
        kept += float(sum(s2[c, :cnt[c]].sum() for c in range(cg)))
        tot += float(s2.sum())
    m_ = total / cg
    # plain: groups = C (M outputs each); spread: the gathered channels, one filter each
    conv1 = ConvSpec(dw, layer.strides, layer.padding, layer.dilation, c_all if plain else g * total,
                     None if plain else np.concatenate(index))
    conv2 = ConvSpec(pw, (1, 1), (0, 0, 0, 0), (1, 1), g)
    if plain:
        detail = f"multiplier {int(m_)}/{full}"
    else:
        hist = np.concatenate(counts)
        detail = (f"multiplier {m_:.3g}/{full}, spread by energy: {total} filters per group, "
                  f"{int(hist.min())}–{int(hist.max())} per channel")
        if np.any(hist == 0):
            detail += f", {int((hist == 0).sum())} channel(s) dropped"
    return Factorization("dwsep", m_, full, detail, [conv1, conv2], dense, kept / tot if tot else 1.0)


@register("dwsep", "factor Kh×Kw convs into depthwise (channel multiplier M) + 1×1, by per-channel "
          "SVD, fitted to calibration activations when given",
          params=[Param("multiplier", float, "channel multiplier M of the depthwise conv: C·M filters "
                        "(exact at min(N, Kh·Kw)); with spread=energy it may be fractional"),
                  Param("spread", str, "how the C·M filters are shared among input channels: by "
                        "the energy each adds (water-filling; a channel gather feeds the depthwise conv) or "
                        "M each", SPREADS),
                  Param("force", bool, "rewrite even where MACs do not drop"),
                  Param("layers", list, "only these layers (default: all)"),
                  Param("relu", int, "ReLU-aware refit iterations for layers a ReLU follows "
                        "(data-aware fits; 0: plain linear fit)"),
                  Param("als", int, "alternating least-squares rounds of the data-aware fit "
                        "(0: per-channel SVD, then the pointwise least squares)"),
                  Param("fit", str, "auto (data-aware when calibrated) | data | weight",
                        ("auto", "data", "weight"))])
@tvm.transform.module_pass(opt_level=0, name="sqcc.dwsep")
class DepthwiseSeparable(FactorPassBase):
    """Depthwise-separable factorisation (see the module docstring)."""

    technique = "dwsep"
    tag = "dw"

    def __init__(self, context=None, multiplier=1, force=False, layers=(), fit="auto", relu=RELU_ITERS,
                 als=ALS_ROUNDS, spread="energy"):
        super().__init__(context, force, layers, fit, relu)
        m_ = float(multiplier)
        if spread not in SPREADS:
            raise SqccError(f"--pass dwsep: spread={spread}: expected one of {', '.join(SPREADS)}")
        if spread == "uniform" and (m_ < 1 or m_ != int(m_)):
            raise SqccError(f"--pass dwsep: multiplier={multiplier} out of range: with spread=uniform it must "
                            f"be an integer ≥ 1")
        if not m_ > 0:
            raise SqccError(f"--pass dwsep: multiplier={multiplier} out of range: must be > 0")
        self.multiplier = int(m_) if m_ == int(m_) else m_
        self.spread = spread
        self.als = self._rounds("als", als)

    def fit_layer(self, layer):
        return fit_dwsep(layer, self.multiplier, self._use_data(), als=self.als, spread=self.spread)
