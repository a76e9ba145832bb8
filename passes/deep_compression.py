"""Deep Compression (Han, Mao & Dally 2016) without retraining: ``prune`` and ``share``.

``prune:sparsity=s`` zeroes the smallest-magnitude weights of every conv/fc layer:

* ``scope=layer`` (default, as in the paper): each layer loses the fraction s of its weights;
* ``scope=global``: one magnitude threshold for the whole model, so that s of all weights go;
* ``sensitivity=true``: per-layer sparsities from each layer's sensitivity curve — the relative error
  ‖W − W_s‖/‖W‖ as the layer is pruned to sparsity s (with calibration activations, each weight is
  weighted by its input channel's energy E[x_c²]) — chosen so that every layer sits at the same
  error and the model as a whole reaches sparsity s.

Data-aware fit (``fit=auto`` with calibration activations, or ``fit=data``): the paper retrains after
pruning; sqcc cannot, so it does the next best thing a compiler can — it keeps each output's pruning
mask and refits the surviving weights and a bias correction by least squares on the layer's real
input patches (minimise E‖W_n p − ŵ_n p − δ_n‖² over the kept entries; the moments E[ppᵀ], E[p] come
from :func:`sqcc.calibrate.patch_covariance`). δ is added to the layer's existing bias constant.
``fit=weight`` is plain magnitude pruning.

``share:bits=b``: k-means weight sharing per layer. The non-zero weights get 2^b − 1 centroids
(2^b when the layer has no zeros; zero is the extra symbol of a pruned layer, so indices stay b bits),
initialised linearly between the smallest and the largest weight (the paper's best initialisation),
then Lloyd iterations. In one dimension Lloyd's assignment is a ``searchsorted`` against the
midpoints of the sorted centroids, which is exact and O(n log k) — cheaper than scipy's or
scikit-learn's general k-means (O(n·k) distances per iteration), so this is plain numpy.

Both passes write the decoded weights back as dense constants, so the model builds and runs as
before; :mod:`sqcc.size_report` measures what the encoded model needs. Sparse kernels are not used:
at 40% density a CSR GEMM is not reliably faster than the dense one on these CPUs (measured by
``benchmarks/compression_report.py``), and the dense build keeps sqcc's tuned conv schedules.
"""
from __future__ import annotations

import math

import numpy as np
import tvm

from . import Param, register
from ..errors import SqccError

from .base import LayerRecord, PassContext

SCOPES = ("layer", "global")


def check_sparsity(sparsity, where="--pass prune"):
    try:
        s = float(sparsity)
    except (TypeError, ValueError):
        raise SqccError(f"{where}: sparsity={sparsity}: expected a number in [0, 1)") from None
    if not (0.0 <= s < 1.0) or math.isnan(s):
        raise SqccError(f"{where}: sparsity={sparsity} out of range: must be in [0, 1) "
                        "(the fraction of weights to remove)")
    return s


def check_bits(bits, where="--pass share"):
    if isinstance(bits, bool) or not isinstance(bits, (int, np.integer)):
        raise SqccError(f"{where}: bits={bits}: expected an integer from 1 to 8")
    if not (1 <= int(bits) <= 8):
        raise SqccError(f"{where}: bits={bits} out of range: must be 1..8 (2^bits shared weights per layer)")
    return int(bits)


# ------------------------------------------------------------------------------------------ numpy

def prune_to(w: np.ndarray, sparsity: float, saliency: np.ndarray | None = None) -> np.ndarray:
    """``w`` with its ``round(sparsity·size)`` smallest-|w| (or smallest-saliency) entries zeroed."""
    k = int(round(sparsity * w.size))
    if k <= 0:
        return w.copy()
    score = np.abs(w) if saliency is None else saliency
    idx = np.argpartition(score.ravel(), k - 1)[:k]
    out = w.copy().ravel()
    out[idx] = 0
    return out.reshape(w.shape)


