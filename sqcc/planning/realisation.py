"""Realisation: a plan's rewrites applied to the model and refitted on calibration data.

The chosen rewrites are refitted sequentially, each to the original outputs given the rewritten
model's inputs (:func:`realise`), ReLU-aware where a ReLU follows (Zhang et al. 2016's nonlinear
reconstruction, relaxed: error where original and approximation are both ≤ 0 is free), and the
layers *not* rewritten below the first rewrite are compensated in the same sequence (a full-rank
least-squares refit at unchanged MACs, ridge-shrunk towards the original weight by a strength
cross-validated on the calibration images). The rewrites are ordinary pass steps (see
:mod:`sqcc.planning.plan`), so what is realised here is what ``--pass`` would apply.
"""
from __future__ import annotations

from tvm import relax

from .. import calibrate, passes
from ..passes._factor import RELU_ITERS, RefitLayers
from .plan import Plan, Step

# the name tag each factorising pass gives the convs of its chain (see ``emit_chain``)
TAGS = {"lowrank": "lr", "dwsep": "dw", "flatten": "fl"}


def _as_step(spec) -> Step:
    """A pass step from a ``--pass`` spec string or a ``(name, params)`` step (params copied)."""
    if isinstance(spec, str):
        return passes.parse_spec(spec)
    name, params = spec
    return name, dict(params)


def _with_relu(step: Step, relu: int) -> Step:
    """``step`` with ``relu`` ReLU-aware refit iterations, unless it names its own (or is not a
    factorisation, which has nothing to refit)."""
    name, params = step
    if name not in TAGS or "relu" in params:
        return step
    return name, {**params, "relu": int(relu)}


class _Application:
    """Applies the steps to the original module again and again (once per refit stage), sharing what
    does not change between applications: the patch moments of the original activations, and — for
    the sequential refit — each layer's fit without / with its (set-once) rewritten-model inputs p̂."""

    def __init__(self, mod, steps, activations, keep_fits: bool, relu, shrink, bias_only: bool):
        self.mod, self.steps, self.activations = mod, steps, activations
        self.relu, self.shrink, self.bias_only = relu, shrink, bias_only
        self.cov_cache: dict = {}  # patch moments of the original activations: shared by every application
        self.fit_cache: dict | None = {} if keep_fits else None
        self.comp: list = []  # un-rewritten layers below the first rewrite, refitted (compensate)

    def __call__(self, hat, hat_cache=None):
        """(module, PassContext) with the steps applied, refitted to the inputs ``hat`` where given."""
        ctx = passes.PassContext(activations=self.activations)
        ctx.extra["patch_cov"] = self.cov_cache
        if self.fit_cache is not None:
            ctx.extra["fit_cache"] = self.fit_cache
        if hat:
            ctx.extra["activations_hat"] = hat
            ctx.extra["patch_hat"] = hat_cache if hat_cache is not None else {}
        out = self.mod
        for step in self.steps:
            out = passes.create(step, ctx)(out)
        todo = [n for n in self.comp if hat and n in hat]
        if todo:
            rl = RefitLayers(ctx, todo, RELU_ITERS if self.relu is None else self.relu, self.shrink,
                             self.bias_only)
            out = rl.transform_module(out, None)
        return relax.transform.CanonicalizeBindings()(out), ctx


