"""Allocation (greedy by error per MAC saved): from the priced candidates of every layer, choose
technique and rank per layer so the model's MACs (or parameters) meet the budget with the least
total squared error.

Starting from the original model, the step that adds the least squared error per MAC (or parameter)
removed — over all layers and all their cheaper candidates, so the path follows each layer's lower
convex hull — is taken until the budget is met. With calibration inputs, each layer's squared error
is weighted by its measured end-to-end sensitivity (:mod:`sqcc.planning.sensitivity`), since
per-layer relative error is a poor proxy across layers.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass

from ..errors import SqccError
from .measure import model_totals
from .plan import Candidate, Plan, PlanEntry, with_entries
from .pricing import price
from .spec import TECHNIQUES, allows, budget_target, check_techniques


@dataclass
class _Layers:
    """What the greedy allocates over: per layer its candidates, original cost and sensitivity."""
    per_layer: list  # [(LayerFit, [Candidate])], the candidates of the allowed techniques
    base_cost: list  # each layer's original MACs (params)
    sens: list  # each layer's sensitivity (1 when not measured)
    metric: str
    fixed: float  # the cost of what no candidate rewrites
    goal: float  # the budget, in MACs (params)

    def cost(self, c: Candidate) -> int:
        return c.macs if self.metric == "macs" else c.params


@dataclass
class _State:
    """A partial allocation: per layer the chosen candidate (None = original), its cost and squared
    error, and the model's total cost."""
    choice: list
    cost: list
    err2: list
    spent: float

    def take(self, i: int, c: Candidate | None, cost: float, err2: float):
        self.spent += cost - self.cost[i]
        self.choice[i], self.cost[i], self.err2[i] = c, cost, err2


def _cheapest_step(lay: _Layers, free, st: _State):
    """(ratio, layer, candidate): the step adding the least weighted squared error per unit saved."""
    best = None
    for i, lf, cands in free:
        for c in cands:
            saved = st.cost[i] - lay.cost(c)
            if saved <= 0:
                continue
            ratio = lay.sens[i] * (c.error ** 2 - st.err2[i]) / saved
            if best is None or ratio < best[0]:
                best = (ratio, i, c)
    return best


def _finishing_step(lay: _Layers, free, st: _State):
    """(added error, layer, candidate): of all steps that reach the budget, the one adding the least
    error (so a big cheap-per-MAC jump does not overshoot the budget by much); None if none does."""
    fin = None
    for j, lf, cands in free:
        for cc in cands:
            saved = st.cost[j] - lay.cost(cc)
            if saved <= 0 or st.spent - saved > lay.goal:
                continue
            add = lay.sens[j] * (cc.error ** 2 - st.err2[j])
            if fin is None or add < fin[0]:
                fin = (add, j, cc)
    return fin


def _fill_slack(lay: _Layers, free, st: _State):
    """Fill the slack a big last step leaves: give MACs back to rewritten layers (a larger rank or
    multiplier, or the original) while the budget holds, the most error removed per MAC first."""
    while True:
        best = None
        for i, lf, cands in free:
            if st.choice[i] is None:
                continue
            for c, cc, e2 in [(None, lay.base_cost[i], 0.0)] + [(c, lay.cost(c), c.error ** 2) for c in cands]:
                extra = cc - st.cost[i]
                gain = lay.sens[i] * (st.err2[i] - e2)
                if extra <= 0 or st.spent + extra > lay.goal or gain <= 0:
                    continue
                if best is None or gain / extra > best[0]:
                    best = (gain / extra, i, c, cc, e2)
        if best is None:
            return
        _, i, c, cc, e2 = best
        st.take(i, c, cc, e2)


