"""The compile pipeline, phase by phase. Data flows one way:

    1 import → 2 canonicalise → 3 calibrate → 4 plan → 5 rewrite → 6 tune → 7 build (lower,
    schedule, codegen) → 8 check (fidelity against the original) → package

:func:`compile_model` is the whole flow on one screen; each phase is a function of the
:class:`Compilation` state that the phases before it filled. ``dump_ir=DIR`` writes main's Relax IR
after the import and after every pass (``00_import.py``, ``01_lowrank.py`` ...), so a user can see
what each rewrite did.
"""
from __future__ import annotations

import sys
import time
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from . import __version__, frontend, layers
from . import passes as passes_mod
from .errors import SqccError, one_line
from .frontend import random_inputs
from .package import FORMAT, FORMAT_VERSION, MicroPackage, Package
from .targets import resolve


@dataclass
class Tuning:
    """MetaSchedule tuning: ``trials`` > 0 tunes (appending to ``records``); ``records`` alone applies
    an existing database."""

    trials: int = 0
    records: str | None = None
    max_trials_per_task: int | None = None


@dataclass
class CompileOptions:
    """Everything ``sqcc.compile`` / ``sqcc compile`` was asked for (see :func:`sqcc.api.compile`)."""

    model: object
    target: str = "host"
    passes: list = field(default_factory=list)
    input_shapes: object = None
    calibration: object = None
    budget: object = None
    tuning: Tuning | None = None
    eval_images: object = None
    check: bool = True
    dump_ir: object = None
    force: bool = False
    calibration_limit: int = 32
    calibration_views: int = 1
    refine: bool = False
    techniques: object = None
    preprocess: object = None


@dataclass
class Compilation:
    """What the phases hand on: filled in order, read by the phases after."""

    opts: CompileOptions
    say: object
    spec: object = None  # targets.TargetSpec
    model: object = None  # frontend.Model
    mod: object = None  # the Relax module as rewritten so far
    ctx: object = None  # passes.PassContext
    report: dict = field(default_factory=dict)
    pass_specs: list = field(default_factory=list)  # every rewrite applied: the plan's, then the user's
    pass_objs: list = field(default_factory=list)  # the user's passes
    calib_feeds: list | None = None
    plan: object = None  # planning.Plan
    notes: list = field(default_factory=list)


def compile_model(opts: CompileOptions, say) -> Package:
    c = Compilation(opts, say)
    # 1. import: the model as Relax with named layers, its inputs, outputs and image recipe
    import_model(c)
    # 2. canonicalise: channel shuffles folded; the passes and their parameters checked
    canonicalize(c)
    # 3. calibrate: model inputs from images or feeds
    calibrate(c)
    # 4. plan: a budget becomes one rewrite per layer, priced on the calibration data
    plan(c)
    # 5. rewrite: int8 TFLite folded, the plan's rewrites refitted in model order, the user's passes
    rewrite(c)
    # 6. tune: MetaSchedule records, appended as measured
    tune(c)
    # 7. build: lower, schedule, codegen for the target; the package and its manifest
    pkg = build(c)
    # 8. check: every output against the original model in its own runtime
    check(c, pkg)
    return pkg


def import_model(c: Compilation):
    o = c.opts
    c.spec = resolve(o.target)
    c.say(f"importing {o.model if isinstance(o.model, str) else 'model'}")
    m = c.model = frontend.load(o.model, o.input_shapes)
    if o.preprocess is not None:
        from .preprocess import parse_preprocess

        m.preprocess = parse_preprocess(o.preprocess) if isinstance(o.preprocess, str) else o.preprocess
    from .calibrate import tensor_files

    images = isinstance(o.calibration, (str, Path)) and not tensor_files(o.calibration)
    if m.preprocess is None and (o.eval_images is not None or images):
        flag = "--eval-images" if o.eval_images is not None else "--calibration"
        raise SqccError(f"{flag} feeds images, and {m.name} has no preprocessing recipe (not a known "
                        f"model): give --preprocess, e.g. size=224,resize=256,mean=0.485,0.456,0.406,"
                        f"std=0.229,0.224,0.225,layout=NCHW")
    c.spec.check_toolchain()  # a missing cross compiler is said now, not after minutes of work
    c.notes += m.notes


