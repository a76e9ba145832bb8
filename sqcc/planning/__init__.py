"""Budget planning: choose technique and rank per layer to meet a MAC (or parameter) budget with the
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
realised by ordinary pass steps (``("lowrank", {"scheme": "channel", "rank": 12, "fit": "data",
"layers": [...]})``, written ``lowrank:scheme=channel,rank=12,fit=data,layers=conv3,conv7`` ... in the
manifest), so a plan is reproducible from the command line.

One job per module, imports going down this list only:

* :mod:`.spec` — the budget text (``macs=0.7``) and the techniques, parsed and checked;
* :mod:`.plan` — Candidate, PlanEntry, Plan; plan steps as ``(pass, params)``, spec strings on demand;
* :mod:`.measure` — model totals, logits on feeds, KL between predictions, the calibration split;
* :mod:`.pricing` — candidate rewrites per layer, priced (and the pool hoist, by measured KL);
* :mod:`.realisation` — a plan's steps applied, refitted sequentially, un-rewritten layers compensated;
* :mod:`.sensitivity` — each layer's measured end-to-end sensitivity;
* :mod:`.allocation` — the greedy allocation to a budget;
* :mod:`.refinement` — techniques re-chosen end to end on a calibration split;
* :mod:`.planner` — :func:`plan_budget`, the API's entry, the steps above in order;
* :mod:`.plot`, :mod:`.pareto` — the budget sweep, its rows and its Pareto plot.
"""
from __future__ import annotations

from .allocation import allocate
from .measure import mean_kl, model_totals, predict_logits, split_activations
from .pareto import eval_set, format_rows, heldout_mask, save_rows, sweep
from .plan import Candidate, Plan, PlanEntry, Step, format_spec, technique_step
from .planner import plan_budget
from .plot import plot_pareto
from .pricing import HOIST_WINDOWS, candidates, hoist_candidates, layer_fits, price
from .realisation import apply_plan, realise
from .refinement import refine_techniques
from .sensitivity import layer_sensitivity
from .spec import TECHNIQUES, check_techniques, parse_budget

__all__ = [
    "TECHNIQUES", "HOIST_WINDOWS", "parse_budget", "check_techniques",
    "Candidate", "PlanEntry", "Plan", "Step", "format_spec", "technique_step",
    "model_totals", "predict_logits", "mean_kl", "split_activations",
    "layer_fits", "candidates", "price", "hoist_candidates",
    "realise", "apply_plan", "layer_sensitivity", "allocate", "refine_techniques", "plan_budget",
    "sweep", "eval_set", "heldout_mask", "format_rows", "save_rows", "plot_pareto",
]
