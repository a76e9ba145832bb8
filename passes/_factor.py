"""Machinery shared by the factorisation passes (``lowrank``, ``dwsep``, ``flatten``).

A technique is a function ``fit(layer: LayerFit, setting) -> Factorization`` in pure numpy: it gets
the weight, the conv geometry and (when calibration activations exist) the patch second moments Σ
of the layer's input, and returns a chain of convs (or matmuls) plus the dense weight Ŵ that chain
is equal to. This module turns that into MACs/params, errors, a :class:`LayerRecord` and the Relax
bindings; :mod:`sqcc.planning` calls the same fits to price candidates.

ReLU-aware fits (``relu=N``, default 3, data-aware only): where the layer's output only feeds
``relu(conv + bias)`` (found from the graph, :func:`relu_biases`), the fit is iterated N times towards
targets t = y where y > 0, else min(ŷ, 0) — the outputs that are negative in both the original and the
approximation cost nothing — by the same (asymmetric) least squares with E[t p̂ᵀ] in place of W·E[p p̂ᵀ]
(``LayerFit.tcross``); the iterate with the least post-ReLU error on the calibration patches is kept.
:class:`RefitLayers` compensates layers that are not rewritten (used by ``sqcc.planning.realise``).

Errors: weight error ‖W − Ŵ‖/‖W‖; output error ‖(W − Ŵ)P‖/‖WP‖ over the calibration patches P,
computed exactly as sqrt(tr(DΣDᵀ)/tr(WΣWᵀ)) with D = W − Ŵ (per group), Σ = PPᵀ/|P|.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from ..errors import SqccError
from .base import LayerRecord

RIDGE = 1e-6  # relative Tikhonov term on Σ: keeps full-rank fits exact where Σ is singular
RELU_ITERS = 3  # default ReLU-aware refit iterations where a ReLU follows the layer (0: linear fit)
SHRINK_BELOW = 8  # Σ from fewer than this many samples per dimension is shrunk (LayerFit.cov_reg)


# ------------------------------------------------------------------------------------------ geometry

@dataclass
class ConvSpec:
    """One conv of a replacement chain (NCHW/OIHW)."""

    weight: np.ndarray
    strides: tuple = (1, 1)
    padding: tuple = (0, 0, 0, 0)  # top, left, bottom, right
    dilation: tuple = (1, 1)
    groups: int = 1
    # channels of the input gathered (in this order, repeats allowed) before the conv: dwsep with a
    # multiplier that varies per input channel; None: the input as it is
    in_index: np.ndarray | None = None


@dataclass
class LayerFit:
    """What a fit sees of one layer. ``weight`` is OIHW for convs; for a matmul it is N×K×1×1
    (the transposed matmul weight as a 1×1 conv) and ``kind == "matmul"``."""

    name: str
    weight: np.ndarray
    in_shape: tuple
    out_shape: tuple
    strides: tuple = (1, 1)
    padding: tuple = (0, 0, 0, 0)
    dilation: tuple = (1, 1)
    groups: int = 1
    kind: str = "conv"
    cov: np.ndarray | None = None  # (groups, d, d) patch second moments E[ppᵀ], or None
    mean: np.ndarray | None = None  # (groups, d) patch means E[p] (data-aware bias correction), or None
    # (E[p̂p̂ᵀ], E[pp̂ᵀ], E[p̂]) with p̂ the patches of a rewritten model's activations at this layer:
    # the last factor is then refitted to map p̂ to the original output (upstream errors compensated)
    hat: tuple | None = None
    samples: int | None = None  # how many patches Σ was estimated from (None: unknown / plenty)
    # (E[(t − μ_t)(p̂ − μ̂)ᵀ] (groups, ng, d), μ_t (groups, ng)): a per-sample target t replacing the
    # original outputs Wp (the ReLU-aware fit, FactorPassBase._relu_refit); None: t = Wp
    tcross: tuple | None = None
    cache: dict = field(default_factory=dict)

    @property
    def kernel(self):
        return tuple(self.weight.shape[2:])

    @property
    def macs(self) -> int:
        if self.kind == "matmul":
            return int(np.prod(self.in_shape[:-1])) * int(self.weight.shape[0] * self.weight.shape[1])
        n, o, h, w = self.out_shape
        return int(n * o * h * w * np.prod(self.weight.shape[1:]))

    @property
    def params(self) -> int:
        return int(self.weight.size)

    def group_matrices(self):
        """[W_g (N/g × d)] per group, rows = output channels, columns = (c, y, x)."""
        g = self.groups
        ng = self.weight.shape[0] // g
        return [self.weight[i * ng:(i + 1) * ng].reshape(ng, -1).astype(np.float64) for i in range(g)]

    def target(self, i: int, use_data: bool = True):
        """(T, S) for group i: the weight (ng × d) the structured fit approximates and the patch
        covariance it whitens by. Without hat moments T = W and S = :meth:`cov_reg` (S is None for a
        weight-only fit). With the moments of a rewritten model's inputs p̂ (``hat``), T is the best
        linear map from p̂ to the original output, T = W·C(p, p̂)·C(p̂, p̂)⁻¹, and S = C(p̂, p̂) (both
        centred): since E‖W(p − μ) − Ŵ(p̂ − μ̂)‖² = const + E‖(T − Ŵ)(p̂ − μ̂)‖², fitting T under S is
        the asymmetric reconstruction of Zhang et al. 2016 (upstream errors are compensated by the
        whole factorisation, not only its last factor)."""
        wg = self.group_matrices()[i]
        if not use_data or self.cov is None:
            return wg, None
        if self.tcross is not None:  # T = E[(t − μ_t)(p̂ − μ̂)ᵀ]·C⁻¹ (t the ReLU-aware targets)
            key = ("target", i)
            if key not in self.cache:
                c = self.input_cov(i)
                self.cache[key] = (np.linalg.solve(c, self.tcross[0][i].T).T, c)
            return self.cache[key]
        if self.hat is None or self.mean is None:
            return wg, self.cov_reg(i)
        key = ("target", i)
        if key not in self.cache:
            hh, xh, mh = self.hat
            c_hh = hh[i] - np.outer(mh[i], mh[i])
            c_xh = xh[i] - np.outer(self.mean[i], mh[i])
            lam = RIDGE * max(float(np.trace(c_hh)) / len(c_hh), 1e-30)
            c_hh = c_hh + lam * np.eye(len(c_hh))
            t = np.linalg.solve(c_hh, (wg @ c_xh).T).T  # C_hh symmetric: (C_hh⁻¹ C_xhᵀ Wᵀ)ᵀ
            self.cache[key] = (t, c_hh)
        return self.cache[key]

    def input_cov(self, i: int) -> np.ndarray:
        """The (regularised, centred) covariance of the inputs the fit sees: C(p̂, p̂) with hat moments,
        else :meth:`cov_reg`."""
        if self.hat is None or self.mean is None:
            return self.cov_reg(i)
        key = ("hatcov", i)
        if key not in self.cache:
            hh, _, mh = self.hat
            c_hh = hh[i] - np.outer(mh[i], mh[i])
            lam = RIDGE * max(float(np.trace(c_hh)) / len(c_hh), 1e-30)
            self.cache[key] = c_hh + lam * np.eye(len(c_hh))
        return self.cache[key]

    def cov_reg(self, i: int) -> np.ndarray | None:
        """The covariance the fits whiten by, for group i: centred (Σ − μμᵀ) when the means are known
        (the mean of the error then goes into a bias correction, as Zhang et al. 2016), plus a small
        ridge (so whitened fits stay exact at full rank)."""
        if self.cov is None:
            return None
        key = ("covreg", i)
        if key not in self.cache:
            s = self.cov[i]
            if self.mean is not None:
                s = s - np.outer(self.mean[i], self.mean[i])
            d = len(s)
            if self.samples is not None and self.samples < SHRINK_BELOW * d:
                # few samples for the dimension (a classifier matmul sees one vector per image): Σ is
                # (nearly) singular, and a fit whitened by it is exact on the calibration inputs and
                # poor on new ones (a rank-63 fc of 64 images measures error 0). Shrink towards
                # the isotropic (Ledoit–Wolf style, weight d/(n+d)) so errors off the sample count.
                a = d / (self.samples + d)
                s = (1 - a) * s + a * (float(np.trace(s)) / d) * np.eye(d)
            lam = RIDGE * max(float(np.trace(s)) / d, 1e-30)
            self.cache[key] = s + lam * np.eye(d)
        return self.cache[key]


@dataclass
class Factorization:
    technique: str  # "lowrank:weight", "lowrank:spatial", "lowrank:channel", "dwsep", "flatten"
    rank: int
    full_rank: int
    detail: str
    convs: list  # [ConvSpec] applied in order (for a matmul: [K×r, r×N] arrays)
    dense: np.ndarray  # Ŵ, same shape as the layer weight
    energy: float | None = None  # fraction of (output or weight) energy kept, when defined
    bias: np.ndarray | None = None  # per-output-channel correction added after the chain


from ..calibrate import conv_out_hw  # noqa: E402,F401  (one definition, re-exported here)

SAMPLED_POSITIONS = 20000  # patch_covariance's default max_positions (what _layer_cov uses)


def chain_cost(layer: LayerFit, f: Factorization) -> tuple[int, int]:
    """(MACs, params) of a replacement chain."""
    if layer.kind == "matmul":
        rows = int(np.prod(layer.in_shape[:-1]))
        return sum(rows * m.shape[0] * m.shape[1] for m in f.convs), sum(int(m.size) for m in f.convs)
    n, _, h, w = layer.in_shape
    macs = params = 0
    for c in f.convs:
        h, w = conv_out_hw(h, w, c.weight.shape[2:], c.strides, c.padding, c.dilation)
        macs += n * c.weight.shape[0] * h * w * int(np.prod(c.weight.shape[1:]))
        params += int(c.weight.size)
    return int(macs), int(params)


# ----------------------------------------------------------------------------------------- errors

def weight_error(layer: LayerFit, dense: np.ndarray) -> float:
    w = layer.weight.astype(np.float64)
    d = float(np.linalg.norm(w))
    return float(np.linalg.norm(w - dense)) / (d if d > 0 else 1.0)


def ridge_solve(gram: np.ndarray, rhs: np.ndarray, rel: float) -> np.ndarray:
    """X with (G + λI)·X = rhs, G symmetric PSD, λ = rel × its mean diagonal (a floor keeps an all-zero G
    solvable): the regularised normal equations every least-squares step here solves."""
    lam = rel * max(float(np.trace(gram)) / max(len(gram), 1), 1e-30)
    return np.linalg.solve(gram + lam * np.eye(len(gram)), rhs)


def alternate(x0: np.ndarray, target: np.ndarray, rounds: int, step) -> np.ndarray:
    """``rounds`` alternating-least-squares rounds ``x = step(x)`` from ``x0``. A group with an all-zero
    target (a dead filter or input channel) has nothing to fit and would make the solves singular, so
    it keeps ``x0``, as does a solve that fails or goes non-finite."""
    if rounds <= 0 or not np.any(target):
        return x0
    x = x0
    try:
        for _ in range(rounds):
            x = step(x)
    except np.linalg.LinAlgError:
        return x0
    return x if np.all(np.isfinite(x)) else x0


def final_refit(layer: LayerFit, i: int, wflat: np.ndarray, g_mat: np.ndarray) -> np.ndarray:
    """Least-squares last factor A (ng×k) for group i, features G·p (k×d): minimises
    E‖W(p − μ) − A·G(p̂ − μ̂)‖² — with p̂ = p (plain data-aware fit) unless ``layer.hat`` holds the
    moments of the rewritten model's inputs (then upstream errors are compensated); with
    ``layer.tcross`` the target outputs are the ReLU-aware t instead of W(p − μ)."""
    if layer.tcross is not None:
        c = layer.input_cov(i)
        return ridge_solve(g_mat @ c @ g_mat.T, (layer.tcross[0][i] @ g_mat.T).T, 1e-6).T
    if layer.hat is None or layer.mean is None:
        return ls_refit(wflat, g_mat, layer.cov_reg(i))
    hh, xh, mh = layer.hat
    c_hh = hh[i] - np.outer(mh[i], mh[i])
    c_xh = xh[i] - np.outer(layer.mean[i], mh[i])
    return ridge_solve(g_mat @ c_hh @ g_mat.T, (wflat @ c_xh @ g_mat.T).T, 1e-6).T


def bias_correction(layer: LayerFit, dense: np.ndarray) -> np.ndarray | None:
    """b = Wμ − Ŵμ̂ per output channel: the mean of the output error on the calibration data
    (μ̂ = μ unless the rewritten model's input moments are known)."""
    if layer.mean is None:
        return None
    g = layer.groups
    ng = layer.weight.shape[0] // g
    out = []
    for i, wg in enumerate(layer.group_matrices()):
        wh = dense[i * ng:(i + 1) * ng].reshape(ng, -1)
        mh = layer.hat[2][i] if layer.hat is not None else layer.mean[i]
        mt = layer.tcross[1][i] if layer.tcross is not None else wg @ layer.mean[i]
        out.append(mt - wh @ mh)
    return np.concatenate(out)


def output_error(layer: LayerFit, dense: np.ndarray) -> float | None:
    """‖(W − Ŵ)P − b‖/‖WP‖ on the calibration patches, b the bias correction (None without
    calibration)."""
    if layer.cov is None:
        return None
    g = layer.groups
    ng = layer.weight.shape[0] // g
    num = den = 0.0
    for i, wg in enumerate(layer.group_matrices()):
        wh = dense[i * ng:(i + 1) * ng].reshape(ng, -1)
        dg = wg - wh
        s = layer.cov[i]
        den += float(np.sum((wg @ s) * wg))
        if layer.hat is not None and layer.mean is not None:
            # E‖W(p − μ) − Ŵ(p̂ − μ̂)‖² from the centred (cross) moments
            hh, xh, mh = layer.hat
            mu = layer.mean[i]
            c_xx = s - np.outer(mu, mu)
            c_xh = xh[i] - np.outer(mu, mh[i])
            c_hh = hh[i] - np.outer(mh[i], mh[i])
            num += float(np.sum((wg @ c_xx) * wg) - 2 * np.sum((wg @ c_xh) * wh) + np.sum((wh @ c_hh) * wh))
            continue
        # with the bias correction b = Dμ the error is D(p − μ): centred moments
        sc = s - np.outer(layer.mean[i], layer.mean[i]) if layer.mean is not None else s
        num += float(np.sum((dg @ sc) * dg))
    return math.sqrt(max(num, 0.0) / den) if den > 0 else 0.0


# ------------------------------------------------------------------------------------- rank choice

def choose_rank(spectrum: np.ndarray, full: int, rank=None, energy=None) -> int:
    """Rank from an int, a fraction of ``full`` or an energy threshold on ``spectrum`` (descending
    energies, i.e. squared singular values), clamped to [1, full]."""
    if rank is not None:
        if isinstance(rank, float) and rank <= 1.0:
            r = int(math.ceil(rank * full - 1e-9))
        else:
            r = int(rank)
        return max(1, min(r, full))
    e = np.clip(np.asarray(spectrum, np.float64), 0, None)
    tot = float(e.sum())
    if tot <= 0:
        return 1
    cum = np.cumsum(e) / tot
    r = int(np.searchsorted(cum, (energy or 1.0) - 1e-12) + 1)
    return max(1, min(r, full))


def ls_refit(target_rows: np.ndarray, g_mat: np.ndarray, cov: np.ndarray) -> np.ndarray:
    """Least-squares A minimising E‖T p − A G p‖² over patches p with E[ppᵀ] = cov:
    A = TΣGᵀ (GΣGᵀ)⁻¹ (ridge-regularised). ``target_rows`` T (m×d), ``g_mat`` G (k×d)."""
    sg = cov @ g_mat.T
    return ridge_solve(g_mat @ sg, (target_rows @ sg).T, 1e-7).T


# ------------------------------------------------------------------------------------- validation

def check_rank_param(pass_name, rank, allow_fraction=True):
    if rank is None:
        return
    if isinstance(rank, float) and not allow_fraction and rank != int(rank):
        raise SqccError(f"--pass {pass_name}: rank={rank}: must be a positive integer")
    if rank <= 0 or (isinstance(rank, float) and rank > 1 and rank != int(rank)):
        raise SqccError(f"--pass {pass_name}: rank={rank} out of range: a positive integer, or a "
                        f"fraction in (0, 1] of each layer's full rank")


def check_energy(pass_name, energy):
    if energy is None:
        return
    if not (0.0 < float(energy) <= 1.0):
        raise SqccError(f"--pass {pass_name}: energy={energy} out of range: must be in (0, 1]")


# ------------------------------------------------------------------------------------------ the pass

def _layer_cov(context, name, act, kind, kernel, strides, padding, dilation, groups, in_shape):
    """Σ for a layer from the context's activations (cached), or None."""
    if act is None:
        return None
    act = np.asarray(act)
    if kind == "matmul":
        if act.ndim < 2 or act.shape[-1] != in_shape[-1]:
            return None
        act = act.reshape(-1, act.shape[-1])
    else:
        if act.ndim != 4 or tuple(act.shape[1:]) != tuple(in_shape[1:]):
            return None
    cache = context.extra.setdefault("patch_cov", {})
    key = (name, kind, tuple(kernel), tuple(strides), tuple(padding), tuple(dilation), groups,
           tuple(act.shape))
    if key not in cache:
        from ..calibrate import patch_covariance

        cache[key] = patch_covariance(act, kernel, strides, padding, dilation, groups, return_mean=True)
    return cache[key]


def _layer_hat(context, name, kind, kernel, strides, padding, dilation, groups, in_shape):
    """Cross moments with the rewritten model's activations (``context.extra["activations_hat"]``)."""
    hats = context.extra.get("activations_hat") or {}
    xh = hats.get(name)
    x = context.inputs_of(name)
    if xh is None or x is None or np.shape(xh) != np.shape(x):
        return None
    x, xh = np.asarray(x), np.asarray(xh)
    if kind == "matmul":
        x, xh = x.reshape(-1, x.shape[-1]), xh.reshape(-1, xh.shape[-1])
    cache = context.extra.setdefault("patch_hat", {})
    key = (name, kind, tuple(kernel), tuple(strides), tuple(padding), tuple(dilation), groups)
    if key not in cache:
        from ..calibrate import patch_cross_moments

        cache[key] = patch_cross_moments(x, xh, kernel, strides, padding, dilation, groups)
    return cache[key]


def layer_from_conv(context, conv, use_data=True) -> LayerFit:
    """A LayerFit from a base.ConvCall (Σ attached when calibration activations fit the layer)."""
    mom = None
    if use_data and context is not None:
        mom = _layer_cov(context, conv.name, context.inputs_of(conv.name), "conv", conv.weight.shape[2:],
                         conv.strides, conv.padding, conv.dilation, conv.groups, conv.in_shape)
    cov, mean = mom if mom is not None else (None, None)
    hat = _layer_hat(context, conv.name, "conv", conv.weight.shape[2:], conv.strides, conv.padding,
                     conv.dilation, conv.groups, conv.in_shape) if mom is not None else None
    samples = None
    if mom is not None:
        act = np.asarray(context.inputs_of(conv.name))
        ho, wo = conv_out_hw(act.shape[2], act.shape[3], conv.weight.shape[2:], conv.strides, conv.padding,
                             conv.dilation)
        samples = min(act.shape[0] * ho * wo, SAMPLED_POSITIONS)
    return LayerFit(conv.name, conv.weight, conv.in_shape, conv.out_shape, conv.strides, conv.padding,
                    conv.dilation, conv.groups, "conv", cov, mean, hat, samples)


def layer_from_matmul(context, name, x_shape, w, use_data=True) -> LayerFit:
    wt = np.ascontiguousarray(w.T)[:, :, None, None]  # N×K×1×1
    mom = None
    if use_data and context is not None:
        mom = _layer_cov(context, name, context.inputs_of(name), "matmul", (1, 1), (1, 1),
                         (0, 0, 0, 0), (1, 1), 1, x_shape)
    cov, mean = mom if mom is not None else (None, None)
    hat = _layer_hat(context, name, "matmul", (1, 1), (1, 1), (0, 0, 0, 0), (1, 1), 1, x_shape) \
        if mom is not None else None
    samples = None
    if mom is not None:
        act = np.asarray(context.inputs_of(name))
        samples = min(int(act.size // act.shape[-1]), SAMPLED_POSITIONS)
    out_shape = tuple(x_shape[:-1]) + (w.shape[1],)
    return LayerFit(name, wt, tuple(x_shape), out_shape, kind="matmul", cov=cov, mean=mean, hat=hat,
                    samples=samples)


def relu_biases(func) -> dict:
    """{conv name: its bias (N,)} for every conv2d whose output only feeds ``relu(conv + bias)``
    (bias a constant, or a reshape of one; or ``relu(conv)``, bias 0): the layers whose outputs
    matter only where they are positive (ReLU6 and other clips are not recognised)."""
    from ..layers import const_value, is_const, op_name, values_and_users

    values, users = values_and_users(func)

    out = {}
    for var, val in values.items():
        if op_name(val) != "relax.nn.conv2d" or not is_const(val.args[1]):
            continue
        n = int(val.args[1].ty.shape[0])
        u = users.get(var, [])
        if len(u) != 1 or u[0] is None:
            continue
        nxt = values.get(u[0])
        bias = np.zeros(n)
        if op_name(nxt) == "relax.add":
            other = nxt.args[1] if nxt.args[0].same_as(var) else nxt.args[0]
            c = const_value(other, values)
            if c is None or c.size != n or (c.ndim == 4 and c.shape[1] != n):
                continue
            bias = c.reshape(-1).astype(np.float64)
            u = users.get(u[0], [])
            if len(u) != 1 or u[0] is None:
                continue
            nxt = values.get(u[0])
        if op_name(nxt) == "relax.nn.relu":
            out[var.name] = bias
    return out


def emit_chain(builder, data, layer: LayerFit, f: Factorization, tag: str):
    """Emit all but the last op of the chain (named ``{layer}__{tag}{k}``; a channel gather before conv
    k is ``{layer}__{tag}g{k}``) and return the last (un-emitted) expr; the rewriter binds it under the
    layer's own name."""
    from tvm import relax

    x = data
    n = len(f.convs)
    for k, c in enumerate(f.convs):
        if getattr(c, "in_index", None) is not None:
            # a channel gather (no MACs); named so the sequential refit can collect the chain's input
            idx = relax.const(np.asarray(c.in_index, dtype=np.int64))
            x = builder.emit(relax.op.take(x, idx, axis=1, mode="clip"), f"{layer.name}__{tag}g{k}")
        if layer.kind == "matmul":
            expr = relax.op.matmul(x, relax.const(np.ascontiguousarray(c, dtype=np.float32)))
        else:
            expr = relax.op.nn.conv2d(x, relax.const(np.ascontiguousarray(c.weight, dtype=np.float32)),
                                      strides=[int(s) for s in c.strides],
                                      padding=[int(p) for p in c.padding],
                                      dilation=[int(d) for d in c.dilation], groups=int(c.groups))
        if k == n - 1:
            if f.bias is not None and np.any(f.bias):
                b = np.asarray(f.bias, np.float32)
                b = b if layer.kind == "matmul" else b.reshape(1, -1, 1, 1)
                x = builder.emit(expr, f"{layer.name}__{tag}{k}")
                return relax.op.add(x, relax.const(b))
            return expr
        x = builder.emit(expr, f"{layer.name}__{tag}{k}")
    return x


class FactorPassBase:
    """Common body of the factorisation passes. Subclasses set ``technique`` / ``tag`` and define
    ``fit_layer(layer) -> Factorization | str`` (a string is the reason to skip) and optionally
    ``fit_matmul``."""

    technique = "?"
    tag = "f"
    handles_matmul = False

    def __init__(self, context=None, force=False, layers=(), fit="auto", relu=RELU_ITERS):
        from .base import PassContext

        self.context = context if context is not None else PassContext()
        self.force = bool(force)
        self.layers = set(layers or [])
        self.fit = fit
        self.relu = self._rounds("relu", relu)
        self._relu_bias: dict = {}

    def _relu_refit(self, layer: LayerFit, f, b0):
        """ReLU-aware refit (Zhang et al. 2016's nonlinear reconstruction, relaxed): the layer feeds a
        ReLU, so output error where the original and the approximation are both ≤ 0 does not matter.
        Iterate: targets t = y where y = Wp + b > 0, else min(ŷ, 0) (ŷ the current approximation on the
        inputs p̂ it sees), then refit the whole factorisation to t by the same (asymmetric) least
        squares. Keeps the iterate with the least ‖relu(y) − relu(ŷ)‖² on the calibration patches."""
        from ..calibrate import _patches

        x = self.context.inputs_of(layer.name)
        xh = (self.context.extra.get("activations_hat") or {}).get(layer.name)
        geo = (layer.kernel, layer.strides, layer.padding, layer.dilation, layer.groups, SAMPLED_POSITIONS, 0)
        p = _patches(np.asarray(x), *geo)
        ph = _patches(np.asarray(xh), *geo) if (layer.hat is not None and xh is not None) else p
        g = layer.groups
        ng = layer.weight.shape[0] // g
        m = len(p)
        b0 = np.asarray(b0, np.float64)
        wgs = layer.group_matrices()
        y = [p[:, i] @ wgs[i].T + b0[i * ng:(i + 1) * ng] for i in range(g)]
        ry = [np.maximum(v, 0) for v in y]
        muh = ph.mean(0)

        def outputs(fit):
            bias = bias_correction(layer, fit.dense)
            bias = np.zeros(len(b0)) if bias is None else bias
            return [ph[:, i] @ fit.dense[i * ng:(i + 1) * ng].reshape(ng, -1).T + bias[i * ng:(i + 1) * ng]
                    + b0[i * ng:(i + 1) * ng] for i in range(g)]

        def loss(yh):
            return sum(float(np.sum((ry[i] - np.maximum(yh[i], 0)) ** 2)) for i in range(g))

        yh = outputs(f)
        best, best_loss, first = (f, None), loss(yh), loss(yh)
        for _ in range(self.relu):
            ms, mus = [], []
            for i in range(g):
                bg = b0[i * ng:(i + 1) * ng]
                t = np.where(y[i] > 0, y[i], np.minimum(yh[i], 0)) - bg
                mu = t.mean(0)
                ms.append((t - mu).T @ (ph[:, i] - muh[i]) / m)
                mus.append(mu)
            layer.tcross = (np.stack(ms), np.stack(mus))
            layer.cache.clear()
            f2 = self.fit_layer(layer)
            if isinstance(f2, str):
                break
            yh = outputs(f2)
            l2 = loss(yh)
            if l2 < best_loss:
                best, best_loss = (f2, layer.tcross), l2
        f, layer.tcross = best
        f.bias = bias_correction(layer, f.dense)
        layer.cache.clear()
        if best[1] is not None:
            f.detail += (f"; ReLU-aware refit ({self.relu} iterations): post-ReLU error "
                         f"{math.sqrt(best_loss / max(first, 1e-30)):.3f} of the linear fit's")
        return f

    def _rounds(self, param: str, value) -> int:
        """An iteration count parameter (relu=, als=): an integer ≥ 0."""
        if int(value) < 0:
            raise SqccError(f"--pass {self.technique.split(':')[0]}: {param}={value} out of range: must be ≥ 0")
        return int(value)

    # the fit mode for a layer: data-aware when calibration activations exist (unless fit=weight)
    def _use_data(self):
        return self.fit in ("auto", "data")

    def _skip(self, layer, reason, macs=0, params=0):
        self.context.records.append(LayerRecord(layer, self.technique, False, reason, params, params,
                                                macs, macs))

    def _wanted(self, name):
        if "__" in name:  # a piece of an earlier rewrite
            return False
        if self.layers and name not in self.layers:
            return False
        return True

    def _decide(self, layer: LayerFit, f):
        """Record the outcome; return the Factorization to emit or None."""
        if isinstance(f, str):
            self._skip(layer.name, f, layer.macs, layer.params)
            return None
        done = self.context.extra.setdefault("rewritten", {})
        if f.bias is None:
            f.bias = bias_correction(layer, f.dense)
        macs, params = chain_cost(layer, f)
        werr = weight_error(layer, f.dense)
        oerr = output_error(layer, f.dense)
        mode = "data-aware" if layer.cov is not None else "weights only"
        if layer.hat is not None:
            mode += ", last factor refitted to the rewritten model's inputs"
        if self.fit == "data" and layer.cov is None:
            mode = "weights only (no calibration activations for this layer)"
        detail = f"{f.detail}; {mode}"
        force = self.force or getattr(self.context, "force", False)
        if macs >= layer.macs and not force:
            self.context.records.append(LayerRecord(
                layer.name, f.technique, False, f"{f.detail}: MACs would not drop "
                f"({layer.macs:,} → {macs:,}); force=true to rewrite anyway", layer.params, params,
                layer.macs, macs, werr, oerr))
            return None
        self.context.records.append(LayerRecord(layer.name, f.technique, True, detail, layer.params,
                                                params, layer.macs, macs, werr, oerr))
        done[layer.name] = f.technique
        return f

    def _rewrite_conv(self, builder, conv):
        if not self._wanted(conv.name):
            return None
        prev = self.context.extra.get("rewritten", {}).get(conv.name)
        if prev is not None:
            self._skip(conv.name, f"already rewritten by {prev}", conv.macs, int(conv.weight.size))
            return None
        layer = layer_from_conv(self.context, conv, self._use_data())
        # realise() re-applies the passes once per refitted layer: a layer's fit depends only on the
        # pass settings and whether its (set-once) rewritten-model inputs are known, so reuse it
        cache = self.context.extra.get("fit_cache")
        key = (conv.name, type(self).__name__, self._settings(), layer.hat is not None, layer.cov is not None)
        if cache is not None and key in cache:
            f = cache[key]
        else:
            f = self._fit_conv(layer, conv)
            if cache is not None:
                cache[key] = f
        f = self._decide(layer, f)
        if f is None:
            return None
        return emit_chain(builder, conv.data, layer, f, self.tag)

    def _settings(self):
        return tuple((k, v) for k, v in sorted(vars(self).items())
                     if isinstance(v, (int, float, str, bool, type(None))))

    def _fit_conv(self, layer, conv):
        f = self.fit_layer(layer)
        if (self.relu > 0 and not isinstance(f, str) and layer.cov is not None and layer.mean is not None
                and conv.name in self._relu_bias and self.context.inputs_of(conv.name) is not None):
            f = self._relu_refit(layer, f, self._relu_bias[conv.name])
        return f

    def _rewrite_matmul(self, builder, name, x, w):
        if not self._wanted(name):
            return None
        prev = self.context.extra.get("rewritten", {}).get(name)
        if prev is not None:
            return None
        x_shape = tuple(int(d) for d in x.ty.shape)
        layer = layer_from_matmul(self.context, name, x_shape, w, self._use_data())
        f = self.fit_matmul(layer)
        f = self._decide(layer, f)
        if f is None:
            return None
        return emit_chain(builder, x, layer, f, self.tag)

    def fit_matmul(self, layer):  # pragma: no cover - overridden where supported
        return f"{self.technique} does not apply to matmul"

    def transform_module(self, mod, ctx):
        from .base import apply_rewriter, make_conv_rewriter

        if self.relu > 0 and self._use_data() and self.context.activations is not None:
            self._relu_bias = relu_biases(mod["main"])
        rw = make_conv_rewriter(self._rewrite_conv, self._rewrite_matmul if self.handles_matmul else None)
        return apply_rewriter(mod, rw)


# ------------------------------------------------------------------------------- numpy reference

def reference_conv2d(x, w, strides=(1, 1), padding=(0, 0, 0, 0), dilation=(1, 1), groups=1):
    """NCHW/OIHW conv2d in numpy (float64), for checks and tests."""
    x = np.asarray(x, np.float64)
    w = np.asarray(w, np.float64)
    n, c, h, wd = x.shape
    o, cg, kh, kw = w.shape
    pt, pl, pb, pr = padding
    ho, wo = conv_out_hw(h, wd, (kh, kw), strides, padding, dilation)
    xp = np.pad(x, ((0, 0), (0, 0), (pt, pb), (pl, pr)))
    cols = np.empty((n, c, kh, kw, ho, wo))
    for y in range(kh):
        for xx in range(kw):
            y0, x0 = y * dilation[0], xx * dilation[1]
            cols[:, :, y, xx] = xp[:, :, y0:y0 + strides[0] * (ho - 1) + 1:strides[0],
                                   x0:x0 + strides[1] * (wo - 1) + 1:strides[1]]
    og = o // groups
    out = np.empty((n, o, ho, wo))
    for i in range(groups):
        out[:, i * og:(i + 1) * og] = np.einsum(
            "ncyxhw,ocyx->nohw", cols[:, i * cg:(i + 1) * cg], w[i * og:(i + 1) * og], optimize=True)
    return out


def reference_chain(x, layer: "LayerFit", f: "Factorization"):
    """Apply a factorisation chain to activations x in numpy."""
    if layer.kind == "matmul":
        y = np.asarray(x, np.float64)
        for m in f.convs:
            y = y @ m
        return y + (f.bias if f.bias is not None else 0)
    y = x
    for c in f.convs:
        if getattr(c, "in_index", None) is not None:
            y = y[:, c.in_index]
        y = reference_conv2d(y, c.weight, c.strides, c.padding, c.dilation, c.groups)
    return y + (f.bias.reshape(1, -1, 1, 1) if f.bias is not None else 0)


class RefitLayers(FactorPassBase):
    """Compensation of layers that are *not* rewritten (not a registered pass; :func:`sqcc.planning.realise`
    uses it): each listed conv keeps its shape and MACs but gets the full-rank least-squares weight
    T = W·C(p, p̂)·C(p̂, p̂)⁻¹ and bias correction that map the inputs p̂ it sees in the rewritten model
    to the original outputs (ReLU-aware where a ReLU follows, like the factorisations). Only layers
    with hat moments (``context.extra["activations_hat"]``) are touched."""

    technique = "refit"
    tag = "rf"

    # ridge strengths towards the original weight (× the mean input variance) tried by the
    # cross-validation; None: keep the weight (bias correction only)
    SHRINK_GRID = (0.0, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0, None)

    def __init__(self, context=None, layers=(), relu=RELU_ITERS, shrink="cv", bias_only: bool = False):
        super().__init__(context, True, layers, "data", relu)
        self.shrink = shrink if shrink == "cv" else float(shrink)
        self.bias_only = bool(bias_only)
        self._lam: dict = {}

    def _cv_shrink(self, layer):
        """The ridge strength (from SHRINK_GRID) whose fit on one half of the calibration images (even /
        odd, both ways) best predicts the original (post-ReLU where one follows) outputs on the other
        half: how far a full-rank refit can move from W before it fits noise (conv10 of SqueezeNet is
        512→1000 on 13×13 maps: a free refit there helps the calibration images only)."""
        from ..calibrate import _patches

        x = np.asarray(self.context.inputs_of(layer.name))
        xh = np.asarray((self.context.extra.get("activations_hat") or {})[layer.name])
        if len(x) < 4:
            return 0.0
        geo = (layer.kernel, layer.strides, layer.padding, layer.dilation, layer.groups, SAMPLED_POSITIONS // 2, 0)
        halves = [(_patches(x[sl], *geo), _patches(xh[sl], *geo)) for sl in (slice(0, None, 2), slice(1, None, 2))]
        b0 = self._relu_bias.get(layer.name) if self.relu > 0 else None
        relu = b0 is not None
        g = layer.groups
        ng = layer.weight.shape[0] // g
        b0 = np.zeros(layer.weight.shape[0]) if b0 is None else np.asarray(b0, np.float64)
        wgs = layer.group_matrices()
        err = np.zeros(len(self.SHRINK_GRID))
        for a, b in ((0, 1), (1, 0)):
            (pa, pha), (pb, phb) = halves[a], halves[b]
            for i in range(g):
                w, bg = wgs[i], b0[i * ng:(i + 1) * ng]
                mu, muh = pa[:, i].mean(0), pha[:, i].mean(0)
                xa, ha = pa[:, i] - mu, pha[:, i] - muh
                c = ha.T @ ha / len(ha)
                r = w @ (xa.T @ ha / len(ha))  # W·C(p, p̂)
                tr = max(float(np.trace(c)) / len(c), 1e-30)
                e, v = np.linalg.eigh(c)
                yb = pb[:, i] @ w.T + bg
                ryb = np.maximum(yb, 0) if relu else yb
                for k, sh in enumerate(self.SHRINK_GRID):
                    if sh is None:
                        t = w
                    else:
                        lam = (sh + RIDGE) * tr
                        t = ((r + sh * tr * w) @ v / (e + lam)) @ v.T
                    yhb = phb[:, i] @ t.T + (w @ mu - t @ muh) + bg
                    err[k] += float(np.sum((ryb - (np.maximum(yhb, 0) if relu else yhb)) ** 2))
        return self.SHRINK_GRID[int(np.argmin(err))]

    def fit_layer(self, layer):
        if layer.kind != "conv" or layer.cov is None or layer.hat is None or layer.mean is None:
            return "no rewritten-model inputs to refit to"
        n, cg, kh, kw = layer.weight.shape
        if layer.samples is not None and layer.samples < SHRINK_BELOW * cg * kh * kw:
            # too few samples per dimension for a full-rank refit to generalise (MobileNet's 1×1 convs
            # on 5×5 maps: 1,600 patches for d = 512); the layer stays as it is
            return f"too few calibration patches ({layer.samples}) for a full-rank refit of dimension {cg * kh * kw}"
        g = layer.groups
        ng = n // g
        if layer.name not in self._lam:
            self._lam[layer.name] = self._cv_shrink(layer) if self.shrink == "cv" else self.shrink
        shrink = None if self.bias_only else self._lam[layer.name]
        dense = np.empty(layer.weight.shape, np.float64)
        for i in range(g):
            if shrink is None:  # the weight stays; only the bias correction moves (b = E[t] − Wμ̂)
                dense[i * ng:(i + 1) * ng] = layer.group_matrices()[i].reshape(ng, cg, kh, kw)
                continue
            t, c = layer.target(i)
            if shrink > 0:  # ridge towards the original weight: (T·C + λW)(C + λI)⁻¹
                wg = layer.group_matrices()[i]
                lam = shrink * float(np.trace(c)) / len(c)
                t = np.linalg.solve(c + lam * np.eye(len(c)), (t @ c + lam * wg).T).T
            dense[i * ng:(i + 1) * ng] = t.reshape(ng, cg, kh, kw)
        conv = ConvSpec(dense, layer.strides, layer.padding, layer.dilation, g)
        how = "weight kept, bias corrected" if shrink is None else f"full-rank refit (ridge {shrink:g} towards W)"
        if self.shrink == "cv" and not self.bias_only:
            how += ", chosen by 2-fold cross-validation on the calibration images"
        return Factorization("refit", min(ng, cg * kh * kw), min(ng, cg * kh * kw),
                             f"{how} to the original outputs given the rewritten model's inputs", [conv], dense)

    def _skip(self, layer, reason, macs=0, params=0):
        pass  # untouched layers are not worth a record
