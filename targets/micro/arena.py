"""Arena planning: greedy by size over lifetime intervals (best-fit gap), like TFLite Micro's planner.

Every tensor the model computes (inputs, activations, outputs, kernel workspaces) gets a fixed
offset in ONE statically allocated arena. A buffer is live over an inclusive interval of steps
[start, end] (an input from -1; a kernel's outputs from its step; every buffer to its last use).
Two buffers live at the same step never share bytes -- unless an *overlap allowance* says a
kernel's output may be written over an input it finishes reading at that step:
``{"out", "in", "d_max"}`` permits offset(out) − offset(in) ≤ d_max (bytes; found from the
kernel's TIR access order by :func:`sqcc.targets.micro.tir_eval.overlap_limit`).

The planner places buffers in several orders (by size, by start, by end; with allowances also a
few seeded perturbations of by-size, since overlaps make the order matter more) and keeps the
plan with the lowest peak; each buffer goes to the valid candidate offset with the lowest end.

Pure Python + numpy: no TVM.
"""
from __future__ import annotations

import numpy as np

from sqcc.errors import SqccError

ALIGN = 16
PLAN_TRIES = 48  # seeded perturbed orders tried by plan_arena when overlaps are allowed


def align_up(n: int, a: int = ALIGN) -> int:
    return (n + a - 1) // a * a


def plan_arena(bufs: list[dict], align: int = ALIGN, overlaps: list | None = None) -> dict:
    """``bufs``: [{"name", "size", "start", "end"}] with inclusive live intervals [start, end] in
    step units. ``overlaps``: [{"out", "in", "d_max"}]: buffer ``out`` may share bytes with ``in``
    (a kernel writing its output over an input it finishes reading, see
    :func:`sqcc.targets.micro.tir_eval.overlap_limit`) when offset(out) − offset(in) ≤ d_max.
    Greedy by size; each buffer goes to the valid offset with the lowest end. Returns {"buffers":
    [... + "offset"], "peak": bytes, "lower_bound": bytes (the most bytes live at one step, i.e.
    the best plan without overlaps), "no_reuse": bytes, "overlaps": the allowances used}. Two
    buffers live at the same step never share bytes unless an allowance permits it."""
    allow = {}
    for o in overlaps or []:  # the tightest allowance wins when a pair is given twice
        key = (o["out"], o["in"])
        allow[key] = min(allow.get(key, o["d_max"]), o["d_max"])
    best_plan = None
    for oname, key in _orders(bufs, allow).items():
        placed = _place(sorted(bufs, key=key), align, allow)
        peak = max((align_up(p["offset"] + p["size"], align) for p in placed), default=0)
        if best_plan is None or peak < best_plan[0]:
            best_plan = (peak, placed, oname)
        if not allow:  # without overlaps, by-size alone is the planner (TFLite Micro's)
            break
    peak, placed, oname = best_plan
    return _plan_result(bufs, placed, peak, align, overlaps, oname)


def _orders(bufs, allow) -> dict:
    """{name: sort key} of the placement orders to try (the first is the default)."""
    orders = {
        "size": lambda b: (-b["size"], b["start"], b["name"]),
        "start": lambda b: (b["start"], -b["size"], b["name"]),
        "end-desc": lambda b: (-b["end"], -b["size"], b["name"]),
    }
    if allow:  # overlaps make the order matter more: also a few seeded perturbations of by-size
        rng = np.random.default_rng(0)
        for k in range(PLAN_TRIES):
            w = {b["name"]: float(rng.uniform(0.25, 1.75)) for b in bufs}
            orders[f"perturbed size #{k}"] = lambda b, w=w: (-b["size"] * w[b["name"]], b["start"], b["name"])
    return orders


def _fits(b, off, p, allow) -> bool:
    """May ``b`` sit at ``off`` next to the placed ``p``: not live together, disjoint bytes, or an
    allowance for the pair (either way round)."""
    if not (p["start"] <= b["end"] and b["start"] <= p["end"]):
        return True
    if off + b["size"] <= p["offset"] or p["offset"] + p["size"] <= off:
        return True
    d = allow.get((b["name"], p["name"]))
    if d is not None and off - p["offset"] <= d:
        return True
    d = allow.get((p["name"], b["name"]))
    return d is not None and p["offset"] - off <= d


