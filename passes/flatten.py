"""``flatten``: flattened convolutions (Jin, Dundar & Culurciello 2014).

Each output filter n (a C×Kh×Kw tensor) is approximated by R rank-1 terms,
W[n] ≈ Σ_r α_nr(c)·β_nr(y)·γ_nr(x), fitted by CP-ALS (alternating least squares over the three
factors, all filters at once in numpy). The layer becomes: 1×1 conv C→N·R (α), Kh×1 depthwise conv on
the N·R channels (β; vertical stride/padding/dilation), and a 1×Kw conv with groups=N that both
applies γ and sums each group of R (horizontal stride/padding/dilation). Exact on separable filters
and, with R ≥ Kh·min(C, Kw), on any filter (then built directly from per-row SVDs).
MACs: N·R·(C·H·W + Kh·Ho·W + Kw·Ho·Wo) instead of N·C·Kh·Kw·Ho·Wo.

Data-aware fit: after CP-ALS on the weights, β and γ are refitted alternately by least squares on the
calibration patch moments Σ (minimising ‖WP − ŴP‖ per output channel).
"""
from __future__ import annotations

import numpy as np
import tvm

from . import Param, register
from ._factor import ConvSpec, Factorization, FactorPassBase, LayerFit, RELU_ITERS
from ..errors import SqccError


def _solve_batched(gram, rhs):
    """X with X·gram = rhs per batch (gram symmetric): (b, r, r), (b, m, r) → (b, m, r)."""
    r = gram.shape[-1]
    lam = 1e-10 * (np.trace(gram, axis1=1, axis2=2)[:, None, None] / r + 1e-30)
    return np.swapaxes(np.linalg.solve(gram + lam * np.eye(r), np.swapaxes(rhs, 1, 2)), 1, 2)


def _als(t, a, bb, g, iters):
    for _ in range(iters):
        a = _solve_batched(np.einsum("bjr,bjs->brs", bb, bb) * np.einsum("bkr,bks->brs", g, g),
                           np.einsum("bijk,bjr,bkr->bir", t, bb, g, optimize=True))
        bb = _solve_batched(np.einsum("bir,bis->brs", a, a) * np.einsum("bkr,bks->brs", g, g),
                            np.einsum("bijk,bir,bkr->bjr", t, a, g, optimize=True))
        g = _solve_batched(np.einsum("bir,bis->brs", a, a) * np.einsum("bjr,bjs->brs", bb, bb),
                           np.einsum("bijk,bir,bjr->bkr", t, a, bb, optimize=True))
        # keep the scale in α: β, γ unit norm
        nb = np.linalg.norm(bb, axis=1, keepdims=True) + 1e-30
        ng = np.linalg.norm(g, axis=1, keepdims=True) + 1e-30
        bb, g, a = bb / nb, g / ng, a * nb * ng
    return a, bb, g


def _residual(t, a, bb, g):
    d = t - np.einsum("bir,bjr,bkr->bijk", a, bb, g, optimize=True)
    return (d ** 2).sum((1, 2, 3))


