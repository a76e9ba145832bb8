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
