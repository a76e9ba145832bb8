"""Budget allocation: choose technique and rank per layer to meet a MAC (or parameter) budget with the
least measured output error, and the sweep that draws the agreement/accuracy-vs-MACs Pareto curve.

Allocation (greedy by error per MAC saved): every conv/matmul with a constant weight gets a list of
candidate rewrites — lowrank (weight/channel SVD at every rank that saves MACs; spatial SVD on a grid of
ranks), dwsep (multipliers in half steps below full, the filters shared out by energy), flatten (a few
term counts) — each priced by the exact
MACs/params of its replacement chain and its error: with calibration activations the relative output
error ‖(W − Ŵ)P‖/‖WP‖ on the real input patches of the layer (data-aware fits); without, the relative
weight error (weight-only fits). Starting from the original model, the step that adds the least
squared error per MAC (or parameter) removed — over all layers and all their cheaper candidates, so
the path follows each layer's lower convex hull — is taken until the budget is met. With calibration
inputs, each layer's squared error is weighted by its measured end-to-end sensitivity (KL of the
logits per unit squared layer error, fitted on half of the calibration images and measured on the
other half), since per-layer relative error is a poor proxy across layers; the chosen rewrites are
then refitted sequentially, each to the original outputs given the rewritten model's inputs
(:func:`realise`), ReLU-aware where a ReLU follows (Zhang et al. 2016's nonlinear reconstruction,
relaxed: error where original and approximation are both ≤ 0 is free), and the layers *not*
rewritten below the first rewrite are compensated in the same sequence (a full-rank least-squares
refit at unchanged MACs, ridge-shrunk towards the original weight by a strength cross-validated on
the calibration images). Per-layer error is a poor currency *across techniques* (a technique's error
may be absorbed better or worse by the refits below it), so, on request, each planned layer's
technique is re-chosen with the whole plan realised, fitted on half the calibration inputs and scored
end to end on the other half (:func:`refine_techniques`). The plan is
realised by ordinary pass specs (``lowrank:scheme=channel,rank=12,layers=conv3,conv7,fit=data`` ...),
so a plan is reproducible from the command line.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from .errors import SqccError

TECHNIQUES = ("lowrank", "dwsep", "flatten", "poolhoist")
HOIST_WINDOWS = (2, 3, 0)  # poolhoist windows priced (0: the whole map)


@dataclass
class Candidate:
    technique: str  # lowrank:weight | lowrank:channel | lowrank:spatial | dwsep | flatten | poolhoist
    rank: int  # rank, multiplier, or poolhoist's window
    macs: int
    params: int
    error: float  # relative (output or weight) error of the layer


@dataclass
class PlanEntry:
    layer: str
    technique: str
    rank: int
    macs_before: int
    macs_after: int
    params_before: int
    params_after: int
    error: float

    def to_json(self):
        return asdict(self)


@dataclass
class Plan:
    metric: str  # "macs" | "params"
    target: float  # fraction of the original
    fit: str  # "data" | "weight"
    entries: list
    macs_before: int
    macs_after: int
    params_before: int
    params_after: int
    error_measure: str = ""
    seconds: float = 0.0
    sensitivity: dict | None = None  # {layer: s} when measured
    activations: dict | None = field(default=None, repr=False)  # calibration activations used (not saved)
    refinement: list | None = None  # refine_techniques' tries, when run

    @property
    def fraction(self) -> float:
        return (self.macs_after / self.macs_before) if self.metric == "macs" else \
            (self.params_after / self.params_before)

    @property
    def pass_specs(self) -> list[str]:
        """Pass specs that realise the plan (one per technique and rank, listing its layers)."""
        groups: dict[tuple, list] = {}
        for e in self.entries:
            groups.setdefault((e.technique, e.rank), []).append(e.layer)
        specs = []
        for (tech, rank), layers in groups.items():
            lay = ",".join(layers)
            if tech.startswith("lowrank:"):
                specs.append(f"lowrank:scheme={tech.split(':')[1]},rank={rank},fit={self.fit},layers={lay}")
            elif tech == "dwsep":
                specs.append(f"dwsep:multiplier={rank},fit={self.fit},layers={lay}")
            elif tech == "flatten":
                specs.append(f"flatten:rank={rank},iters=30,fit={self.fit},layers={lay}")
            elif tech == "poolhoist":
                specs.append(f"poolhoist:window={rank},layers={lay}")
        return specs

    def to_json(self):
        return {"metric": self.metric, "target": self.target, "fit": self.fit,
                "achieved": self.fraction, "macs_before": self.macs_before, "macs_after": self.macs_after,
                "params_before": self.params_before, "params_after": self.params_after,
                "error_measure": self.error_measure, "passes": self.pass_specs,
                "sensitivity": self.sensitivity, "refinement": self.refinement,
                "entries": [e.to_json() for e in self.entries], "seconds": self.seconds}

    def table(self) -> str:
        lines = [f"budget {self.metric}={self.target:g} ({self.fit} fit): MACs {self.macs_before:,} → "
                 f"{self.macs_after:,} ({self.macs_after / self.macs_before:.3f}), params "
                 f"{self.params_before:,} → {self.params_after:,} ({self.params_after / self.params_before:.3f})",
                 f"{'layer':<12} {'technique':<16} {'rank':>5} {'MACs before':>12} {'MACs after':>12} "
                 f"{'error':>8}"]
        for e in self.entries:
            rank = "map" if e.technique == "poolhoist" and e.rank == 0 else e.rank  # the whole-map window
            lines.append(f"{e.layer:<12} {e.technique:<16} {rank:>5} {e.macs_before:>12,} "
                         f"{e.macs_after:>12,} {e.error:>8.4f}")
        for t in self.refinement or []:
            lines.append(f"refined {t['layer']}: {t['from']} → {t['to']}: KL on held-out calibration inputs "
                         f"{t['kl_before']:.4f} → {t['kl']:.4f}, {'kept' if t['kept'] else 'not kept'}")
        return "\n".join(lines)


# ------------------------------------------------------------------------------------ the layers

def layer_fits(mod, activations=None) -> list:
    """LayerFit for every conv2d/matmul with a constant weight (Σ attached where activations exist)."""
    from .passes import PassContext
    from .passes._factor import layer_from_conv, layer_from_matmul
    from .passes.base import apply_rewriter, make_conv_rewriter

    ctx = PassContext(activations=activations)
    out = []

    def on_conv(builder, conv):
        out.append(layer_from_conv(ctx, conv, activations is not None))
        return None

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


def candidates(layer, techniques=TECHNIQUES, use_data=True) -> list[Candidate]:
    """Priced rewrites of one layer that use fewer MACs than it."""
    from .passes._factor import chain_cost, output_error, weight_error
    from .passes.dwsep import fit_dwsep
    from .passes.flatten import fit_flatten
    from .passes.low_rank import _channel_spectra, fit_spatial

    data = use_data and layer.cov is not None
    base = layer.macs
    out: list[Candidate] = []
    techniques = set(techniques)

    def want(tech):
        return tech in techniques or tech.split(":")[0] in techniques

    def err(f):
        e = output_error(layer, f.dense) if data else None
        return e if e is not None else weight_error(layer, f.dense)

    n, cg, kh, kw = layer.weight.shape
    g = layer.groups
    ng = n // g
    tech = "lowrank:weight" if (kh, kw) == (1, 1) else "lowrank:channel"
    if want(tech) or (layer.kind == "matmul" and want("lowrank:channel")):
        # channel/weight SVD: MACs and error in closed form for every rank
        d = cg * kh * kw
        full = min(ng, d)
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
        for r in range(1, full):
            m = macs_r(r)
            if m >= base:
                break
            lost = sum(float(lam[r:].sum()) for lam, _ in spectra)
            out.append(Candidate(tech, r, int(m), int(params_r(r)), math.sqrt(max(lost, 0) / tot) if tot else 0.0))
    if want("lowrank:spatial") and layer.kind == "conv" and kh > 1 and kw > 1:
        if True:
            full_s = min(cg * kh, ng * kw)
            # MACs grow linearly in r: find the largest r that still saves MACs
            f1 = fit_spatial(layer, 1, None, data)
            m1, p1 = chain_cost(layer, f1)
            rmax = min(full_s - 1, int((base - 1) // max(m1, 1)))
            for r in _rank_grid(1, rmax, 14):
                f = f1 if r == 1 else fit_spatial(layer, r, None, data)
                m, p = chain_cost(layer, f)
                if m < base:
                    out.append(Candidate("lowrank:spatial", r, m, p, err(f)))
    if layer.kind == "conv" and kh * kw > 1 and not (cg == 1 and ng == 1):
        if want("dwsep"):
            # half steps: the filters are shared out by energy, so any C·M count is a candidate
            for mlt in np.arange(0.5, min(ng, kh * kw), 0.5):
                mlt = int(mlt) if mlt == int(mlt) else float(mlt)
                f = fit_dwsep(layer, mlt, data)
                if isinstance(f, str):
                    break
                m, p = chain_cost(layer, f)
                if m >= base:
                    break
                out.append(Candidate("dwsep", mlt, m, p, err(f)))
        if want("flatten"):
            for rr in (1, 2, 3, 4, 6):
                if rr >= kh * min(cg, kw):
                    break
                f = fit_flatten(layer, rr, data, iters=30, restarts=0)
                if isinstance(f, str):
                    break
                m, p = chain_cost(layer, f)
                if m >= base:
                    break
                out.append(Candidate("flatten", rr, m, p, err(f)))
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


def _model_totals(mod):
    from .layers import layers, totals

    t = totals(layers(mod))
    return t["macs"], t["params"]


def check_techniques(techniques) -> tuple:
    """The techniques a plan may use, checked: one clear error naming the unknown ones."""
    known = set(TECHNIQUES) | {"lowrank:weight", "lowrank:channel", "lowrank:spatial"}
    techniques = tuple(techniques)
    bad = [t for t in techniques if t not in known]
    if bad or not techniques:
        raise SqccError(f"budget: unknown technique(s) {', '.join(bad) or '(none given)'} (available: "
                        f"{', '.join(TECHNIQUES)}; lowrank:weight, lowrank:channel, lowrank:spatial for one scheme)")
    return techniques


def hoist_candidates(mod, priced, feeds, sensitivity: dict | None = None, windows=HOIST_WINDOWS,
                     progress=None) -> list:
    """Price ``poolhoist`` (:mod:`passes.pool_hoist`) for the layers it matches and add its candidates
    to ``priced`` (in place; returns [(layer, candidate, KL)]). It has nothing to fit, so its effect is
    measured directly: the model with the hoist alone is built and run on the calibration ``feeds``,
    and the candidate's error is set so that the allocation's currency, s·error², equals that KL (s
    the layer's ``sensitivity``, KL per unit squared layer error). Without sensitivities the error is
    the pass's own: the relative error of the pooled output on the feeds. One build per window."""
    from . import passes
    from .calibrate import collect_activations
    from .passes.pool_hoist import find_hoistable

    by_name = {lf.name: cands for lf, cands in priced}
    layers = [n for n in find_hoistable(mod["main"]) if n in by_name]
    if not layers:
        return []
    ref = _logits(mod, feeds) if sensitivity else None
    # without sensitivities the pass measures the pooled outputs' error itself, on the layers' inputs
    acts = None if sensitivity else collect_activations(mod, feeds, layers=layers, max_samples=len(feeds))
    added = []
    for w in windows:
        ctx = passes.PassContext(activations=acts)
        new = passes.create(f"poolhoist:window={w}", ctx)(mod)
        recs = [r for r in ctx.records if r.applied and r.layer in by_name]
        kl = _kl(ref, _logits(new, feeds)) if recs and sensitivity else None
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


def allocate(mod, activations=None, macs: float | None = None, params: float | None = None,
             techniques=TECHNIQUES, fit: str = "auto", progress=None, priced=None,
             sensitivity: dict | None = None) -> Plan:
    """Plan per-layer rewrites so the model's MACs (or params) drop to the given fraction with the
    least total squared relative error. ``fit``: data (needs activations), weight, or auto.
    ``sensitivity`` ({layer: s}, from :func:`layer_sensitivity`) weights each layer's squared error
    by how much of it reaches the model's output."""
    t0 = time.perf_counter()
    if (macs is None) == (params is None):
        raise SqccError("budget: give exactly one of macs=F or params=F")
    metric, target = ("macs", macs) if macs is not None else ("params", params)
    try:
        target = float(target)
    except (TypeError, ValueError):
        raise SqccError(f"budget {metric}={target}: expected a fraction in (0, 1]") from None
    if not (0.0 < target <= 1.0):
        raise SqccError(f"budget {metric}={target:g} out of range: expected a fraction in (0, 1]")
    check_techniques(techniques)
    if fit == "data" and activations is None:
        raise SqccError("budget with fit=data needs calibration activations (--calibration DIR)")
    use_data = activations is not None and fit != "weight"
    total_macs, total_params = _model_totals(mod)
    total = total_macs if metric == "macs" else total_params
    if priced is None:
        priced = price(mod, activations if use_data else None, techniques, use_data, progress)
    per_layer = [(lf, [c for c in cands if c.technique in techniques or c.technique.split(":")[0] in techniques])
                 for lf, cands in priced]
    cost = (lambda c: c.macs) if metric == "macs" else (lambda c: c.params)
    base_cost = [(lf.macs if metric == "macs" else lf.params) for lf, _ in per_layer]
    rewritable = sum(base_cost)
    fixed = total - rewritable
    min_reach = fixed + sum(min([b] + [cost(c) for c in cands]) for b, (lf, cands) in zip(base_cost, per_layer))
    goal = target * total
    if min_reach > goal + 1e-9:
        raise SqccError(f"budget {metric}={target:g} is unreachable: with {', '.join(techniques)} the "
                        f"smallest reachable is {metric}={min_reach / total:.3f} of the original")
    sens = [float((sensitivity or {}).get(lf.name, 1.0)) for lf, _ in per_layer]

    def greedy(forced: dict):
        """Greedy from the original (``forced``: {layer index: candidate} fixed first): the cheapest
        error per unit saved until the budget is met, then the slack filled back. Returns (choice per
        layer, None = original; total weighted squared error)."""
        cur = [None] * len(per_layer)
        cur_cost = list(base_cost)
        cur_err2 = [0.0] * len(per_layer)
        for i, c in forced.items():
            cur[i], cur_cost[i], cur_err2[i] = c, cost(c), c.error ** 2
        spent = fixed + sum(cur_cost)
        free = [(i, lf, cands) for i, (lf, cands) in enumerate(per_layer) if i not in forced]
        while spent > goal:
            best = None
            for i, lf, cands in free:
                for c in cands:
                    saved = cur_cost[i] - cost(c)
                    if saved <= 0:
                        continue
                    ratio = sens[i] * (c.error ** 2 - cur_err2[i]) / saved
                    if best is None or ratio < best[0]:
                        best = (ratio, i, c)
            if best is None:
                return None, math.inf  # the forced choices leave the budget out of reach
            _, i, c = best
            if spent - (cur_cost[i] - cost(c)) < goal:
                # the last step: of all steps that reach the budget, take the one adding the least error
                # (so a big cheap-per-MAC jump does not overshoot the budget by much)
                fin = None
                for j, lf, cands in free:
                    for cc in cands:
                        saved = cur_cost[j] - cost(cc)
                        if saved <= 0 or spent - saved > goal:
                            continue
                        add = sens[j] * (cc.error ** 2 - cur_err2[j])
                        if fin is None or add < fin[0]:
                            fin = (add, j, cc)
                if fin is not None:
                    _, i, c = fin
            spent -= cur_cost[i] - cost(c)
            cur[i], cur_cost[i], cur_err2[i] = c, cost(c), c.error ** 2
        # Fill the slack a big last step leaves: give MACs back to rewritten layers (a larger rank or
        # multiplier, or the original) while the budget holds, the most error removed per MAC first.
        while True:
            best = None
            for i, lf, cands in free:
                if cur[i] is None:
                    continue
                for c, cc, e2 in [(None, base_cost[i], 0.0)] + [(c, cost(c), c.error ** 2) for c in cands]:
                    extra = cc - cur_cost[i]
                    gain = sens[i] * (cur_err2[i] - e2)
                    if extra <= 0 or spent + extra > goal or gain <= 0:
                        continue
                    if best is None or gain / extra > best[0]:
                        best = (gain / extra, i, c, cc, e2)
            if best is None:
                break
            _, i, c, cc, e2 = best
            spent += cc - cur_cost[i]
            cur[i], cur_cost[i], cur_err2[i] = c, cc, e2
        return cur, sum(s_ * e for s_, e in zip(sens, cur_err2))

    # poolhoist saves a quarter of SqueezeNet in one step, too coarse for the greedy's steps: each of
    # its options (and none) is fixed in turn, the rest allocated greedily, and the least total error wins
    coarse = [i for i, (lf, cands) in enumerate(per_layer) if any(c.technique == "poolhoist" for c in cands)]
    options = [{}]
    for i in coarse:
        options = options + [{**o, i: c} for o in options for c in per_layer[i][1] if c.technique == "poolhoist"]
    cur, _ = min((greedy(o) for o in options), key=lambda r: r[1])
    if cur is None:  # cannot happen when min_reach <= goal (the empty option reaches it)
        raise SqccError(f"budget {metric}={target:g}: no allocation found")
    entries = []
    macs_after, params_after = total_macs, total_params
    for (lf, _), c in zip(per_layer, cur):
        if c is None:
            continue
        entries.append(PlanEntry(lf.name, c.technique, c.rank, lf.macs, c.macs, lf.params, c.params, c.error))
        macs_after -= lf.macs - c.macs
        params_after -= lf.params - c.params
    measure = "relative output error on calibration activations" if use_data else "relative weight error"
    if sensitivity:
        measure += ", weighted by measured end-to-end sensitivity"
    return Plan(metric, target, "data" if use_data else "weight", entries, total_macs, macs_after,
                total_params, params_after, measure, time.perf_counter() - t0)


def _entry_spec(e: PlanEntry, fit: str) -> str:
    """One layer's pass spec (a plan's specs group layers; refinement swaps them one by one)."""
    return Plan("macs", 1.0, fit, [e], 0, 0, 0, 0).pass_specs[0]


def refine_techniques(mod, plan: Plan, priced, activations, feeds, max_ratio: float = 1.4,
                      min_gain: float = 0.05, compensate: bool = True, relu: int | None = None,
                      progress=None) -> Plan:
    """Re-choose each rewritten layer's technique with the whole plan realised, judged on held-out inputs.

    The greedy allocation compares a layer's techniques by the layer's own output error, but how much
    of that error reaches the predictions depends on the technique too (how the sequential refit
    below absorbs it). On SqueezeNet 1.1 at 0.7× MACs, conv6 as spatial SVD rank 20 has the lower
    error (0.151 against dwsep M=4's 0.163, M filters per channel), yet the model with dwsep is 6%
    closer in KL, on held-out images and on a calibration split alike. So, for each rewritten layer and
    each of its other techniques, the candidate with the most MACs (params) that keeps the plan within budget is tried
    — unless its own error exceeds ``max_ratio`` times the current one, which is not worth a build:
    the plan with it is realised as the final model is (sequential refit, compensation), *fitted on
    the even-indexed* calibration inputs and scored by KL on the *odd-indexed* ones. A swap is kept
    when it lowers that KL by more than ``min_gain`` (relative: 32 scoring images are few, and on
    SqueezeNet swaps that gained 3–4% there raised the KL on held-out images); kept swaps accumulate,
    and the tries go in order of error ratio. Plans that share a prefix share its refit
    (``realise(memo=...)``). Returns the refined plan; ``plan.refinement`` lists every try.

    Opt-in (``--refine``): since dwsep shares its filters by energy, the greedy plan for SqueezeNet at
    0.7× picks dwsep for every fire module and none of the 3 swaps tried passes (4 refits of the
    plan, ~10 min on one shared core)."""
    split = _split_activations(activations, feeds)
    if split is None or plan.fit != "data" or not plan.entries:
        return replace(plan, refinement=[])
    say = progress or (lambda msg: None)
    t0 = time.perf_counter()
    fit_acts, score_feeds = split
    fit_feeds = list(feeds)[0::2]
    ref = _logits(mod, score_feeds)
    memo: dict = {}
    by_macs = plan.metric == "macs"
    cost = (lambda c: c.macs) if by_macs else (lambda c: c.params)
    after = (lambda e: e.macs_after) if by_macs else (lambda e: e.params_after)
    before = (lambda e: e.macs_before) if by_macs else (lambda e: e.params_before)
    total = plan.macs_before if by_macs else plan.params_before
    goal = plan.target * total
    cands = {lf.name: cs for lf, cs in priced}

    def score(entries):
        specs = [_entry_spec(e, plan.fit) for e in entries]
        new, _ = realise(mod, specs, fit_acts, fit_feeds, compensate=compensate, relu=relu, memo=memo)
        return _kl(ref, _logits(new, score_feeds))

    def alternative(entries, i, tech):
        """Layer i's ``tech`` candidate with the most MACs that keeps the plan within budget."""
        e = entries[i]
        room = goal - (total - sum(before(x) - after(x) for x in entries)) + after(e)
        ok = [c for c in cands.get(e.layer, []) if c.technique == tech and cost(c) <= room]
        return max(ok, key=cost) if ok else None

    entries = list(plan.entries)
    best = score(entries)
    say(f"refine: the plan scores KL {best:.4f} (fitted on {len(fit_feeds)} calibration inputs, "
        f"scored on the other {len(score_feeds)})")
    queue = []
    for i, e in enumerate(entries):
        for tech in sorted({c.technique for c in cands.get(e.layer, [])} - {e.technique}):
            c = alternative(entries, i, tech)
            if c is not None:
                queue.append((c.error / max(e.error, 1e-12), i, tech))
    log = []
    for _, i, tech in sorted(queue):
        e = entries[i]
        c = alternative(entries, i, tech)
        ratio = c.error / max(e.error, 1e-12) if c is not None else math.inf
        if ratio > max_ratio:
            continue
        new_e = PlanEntry(e.layer, c.technique, c.rank, e.macs_before, c.macs, e.params_before, c.params,
                          c.error)
        trial = entries[:i] + [new_e] + entries[i + 1:]
        kl = score(trial)
        kept = kl < best * (1.0 - min_gain)
        log.append({"layer": e.layer, "from": f"{e.technique} {e.rank}", "to": f"{c.technique} {c.rank}",
                    "error_ratio": ratio, "kl_before": best, "kl": kl, "kept": kept})
        say(f"refine {e.layer}: {e.technique} {e.rank} → {c.technique} {c.rank} (error ×{ratio:.2f}): "
            f"KL {best:.4f} → {kl:.4f}, {'kept' if kept else 'not kept'}")
        if kept:
            entries, best = trial, kl
    macs_after = plan.macs_before - sum(e.macs_before - e.macs_after for e in entries)
    params_after = plan.params_before - sum(e.params_before - e.params_after for e in entries)
    return replace(plan, entries=entries, macs_after=macs_after, params_after=params_after,
                   seconds=plan.seconds + time.perf_counter() - t0, refinement=log,
                   error_measure=plan.error_measure + "; techniques re-chosen end to end on a calibration split")


def parse_budget(budget) -> dict:
    """``"macs=0.7"`` / ``{"macs": 0.7}`` → ``{"macs": 0.7}`` (one of macs, params)."""
    if isinstance(budget, dict):
        items = dict(budget)
    else:
        items = {}
        for tok in str(budget).split(","):
            k, sep, v = tok.partition("=")
            if not sep:
                raise SqccError(f"--budget {budget}: expected macs=F or params=F (F a fraction, e.g. macs=0.7)")
            items[k.strip()] = v.strip()
    unknown = [k for k in items if k not in ("macs", "params")]
    if unknown or len(items) != 1:
        raise SqccError(f"--budget {budget}: expected exactly one of macs=F or params=F")
    (k, v), = items.items()
    try:
        v = float(v)
    except (TypeError, ValueError):
        raise SqccError(f"--budget {k}={v}: expected a fraction in (0, 1]") from None
    if not (0.0 < v <= 1.0):
        raise SqccError(f"--budget {k}={v:g} out of range: expected a fraction in (0, 1]")
    return {k: v}


def plan_budget(model, budget, calib_feeds=None, progress=None, techniques=TECHNIQUES,
                activations=None, sensitivity: bool = True, sensitivity_inputs: int | None = None,
                refine: bool = False) -> Plan:
    """The API's entry: ``model`` a frontend.Model, ``budget`` "macs=0.7" or a dict, ``calib_feeds``
    calibration inputs (None → weight-only allocation and fits). With calibration and
    ``sensitivity`` (the default), each layer's error is weighted by its measured effect on the
    predictions (:func:`layer_sensitivity`: one build per layer, fitted on half of the calibration
    inputs and measured on the other half; ``sensitivity_inputs`` caps how many are used). With
    ``refine`` each rewritten layer's technique is then re-chosen end to end
    (:func:`refine_techniques`: a refit of the whole plan per try). The returned plan carries the
    activations it used (``plan.activations``) so the caller need not collect them again; realise it
    with :func:`apply_plan` and the calibration feeds for the sequential refit."""
    b = parse_budget(budget)
    techniques = check_techniques(techniques)
    if activations is None and calib_feeds:
        from .calibrate import collect_activations

        activations = collect_activations(model.mod, calib_feeds, progress=progress)
    fit = "data" if activations is not None else "weight"
    priced = price(model.mod, activations, techniques, fit == "data", progress)
    sens = None
    if sensitivity and fit == "data" and calib_feeds:
        feeds = list(calib_feeds)[:sensitivity_inputs] if sensitivity_inputs else list(calib_feeds)
        sens = layer_sensitivity(model.mod, priced, activations, feeds, progress=progress)
    if "poolhoist" in techniques and fit == "data" and calib_feeds:
        hoist_candidates(model.mod, priced, list(calib_feeds), sens, progress=progress)
    plan = allocate(model.mod, activations, techniques=techniques, progress=progress, fit=fit,
                    priced=priced, sensitivity=sens, **b)
    if refine and fit == "data" and calib_feeds:
        plan = refine_techniques(model.mod, plan, priced, activations, list(calib_feeds), progress=progress)
    plan.sensitivity = sens
    plan.activations = activations
    return plan


TAGS = {"lowrank": "lr", "dwsep": "dw", "flatten": "fl"}


def _spec_for(c: Candidate, layer: str, fit: str) -> str:
    e = PlanEntry(layer, c.technique, c.rank, 0, 0, 0, 0, c.error)
    return Plan("macs", 1.0, fit, [e], 0, 0, 0, 0).pass_specs[0]


def _kl(ref, y):
    """Mean KL(softmax(ref) ‖ softmax(y)) over rows: how far the predictions moved."""
    def logsm(z):
        z = z - z.max(1, keepdims=True)
        return z - np.log(np.exp(z).sum(1, keepdims=True))
    lp, lq = logsm(np.asarray(ref, np.float64)), logsm(np.asarray(y, np.float64))
    return float((np.exp(lp) * (lp - lq)).sum(1).mean())


def _split_activations(activations, feeds):
    """(activations of the even-indexed feeds, the odd-indexed feeds), or None when the activations
    are not one row per feed (then no split is possible)."""
    n = len(feeds)
    if n < 4 or not activations or any(len(v) != n for v in activations.values()):
        return None
    return {k: v[0::2] for k, v in activations.items()}, list(feeds)[1::2]


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
    split = _split_activations(activations, feeds) if holdout else None
    if split is not None:
        activations, feeds = split
        priced = price(mod, activations, techniques, True)
    ref = _logits(mod, feeds)
    out = {}
    for lf, cands in priced:
        if not cands:
            continue
        c = min(cands, key=lambda c: abs(c.error - probe))
        if c.error <= 0:
            continue
        new, _ = realise(mod, [_spec_for(c, lf.name, "data")], activations, relu=relu)
        y = _logits(new, feeds)
        kl = _kl(ref, y)
        out[lf.name] = kl / c.error ** 2
        if progress:
            progress(f"sensitivity {lf.name}: {out[lf.name]:.3g} ({c.technique} rank {c.rank}, "
                     f"layer error {c.error:.3f} → KL {kl:.4f}, top-1 kept "
                     f"{float((y.argmax(1) == ref.argmax(1)).mean()):.2f})")
    return out


def realise(mod, specs, activations=None, feeds=None, rounds: int = 0, progress=None,
            sequential: bool = True, compensate: bool = True, compensate_shrink="cv",
            relu: int | None = None, compensate_bias_only: bool = False, memo: dict | None = None):
    """Apply pass ``specs`` to ``mod``; with calibration ``activations`` *and* the calibration
    ``feeds`` they came from, refit to the rewritten model's own activations (Zhang et al. 2016's
    asymmetric reconstruction: each rewritten layer is fitted so that the inputs p̂ it now sees,
    carrying the upstream rewrites' errors, map to the *original* layer's outputs Wp — see
    ``LayerFit.target``):

    * ``sequential`` (the default, when ``rounds`` is 0): layer by layer in model order, each fitted
      to the inputs produced by the already-refitted layers above it (one build per rewritten layer);
    * ``rounds`` > 0: that many sweeps that collect every rewritten layer's p̂ at once from the last
      sweep's model (cheaper, but each layer compensates errors its upstream refits then change; it
      measured worse than no refit on SqueezeNet).

    With ``compensate`` (sequential only) the layers that are *not* rewritten, below the first rewrite,
    join the sequence: each gets, at the same MACs, the full-rank least-squares weight and bias that map
    the inputs it now sees to the original outputs, ridge-shrunk towards its original weight by a
    strength chosen per layer by 2-fold cross-validation over the calibration images
    (``compensate_shrink="cv"``; a float fixes it; the grid includes keeping the weight, bias
    correction only). ``relu``: ReLU-aware refit iterations for every layer that feeds a ReLU (default:
    the passes' own, ``relu=`` in a spec; 0 turns it off).

    ``memo`` (a dict the caller keeps across calls with the same ``mod``, ``activations`` and
    ``feeds``): a layer's rewritten-model inputs depend only on the rewrites above it, so plans that
    share a prefix reuse its collected inputs instead of building the model again for each layer
    (used by :func:`refine_techniques`; needs every spec to name its ``layers=``).

    ``poolhoist`` specs are applied last, to the refitted model (a hoisted conv is then the
    compensated one; the hoist has nothing to fit).

    Returns (module, LayerRecords of the last application)."""
    from tvm import relax

    from . import passes
    from .calibrate import collect_activations

    hoists = [s for s in specs if s.split(":")[0].strip() == "poolhoist"]
    if hoists:
        new, records = realise(mod, [s for s in specs if s not in hoists], activations, feeds, rounds,
                               progress, sequential, compensate, compensate_shrink, relu,
                               compensate_bias_only, memo)
        ctx = passes.PassContext(activations=activations)
        for spec in hoists:
            new = passes.create(spec, ctx)(new)
        return new, list(records) + ctx.records

    if relu is not None:
        specs = [s if "relu=" in s or not s.split(":")[0] in TAGS else f"{s},relu={int(relu)}" for s in specs]
    cov_cache: dict = {}  # patch moments of the original activations: shared by every application

    comp: list = []  # un-rewritten layers below the first rewrite, refitted (compensate)

    fit_cache: dict = {}  # sequential refit: each layer's fit without / with its (set-once) p̂

    def run(hat, hat_cache=None):
        ctx = passes.PassContext(activations=activations)
        ctx.extra["patch_cov"] = cov_cache
        if sequential and rounds <= 0:
            ctx.extra["fit_cache"] = fit_cache
        if hat:
            ctx.extra["activations_hat"] = hat
            ctx.extra["patch_hat"] = hat_cache if hat_cache is not None else {}
        out = mod
        for spec in specs:
            out = passes.create(spec, ctx)(out)
        todo = [n for n in comp if hat and n in hat]
        if todo:
            from .passes._factor import RELU_ITERS, RefitLayers

            rl = RefitLayers(ctx, todo, RELU_ITERS if relu is None else relu, compensate_shrink,
                             compensate_bias_only)
            out = rl.transform_module(out, None)
        return relax.transform.CanonicalizeBindings()(out), ctx

    new, ctx = run(None)
    if activations is None or not feeds:
        return new, ctx.records
    if rounds <= 0 and sequential:
        done = dict(ctx.extra.get("rewritten", {}))
        names = list(activations)  # activations are in model order
        if compensate and done:
            first_rw = min(names.index(n) for n in done)
            comp[:] = [n for n in names[first_rw + 1:] if n not in done]
        order = [n for n in names if n in done or n in comp]
        sig = _layer_signatures(specs) if memo is not None else None
        opts = (id(activations), len(feeds), compensate, str(compensate_shrink), relu, compensate_bias_only)
        hat: dict = {}
        hat_cache: dict = {}  # each layer's p̂ is set once, so its cross moments are computed once
        for k, name in enumerate(order):
            if k == 0:  # the first rewritten layer sees the original inputs: nothing to compensate
                continue
            # a layer's p̂ depends on the rewrites above it (which layers, how) and nothing else
            key = (name, opts, tuple((n, sig.get(n)) for n in order[:k])) if sig is not None else None
            if key is not None and key in memo:
                hat[name] = memo[key]
                continue
            if hat:  # the layers above, refitted
                new, ctx = run(hat, hat_cache)
            # a compensated layer is still the original conv
            taps = _chain_taps(name, done[name]) if name in done else [name]
            if progress:
                progress(f"sequential refit {k + 1}/{len(order)}: {name}")
            got = collect_activations(new, feeds, layers=taps, max_samples=len(feeds))
            first = next((t for t in taps if t in got), None)
            if first is not None:
                hat[name] = got[first]
                if key is not None:
                    memo[key] = got[first]
        if hat:
            new, ctx = run(hat, hat_cache)
        return new, ctx.records
    for k in range(rounds):
        done = ctx.extra.get("rewritten", {})
        taps = {name: _chain_taps(name, tech) for name, tech in done.items()}
        if not taps:
            break
        if progress:
            progress(f"refit round {k + 1}: collecting the rewritten model's activations")
        got = collect_activations(new, feeds, layers=[t for ts in taps.values() for t in ts],
                                  max_samples=len(feeds))
        hat = {name: got[next(t for t in ts if t in got)] for name, ts in taps.items()
               if any(t in got for t in ts)}
        new, ctx = run(hat)
    return new, ctx.records


def _chain_taps(name: str, technique: str) -> list[str]:
    """Where a rewritten layer's input can be collected, first found wins: the channel gather that starts
    its chain (dwsep with filters spread by energy), else the chain's first conv (see ``emit_chain``)."""
    tag = TAGS[technique.split(":")[0]]
    return [f"{name}__{tag}g0", f"{name}__{tag}0"]


def _layer_signatures(specs) -> dict | None:
    """{layer: (pass, settings)} for specs that each name their ``layers=``; None when one does not
    (then which layers a spec rewrites is only known after applying it)."""
    from . import passes

    out: dict = {}
    for spec in specs:
        name, kwargs = passes.parse_spec(spec)
        layers = kwargs.get("layers")
        if not layers:
            return None
        settings = (name, tuple(sorted((k, str(v)) for k, v in kwargs.items() if k != "layers")))
        for layer in layers:
            out.setdefault(layer, settings)  # a later spec naming the same layer skips it
    return out


def apply_plan(mod, plan: Plan, activations=None, feeds=None, rounds: int = 0, sequential: bool = True,
               progress=None, compensate: bool = True, relu: int | None = None):
    """Run the plan's passes over ``mod`` (see :func:`realise`: with ``feeds``, the calibration
    inputs the activations came from, each layer is refitted sequentially to the rewritten model's
    own inputs, ReLU-aware where a ReLU follows, and the un-rewritten layers below are compensated);
    returns (new module, LayerRecords)."""
    return realise(mod, plan.pass_specs, activations if plan.fit == "data" else None, feeds, rounds,
                   progress, sequential, compensate=compensate, relu=relu)


# ----------------------------------------------------------------------------------------- sweep

def _build_runner(mod):
    import tvm
    from tvm import relax

    from .build import build

    ex = build(mod, "host")
    vm = relax.VirtualMachine(ex, tvm.cpu())
    names = [p.name for p in mod["main"].params]

    def run(feed):
        out = vm["main"](*[tvm.runtime.tensor(np.ascontiguousarray(feed[n])) for n in names])
        if hasattr(out, "numpy"):
            return out.numpy()
        return out[0].numpy()

    return run


def _logits(mod, feeds, progress=None, label=""):
    run = _build_runner(mod)
    out = []
    for k, f in enumerate(feeds):
        out.append(np.asarray(run(f)).reshape(-1))
        if progress and (k + 1) % 50 == 0:
            progress(f"{label} {k + 1}/{len(feeds)}")
    return np.stack(out)


def eval_set(model, folder, limit=None):
    """(feeds, labels or None) from a labelled image folder, with the model's preprocessing."""
    from .calibrate import load_calibration_images
    from .preprocess import list_images, load_labels

    labels = load_labels(folder)
    files = list_images(folder)
    xs = load_calibration_images(folder, model.preprocess, limit, model.inputs[0])
    if limit is not None and limit < len(files):
        idx = np.linspace(0, len(files) - 1, limit).round().astype(int)
        files = [files[i] for i in idx]
    feeds = [{model.inputs[0].name: x} for x in xs]
    y = None
    if labels is not None:
        y = np.array([labels.get(f.name, -1) for f in files])
    return feeds, y, [f.name for f in files]


def heldout_mask(calib, feeds) -> np.ndarray:
    """Boolean mask over ``feeds``: True where the feed (its input arrays, byte for byte) is not one of
    the calibration feeds ``calib`` — the held-out inputs every agreement figure is headlined on."""
    import hashlib

    def digest(feed):
        return hashlib.sha1(b"".join(np.ascontiguousarray(v).tobytes() for _, v in sorted(feed.items()))).hexdigest()

    seen = {digest(f) for f in calib}
    return np.array([digest(f) not in seen for f in feeds], dtype=bool)


def sweep(model, budgets, calibration_inputs, eval_images=None, modes=("weight", "data"),
          metric: str = "macs", techniques=TECHNIQUES, plot: str | None = None, eval_limit=None,
          calibration_limit: int = 64, calibration_views: int = 1, refit_rounds: int = 0,
          sensitivity: bool = True, sequential: bool = True, compensate: bool = True, relu: int | None = None,
          refine: bool = False, progress=None) -> list[dict]:
    """For each budget and fitting mode: plan, rewrite, build, run on the evaluation images and
    measure MACs, params, top-1 agreement with the original, logit relative error and (with labels)
    top-1 accuracy. ``model``: name/path or frontend.Model; ``calibration_inputs``: a folder or
    ``[{input: array}]``; ``eval_images``: a labelled folder or feeds (default: the calibration
    inputs). Writes a Pareto PNG to ``plot`` when given. Returns one row (dict) per (budget, mode),
    plus the original as budget 1.0. Data mode by default weights the allocation by held-out
    sensitivity (``sensitivity``) and refits sequentially (``sequential``; ``refit_rounds`` > 0 for
    the older round-wise refit instead), ReLU-aware (``relu`` iterations, None: the passes' default),
    compensating the un-rewritten layers (``compensate``); ``refine`` re-chooses each layer's technique
    end to end on a calibration split (:func:`refine_techniques`)."""
    from . import frontend
    from .calibrate import calibration_feeds, collect_activations

    say = progress or (lambda msg: None)
    techniques = check_techniques(techniques)
    m = model if hasattr(model, "mod") else frontend.load(model)
    if isinstance(calibration_inputs, (str, Path)):
        calib = calibration_feeds(m, calibration_inputs, limit=calibration_limit, views=calibration_views)
    else:
        calib = list(calibration_inputs)
    labels, names = None, None
    if eval_images is None:
        feeds = calib
    elif isinstance(eval_images, (str, Path)):
        feeds, labels, names = eval_set(m, eval_images, eval_limit)
    else:
        feeds = list(eval_images)
    offset = m.preprocess.class_offset if m.preprocess else 0
    say(f"calibration: {len(calib)} inputs; evaluation: {len(feeds)} inputs")
    acts = collect_activations(m.mod, calib, max_samples=len(calib), progress=None) \
        if "data" in modes else None
    ref = _logits(m.mod, feeds, say, "original")
    ref_top1 = ref.argmax(1)
    total_macs, total_params = _model_totals(m.mod)
    heldout = heldout_mask(calib, feeds)

    def row(budget, mode, logits, macs, params, plan=None):
        top1 = logits.argmax(1)
        r = {"model": m.name, "budget": budget, "mode": mode, "macs": int(macs), "macs_frac": macs / total_macs,
             "params": int(params), "params_frac": params / total_params,
             "agreement": float((top1 == ref_top1).mean()),
             "agreement_heldout": float((top1 == ref_top1)[heldout].mean()) if heldout.any() else None,
             "logit_rel_err": float(np.linalg.norm(logits - ref) / np.linalg.norm(ref)),
             "kl": _kl(ref, logits), "kl_heldout": _kl(ref[heldout], logits[heldout]) if heldout.any() else None,
             "n_eval": len(feeds), "n_heldout": int(heldout.sum())}
        if labels is not None:
            ok = labels >= 0
            r["accuracy"] = float((top1[ok] - offset == labels[ok]).mean())
        if plan is not None:
            r["passes"] = plan.pass_specs
            r["layers_rewritten"] = len(plan.entries)
            r["plan"] = [e.to_json() for e in plan.entries]
            if plan.refinement is not None:
                r["refinement"] = plan.refinement
        return r

    rows = [row(1.0, "original", ref, total_macs, total_params)]
    priced: dict = {}
    sens = None
    say(f"original: accuracy {rows[0].get('accuracy', float('nan')):.3f}")
    for b in budgets:
        for mode in modes:
            t0 = time.perf_counter()
            if mode not in priced:
                priced[mode] = price(m.mod, acts if mode == "data" else None, techniques, mode == "data")
                say(f"priced {mode} candidates")
                if mode == "data" and sensitivity:
                    sens = layer_sensitivity(m.mod, priced[mode], acts, calib, progress=say,
                                             techniques=techniques, relu=relu)
                if mode == "data" and "poolhoist" in techniques:
                    hoist_candidates(m.mod, priced[mode], calib, sens, progress=say)
            plan = allocate(m.mod, acts if mode == "data" else None, techniques=techniques,
                            fit=mode, priced=priced[mode], sensitivity=sens if mode == "data" else None,
                            **{metric: b})
            if refine and mode == "data":
                plan = refine_techniques(m.mod, plan, priced[mode], acts, calib, compensate=compensate,
                                         relu=relu, progress=say)
            mod, _ = apply_plan(m.mod, plan, acts, calib if mode == "data" else None, refit_rounds,
                                sequential, compensate=compensate, relu=relu)
            logits = _logits(mod, feeds)
            # the realised model's own totals (a rewrite the plan counted but could not apply shows)
            macs_real, params_real = _model_totals(mod)
            r = row(b, mode, logits, macs_real, params_real, plan)
            r["seconds"] = time.perf_counter() - t0
            rows.append(r)
            say(f"{metric}={b:g} {mode}: MACs {r['macs_frac']:.3f} agreement {r['agreement']:.3f}"
                + (f" accuracy {r['accuracy']:.3f}" if "accuracy" in r else "") + f" ({r['seconds']:.0f}s)")
    if plot:
        plot_pareto(rows, plot, metric)
    return rows


def plot_pareto(rows, path, metric="macs"):
    """Agreement (and accuracy) vs MAC (or param) fraction, one line per fitting mode."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    orig = next((r for r in rows if r["mode"] == "original"), None)
    key = f"{metric}_frac"
    styles = {"weight": ("tab:orange", "weight-only"), "data": ("tab:blue", "data-aware")}
    for mode, (color, label) in styles.items():
        rs = sorted([r for r in rows if r["mode"] == mode], key=lambda r: r[key])
        if not rs:
            continue
        xs = [r[key] for r in rs] + ([1.0] if orig else [])
        ax.plot(xs, [r["agreement"] for r in rs] + ([1.0] if orig else []), "o-", color=color,
                label=f"{label}: top-1 agreement")
        if all("accuracy" in r for r in rs):
            ax.plot(xs, [r["accuracy"] for r in rs] + ([orig["accuracy"]] if orig and "accuracy" in orig else []),
                    "s--", color=color, alpha=0.7, label=f"{label}: top-1 accuracy")
    if orig and "accuracy" in orig:
        ax.axhline(orig["accuracy"], color="grey", lw=0.8, ls=":", label="original accuracy")
    name = rows[0].get("model", "") if rows else ""
    ax.set_xlabel(f"{'MAC' if metric == 'macs' else 'parameter'} fraction of the original")
    ax.set_ylabel("fraction of evaluation images")
    ax.set_title(f"{name}: low-rank budget sweep (no retraining)")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def format_rows(rows) -> str:
    """The sweep as a Markdown table."""
    head = ("| budget | mode | MACs | MAC frac | params | param frac | top-1 agreement | agreement (held-out) "
            "| top-1 accuracy | logit rel err | KL (held-out) |")
    lines = [head, "|" + "---|" * 11]
    for r in rows:
        acc = f"{r['accuracy']:.3f}" if "accuracy" in r else "–"
        ho = f"{r['agreement_heldout']:.3f} ({r['n_heldout']})" if r.get("agreement_heldout") is not None else "–"
        lines.append(f"| {r['budget']:g} | {r['mode']} | {r['macs']:,} | {r['macs_frac']:.3f} | {r['params']:,} | "
                     f"{r['params_frac']:.3f} | {r['agreement']:.3f} | {ho} | {acc} | {r['logit_rel_err']:.3f} | "
                     + (f"{r['kl_heldout']:.4f} |" if r.get("kl_heldout") is not None else "– |"))
    return "\n".join(lines)


def save_rows(rows, path):
    Path(path).write_text(json.dumps(rows, indent=1))
