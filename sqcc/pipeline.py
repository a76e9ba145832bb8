"""The compile pipeline, phase by phase. Data flows one way:

    import (frontend) → calibrate → rewrite (passes, in the order given) → build (lowering,
    schedules, target codegen) → check (fidelity against the original) → package

``dump_ir=DIR`` writes main's Relax IR after every phase and pass (``00_import.py``, ``01_lowrank.py``
...), so a user can see what each rewrite did.
"""
from __future__ import annotations

from pathlib import Path

from .errors import SqccError, one_line


def dump(mod, dump_dir, step: int, name: str):
    if not dump_dir:
        return
    d = Path(dump_dir)
    d.mkdir(parents=True, exist_ok=True)
    (d / f"{step:02d}_{name.replace(':', '_').replace(',', '_').replace('=', '-')}.py").write_text(
        mod.script(show_meta=False))


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