def _greedy(lay: _Layers, forced: dict):
    """Greedy from the original (``forced``: {layer index: candidate} fixed first): the cheapest
    error per unit saved until the budget is met, then the slack filled back. Returns (choice per
    layer, None = original; total weighted squared error)."""
    n = len(lay.per_layer)
    st = _State([None] * n, list(lay.base_cost), [0.0] * n, 0.0)
    for i, c in forced.items():
        st.choice[i], st.cost[i], st.err2[i] = c, lay.cost(c), c.error ** 2
    st.spent = lay.fixed + sum(st.cost)
    free = [(i, lf, cands) for i, (lf, cands) in enumerate(lay.per_layer) if i not in forced]
    while st.spent > lay.goal:
        best = _cheapest_step(lay, free, st)
        if best is None:
            return None, math.inf  # the forced choices leave the budget out of reach
        _, i, c = best
        if st.spent - (st.cost[i] - lay.cost(c)) < lay.goal:
            fin = _finishing_step(lay, free, st)  # the last step
            if fin is not None:
                _, i, c = fin
        st.take(i, c, lay.cost(c), c.error ** 2)
    _fill_slack(lay, free, st)
    return st.choice, sum(s_ * e for s_, e in zip(lay.sens, st.err2))


def _hoist_options(per_layer) -> list[dict]:
    """Every combination of the layers' poolhoist candidates (and none), as ``forced`` choices."""
    # poolhoist saves a quarter of SqueezeNet in one step, too coarse for the greedy's steps: each of
    # its options (and none) is fixed in turn, the rest allocated greedily, and the least total error wins
    coarse = [i for i, (lf, cands) in enumerate(per_layer) if any(c.technique == "poolhoist" for c in cands)]
    options = [{}]
    for i in coarse:
        options = options + [{**o, i: c} for o in options for c in per_layer[i][1] if c.technique == "poolhoist"]
    return options


def _layers(per_layer, metric, target, total, techniques, sensitivity) -> _Layers:
    """The greedy's view of the priced layers; raises when no allocation can reach the budget."""
    cost = (lambda c: c.macs) if metric == "macs" else (lambda c: c.params)
    base_cost = [(lf.macs if metric == "macs" else lf.params) for lf, _ in per_layer]
    fixed = total - sum(base_cost)
    min_reach = fixed + sum(min([b] + [cost(c) for c in cands]) for b, (lf, cands) in zip(base_cost, per_layer))
    goal = target * total
    if min_reach > goal + 1e-9:
        raise SqccError(f"budget {metric}={target:g} is unreachable: with {', '.join(techniques)} the "
                        f"smallest reachable is {metric}={min_reach / total:.3f} of the original")
    sens = [float((sensitivity or {}).get(lf.name, 1.0)) for lf, _ in per_layer]
    return _Layers(per_layer, base_cost, sens, metric, fixed, goal)


def allocate(mod, activations=None, macs: float | None = None, params: float | None = None,
             techniques=TECHNIQUES, fit: str = "auto", progress=None, priced=None,
             sensitivity: dict | None = None) -> Plan:
    """Plan per-layer rewrites so the model's MACs (or params) drop to the given fraction with the
    least total squared relative error. ``fit``: data (needs activations), weight, or auto.
    ``sensitivity`` ({layer: s}, from :func:`layer_sensitivity`) weights each layer's squared error
    by how much of it reaches the model's output."""
    t0 = time.perf_counter()
    metric, target = budget_target(macs, params)
    check_techniques(techniques)
    if fit == "data" and activations is None:
        raise SqccError("budget with fit=data needs calibration activations (--calibration DIR)")
    use_data = activations is not None and fit != "weight"
    total_macs, total_params = model_totals(mod)
    if priced is None:
        priced = price(mod, activations if use_data else None, techniques, use_data, progress)
    per_layer = [(lf, [c for c in cands if allows(techniques, c.technique)]) for lf, cands in priced]
    lay = _layers(per_layer, metric, target, total_macs if metric == "macs" else total_params, techniques,
                  sensitivity)
    cur, _ = min((_greedy(lay, o) for o in _hoist_options(per_layer)), key=lambda r: r[1])
    if cur is None:  # cannot happen when min_reach <= goal (the empty option reaches it)
        raise SqccError(f"budget {metric}={target:g}: no allocation found")
    entries = [PlanEntry(lf.name, c.technique, c.rank, lf.macs, c.macs, lf.params, c.params, c.error)
               for (lf, _), c in zip(per_layer, cur) if c is not None]
    measure = "relative output error on calibration activations" if use_data else "relative weight error"
    if sensitivity:
        measure += ", weighted by measured end-to-end sensitivity"
    plan = Plan(metric, target, "data" if use_data else "weight", [], total_macs, total_macs,
                total_params, total_params, measure)
    return with_entries(plan, entries, seconds=time.perf_counter() - t0)
