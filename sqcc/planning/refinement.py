"""Refinement: per-layer error is a poor currency *across techniques* (a technique's error may be
absorbed better or worse by the refits below it), so, on request, each planned layer's technique is
re-chosen with the whole plan realised, fitted on half the calibration inputs and scored end to end
on the other half (:func:`refine_techniques`)."""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, replace

from .measure import mean_kl, predict_logits, split_activations
from .plan import Plan, PlanEntry, with_entries
from .realisation import realise


@dataclass
class _Room:
    """The plan's budget seen from one layer: which candidates keep the plan within it."""
    plan: Plan
    cands: dict  # {layer: [Candidate]}

    def cost(self, c) -> int:
        return c.macs if self.plan.metric == "macs" else c.params

    def _saved(self, e: PlanEntry) -> int:
        if self.plan.metric == "macs":
            return e.macs_before - e.macs_after
        return e.params_before - e.params_after

    def alternative(self, entries: list, i: int, tech: str):
        """Layer i's ``tech`` candidate with the most MACs that keeps the plan within budget."""
        p, e = self.plan, entries[i]
        total = p.macs_before if p.metric == "macs" else p.params_before
        after = e.macs_after if p.metric == "macs" else e.params_after
        room = p.target * total - (total - sum(self._saved(x) for x in entries)) + after
        ok = [c for c in self.cands.get(e.layer, []) if c.technique == tech and self.cost(c) <= room]
        return max(ok, key=self.cost) if ok else None

    def queue(self, entries: list) -> list:
        """[(error ratio, layer index, technique)]: every other technique of every rewritten layer
        that fits the budget, the least error ratio first."""
        out = []
        for i, e in enumerate(entries):
            for tech in sorted({c.technique for c in self.cands.get(e.layer, [])} - {e.technique}):
                c = self.alternative(entries, i, tech)
                if c is not None:
                    out.append((c.error / max(e.error, 1e-12), i, tech))
        return sorted(out)


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
    split = split_activations(activations, feeds)
    if split is None or plan.fit != "data" or not plan.entries:
        return replace(plan, refinement=[])
    say = progress or (lambda msg: None)
    t0 = time.perf_counter()
    fit_acts, score_feeds = split
    fit_feeds = list(feeds)[0::2]
    ref = predict_logits(mod, score_feeds)
    memo: dict = {}
    room = _Room(plan, {lf.name: cs for lf, cs in priced})

    def score(entries):
        steps = [e.step(plan.fit) for e in entries]
        new, _ = realise(mod, steps, fit_acts, fit_feeds, compensate=compensate, relu=relu, memo=memo)
        return mean_kl(ref, predict_logits(new, score_feeds))

    entries = list(plan.entries)
    best = score(entries)
    say(f"refine: the plan scores KL {best:.4f} (fitted on {len(fit_feeds)} calibration inputs, "
        f"scored on the other {len(score_feeds)})")
    log = []
    for _, i, tech in room.queue(entries):
        e = entries[i]
        c = room.alternative(entries, i, tech)
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
    return with_entries(plan, entries, seconds=plan.seconds + time.perf_counter() - t0, refinement=log,
                        error_measure=plan.error_measure + "; techniques re-chosen end to end on a calibration split")
