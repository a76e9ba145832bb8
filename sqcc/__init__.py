"""sqcc — a compression compiler for trained CNNs on Apache TVM.

    import sqcc
    pkg = sqcc.compile("squeezenet1.1", target="host", passes=["lowrank:energy=0.95"])
    pkg.run(x); pkg.benchmark(compare="onnxruntime"); pkg.export("sq.tar"); sqcc.load("sq.tar")
"""
import os as _os

__version__ = "0.1.0"

# TVM's thread pool starts with half the cores unless told otherwise, and reads TVM_NUM_THREADS only
# once; default to every core we may run on (onnxruntime does the same), so figures compare like
# with like. An explicit TVM_NUM_THREADS wins.
if "TVM_NUM_THREADS" not in _os.environ:
    _os.environ["TVM_NUM_THREADS"] = str(len(_os.sched_getaffinity(0)) if hasattr(_os, "sched_getaffinity")
                                         else (_os.cpu_count() or 1))

from .api import Tuning, compile  # noqa: E402
from .errors import SqccError  # noqa: E402
from .models import Preprocess  # noqa: E402
from .package import Package, load  # noqa: E402

__all__ = ["compile", "load", "Package", "Preprocess", "Tuning", "SqccError", "__version__"]
