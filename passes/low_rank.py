"""``lowrank``: split a conv (or a matmul) into two thinner ones by a truncated SVD.

W is N×C×Kh×Kw (per group when groups > 1; the factors stay block-diagonal, so groups are kept).

* ``scheme=weight`` (1×1 conv, matmul; Denton 2014): W(N×C) ≈ A(N×r)·B(r×C) → 1×1 conv C→r, 1×1 conv
  r→N. MACs HW·r(C+N) instead of HW·NC.
* ``scheme=channel`` (Zhang et al. 2016, "Accelerating very deep CNNs"): W as N×(C·Kh·Kw) ≈ A·B →
  Kh×Kw conv C→r (B, with the original stride/padding/dilation), then 1×1 conv r→N (A).
* ``scheme=spatial`` (Jaderberg et al. 2014, Tai et al. 2016): W as (C·Kh)×(N·Kw) ≈ V·Hᵀ → Kh×1 conv C→r
  (V; vertical stride/padding/dilation), then 1×Kw conv r→N (H; horizontal stride/padding/dilation).
  Zero padding commutes with the bias-free first conv, so the split is exact.

Data-aware fit (with calibration activations; ``fit=auto|data``): minimise the output error
‖WP − ŴP‖ over the layer's real input patches P instead of ‖W − Ŵ‖. With Σ = PPᵀ, the best rank-r
A·B is A = U_r, B = U_rᵀW where U_r are the top eigenvectors of WΣWᵀ (the SVD of WΣ^½ — Zhang's
whitening, no inverse needed). For spatial, V spans the top right-singular space of Σ_v^½·W_(C·Kh) with
Σ_v the per-column patch moments, then V and H are improved by alternating least squares on the full
Σ (``als`` rounds; the output is linear in each factor given the other), ending on H. The rank from
``energy=`` is then the fraction of *output* energy kept. The bias stays on the ``add`` after the conv.
"""
from __future__ import annotations

import numpy as np
import tvm

from . import Param, register
from ._factor import (Factorization, ConvSpec, FactorPassBase, LayerFit, alternate, check_energy,
                      check_rank_param, choose_rank, final_refit, ridge_solve, RELU_ITERS)
from ..errors import SqccError

SCHEMES = ("weight", "spatial", "channel")


# ------------------------------------------------------------------------------------------ fits

def _channel_spectra(layer: LayerFit, use_data: bool):
    """Per group (λ descending, U): eigen-decomposition of WΣWᵀ (data) or WWᵀ (weights)."""
    key = ("channel_eig", use_data and layer.cov is not None)
    if key in layer.cache:
        return layer.cache[key]
    out = []
    for i in range(layer.groups):
        wg, s = layer.target(i, use_data)  # (W, Σ), or (W·C_xh·C_hh⁻¹, C_hh) with upstream rewrites
        ng, d = wg.shape
        if ng <= d:  # eigenvectors of WΣWᵀ (N×N)
            m = wg @ s @ wg.T if s is not None else wg @ wg.T
            lam, u = np.linalg.eigh((m + m.T) / 2)
            order = np.argsort(lam)[::-1]
            out.append((np.clip(lam[order], 0, None), u[:, order]))
        else:  # left singular vectors of WΣ^½ (N×d, d < N)
            if s is not None:
                ls, vs = np.linalg.eigh(s)
                m = wg @ ((vs * np.sqrt(np.clip(ls, 0, None))) @ vs.T)
            else:
                m = wg
            u, sv, _ = np.linalg.svd(m, full_matrices=False)
            out.append((sv ** 2, u))
    layer.cache[key] = out
    return out


def fit_channel(layer: LayerFit, rank=None, energy=None, use_data=True) -> Factorization | str:
    """Weight SVD (1×1, matmul) / channel SVD (Kh×Kw): Kh×Kw conv C→r, then 1×1 conv r→N."""
    w = layer.weight
    n, cg, kh, kw = w.shape
    g = layer.groups
    ng = n // g
    d = cg * kh * kw
    full = min(ng, d)
    spectra = _channel_spectra(layer, use_data)
    r = max(choose_rank(lam, full, rank, energy) for lam, _ in spectra)
    bs, as_, dense, kept = [], [], np.empty_like(w, dtype=np.float64), 0.0
    tot = 0.0
    for i, (wg, (lam, u)) in enumerate(zip(layer.group_matrices(), spectra)):
        ur = u[:, :r]
        b = ur.T @ layer.target(i, use_data)[0]  # r × d
        if use_data and (layer.hat is not None or layer.tcross is not None):  # compensate upstream rewrites
            ur = final_refit(layer, i, wg, b)
        bs.append(b.reshape(r, cg, kh, kw))
        as_.append(ur)
        dense[i * ng:(i + 1) * ng] = (ur @ b).reshape(ng, cg, kh, kw)
        kept += float(lam[:r].sum())
        tot += float(lam.sum())
    scheme = "weight" if (kh, kw) == (1, 1) else "channel"
    detail = f"rank {r}/{full}"
    if layer.kind == "matmul":
        a, b = as_[0], bs[0].reshape(r, d)
        return Factorization(f"lowrank:{scheme}", r, full, detail, [b.T, a.T], dense, kept / tot if tot else 1.0)
    conv1 = ConvSpec(np.concatenate(bs, 0), layer.strides, layer.padding, layer.dilation, g)
    a_w = np.concatenate([a.reshape(ng, r, 1, 1) for a in as_], 0)
    conv2 = ConvSpec(a_w, (1, 1), (0, 0, 0, 0), (1, 1), g)
    return Factorization(f"lowrank:{scheme}", r, full, detail, [conv1, conv2], dense,
                         kept / tot if tot else 1.0)


