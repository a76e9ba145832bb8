"""What a budget asks for: ``"macs=0.7"`` (or ``params=F``) parsed and checked, and the techniques a
plan may use. This is the one parser of budget text: the CLI, :func:`sqcc.compile` and the allocation
all call it, so a budget is accepted or refused by the same rules wherever it is given."""
from __future__ import annotations

from ..errors import SqccError

TECHNIQUES = ("lowrank", "dwsep", "flatten", "poolhoist")
# one lowrank scheme alone may be asked for too
SCHEMES = ("lowrank:weight", "lowrank:channel", "lowrank:spatial")
METRICS = ("macs", "params")


def check_fraction(metric: str, value, where: str = "budget") -> float:
    """``value`` as a float fraction of the original in (0, 1], or one clear error (``where`` names
    the place the budget came from: ``--budget`` for text, ``budget`` for an API argument)."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise SqccError(f"{where} {metric}={value}: expected a fraction in (0, 1]") from None
    if not (0.0 < v <= 1.0):
        raise SqccError(f"{where} {metric}={v:g} out of range: expected a fraction in (0, 1]")
    return v


def parse_budget(budget) -> dict:
    """``"macs=0.7"`` / ``{"macs": 0.7}`` → ``{"macs": 0.7}`` (one of macs, params)."""
    if isinstance(budget, dict):
        items = dict(budget)
    else:
        items = {}
        for tok in str(budget).split(","):
            k, sep, v = tok.partition("=")
            if not sep:
                raise SqccError(f"--budget {budget}: expected macs=F or params=F (F a fraction, e.g. macs=0.7)")
            items[k.strip()] = v.strip()
    unknown = [k for k in items if k not in METRICS]
    if unknown or len(items) != 1:
        raise SqccError(f"--budget {budget}: expected exactly one of macs=F or params=F")
    (k, v), = items.items()
    return {k: check_fraction(k, v, "--budget")}


def budget_target(macs=None, params=None) -> tuple[str, float]:
    """(metric, fraction) from the allocation's keyword form (exactly one of ``macs``, ``params``)."""
    if (macs is None) == (params is None):
        raise SqccError("budget: give exactly one of macs=F or params=F")
    metric, target = ("macs", macs) if macs is not None else ("params", params)
    return metric, check_fraction(metric, target)


def check_techniques(techniques) -> tuple:
    """The techniques a plan may use, checked: one clear error naming the unknown ones."""
    known = set(TECHNIQUES) | set(SCHEMES)
    techniques = tuple(techniques)
    bad = [t for t in techniques if t not in known]
    if bad or not techniques:
        raise SqccError(f"budget: unknown technique(s) {', '.join(bad) or '(none given)'} (available: "
                        f"{', '.join(TECHNIQUES)}; {', '.join(SCHEMES)} for one scheme)")
    return techniques


def allows(techniques, technique: str) -> bool:
    """Whether a candidate's ``technique`` (``lowrank:channel`` ...) is among ``techniques`` (which
    may name the family, ``lowrank``, or the one scheme)."""
    return technique in techniques or technique.split(":")[0] in techniques
