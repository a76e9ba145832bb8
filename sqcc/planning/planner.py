"""The API's entry to planning: a budget → a :class:`Plan`, in order: calibration activations,
pricing, measured sensitivity, the pool hoist priced by measured KL, allocation and (on request)
refinement of the techniques."""
from __future__ import annotations

from ..calibrate import collect_activations
from .allocation import allocate
from .plan import Plan
from .pricing import hoist_candidates, price
from .refinement import refine_techniques
from .sensitivity import layer_sensitivity
from .spec import TECHNIQUES, check_techniques, parse_budget


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