def realise(mod, specs, activations=None, feeds=None, rounds: int = 0, progress=None,
            sequential: bool = True, compensate: bool = True, compensate_shrink="cv",
            relu: int | None = None, compensate_bias_only: bool = False, memo: dict | None = None):
    """Apply pass ``specs`` (``(name, params)`` steps or ``--pass`` strings) to ``mod``; with
    calibration ``activations`` *and* the calibration
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
    steps = [_as_step(s) for s in specs]
    hoists = [s for s in steps if s[0] == "poolhoist"]
    if hoists:
        new, records = realise(mod, [s for s in steps if s[0] != "poolhoist"], activations, feeds, rounds,
                               progress, sequential, compensate, compensate_shrink, relu,
                               compensate_bias_only, memo)
        ctx = passes.PassContext(activations=activations)
        for step in hoists:
            new = passes.create(step, ctx)(new)
        return new, list(records) + ctx.records

    if relu is not None:
        steps = [_with_relu(s, relu) for s in steps]
    apply = _Application(mod, steps, activations, sequential and rounds <= 0, relu, compensate_shrink,
                         compensate_bias_only)
    new, ctx = apply(None)
    if activations is None or not feeds:
        return new, ctx.records
    if rounds <= 0 and sequential:
        opts = (id(activations), len(feeds), compensate, str(compensate_shrink), relu, compensate_bias_only)
        return _refit_sequential(apply, new, ctx, feeds, compensate, memo, opts, progress)
    return _refit_rounds(apply, new, ctx, feeds, rounds, progress)


def _refit_sequential(apply: _Application, new, ctx, feeds, compensate: bool, memo: dict | None,
                      opts: tuple, progress=None):
    """The sequential refit of :func:`realise`: the rewritten (and, with ``compensate``, the
    compensated) layers in model order, each fitted to the inputs the refitted layers above it
    produce. ``new``, ``ctx``: the first, unrefitted application. Returns (module, records)."""
    done = dict(ctx.extra.get("rewritten", {}))
    names = list(apply.activations)  # activations are in model order
    if compensate and done:
        first_rw = min(names.index(n) for n in done)
        apply.comp[:] = [n for n in names[first_rw + 1:] if n not in done]
    order = [n for n in names if n in done or n in apply.comp]
    sig = _layer_signatures(apply.steps) if memo is not None else None
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
            new, ctx = apply(hat, hat_cache)
        # a compensated layer is still the original conv
        taps = _chain_taps(name, done[name]) if name in done else [name]
        if progress:
            progress(f"sequential refit {k + 1}/{len(order)}: {name}")
        got = calibrate.collect_activations(new, feeds, layers=taps, max_samples=len(feeds))
        first = next((t for t in taps if t in got), None)
        if first is not None:
            hat[name] = got[first]
            if key is not None:
                memo[key] = got[first]
    if hat:
        new, ctx = apply(hat, hat_cache)
    return new, ctx.records


def _refit_rounds(apply: _Application, new, ctx, feeds, rounds: int, progress=None):
    """The round-wise refit of :func:`realise`: ``rounds`` sweeps, each collecting every rewritten
    layer's inputs at once from the last sweep's model. Returns (module, records)."""
    for k in range(rounds):
        done = ctx.extra.get("rewritten", {})
        taps = {name: _chain_taps(name, tech) for name, tech in done.items()}
        if not taps:
            break
        if progress:
            progress(f"refit round {k + 1}: collecting the rewritten model's activations")
        got = calibrate.collect_activations(new, feeds, layers=[t for ts in taps.values() for t in ts],
                                            max_samples=len(feeds))
        hat = {name: got[next(t for t in ts if t in got)] for name, ts in taps.items()
               if any(t in got for t in ts)}
        new, ctx = apply(hat)
    return new, ctx.records


def _chain_taps(name: str, technique: str) -> list[str]:
    """Where a rewritten layer's input can be collected, first found wins: the channel gather that starts
    its chain (dwsep with filters spread by energy), else the chain's first conv (see ``emit_chain``)."""
    tag = TAGS[technique.split(":")[0]]
    return [f"{name}__{tag}g0", f"{name}__{tag}0"]


def _layer_signatures(steps) -> dict | None:
    """{layer: (pass, settings)} for steps that each name their ``layers``; None when one does not
    (then which layers a step rewrites is only known after applying it)."""
    out: dict = {}
    for name, kwargs in steps:
        layers = kwargs.get("layers")
        if not layers:
            return None
        settings = (name, tuple(sorted((k, str(v)) for k, v in kwargs.items() if k != "layers")))
        for layer in layers:
            out.setdefault(layer, settings)  # a later step naming the same layer skips it
    return out


def apply_plan(mod, plan: Plan, activations=None, feeds=None, rounds: int = 0, sequential: bool = True,
               progress=None, compensate: bool = True, relu: int | None = None):
    """Run the plan's passes over ``mod`` (see :func:`realise`: with ``feeds``, the calibration
    inputs the activations came from, each layer is refitted sequentially to the rewritten model's
    own inputs, ReLU-aware where a ReLU follows, and the un-rewritten layers below are compensated);
    returns (new module, LayerRecords)."""
    return realise(mod, plan.steps, activations if plan.fit == "data" else None, feeds, rounds,
                   progress, sequential, compensate=compensate, relu=relu)