def _place(order, align, allow):
    placed = []
    for b in order:
        size = align_up(b["size"], align)
        live = [p for p in placed if p["start"] <= b["end"] and b["start"] <= p["end"]]
        # candidates: 0, the end of each live buffer, and the extreme offsets an allowance permits
        cands = {0}
        for p in live:
            cands.add(align_up(p["offset"] + p["size"], align))
            d = allow.get((b["name"], p["name"]))  # b writes over p
            if d is not None and p["offset"] + d >= 0:
                cands.add((p["offset"] + d) // align * align)
            d = allow.get((p["name"], b["name"]))  # p writes over b
            if d is not None:
                cands.add(align_up(max(p["offset"] - d, 0), align))
        best = None
        for off in sorted(cands):
            if all(_fits(b, off, p, allow) for p in live):
                key = (off + size, off)
                if best is None or key < best:
                    best = key
        placed.append(dict(b, offset=best[1]))
    return placed


def _plan_result(bufs, placed, peak, align, overlaps, oname):
    steps = sorted({t for b in bufs for t in (b["start"], b["end"])})
    lower = 0
    for t in steps:
        lower = max(lower, sum(align_up(b["size"], align) for b in bufs if b["start"] <= t <= b["end"]))
    placed.sort(key=lambda p: (p["offset"], p["start"]))
    offs = {p["name"]: p["offset"] for p in placed}
    # the allowances the plan actually uses (the pair's bytes intersect), with their offset d
    used = [dict(o, d=offs[o["out"]] - offs[o["in"]]) for o in overlaps or []
            if o["out"] in offs and o["in"] in offs
            and offs[o["out"]] < offs[o["in"]] + next(p["size"] for p in placed if p["name"] == o["in"])
            and offs[o["in"]] < offs[o["out"]] + next(p["size"] for p in placed if p["name"] == o["out"])]
    return {"buffers": placed, "peak": peak, "lower_bound": lower,
            "no_reuse": sum(align_up(b["size"], align) for b in bufs),
            "algorithm": f"greedy (best of several orders; this one by {oname}), lowest valid end; "
                         "in-place overlap of a kernel's output with an input it finishes reading where "
                         "its access order allows",
            "overlaps": used}


def check_plan(plan: dict) -> None:
    """Raise SqccError if two buffers that are live at the same step overlap in the arena (other
    than as the plan's ``overlaps`` allow), or if a buffer lies outside [0, peak)."""
    bs = plan["buffers"]
    allow = {(o["out"], o["in"]): o["d_max"] for o in plan.get("overlaps", [])}
    for b in bs:
        if b["offset"] < 0 or b["offset"] + b["size"] > plan["peak"]:
            raise SqccError(f"arena plan: buffer {b['name']} [{b['offset']}, {b['offset'] + b['size']}) "
                            f"lies outside the arena of {plan['peak']} bytes")
        if b["offset"] % ALIGN:
            raise SqccError(f"arena plan: buffer {b['name']} is not {ALIGN}-byte aligned")
    for i, a in enumerate(bs):
        for b in bs[i + 1:]:
            live = a["start"] <= b["end"] and b["start"] <= a["end"]
            mem = a["offset"] < b["offset"] + b["size"] and b["offset"] < a["offset"] + a["size"]
            if live and mem:
                d = allow.get((a["name"], b["name"]))
                if d is not None and a["offset"] - b["offset"] <= d:
                    continue
                d = allow.get((b["name"], a["name"]))
                if d is not None and b["offset"] - a["offset"] <= d:
                    continue
                raise SqccError(f"arena plan: {a['name']} and {b['name']} are live together "
                                f"(steps {max(a['start'], b['start'])}..{min(a['end'], b['end'])}) "
                                "and overlap")


def _fullest_step(bs):
    """(occupied bytes, step) of the step whose live buffers cover the most arena bytes (overlaps
    counted once)."""
    steps = sorted({t for b in bs for t in (b["start"], b["end"])})
    best, best_t = -1, None
    for t in steps:
        iv = sorted((b["offset"], b["offset"] + b["size"]) for b in bs if b["start"] <= t <= b["end"])
        tot, hi = 0, 0
        for lo, up in iv:
            tot += max(0, up - max(lo, hi))
            hi = max(hi, up)
        if tot > best:
            best, best_t = tot, t
    return best, best_t


def arena_peak(plan: dict, g) -> dict:
    """What is in the arena at its fullest step: the live buffers there (inputs, activations,
    outputs, kernel workspaces), with their shapes and dtypes. ``g``: the model's graph (anything
    with ``bufs`` {name: .shape, .dtype} and ``steps`` [.kernel], see ``lowering.Graph``)."""
    bs = plan["buffers"]
    best, best_t = _fullest_step(bs)
    live = sorted((b for b in bs if b["start"] <= best_t <= b["end"]), key=lambda b: b["offset"])
    kinds: dict = {}
    for b in bs:
        kinds[b["kind"]] = kinds.get(b["kind"], 0) + 1
    by_kind = {}
    for b in live:
        by_kind[b["kind"]] = by_kind.get(b["kind"], 0) + b["size"]
    kernel = g.steps[best_t].kernel if best_t is not None and 0 <= best_t < len(g.steps) else None
    names = {b["name"] for b in live}
    inplace = [o for o in plan.get("overlaps", []) if o["out"] in names and o["in"] in names]
    known = [b for b in bs if b["name"] in g.bufs]  # workspaces have no graph buffer
    dtypes = sorted({g.bufs[b["name"]].dtype for b in known})
    return {
        "step": best_t, "kernel": kernel, "occupied_bytes": max(best, 0), "live_bytes_by_kind": by_kind,
        "in_place": inplace,
        "live": [{"name": b["name"], "kind": b["kind"], "bytes": b["size"], "offset": b["offset"],
                  "shape": list(g.bufs[b["name"]].shape) if b["name"] in g.bufs else None,
                  "dtype": g.bufs[b["name"]].dtype if b["name"] in g.bufs else None} for b in live],
        "workspace_bytes_max": max((b["size"] for b in bs if b["kind"] == "workspace"), default=0),
        "dtypes": dtypes,
        "max_bytes_by_dtype": {dt: max(b["size"] for b in known if g.bufs[b["name"]].dtype == dt)
                               for dt in dtypes},
        "buffers_by_kind": kinds,
    }