def _spatial_spectra(layer: LayerFit, use_data: bool):
    """Per group (λ descending, Q, Wm): right singular space of Σ_v^½·Wm, Wm = W as (C·Kh)×(N·Kw)."""
    key = ("spatial_eig", use_data and layer.cov is not None)
    if key in layer.cache:
        return layer.cache[key]
    n, cg, kh, kw = layer.weight.shape
    g = layer.groups
    ng = n // g
    out = []
    for i in range(g):
        tg, s = layer.target(i, use_data)  # W (or its asymmetric target) and the covariance
        wm = tg.reshape(ng, cg, kh, kw).transpose(1, 2, 0, 3).reshape(cg * kh, ng * kw)
        if s is not None:
            s6 = s.reshape(cg, kh, kw, cg, kh, kw)
            sv = np.einsum("cyxdzx->cydz", s6).reshape(cg * kh, cg * kh) / kw
            m = wm.T @ sv @ wm
        else:
            m = wm.T @ wm
        lam, q = np.linalg.eigh((m + m.T) / 2)
        order = np.argsort(lam)[::-1]
        out.append((np.clip(lam[order], 0, None), q[:, order], wm))
    layer.cache[key] = out
    return out


ALS_ROUNDS = 6  # alternating least-squares rounds of the data-aware spatial fit
ALS_MAX_DIM = 2000  # the V-step solves an (r·C·Kh)² system: skipped above this size (cost; the
# gain is largest on the early, thin layers: 12% less output error on fire2, 2–4% on fire6–9)


def _spatial_features(v, kw):
    """G (r·Kw × C·Kh·Kw): the vertical filters V (r × C·Kh) applied at each of the Kw columns."""
    r, cg_kh = v.shape
    gm = np.zeros((r, kw, cg_kh, kw))
    for x in range(kw):
        gm[:, x, :, x] = v
    return gm.reshape(r * kw, -1)


def _spatial_als(layer: LayerFit, i: int, v, rounds: int):
    """Alternating least squares for group i from vertical filters ``v`` (r × C·Kh): with V fixed H is
    the least-squares fit; with H fixed the output Σ_(k,x) H[n,k,x]·Σ_(c,y) V[k,c,y]·p[c,y,x] is linear
    in V. Minimises E‖T p − Ŵ p‖² with (T, Σ) = ``layer.target(i)``; returns the improved V."""
    r, cgkh = v.shape
    if r * cgkh > ALS_MAX_DIM:
        return v
    kw = layer.weight.shape[3]
    t, c = layer.target(i)
    tc = t @ c
    # Σ as [(c,y),(c',y')] × [(x,x')] pairs, for the V-step's Hessian
    cc = c.reshape(cgkh, kw, cgkh, kw).transpose(0, 2, 1, 3).reshape(cgkh * cgkh, kw * kw)

    def step(v):
        gm = _spatial_features(v, kw)
        h = ridge_solve(gm @ c @ gm.T, (tc @ gm.T).T, 1e-9).T  # the horizontal factor, V fixed
        # hess[(k,a),(l,b)] = Σ_(x,z) (HᵀH)[(k,x),(l,z)]·Σ[(a,x),(b,z)]: one GEMM over the (x, z) pairs
        hh = (h.T @ h).reshape(r, kw, r, kw).transpose(0, 2, 1, 3).reshape(r * r, kw * kw)
        hess = (hh @ cc.T).reshape(r, r, cgkh, cgkh).transpose(0, 2, 1, 3).reshape(r * cgkh, r * cgkh)
        rhs = np.einsum("kxax->ka", (h.T @ tc).reshape(r, kw, cgkh, kw)).reshape(-1)
        v = ridge_solve(hess, rhs, 1e-9).reshape(r, cgkh)
        return v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-30)  # H absorbs the scale

    return alternate(v, t, rounds, step)


