"""The sweep that draws the agreement/accuracy-vs-MACs Pareto curve: for each budget and fitting mode,
plan, rewrite, build, run on evaluation images and measure against the original model; the rows as
a Markdown table or JSON (the plot itself: :mod:`sqcc.planning.plot`)."""
from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .. import frontend
from ..calibrate import calibration_feeds, collect_activations, load_calibration_images
from ..preprocess import list_images, load_labels
from .allocation import allocate
from .measure import mean_kl, model_totals, predict_logits
from .plot import plot_pareto
from .pricing import hoist_candidates, price
from .realisation import apply_plan
from .refinement import refine_techniques
from .sensitivity import layer_sensitivity
from .spec import TECHNIQUES, check_techniques


def eval_set(model, folder, limit=None):
    """(feeds, labels or None) from a labelled image folder, with the model's preprocessing."""
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
    def digest(feed):
        return hashlib.sha1(b"".join(np.ascontiguousarray(v).tobytes() for _, v in sorted(feed.items()))).hexdigest()

    seen = {digest(f) for f in calib}
    return np.array([digest(f) not in seen for f in feeds], dtype=bool)


@dataclass
class _Reference:
    """The original model on the evaluation inputs: what every row of the sweep is measured against."""
    name: str
    logits: np.ndarray
    macs: int
    params: int
    heldout: np.ndarray  # not a calibration input
    labels: np.ndarray | None
    offset: int  # the model's class offset (a background class before the labels)

    def row(self, budget, mode, logits, macs, params, plan=None) -> dict:
        """One row: MACs, params, top-1 agreement (all and held-out), logit error, KL, accuracy."""
        ref, ho = self.logits, self.heldout
        top1, ref_top1 = logits.argmax(1), ref.argmax(1)
        r = {"model": self.name, "budget": budget, "mode": mode, "macs": int(macs), "macs_frac": macs / self.macs,
             "params": int(params), "params_frac": params / self.params,
             "agreement": float((top1 == ref_top1).mean()),
             "agreement_heldout": float((top1 == ref_top1)[ho].mean()) if ho.any() else None,
             "logit_rel_err": float(np.linalg.norm(logits - ref) / np.linalg.norm(ref)),
             "kl": mean_kl(ref, logits), "kl_heldout": mean_kl(ref[ho], logits[ho]) if ho.any() else None,
             "n_eval": len(ref), "n_heldout": int(ho.sum())}
        if self.labels is not None:
            ok = self.labels >= 0
            r["accuracy"] = float((top1[ok] - self.offset == self.labels[ok]).mean())
        if plan is not None:
            r["passes"] = plan.pass_specs
            r["layers_rewritten"] = len(plan.entries)
            r["plan"] = [e.to_json() for e in plan.entries]
            if plan.refinement is not None:
                r["refinement"] = plan.refinement
        return r


@dataclass
class _Sweep:
    """One sweep's settings and what it shares across budgets (the candidates priced per mode)."""
    m: object  # frontend.Model
    calib: list
    feeds: list
    acts: dict | None
    techniques: tuple
    metric: str
    sensitivity: bool
    refit_rounds: int
    sequential: bool
    compensate: bool
    relu: int | None
    refine: bool
    say: object

    def __post_init__(self):
        self.priced: dict = {}
        self.sens = None

    def _price(self, mode: str):
        """Price the mode's candidates once (data mode: with sensitivities and the pool hoist)."""
        if mode in self.priced:
            return
        data = mode == "data"
        self.priced[mode] = price(self.m.mod, self.acts if data else None, self.techniques, data)
        self.say(f"priced {mode} candidates")
        if data and self.sensitivity:
            self.sens = layer_sensitivity(self.m.mod, self.priced[mode], self.acts, self.calib, progress=self.say,
                                          techniques=self.techniques, relu=self.relu)
        if data and "poolhoist" in self.techniques:
            hoist_candidates(self.m.mod, self.priced[mode], self.calib, self.sens, progress=self.say)

    def point(self, ref: _Reference, b: float, mode: str) -> dict:
        """Plan to budget ``b`` in ``mode``, realise, run and measure: one row."""
        t0 = time.perf_counter()
        self._price(mode)
        data = mode == "data"
        plan = allocate(self.m.mod, self.acts if data else None, techniques=self.techniques, fit=mode,
                        priced=self.priced[mode], sensitivity=self.sens if data else None, **{self.metric: b})
        if self.refine and data:
            plan = refine_techniques(self.m.mod, plan, self.priced[mode], self.acts, self.calib,
                                     compensate=self.compensate, relu=self.relu, progress=self.say)
        mod, _ = apply_plan(self.m.mod, plan, self.acts, self.calib if data else None, self.refit_rounds,
                            self.sequential, compensate=self.compensate, relu=self.relu)
        logits = predict_logits(mod, self.feeds)
        # the realised model's own totals (a rewrite the plan counted but could not apply shows)
        macs_real, params_real = model_totals(mod)
        r = ref.row(b, mode, logits, macs_real, params_real, plan)
        r["seconds"] = time.perf_counter() - t0
        return r


def _sweep_inputs(m, calibration_inputs, eval_images, eval_limit, calibration_limit, calibration_views):
    """(calibration feeds, evaluation feeds, labels or None) from folders or lists of feeds."""
    if isinstance(calibration_inputs, (str, Path)):
        calib = calibration_feeds(m, calibration_inputs, limit=calibration_limit, views=calibration_views)
    else:
        calib = list(calibration_inputs)
    labels = None
    if eval_images is None:
        feeds = calib
    elif isinstance(eval_images, (str, Path)):
        feeds, labels, _ = eval_set(m, eval_images, eval_limit)
    else:
        feeds = list(eval_images)
    return calib, feeds, labels


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
    say = progress or (lambda msg: None)
    techniques = check_techniques(techniques)
    m = model if hasattr(model, "mod") else frontend.load(model)
    calib, feeds, labels = _sweep_inputs(m, calibration_inputs, eval_images, eval_limit, calibration_limit,
                                         calibration_views)
    offset = m.preprocess.class_offset if m.preprocess else 0
    say(f"calibration: {len(calib)} inputs; evaluation: {len(feeds)} inputs")
    acts = collect_activations(m.mod, calib, max_samples=len(calib), progress=None) \
        if "data" in modes else None
    logits = predict_logits(m.mod, feeds, say, "original")
    total_macs, total_params = model_totals(m.mod)
    ref = _Reference(m.name, logits, total_macs, total_params, heldout_mask(calib, feeds), labels, offset)
    rows = [ref.row(1.0, "original", logits, total_macs, total_params)]
    say(f"original: accuracy {rows[0].get('accuracy', float('nan')):.3f}")
    run = _Sweep(m, calib, feeds, acts, techniques, metric, sensitivity, refit_rounds, sequential, compensate,
                 relu, refine, say)
    for b in budgets:
        for mode in modes:
            r = run.point(ref, b, mode)
            rows.append(r)
            say(f"{metric}={b:g} {mode}: MACs {r['macs_frac']:.3f} agreement {r['agreement']:.3f}"
                + (f" accuracy {r['accuracy']:.3f}" if "accuracy" in r else "") + f" ({r['seconds']:.0f}s)")
    if plot:
        plot_pareto(rows, plot, metric)
    return rows


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
    """The sweep's rows as JSON (what ``plan_ablation.py`` reads back)."""
    from ..outputs import atomic_write

    atomic_write(path, lambda f: f.write(json.dumps(rows, indent=1).encode()), "--json")