def cp_als(t: np.ndarray, rank: int, iters: int = 100, seed: int = 0, restarts: int = 3):
    """Batched CP decomposition of t (b, I, J, K) into (b,I,R), (b,J,R), (b,K,R): ALS from a greedy
    rank-1 deflation start plus ``restarts`` random starts, keeping the best per filter."""
    b, ni, nj, nk = t.shape
    rng = np.random.default_rng(seed)
    # Greedy rank-1 deflation (HOPM): a good start, exact for rank-1 filters.
    a = np.zeros((b, ni, rank))
    bb = np.zeros((b, nj, rank))
    g = np.zeros((b, nk, rank))
    res = t.copy()
    for r in range(rank):
        u = np.linalg.svd(res.reshape(b, ni, nj * nk), full_matrices=False)[0][:, :, 0]
        vy = np.ones((b, nj)) / np.sqrt(nj) + 1e-3 * rng.standard_normal((b, nj))
        vx = np.ones((b, nk)) / np.sqrt(nk) + 1e-3 * rng.standard_normal((b, nk))
        for _ in range(10):
            vy = np.einsum("bijk,bi,bk->bj", res, u, vx, optimize=True)
            vy /= np.linalg.norm(vy, axis=1, keepdims=True) + 1e-30
            vx = np.einsum("bijk,bi,bj->bk", res, u, vy, optimize=True)
            vx /= np.linalg.norm(vx, axis=1, keepdims=True) + 1e-30
            u = np.einsum("bijk,bj,bk->bi", res, vy, vx, optimize=True)
        a[:, :, r], bb[:, :, r], g[:, :, r] = u, vy, vx
        res = res - np.einsum("bi,bj,bk->bijk", u, vy, vx)
    best = _als(t, a, bb, g, iters)
    best_res = _residual(t, *best)
    tol = 1e-12 * (t ** 2).sum((1, 2, 3))
    for k in range(restarts if rank > 1 else 0):
        todo = best_res > tol
        if not todo.any():
            break
        tt = t[todo]
        n = len(tt)
        init = (rng.standard_normal((n, ni, rank)), rng.standard_normal((n, nj, rank)),
                rng.standard_normal((n, nk, rank)))
        cand = _als(tt, *init, iters)
        cres = _residual(tt, *cand)
        better = cres < best_res[todo]
        idx = np.flatnonzero(todo)[better]
        for dst, src in zip(best, cand):
            dst[idx] = src[better]
        best_res[idx] = cres[better]
    return best


def _exact_terms(t: np.ndarray, rank: int):
    """R ≥ Kh·min(C, Kw) terms that reproduce t exactly: per row y, the SVD of t[:, :, y, :]."""
    b, ni, nj, nk = t.shape
    q = min(ni, nk)
    a = np.zeros((b, ni, rank))
    bb = np.zeros((b, nj, rank))
    g = np.zeros((b, nk, rank))
    for y in range(nj):
        u, s, vt = np.linalg.svd(t[:, :, y, :], full_matrices=False)  # (b, ni, q), (b, q), (b, q, nk)
        for j in range(q):
            r = y * q + j
            a[:, :, r] = u[:, :, j] * s[:, j:j + 1]
            bb[:, y, r] = 1.0
            g[:, :, r] = vt[:, j, :]
    return a, bb, g


def _refit_data(w, a, bb, g, s, rounds=3):
    """Alternate least-squares refits of β and γ per filter on patch moments s (d×d, d = C·Kh·Kw)."""
    n, cg, kh, kw = w.shape
    rank = a.shape[2]
    wflat = w.reshape(n, -1)
    lam_rel = 1e-7

    def solve(feat):  # feat: (n, k, d) feature maps → coefficients (n, k)
        sg = np.einsum("de,nke->ndk", s, feat, optimize=True)
        gram = np.einsum("nkd,ndl->nkl", feat, sg, optimize=True)
        rhs = np.einsum("nd,ndk->nk", wflat, sg, optimize=True)
        lam = lam_rel * (np.trace(gram, axis1=1, axis2=2) / gram.shape[1] + 1e-30)
        return np.linalg.solve(gram + lam[:, None, None] * np.eye(gram.shape[1]), rhs[..., None])[..., 0]

    for _ in range(rounds):
        # γ: features (r, x) = Σ_{c,y} α(c) β(y) p(c, y, x)
        ab = np.einsum("ncr,nyr->nrcy", a, bb, optimize=True)
        feat = np.zeros((n, rank, kw, cg, kh, kw))
        for x in range(kw):
            feat[:, :, x, :, :, x] = ab
        g = solve(feat.reshape(n, rank * kw, -1)).reshape(n, rank, kw).transpose(0, 2, 1)
        # β: features (r, y) = Σ_{c,x} α(c) γ(x) p(c, y, x)
        ag = np.einsum("ncr,nxr->nrcx", a, g, optimize=True)
        feat = np.zeros((n, rank, kh, cg, kh, kw))
        for y in range(kh):
            feat[:, :, y, :, y, :] = ag
        bb = solve(feat.reshape(n, rank * kh, -1)).reshape(n, rank, kh).transpose(0, 2, 1)
    # a last γ so the final factor is the least-squares one
    ab = np.einsum("ncr,nyr->nrcy", a, bb, optimize=True)
    feat = np.zeros((n, rank, kw, cg, kh, kw))
    for x in range(kw):
        feat[:, :, x, :, :, x] = ab
    g = solve(feat.reshape(n, rank * kw, -1)).reshape(n, rank, kw).transpose(0, 2, 1)
    return a, bb, g