def channel_energy(act, w_shape, groups=1):
    """E[x_c²] per weight element (broadcast to the weight's shape) from N×C×H×W (or N×K) activations."""
    a = np.asarray(act, np.float64)
    e = (a ** 2).mean(axis=(0, 2, 3)) if a.ndim == 4 else (a ** 2).mean(axis=0)
    if len(w_shape) == 4:
        n, cg = w_shape[:2]
        og = n // groups
        per = np.stack([e[(i // og) * cg:(i // og + 1) * cg] for i in range(n)])  # N × C/g
        return np.broadcast_to(per[:, :, None, None], w_shape)
    return np.broadcast_to(e[:, None], w_shape)  # matmul K×N


def sensitivity_curve(w, energy=None, grid=None):
    """Relative error sqrt(Σ_pruned e / Σ e) (e = w² or w²·E[x²]) after magnitude pruning at each
    sparsity of ``grid``."""
    grid = np.linspace(0, 0.99, 100) if grid is None else grid
    mag = np.abs(w).ravel()
    e = (w.astype(np.float64) ** 2 * (energy if energy is not None else 1.0)).ravel()
    order = np.argsort(mag, kind="stable")
    cum = np.concatenate([[0.0], np.cumsum(e[order])])
    tot = cum[-1] or 1.0
    ks = np.round(grid * w.size).astype(int)
    return grid, np.sqrt(cum[ks] / tot)


def allocate_sparsity(curves: dict, sizes: dict, target: float) -> dict:
    """Per-layer sparsities at a common error level reaching ``target`` overall (bisection on the error)."""
    total = sum(sizes.values())

    def at(tau):
        out = {}
        for n, (grid, err) in curves.items():
            ok = np.flatnonzero(err <= tau + 1e-15)
            out[n] = float(grid[ok[-1]]) if len(ok) else 0.0
        return out

    lo, hi = 0.0, 1.0
    for _ in range(60):
        mid = (lo + hi) / 2
        got = sum(s * sizes[n] for n, s in at(mid).items()) / total
        if got < target:
            lo = mid
        else:
            hi = mid
    return at(hi)


class _single_thread_blas:
    """Run numpy's OpenBLAS on one thread inside the block (best effort, no-op when not found):
    thousands of small solves are ~10× faster unthreaded on a shared 2-core machine."""

    def __enter__(self):
        import ctypes
        import re

        self.lib, self.prev = None, None
        try:
            maps = open("/proc/self/maps").read()
            for path in sorted(set(re.findall(r"(/\S*numpy\.libs/\S*openblas\S*\.so\S*)", maps))):
                lib = ctypes.CDLL(path)
                if hasattr(lib, "scipy_openblas_set_num_threads64_"):
                    self.lib = lib
                    self.prev = int(lib.scipy_openblas_get_num_threads64_())
                    lib.scipy_openblas_set_num_threads64_(1)
                    break
        except Exception:  # noqa: BLE001
            self.lib = None
        return self

    def __exit__(self, *exc):
        if self.lib is not None and self.prev:
            self.lib.scipy_openblas_set_num_threads64_(self.prev)
        return False


def refit_pruned(w: np.ndarray, w_pruned: np.ndarray, cov: np.ndarray, mu: np.ndarray, groups: int = 1,
                 ridge: float = 1e-4):
    """Data-aware pruning fit: keep each output's pruning mask, refit its remaining weights and a bias
    correction δ by least squares on the calibration patches (minimise E‖W_n p − ŵ_n p − δ_n‖² with
    E[ppᵀ] = ``cov`` (groups × d × d) and E[p] = ``mu`` (groups × d)). Returns (Ŵ, δ)."""
    with _single_thread_blas():
        return _refit_pruned(w, w_pruned, cov, mu, groups, ridge)


def _refit_pruned(w, w_pruned, cov, mu, groups, ridge):
    n = w.shape[0]
    og = n // groups
    out = np.zeros_like(w, dtype=np.float64)
    delta = np.zeros(n)
    for gi in range(groups):
        s, m = cov[gi], mu[gi]
        d = len(s)
        lam = ridge * max(float(np.trace(s)) / d, 1e-30)
        for r in range(gi * og, (gi + 1) * og):
            wr = w[r].reshape(-1).astype(np.float64)
            keep = np.flatnonzero(w_pruned[r].reshape(-1))
            k = len(keep)
            a = np.empty((k + 1, k + 1))
            a[:k, :k] = s[np.ix_(keep, keep)]
            a[:k, k] = a[k, :k] = m[keep]
            a[k, k] = 1.0
            a[:k, :k] += lam * np.eye(k)
            rhs = np.concatenate([s[keep] @ wr, [m @ wr]])
            try:
                sol = np.linalg.solve(a, rhs)
            except np.linalg.LinAlgError:
                sol = np.concatenate([wr[keep], [0.0]])
            row = np.zeros(d)
            row[keep] = sol[:k]
            out[r] = row.reshape(w.shape[1:])
            delta[r] = sol[k]
    return out.astype(w.dtype), delta


def kmeans_1d(v: np.ndarray, k: int, iters: int = 50):
    """Lloyd's k-means on 1-D data with linear initialisation; returns (sorted centroids, labels)."""
    v = np.asarray(v, np.float64).ravel()
    if v.size == 0:
        return np.zeros(0), np.zeros(0, int)
    lo, hi = float(v.min()), float(v.max())
    c = np.linspace(lo, hi, k) if k > 1 else np.array([v.mean()])
    labels = np.zeros(v.size, int)
    for it in range(iters):
        mids = (c[1:] + c[:-1]) / 2
        new = np.searchsorted(mids, v)
        sums = np.bincount(new, weights=v, minlength=k)
        cnt = np.bincount(new, minlength=k)
        c_new = np.where(cnt > 0, sums / np.maximum(cnt, 1), c)
        order = np.argsort(c_new, kind="stable")
        c_new = c_new[order]
        if it > 0 and np.array_equal(new, labels) and np.allclose(c_new, c):
            break
        labels, c = np.argsort(order)[new], c_new
    mids = (c[1:] + c[:-1]) / 2
    labels = np.searchsorted(mids, v)
    return c, labels


def share_weights(w: np.ndarray, bits: int, iters: int = 50):
    """(shared weight, codebook) for one layer: zeros stay zero (a codebook symbol of their own)."""
    flat = w.ravel().astype(np.float64)
    nz = flat != 0
    has_zero = not nz.all()
    k = (1 << bits) - (1 if has_zero else 0)
    out = np.zeros_like(flat)
    if k < 1 or not nz.any():
        return w.copy(), np.zeros(1, np.float32)
    c, labels = kmeans_1d(flat[nz], k, iters)
    c32 = c.astype(np.float32)
    out[nz] = c32[labels]
    book = np.concatenate([[0.0], c32]) if has_zero else c32
    return out.reshape(w.shape).astype(w.dtype), np.asarray(book, np.float32)


# --------------------------------------------------------------------------------------- passes

class _WeightPass:
    """Rewrite the constant weights of every conv/matmul (or ``layers``) with ``new_weight``."""

    technique = "?"

    def _targets(self, mod):
        from ..layers import weight_arrays

        ws = weight_arrays(mod)
        if self.layers:
            missing = [n for n in self.layers if n not in ws]
            if missing:
                raise SqccError(f"--pass {self.technique}: layers={','.join(missing)}: no conv/fc layer with "
                                f"constant weights of that name (layers: {', '.join(list(ws)[:8])} …)")
            ws = {n: w for n, w in ws.items() if n in self.layers}
        return ws

    def _rewrite(self, mod, new, deltas=None):
        from tvm import relax

        from .base import apply_rewriter, make_conv_rewriter

        deltas = deltas or {}

        def conv(builder, c):
            if c.name not in new:
                return None
            y = relax.op.nn.conv2d(c.data, relax.const(np.ascontiguousarray(new[c.name], np.float32)),
                                   strides=list(c.strides), padding=list(c.padding),
                                   dilation=list(c.dilation), groups=c.groups)
            d = deltas.get(c.name)
            if d is not None:  # bias correction of the data-aware fit
                y = relax.op.add(builder.emit(y, f"{c.name}__pruned"),
                                 relax.const(np.asarray(d, np.float32).reshape(1, -1, 1, 1)))
            return y

        def matmul(builder, name, x, w):
            if name not in new:
                return None
            return relax.op.matmul(x, relax.const(np.ascontiguousarray(new[name], np.float32)))

        return apply_rewriter(mod, make_conv_rewriter(conv, matmul))

    def _patch_stats(self, name, w):
        """(Σ, μ) of the conv's input patches (groups × d × d, groups × d), or None (cached)."""
        act = self.context.inputs_of(name)
        lay = self._geometry.get(name)
        if act is None or lay is None or w.ndim != 4:
            return None
        act = np.asarray(act)
        strides, padding, dilation, g, in_shape = lay
        if act.ndim != 4 or tuple(act.shape[1:]) != tuple(in_shape[1:]):
            return None
        cache = self.context.extra.setdefault("dc_patch_moments", {})
        key = (name, tuple(w.shape), tuple(act.shape))
        if key not in cache:
            from ..calibrate import patch_covariance

            try:
                res = patch_covariance(act, tuple(w.shape[2:]), strides, padding, dilation, g, return_mean=True)
            except TypeError:  # an older signature without means
                res = patch_covariance(act, tuple(w.shape[2:]), strides, padding, dilation, g)
            if isinstance(res, tuple):
                cov, mu = res[0], res[1]
            else:  # patch means ≈ channel means (padding ignored)
                cov = res
                mu_c = act.astype(np.float64).mean(axis=(0, 2, 3))
                cg, kk = w.shape[1], int(np.prod(w.shape[2:]))
                mu = np.stack([np.repeat(mu_c[i * cg:(i + 1) * cg], kk) for i in range(g)])
            cache[key] = (np.asarray(cov, np.float64), np.asarray(mu, np.float64).reshape(g, -1))
        return cache[key]

    def _errors(self, name, w, w_new, delta=None):
        """‖W − Ŵ‖/‖W‖ and, with calibration, the output error ‖(W p + b) − (Ŵ p + b + δ)‖/‖W p‖ over
        the layer's input patches (exact from their moments)."""
        werr = float(np.linalg.norm((w - w_new).astype(np.float64)) / (np.linalg.norm(w.astype(np.float64)) or 1))
        oerr = None
        try:
            stats = self._patch_stats(name, w)
        except Exception:  # noqa: BLE001  (a missing error figure must not fail the pass)
            stats = None
        if stats is not None:
            cov, mu = stats
            g = cov.shape[0]
            og = w.shape[0] // g
            num = den = 0.0
            for gi in range(g):
                wg = w[gi * og:(gi + 1) * og].reshape(og, -1).astype(np.float64)
                dg = wg - w_new[gi * og:(gi + 1) * og].reshape(og, -1)
                num += float(np.einsum("ij,jk,ik->", dg, cov[gi], dg))
                den += float(np.einsum("ij,jk,ik->", wg, cov[gi], wg))
                if delta is not None:
                    dl = np.asarray(delta[gi * og:(gi + 1) * og], np.float64)
                    num += float(dl @ dl) - 2 * float(dl @ (dg @ mu[gi]))
            oerr = math.sqrt(max(num, 0.0) / den) if den > 0 else 0.0
        return werr, oerr

    def _collect_geometry(self, mod):
        from ..layers import layer_graph

        geo = {}
        g = layer_graph(mod)
        for n in g.nodes:
            lay = g.nodes[n]["layer"]
            if lay.op == "relax.nn.conv2d" and lay.attrs:
                a = lay.attrs
                geo[n] = (tuple(a["strides"]), tuple(a["padding"]), tuple(a["dilation"]), a["groups"],
                          tuple(lay.in_shape))
        self._geometry = geo


@register("prune", "magnitude pruning (Deep Compression): per-layer, global or sensitivity-guided sparsity; "
          "weights stay dense constants with zeros",
          params=[Param("sparsity", float, "fraction of weights to remove, in [0, 1)"),
                  Param("scope", str, "layer (each layer loses that fraction) | global (one "
                        "magnitude threshold for all layers)", SCOPES),
                  Param("sensitivity", bool, "per-layer sparsities from sensitivity curves (equal "
                        "error per layer; data-weighted with calibration) reaching the overall sparsity"),
                  Param("layers", list, "only these layers (default: every conv/fc)"),
                  Param("fit", str, "auto (data-aware when calibrated: least-squares refit of the "
                        "kept weights + bias correction) | data | weight (plain magnitude pruning)",
                        ("auto", "data", "weight"))])
@tvm.transform.module_pass(opt_level=0, name="sqcc.prune")
class Prune(_WeightPass):
    technique = "prune"

    def __init__(self, context=None, sparsity=0.5, scope="layer", sensitivity=False, layers=(), fit="auto"):
        self.sparsity = check_sparsity(sparsity)
        if fit not in ("auto", "data", "weight"):
            raise SqccError(f"--pass prune: fit={fit}: expected one of auto, data, weight")
        self.fit = fit
        if scope not in SCOPES:
            raise SqccError(f"--pass prune: scope={scope}: expected one of {', '.join(SCOPES)}")
        self.scope = scope
        self.sensitivity = bool(sensitivity)
        self.layers = list(layers or [])
        self.context = context if context is not None else PassContext()

    def plan(self, weights: dict) -> dict:
        """{layer: sparsity} for these weights."""
        s = self.sparsity
        if self.sensitivity:
            curves, sizes = {}, {}
            for n, w in weights.items():
                act = self.context.inputs_of(n)
                e = None
                if act is not None:
                    try:
                        g = self._geometry.get(n, (None, None, None, 1))[3]
                        e = channel_energy(act, w.shape, g)
                    except Exception:  # noqa: BLE001
                        e = None
                curves[n] = sensitivity_curve(w, e)
                sizes[n] = w.size
            return allocate_sparsity(curves, sizes, s)
        if self.scope == "global":
            allw = np.concatenate([np.abs(w).ravel() for w in weights.values()])
            k = int(round(s * allw.size))
            if k == 0:
                return {n: 0.0 for n in weights}
            thr = np.partition(allw, k - 1)[k - 1]
            return {n: float(np.mean(np.abs(w) <= thr)) for n, w in weights.items()}
        return {n: s for n, w in weights.items()}

    def transform_module(self, mod, ctx):
        self._collect_geometry(mod)
        weights = self._targets(mod)
        plan = self.plan(weights)
        new = {}
        mode = ("sensitivity-guided" + (" (data-weighted)" if self.context.activations else "")
                if self.sensitivity else f"scope={self.scope}")
        deltas = {}
        for n, w in weights.items():
            sp = plan[n]
            w_new = prune_to(w, sp)
            how = mode
            stats = self._patch_stats(n, w) if self.fit != "weight" and sp > 0 else None
            if stats is not None:
                w_new, deltas[n] = refit_pruned(w, w_new, *stats, groups=self._geometry[n][3])
                how += "; data-aware: LS refit + bias correction"
            new[n] = w_new
            werr, oerr = self._errors(n, w, w_new, deltas.get(n))
            nz = int(np.count_nonzero(w_new))
            self.context.records.append(LayerRecord(
                n, "prune", True, f"sparsity {1 - nz / w.size:.3f} ({how})", int(w.size), nz, 0, 0, werr, oerr))
        self.context.extra.setdefault("deep_compression", {})["prune"] = {
            "sparsity": self.sparsity, "scope": self.scope, "sensitivity": self.sensitivity,
            "per_layer": {n: float(1 - np.count_nonzero(v) / v.size) for n, v in new.items()}}
        left, edits = self._bias_edits(mod, deltas)
        mod = self._rewrite(mod, new, left)
        if edits:
            from .shuffle import Plan, apply_plan

            plan = Plan()
            for b, (ci, ax, d) in edits.items():
                plan.consts[b] = [(ci, lambda a, d=d, ax=ax: a + d.reshape(
                    [-1 if i == ax else 1 for i in range(a.ndim)]).astype(a.dtype))]
            mod = apply_plan(mod, plan)
        return mod

    @staticmethod
    def _bias_edits(mod, deltas):
        """Bias corrections that can go into the layers' existing bias adds ({add binding: (operand,
        axis, δ)}), and the rest ({layer: δ}: those layers get an add of their own)."""
        if not deltas:
            return {}, {}
        from .shuffle import ChannelIR

        ir = ChannelIR(mod)
        if ir.dup:
            return dict(deltas), {}
        left, edits = {}, {}
        for name, d in deltas.items():
            users = ir.users.get(name, [])
            cc = None
            if len(users) == 1 and ir.op.get(users[0][0]) == "relax.add":
                cc = ir.channel_const_axis(users[0][0], len(d))
            if cc is None or cc[1] is None:
                left[name] = d
                continue
            edits[users[0][0]] = (cc[0], cc[1], np.asarray(d, np.float32))
        return left, edits


@register("share", "k-means weight sharing (Deep Compression): 2^bits shared values per layer, linear "
          "initialisation; weights stay dense constants (decoded)",
          params=[Param("bits", int, "index bits per weight, 1..8 (2^bits centroids per layer)"),
                  Param("layers", list, "only these layers (default: every conv/fc)")])
@tvm.transform.module_pass(opt_level=0, name="sqcc.share")
class Share(_WeightPass):
    technique = "share"

    def __init__(self, context=None, bits=8, layers=()):
        self.bits = check_bits(bits)
        self.layers = list(layers or [])
        self.context = context if context is not None else PassContext()

    def transform_module(self, mod, ctx):
        self._collect_geometry(mod)
        weights = self._targets(mod)
        new = {}
        books = self.context.extra.setdefault("deep_compression", {}).setdefault("share", {})
        for n, w in weights.items():
            w_new, book = share_weights(w, self.bits)
            new[n] = w_new
            books[n] = {"bits": self.bits, "codebook": book.tolist()}
            werr, oerr = self._errors(n, w, w_new)
            self.context.records.append(LayerRecord(
                n, "share", True, f"{self.bits}-bit index, {len(book)} shared values", int(w.size),
                int(np.count_nonzero(w_new)), 0, 0, werr, oerr))
        return self._rewrite(mod, new)