def canonicalize(c: Compilation):
    from .passes.shuffle_canon import canonicalize_shuffles

    m = c.model
    # An imported ShuffleNet channel shuffle (reshape→transpose→reshape) becomes a folded
    # permutation or one gather before anything else looks at the graph.
    m.mod, canon_notes = canonicalize_shuffles(m.mod)
    before = layers.layers(m.mod)
    c.report = {"model": m.name, "before": {"layers": [lr.to_json() for lr in before],
                                            "totals": layers.totals(before)}}
    if canon_notes:
        c.report["canonicalize"] = canon_notes
    passes = c.opts.passes
    c.pass_specs = [passes] if isinstance(passes, str) else list(passes or [])
    c.ctx = passes_mod.PassContext(force=c.opts.force)
    if c.spec.family in ("host", "arm_cpu"):
        from .schedules.int8 import int8_isa

        c.ctx.extra["int8_isa"] = int8_isa(c.spec.tvm())  # the int8 pass fits its weights to it
    c.pass_objs = [passes_mod.create(s, c.ctx) for s in c.pass_specs]  # all checked before any work


def calibrate(c: Compilation):
    o = c.opts
    if o.calibration is not None:
        from .calibrate import calibration_feeds

        c.say(f"calibrating on {o.calibration}")
        c.calib_feeds = calibration_feeds(c.model, o.calibration, limit=o.calibration_limit,
                                          views=o.calibration_views)
    c.ctx.extra["calibration_feeds"] = c.calib_feeds


def plan(c: Compilation):
    o = c.opts
    if o.budget is None:
        return
    from .planning import plan_budget

    c.say(f"allocating budget {o.budget}")
    c.plan = plan_budget(c.model, o.budget, c.calib_feeds, progress=c.say, refine=o.refine,
                         techniques=o.techniques)
    c.report["budget"] = c.plan.to_json()


def rewrite(c: Compilation):
    from .calibrate import collect_activations
    from .passes.qdq_fold import fold_qdq, is_int8_tflite

    m, ctx, p = c.model, c.ctx, c.plan
    if c.pass_specs and c.calib_feeds is not None:
        ctx.activations = (p.activations if p is not None and p.activations is not None
                           else collect_activations(m.mod, c.calib_feeds, progress=c.say))
    mod = m.mod
    if is_int8_tflite(m):
        # dequantize → float op → quantize (as TVM imports int8 TFLite) becomes true int8 ops
        c.say("folding quantize/dequantize pairs into int8 ops")
        # micro: TFLite's integer fixed-point requantisation (what TFLite Micro computes; no float)
        mod = fold_qdq(mod, ctx.records, requant="fixed" if c.spec.family == "micro" else "float")
    user_specs = list(c.pass_specs)
    if p is not None:
        from .planning import apply_plan

        # the plan's rewrites, each layer refitted in model order to the inputs the rewritten layers
        # above it produce (sequential asymmetric refit, with calibration)
        c.say(f"rewriting {len(p.entries)} layer(s) to the budget plan")
        mod, recs = apply_plan(mod, p, p.activations, c.calib_feeds, progress=c.say)
        ctx.records.extend(recs)
        c.pass_specs = list(p.pass_specs) + c.pass_specs
    c.mod = run_passes(mod, c.pass_objs, user_specs, c.opts.dump_ir, c.say) if user_specs else mod
    after = layers.layers(c.mod)
    c.report["after"] = {"layers": [lr.to_json() for lr in after], "totals": layers.totals(after)}
    c.report["passes"] = [r.to_json() for r in ctx.records]
    from .size_report import size_report

    c.report["size"] = size_report(c.mod).to_json()


