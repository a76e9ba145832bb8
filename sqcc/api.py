"""The Python API: ``sqcc.compile(model, target=..., passes=[...])`` → :class:`~sqcc.package.Package`."""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path

from . import __version__
from .errors import SqccError, one_line
from .package import FORMAT, FORMAT_VERSION, Package


@dataclass
class Tuning:
    """MetaSchedule tuning: ``trials`` > 0 tunes (appending to ``records``); ``records`` alone applies
    an existing database."""

    trials: int = 0
    records: str | None = None
    max_trials_per_task: int | None = None


def _progress(verbose):
    t0 = time.perf_counter()

    def say(msg):
        if verbose:
            print(f"[{time.perf_counter() - t0:6.1f}s] {msg}", file=sys.stderr, flush=True)

    return say


def compile(model, target: str = "host", passes=(), input_shapes=None, calibration=None,
            budget=None, tuning: Tuning | None = None, eval_images=None, check: bool = True,
            dump_ir=None, force: bool = False, progress=False, calibration_limit: int = 32,
            calibration_views: int = 1, refine: bool = False, techniques=None,
            preprocess=None) -> Package:
    """Import, rewrite, build and check ``model``; returns a runnable, exportable Package.

    ``model``: a known name (``"squeezenet1.1"``), a .onnx/.tflite path, or an onnx.ModelProto.
    ``preprocess``: the image recipe (a :class:`sqcc.Preprocess` or a ``--preprocess`` string) for
    a model without one; stored in the package, used by calibration, evaluation and ``sqcc run``.
    ``passes``: specs like ``"lowrank:scheme=spatial,energy=0.9"``. ``calibration``: a folder of
    images for data-aware fitting (``calibration_limit`` of them, spread over the folder;
    ``calibration_views`` views of each: 2 adds the mirror, up to 10 the ten-crop views). ``budget``:
    ``"macs=0.7"`` or ``{"macs": 0.7}``; with calibration, ``refine`` re-chooses each planned layer's
    technique end to end on a calibration split (``planning.refine_techniques``); ``techniques`` limits
    the rewrites the plan may use (default ``planning.TECHNIQUES``). ``eval_images``:
    a labelled folder to measure accuracy and agreement on. ``check``: compare with the original
    model (onnxruntime / LiteRT) on random inputs.
    """
    import tvm

    from . import frontend, layers
    from . import passes as passes_mod
    from .frontend import random_inputs
    from .pipeline import run_passes
    from .targets import resolve

    say = progress if callable(progress) else _progress(progress)
    if refine and (budget is None or calibration is None):
        raise SqccError("--refine re-chooses a budget plan's techniques on calibration images: it needs "
                        "--budget and --calibration")
    if techniques and budget is None:
        raise SqccError("--techniques chooses the rewrites a budget plan may use: it needs --budget")
    if budget is not None:
        from .planning import TECHNIQUES, check_techniques, parse_budget

        budget = parse_budget(budget)  # the CLI's parser: text or a dict, checked before minutes of work
        techniques = check_techniques(techniques or TECHNIQUES)
    spec = resolve(target)
    say(f"importing {model if isinstance(model, str) else 'model'}")
    m = frontend.load(model, input_shapes)
    if preprocess is not None:
        from .preprocess import parse_preprocess

        m.preprocess = parse_preprocess(preprocess) if isinstance(preprocess, str) else preprocess
    if m.preprocess is None and (eval_images is not None or isinstance(calibration, (str, Path))):
        flag = "--eval-images" if eval_images is not None else "--calibration"
        raise SqccError(f"{flag} feeds images, and {m.name} has no preprocessing recipe (not a known "
                        f"model): give --preprocess, e.g. size=224,resize=256,mean=0.485,0.456,0.406,"
                        f"std=0.229,0.224,0.225,layout=NCHW")
    spec.check_toolchain()  # a missing cross compiler is said now, not after minutes of work
    from .passes.shuffle_canon import canonicalize_shuffles

    # An imported ShuffleNet channel shuffle (reshape→transpose→reshape) becomes a folded
    # permutation or one gather before anything else looks at the graph.
    m.mod, canon_notes = canonicalize_shuffles(m.mod)
    before = layers.layers(m.mod)
    report = {"model": m.name, "before": {"layers": [l.to_json() for l in before],
                                          "totals": layers.totals(before)}}
    pass_specs = [passes] if isinstance(passes, str) else list(passes or [])
    ctx = passes_mod.PassContext(force=force)
    if spec.family in ("host", "arm_cpu"):
        from .schedules.int8 import int8_isa

        ctx.extra["int8_isa"] = int8_isa(spec.tvm())  # the int8 pass fits its weights to it
    calib_feeds = None
    if calibration is not None:
        from .calibrate import calibration_feeds, collect_activations

        say(f"calibrating on {calibration}")
        calib_feeds = calibration_feeds(m, calibration, limit=calibration_limit, views=calibration_views)
    plan = None
    if budget is not None:
        from .planning import plan_budget

        say(f"allocating budget {budget}")
        plan = plan_budget(m, budget, calib_feeds, progress=say, refine=refine, techniques=techniques)
        report["budget"] = plan.to_json()
    ctx.extra["calibration_feeds"] = calib_feeds
    pass_objs = [passes_mod.create(s, ctx) for s in pass_specs]  # validate all before any work
    if pass_specs and calib_feeds is not None:
        ctx.activations = (plan.activations if plan is not None and plan.activations is not None
                           else collect_activations(m.mod, calib_feeds, progress=say))
    mod = m.mod
    from .passes.qdq_fold import fold_qdq, is_int8_tflite

    if is_int8_tflite(m):
        # dequantize → float op → quantize (as TVM imports int8 TFLite) becomes true int8 ops
        say("folding quantize/dequantize pairs into int8 ops")
        # micro: TFLite's integer fixed-point requantisation (what TFLite Micro computes; no float)
        mod = fold_qdq(mod, ctx.records, requant="fixed" if spec.family == "micro" else "float")
    if plan is not None:
        from .planning import apply_plan

        # the plan's rewrites, each layer refitted in model order to the inputs the rewritten layers
        # above it produce (sequential asymmetric refit, with calibration)
        say(f"rewriting {len(plan.entries)} layer(s) to the budget plan")
        mod, recs = apply_plan(mod, plan, plan.activations, calib_feeds, progress=say)
        ctx.records.extend(recs)
        pass_specs = list(plan.pass_specs) + pass_specs
    user_specs = pass_specs[len(plan.pass_specs):] if plan is not None else pass_specs
    mod = run_passes(mod, pass_objs, user_specs, dump_ir, say) if user_specs else mod
    after = layers.layers(mod)
    report["after"] = {"layers": [l.to_json() for l in after], "totals": layers.totals(after)}
    report["passes"] = [r.to_json() for r in ctx.records]
    if canon_notes:
        report["canonicalize"] = canon_notes
    from .size_report import size_report

    report["size"] = size_report(mod).to_json()

    from .build import build

    records = tuning.records if tuning else None
    if tuning and tuning.trials > 0:
        from .schedules import tune

        say(f"tuning {tuning.trials} trials → {tuning.records}")
        tune(mod, spec.tvm(), trials=tuning.trials, records_path=tuning.records,
             max_trials_per_task=tuning.max_trials_per_task)
    manifest = {
        "format": FORMAT, "format_version": FORMAT_VERSION,
        "model": {"name": m.name, "format": m.format, "sha256": m.sha256, "path": m.path},
        "target": {"name": spec.name, "family": spec.family, "preset": spec.preset,
                   "tvm": str(spec.tvm()), "description": spec.description},
        "passes": [{"spec": s} for s in pass_specs],
        "inputs": [s.to_json() for s in m.inputs], "outputs": [s.to_json() for s in m.outputs],
        "preprocess": m.preprocess.to_json() if m.preprocess else None,
        "quant": m.quant,
        "versions": {"sqcc": __version__, "tvm": tvm.__version__, "python": sys.version.split()[0]},
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    say(f"building for {spec.name} ({spec.description})")
    t0 = time.perf_counter()
    if spec.family == "micro":
        import tempfile

        from .package import MicroPackage
        from .targets.micro import compile_micro

        owned = tempfile.TemporaryDirectory(prefix="sqcc-micro-")
        out_dir = Path(owned.name) / "build"
        report["micro"] = compile_micro(mod, m.inputs, m.outputs, spec.preset, str(out_dir))
        report["build"] = {"seconds": time.perf_counter() - t0, "target": spec.name}
        pkg = MicroPackage(out_dir, manifest, report, source=m.source, owned=owned)
        if check:
            _check(pkg, m, [random_inputs(m, seed=0)], report, eval_images=None, say=say)
            _enforce_numerics(pkg, report, lossy=bool(pass_specs), force=force)
        return pkg
    build_notes = list(m.notes)
    try:
        ex = build(mod, spec.tvm(), tuning_records=records, notes=build_notes)
    except SqccError:
        raise
    except Exception as e:
        raise SqccError(f"build for {spec.name} failed: {one_line(e)}") from e
    report["build"] = {"seconds": time.perf_counter() - t0, "target": spec.name,
                       "tvm_target": str(spec.tvm()), "tuning_records": records}
    for note in build_notes:  # what the import and the build decided for the user
        report.setdefault("notes", []).append(note)
        print(f"sqcc: note: {note}", file=sys.stderr)
    if any(s.split(":")[0] == "int8" for s in pass_specs) and spec.family in ("host", "arm_cpu"):
        isa = ctx.extra["int8_isa"]  # set above for host / arm_cpu
        wbits = {int(getattr(p, "weight_bits", 8)) for p in pass_objs if hasattr(p, "weight_bits")}
        note = None
        if isa in ("avx2", "avx512") and wbits == {7}:
            note = (f"{spec.name} has {isa.upper()} but no VNNI: int8 convs use vpmaddubsw, exact only for "
                    f"weights |w| <= 64, so weights were quantised to 7 bits (int8:weight_bits=auto); "
                    f"int8:weight_bits=8 keeps 8-bit weights on the slower vpmaddwd kernels")
        elif isa in ("avx2", "avx512", "portable", "dotprod"):
            # say so rather than let a user believe int8 is faster everywhere
            note = (f"{spec.name} has no dot-product instruction for uint8 x int8 (AVX-512 VNNI, ARM i8mm): "
                    f"its int8 kernels use {'vpmaddwd' if isa.startswith('avx') else 'generic integer SIMD'}; "
                    f"expect no speed-up over fp32 (an AVX2-only build with 8-bit weights measured 0.84x "
                    f"the speed of fp32); int8 saves memory here, not time")
        if note:
            report.setdefault("notes", []).append(note)
            print(f"sqcc: note: {note}", file=sys.stderr)
    pkg = Package(ex, manifest, report, source=m.source)
    if check and spec.runs_locally:
        feeds = [random_inputs(m, seed=s) for s in range(2)] + list(calib_feeds or [])[:8]
        _check(pkg, m, feeds, report, eval_images, say)
        _enforce_numerics(pkg, report, lossy=bool(pass_specs), force=force)
    return pkg


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