def fit_flatten(layer: LayerFit, rank: int = 2, use_data=True, iters: int = 100,
                refit=True, restarts: int = 3) -> Factorization | str:
    if layer.kind == "matmul":
        return "flatten applies to convs only"
    w = layer.weight
    n, cg, kh, kw = w.shape
    if kh * kw == 1:
        return "1×1 kernel: nothing to flatten"
    g = layer.groups
    ng = n // g
    exact = kh * min(cg, kw)
    rank = max(1, int(rank))
    key = ("cp", rank, iters)
    t = w.astype(np.float64)
    # asymmetric target (upstream rewrites)
    if use_data and layer.cov is not None and (layer.hat is not None or layer.tcross is not None):
        t = np.concatenate([layer.target(i)[0] for i in range(g)]).reshape(w.shape)
    if key not in layer.cache:
        layer.cache[key] = _exact_terms(t, rank) if rank >= exact else cp_als(t, rank, iters, restarts=restarts)
    a, bb, gg = layer.cache[key]
    mode = "exact" if rank >= exact else "CP-ALS"
    if refit and use_data and layer.cov is not None and rank < exact:
        parts = [_refit_data(t[i * ng:(i + 1) * ng], a[i * ng:(i + 1) * ng], bb[i * ng:(i + 1) * ng],
                             gg[i * ng:(i + 1) * ng], layer.target(i)[1]) for i in range(g)]
        a = np.concatenate([p[0] for p in parts])
        bb = np.concatenate([p[1] for p in parts])
        gg = np.concatenate([p[2] for p in parts])
        mode += " + data refit of β, γ"
    dense = np.einsum("ncr,nyr,nxr->ncyx", a, bb, gg, optimize=True)
    sh, sw = layer.strides
    pt, pl, pb, pr = layer.padding
    dh, dw = layer.dilation
    c1 = ConvSpec(a.transpose(0, 2, 1).reshape(n * rank, cg, 1, 1), (1, 1), (0, 0, 0, 0), (1, 1), g)
    c2 = ConvSpec(bb.transpose(0, 2, 1).reshape(n * rank, 1, kh, 1), (sh, 1), (pt, 0, pb, 0), (dh, 1),
                  n * rank)
    c3 = ConvSpec(gg.transpose(0, 2, 1).reshape(n, rank, 1, kw), (1, sw), (0, pl, 0, pr), (1, dw), n)
    return Factorization("flatten", rank, exact, f"{rank} terms/filter ({mode}; exact at {exact})",
                         [c1, c2, c3], dense)


@register("flatten", "flattened convolutions: each filter as R rank-1 terms (CP-ALS) → 1×1, Kh×1 "
          "depthwise, 1×Kw grouped sum",
          params=[Param("rank", int, "rank-1 terms per filter (exact at Kh·min(C, Kw))"),
                  Param("iters", int, "CP-ALS iterations"),
                  Param("force", bool, "rewrite even where MACs do not drop"),
                  Param("layers", list, "only these layers (default: all)"),
                  Param("relu", int, "ReLU-aware refit iterations for layers a ReLU follows "
                        "(data-aware fits; 0: plain linear fit)"),
                  Param("fit", str, "auto (data-aware when calibrated) | data | weight",
                        ("auto", "data", "weight"))])
@tvm.transform.module_pass(opt_level=0, name="sqcc.flatten")
class Flatten(FactorPassBase):
    """Flattened 1-D convolutions (see the module docstring)."""

    technique = "flatten"
    tag = "fl"

    def __init__(self, context=None, rank=2, iters=100, force=False, layers=(), fit="auto", relu=RELU_ITERS):
        super().__init__(context, force, layers, fit, relu)
        if int(rank) < 1:
            raise SqccError(f"--pass flatten: rank={rank} out of range: must be an integer ≥ 1")
        if int(iters) < 0:
            raise SqccError(f"--pass flatten: iters={iters} out of range: must be ≥ 0")
        self.rank = int(rank)
        self.iters = int(iters)

    def fit_layer(self, layer):
        return fit_flatten(layer, self.rank, self._use_data(), self.iters)