def tune(c: Compilation):
    t = c.opts.tuning
    if t and t.trials > 0:
        from .schedules import tune as ms_tune

        c.say(f"tuning {t.trials} trials → {t.records}")
        ms_tune(c.mod, c.spec.tvm(), trials=t.trials, records_path=t.records,
                max_trials_per_task=t.max_trials_per_task)


def manifest(c: Compilation) -> dict:
    import tvm

    m, spec = c.model, c.spec
    return {
        "format": FORMAT, "format_version": FORMAT_VERSION,
        "model": {"name": m.name, "format": m.format, "sha256": m.sha256, "path": m.path},
        "target": {"name": spec.name, "family": spec.family, "preset": spec.preset,
                   "tvm": str(spec.tvm()), "description": spec.description},
        "passes": [{"spec": s} for s in c.pass_specs],
        "inputs": [s.to_json() for s in m.inputs], "outputs": [s.to_json() for s in m.outputs],
        "preprocess": m.preprocess.to_json() if m.preprocess else None,
        "quant": m.quant,
        "versions": {"sqcc": __version__, "tvm": tvm.__version__, "python": sys.version.split()[0]},
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def build(c: Compilation) -> Package:
    from .build import build as build_executable

    spec = c.spec
    c.say(f"building for {spec.name} ({spec.description})")
    t0 = time.perf_counter()
    if spec.family == "micro":
        from .targets.micro import compile_micro

        owned = tempfile.TemporaryDirectory(prefix="sqcc-micro-")
        out_dir = Path(owned.name) / "build"
        c.report["micro"] = compile_micro(c.mod, c.model.inputs, c.model.outputs, spec.preset,
                                          str(out_dir))
        c.report["build"] = {"seconds": time.perf_counter() - t0, "target": spec.name}
        return MicroPackage(out_dir, manifest(c), c.report, source=c.model.source, owned=owned)
    records = c.opts.tuning.records if c.opts.tuning else None
    try:
        ex = build_executable(c.mod, spec.tvm(), tuning_records=records, notes=c.notes)
    except SqccError:
        raise
    except Exception as e:
        raise SqccError(f"build for {spec.name} failed: {one_line(e)}") from e
    c.report["build"] = {"seconds": time.perf_counter() - t0, "target": spec.name,
                         "tvm_target": str(spec.tvm()), "tuning_records": records}
    int8_note = _int8_note(c)
    for note in c.notes + ([int8_note] if int8_note else []):  # what sqcc decided for the user
        c.report.setdefault("notes", []).append(note)
        print(f"sqcc: note: {note}", file=sys.stderr)
    return Package(ex, manifest(c), c.report, source=c.model.source, graph=_graph_json(c))


def _graph_json(c: Compilation) -> bytes | None:
    """The rewritten graph (after every rewrite and fold, before layout and scheduling) that
    ``sqcc export`` turns into ONNX / TFLite; kept for host packages, which export can check."""
    if c.spec.family != "host":
        return None
    import tvm

    return tvm.ir.save_json(c.mod).encode()


def _int8_note(c: Compilation) -> str | None:
    spec = c.spec
    if not (any(s.split(":")[0] == "int8" for s in c.pass_specs) and spec.family in ("host", "arm_cpu")):
        return None
    isa = c.ctx.extra["int8_isa"]  # set by canonicalize() for host / arm_cpu
    wbits = {int(getattr(p, "weight_bits", 8)) for p in c.pass_objs if hasattr(p, "weight_bits")}
    if isa in ("avx2", "avx512") and wbits == {7}:
        return (f"{spec.name} has {isa.upper()} but no VNNI: int8 convs use vpmaddubsw, exact only for "
                f"weights |w| <= 64, so weights were quantised to 7 bits (int8:weight_bits=auto); "
                f"int8:weight_bits=8 keeps 8-bit weights on the slower vpmaddwd kernels")
    if isa in ("avx2", "avx512", "portable", "dotprod"):
        # say so rather than let a user believe int8 is faster everywhere
        return (f"{spec.name} has no dot-product instruction for uint8 x int8 (AVX-512 VNNI, ARM i8mm): "
                f"its int8 kernels use {'vpmaddwd' if isa.startswith('avx') else 'generic integer SIMD'}; "
                f"expect no speed-up over fp32 (an AVX2-only build with 8-bit weights measured 0.84x "
                f"the speed of fp32); int8 saves memory here, not time")
    return None


def check(c: Compilation, pkg):
    o, m = c.opts, c.model
    if not o.check:
        return
    if c.spec.family == "micro":
        _check(pkg, m, [random_inputs(m, seed=0)], c.report, eval_images=None, say=c.say)
    elif c.spec.runs_locally:
        feeds = [random_inputs(m, seed=s) for s in range(2)] + list(c.calib_feeds or [])[:8]
        _check(pkg, m, feeds, c.report, o.eval_images, c.say)
    else:
        return
    _enforce_numerics(pkg, c.report, lossy=bool(c.pass_specs), force=o.force)


def _check(pkg, m, feeds, report, eval_images, say):
    """Fidelity against the original model (and accuracy on labelled images) into the report."""
    from .fidelity import compare_on_inputs, evaluate_images, reference_for_package

    say("checking against the original model")
    ref = reference_for_package(pkg)
    run = lambda feed: _as_list(pkg.run(feed))  # noqa: E731
    report["fidelity"] = {"reference": ref.name, **compare_on_inputs(run, ref, feeds, m.outputs)}
    if eval_images is not None:
        say(f"evaluating on {eval_images}")
        q = (m.quant or {}).get("inputs", [None])[0]
        report["evaluation"] = {"reference": ref.name, **evaluate_images(
            run, ref, eval_images, m.preprocess, m.inputs[0], q, progress=say)}


def _enforce_numerics(pkg, report, lossy: bool, force: bool):
    """A compile that was not asked to change numerics and did is an error, on any output.

    Lossy rewrites (passes, budget plans) report their error instead. ``force`` keeps the package,
    marked in the manifest and the report, for a user who wants to look at it anyway."""
    from .fidelity import numerics_misses

    fid = report.get("fidelity")
    misses = numerics_misses(fid) if fid and not lossy else []
    if not misses:
        return
    what = (f"the compiled model does not match {fid['reference']} on {len(misses)} of "
            f"{len(fid['outputs'])} output(s), though no lossy rewrite was asked for: "
            + "; ".join(misses))
    if not force:
        raise SqccError(f"{what}; no package written (--force writes it anyway, marked so)")
    pkg.manifest["numerics_mismatch_forced"] = misses
    report.setdefault("notes", []).append(f"written with --force: {what}")
    print(f"sqcc: warning: {what}; written anyway (--force)", file=sys.stderr)


def _as_list(x):
    return x if isinstance(x, list) else [x]


def dump(mod, dump_dir, step: int, name: str):
    if not dump_dir:
        return
    from .outputs import atomic_write

    text = mod.script(show_meta=False).encode()
    safe = name.replace(":", "_").replace(",", "_").replace("=", "-")
    atomic_write(Path(dump_dir) / f"{step:02d}_{safe}.py", lambda f: f.write(text), "--dump-ir")


def run_passes(mod, pass_objs, specs, dump_dir=None, progress=None):
    """Apply pass objects in order; dump IR after each."""
    from tvm import relax

    dump(mod, dump_dir, 0, "import")
    for k, (p, spec) in enumerate(zip(pass_objs, specs), start=1):
        if progress:
            progress(f"pass {spec}")
        try:
            mod = p(mod)
        except SqccError:
            raise
        except Exception as e:  # a pass bug must not look like the user's fault, but must be one line
            err = getattr(e, "__cause__", None) or e
            if isinstance(err, SqccError):
                raise err from None
            raise SqccError(f"pass {spec} failed: {one_line(e)}") from e
        mod = relax.transform.CanonicalizeBindings()(mod)
        dump(mod, dump_dir, k, spec)
    return mod
