"""sqcc's rewrite passes: a registry of ``tvm.transform.module_pass`` classes, one per module.

A pass is named on the command line as ``NAME[:key=value,...]`` (``lowrank:scheme=spatial,energy=0.9``;
a bare item after a comma extends the previous value into a list: ``binary:skip=first,last``).
:func:`create` parses and validates such a spec against the pass's declared parameters and returns
the pass object; every pass appends what it did, layer by layer, to ``PassContext.records``.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field

from ..errors import SqccError
from .base import LayerRecord, PassContext  # noqa: F401  (re-exported)


@dataclass(frozen=True)
class Param:
    """A pass parameter as ``sqcc passes`` prints it and ``--pass`` parses it. Its default is the
    pass's ``__init__`` default (filled in by :func:`register`): written once, where the code is."""

    name: str
    type: type  # int, float, str, bool, list, or "rank" (int, fraction or None)
    doc: str
    choices: tuple = ()
    default: object = None


@dataclass
class PassInfo:
    name: str
    cls: object
    summary: str
    params: list = field(default_factory=list)

    def param(self, key):
        for p in self.params:
            if p.name == key:
                return p
        return None


REGISTRY: dict[str, PassInfo] = {}

# Modules that define passes; importing one registers its passes.
PASS_MODULES = ["low_rank", "dwsep", "flatten", "shuffle", "int8", "qdq_fold", "binary", "deep_compression",
                "shuffle_canon", "pool_hoist"]


def register(name: str, summary: str, params=()):
    """Class decorator: put a module-pass class in the registry under ``name``, its parameters'
    defaults read from the class's ``__init__``; a parameter without a keyword there (or the
    reverse) is a bug caught at import."""

    def deco(cls):
        REGISTRY[name] = PassInfo(name, cls, summary, _with_defaults(name, cls, params))
        return cls

    return deco


def _with_defaults(name: str, cls, params) -> list:
    import dataclasses
    import inspect

    sig = inspect.signature(cls.__init__).parameters
    keywords = {k for k, v in sig.items() if k not in ("self", "context") and v.kind is v.POSITIONAL_OR_KEYWORD}
    declared = {p.name for p in params}
    if keywords != declared:
        raise TypeError(f"pass {name}: __init__ keywords {sorted(keywords)} != declared parameters {sorted(declared)}")
    out = []
    for p in params:
        d = sig[p.name].default
        out.append(dataclasses.replace(p, default=list(d) if p.type is list else d))
    return out


def _load_all():
    for m in PASS_MODULES:
        try:
            importlib.import_module(f"{__name__}.{m}")
        except ModuleNotFoundError as e:
            if e.name != f"{__name__}.{m}":
                raise


def available() -> dict[str, PassInfo]:
    _load_all()
    return dict(sorted(REGISTRY.items()))


def _convert(info: PassInfo, p: Param, raw):
    where = f"--pass {info.name}: {p.name}"
    if p.type is list:
        return [str(x) for x in (raw if isinstance(raw, list) else [raw])]
    if isinstance(raw, list):
        raise SqccError(f"{where} takes one value, got {','.join(raw)}")
    if p.type is bool:
        if str(raw).lower() in ("1", "true", "yes", "on"):
            return True
        if str(raw).lower() in ("0", "false", "no", "off"):
            return False
        raise SqccError(f"{where}={raw}: expected true or false")
    if p.type in (int, float):
        try:
            v = p.type(raw)
        except ValueError:
            raise SqccError(f"{where}={raw}: expected {'an integer' if p.type is int else 'a number'}") from None
        return v
    if p.type == "rank":  # an integer rank, or a fraction of the full rank in (0, 1]
        try:
            v = float(raw)
        except ValueError:
            raise SqccError(f"{where}={raw}: expected an integer rank or a fraction in (0, 1]") from None
        if v <= 0 or (v > 1 and v != int(v)):
            raise SqccError(f"{where}={raw}: rank must be a positive integer or a fraction in (0, 1]")
        return int(v) if v > 1 or str(raw).isdigit() else v
    v = str(raw)
    if p.choices and v not in p.choices:
        raise SqccError(f"{where}={v}: expected one of {', '.join(p.choices)}")
    return v


def parse_spec(spec: str) -> tuple[str, dict]:
    """``"lowrank:scheme=spatial,energy=0.9"`` → ``("lowrank", {"scheme": "spatial", "energy": 0.9})``."""
    name, _, rest = spec.partition(":")
    name = name.strip()
    passes = available()
    info = passes.get(name)
    if info is None:
        raise SqccError(f"--pass {spec}: unknown pass '{name}' (available: {', '.join(passes) or 'none'})")
    raw: dict[str, object] = {}
    last = None
    for tok in [t for t in rest.split(",") if t.strip()] if rest else []:
        if "=" in tok:
            k, _, v = tok.partition("=")
            k = k.strip()
            if info.param(k) is None:
                known = ", ".join(p.name for p in info.params) or "none"
                raise SqccError(f"--pass {name}: unknown parameter '{k}' (parameters: {known})")
            if k in raw:
                raise SqccError(f"--pass {name}: parameter '{k}' given twice")
            raw[k] = v.strip()
            last = k
        elif last is not None:
            prev = raw[last]
            raw[last] = (prev if isinstance(prev, list) else [prev]) + [tok.strip()]
        else:
            raise SqccError(f"--pass {spec}: expected key=value after '{name}:'")
    kwargs = {k: _convert(info, info.param(k), v) for k, v in raw.items()}
    return name, kwargs


def create(spec, context: PassContext | None = None):
    """A pass object from a spec string or ``(name, kwargs)``; validated against its parameters."""
    if isinstance(spec, str):
        name, kwargs = parse_spec(spec)
    else:
        name, kwargs = spec
        info = available().get(name)
        if info is None:
            raise SqccError(f"unknown pass '{name}' (available: {', '.join(available()) or 'none'})")
        kwargs = {k: _convert(info, info.param(k), v) if info.param(k) else v for k, v in kwargs.items()}
        unknown = [k for k in kwargs if info.param(k) is None]
        if unknown:
            raise SqccError(f"pass {name}: unknown parameter(s) {', '.join(unknown)}")
    info = REGISTRY[name]
    full = {p.name: p.default for p in info.params}
    full.update(kwargs)
    return info.cls(context=context or PassContext(), **full)