def fit_spatial(layer: LayerFit, rank=None, energy=None, use_data=True, refit=True,
                als: int = ALS_ROUNDS) -> Factorization | str:
    """Spatial SVD: Kh×1 conv C→r (vertical geometry), then 1×Kw conv r→N (horizontal geometry)."""
    w = layer.weight
    n, cg, kh, kw = w.shape
    if layer.kind == "matmul" or kh == 1 or kw == 1:
        return f"scheme=spatial needs a Kh×Kw kernel with Kh, Kw > 1 (this is {kh}×{kw}); use scheme=weight"
    g = layer.groups
    ng = n // g
    full = min(cg * kh, ng * kw)
    spectra = _spatial_spectra(layer, use_data)
    r = max(choose_rank(lam, full, rank, energy) for lam, _, _ in spectra)
    vs, hs, kept, tot = [], [], 0.0, 0.0
    dense = np.empty_like(w, dtype=np.float64)
    for i, (lam, q, wm) in enumerate(spectra):
        qr = q[:, :r]  # (N·Kw) × r
        v = wm @ qr  # (C·Kh) × r
        h = qr.reshape(ng, kw, r).transpose(0, 2, 1)  # n, k, x
        s = layer.cov_reg(i) if use_data else None
        if refit and s is not None and (r < full or layer.hat is not None or layer.tcross is not None):
            if r < full:
                v = _spatial_als(layer, i, v.T, als).T
            wflat = w[i * ng:(i + 1) * ng].reshape(ng, -1).astype(np.float64)
            h = final_refit(layer, i, wflat, _spatial_features(v.T, kw)).reshape(ng, r, kw)
        vs.append(v.T.reshape(r, cg, kh, 1))
        hs.append(h.reshape(ng, r, 1, kw))
        dense[i * ng:(i + 1) * ng] = np.einsum("cyk,nkx->ncyx", v.reshape(cg, kh, r), h)
        kept += float(lam[:r].sum())
        tot += float(lam.sum())
    sh, sw = layer.strides
    pt, pl, pb, pr = layer.padding
    dh, dw = layer.dilation
    conv1 = ConvSpec(np.concatenate(vs, 0), (sh, 1), (pt, 0, pb, 0), (dh, 1), g)
    conv2 = ConvSpec(np.concatenate(hs, 0), (1, sw), (0, pl, 0, pr), (1, dw), g)
    return Factorization("lowrank:spatial", r, full, f"rank {r}/{full}", [conv1, conv2], dense,
                         kept / tot if tot else 1.0)


def fit(layer: LayerFit, scheme: str, rank=None, energy=None, use_data=True, als: int = ALS_ROUNDS):
    if scheme == "spatial":
        return fit_spatial(layer, rank, energy, use_data, als=als)
    kh, kw = layer.weight.shape[2:]
    if scheme == "weight" and (kh, kw) != (1, 1):
        return (f"scheme=weight factors 1×1 convs and matmuls (this is {kh}×{kw}); "
                "use scheme=channel or scheme=spatial")
    return fit_channel(layer, rank, energy, use_data)


# ------------------------------------------------------------------------------------------ the pass

@register("lowrank", "split convs/matmuls into two thinner ones by truncated SVD (weight, spatial or "
          "channel scheme), fitted to calibration activations when given",
          params=[Param("scheme", str, "weight (1×1 conv, matmul) | spatial (Kh×1 then 1×Kw) | "
                        "channel (Kh×Kw to r, then 1×1)", SCHEMES),
                  Param("rank", "rank", "rank per layer: an integer, or a fraction of the full rank"),
                  Param("energy", float, "keep this fraction of the (output) energy, in (0, 1]; "
                        "default 0.9 when no rank is given"),
                  Param("force", bool, "rewrite even where MACs do not drop"),
                  Param("layers", list, "only these layers (default: all)"),
                  Param("relu", int, "ReLU-aware refit iterations for layers a ReLU follows "
                        "(data-aware fits; 0: plain linear fit)"),
                  Param("als", int, "alternating least-squares rounds of the data-aware "
                        "spatial fit (0: SVD, then H by least squares)"),
                  Param("fit", str, "auto (data-aware when calibrated) | data | weight",
                        ("auto", "data", "weight"))])
@tvm.transform.module_pass(opt_level=0, name="sqcc.lowrank")
class LowRank(FactorPassBase):
    """Low-rank splitting of convs and matmuls (see the module docstring)."""

    technique = "lowrank"  # lowrank:<scheme> once the scheme is known
    tag = "lr"

    def __init__(self, context=None, scheme="channel", rank=None, energy=None, force=False, layers=(),
                 fit="auto", relu=RELU_ITERS, als=ALS_ROUNDS):
        super().__init__(context, force, layers, fit, relu)
        self.als = self._rounds("als", als)
        if scheme not in SCHEMES:
            raise SqccError(f"--pass lowrank: scheme={scheme}: expected one of {', '.join(SCHEMES)}")
        check_rank_param("lowrank", rank)
        check_energy("lowrank", energy)
        if rank is not None and energy is not None:
            raise SqccError("--pass lowrank: give rank or energy, not both")
        self.scheme = scheme
        self.rank = rank
        self.energy = energy if (energy is not None or rank is not None) else 0.9
        self.technique = f"lowrank:{scheme}"
        self.handles_matmul = scheme in ("weight", "channel")

    def fit_layer(self, layer):
        return fit(layer, self.scheme, self.rank, self.energy, self._use_data(), self.als)

    def fit_matmul(self, layer):
        return fit_channel(layer, self.rank, self.energy, self._use_data())
