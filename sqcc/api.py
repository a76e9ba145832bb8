"""The Python API: ``sqcc.compile(model, target=..., passes=[...])`` → :class:`~sqcc.package.Package`."""
from __future__ import annotations

import sys
import time

from .errors import SqccError
from .package import Package
from .pipeline import CompileOptions, Tuning, compile_model

__all__ = ["compile", "Tuning", "CompileOptions"]


def _progress(verbose):
    t0 = time.perf_counter()

    def say(msg):
        if verbose:
            print(f"[{time.perf_counter() - t0:6.1f}s] {msg}", file=sys.stderr, flush=True)

    return say


def _check_types(target, passes, preprocess, calibration_limit, calibration_views, tuning, input_shapes):
    """The API's arguments of the wrong kind, said in one line each before any work (the CLI's
    strings always have the right kind)."""
    from pathlib import Path

    from .models import Preprocess

    def bad(name, value, want):
        raise SqccError(f"sqcc.compile: {name}={value!r:.60}: expected {want}")

    if target is not None and not isinstance(target, str):
        bad("target", target, "a target name such as 'host' or 'arm_cpu:rpi4'")
    if isinstance(passes, (str, bytes)) or not hasattr(passes, "__iter__"):
        bad("passes", passes, "a list of pass specs such as ['lowrank:rank=0.5']")
    for k, spec in enumerate(passes):
        if not (isinstance(spec, str) or (isinstance(spec, tuple) and len(spec) == 2 and isinstance(spec[0], str)
                                          and isinstance(spec[1], dict))):
            bad(f"passes[{k}]", spec, "a pass spec string like 'lowrank:rank=0.5', or (name, {params})")
    if preprocess is not None and not isinstance(preprocess, (str, Preprocess)):
        bad("preprocess", preprocess, "a recipe string or a sqcc.Preprocess")
    if input_shapes is not None and not (isinstance(input_shapes, (str, dict)) or (
            isinstance(input_shapes, (list, tuple)) and all(isinstance(x, str) for x in input_shapes))):
        bad("input_shapes", input_shapes, "'name:1,3,224,224' or {'name': (1, 3, 224, 224)}")
    for name, v in (("calibration_limit", calibration_limit), ("calibration_views", calibration_views)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            bad(name, v, "a positive integer")
    if tuning is not None and not isinstance(tuning, Tuning):
        bad("tuning", tuning, "sqcc.Tuning(records=PATH)")
    if tuning is not None and not isinstance(tuning.records, (str, Path)):
        bad("tuning.records", tuning.records, "a path")


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
    _check_types(target=target, passes=passes, preprocess=preprocess, calibration_limit=calibration_limit,
                 calibration_views=calibration_views, tuning=tuning, input_shapes=input_shapes)
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
    opts = CompileOptions(model, target, passes, input_shapes, calibration, budget, tuning, eval_images,
                          check, dump_ir, force, calibration_limit, calibration_views, refine, techniques,
                          preprocess)
    return compile_model(opts, say)
