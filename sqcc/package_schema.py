"""The JSON schemas of a package's ``manifest.json`` and ``report.json``, and one-line errors for a
document that breaks them.

The schemas require what sqcc reads from a loaded package (Package, the CLI, bench, remote,
fidelity), with the types that code assumes, and allow every other key: a package of a newer sqcc
with more keys still loads. A violation is one :class:`SqccError` ``where: json.path: what is
wrong`` (jsonschema's best match, said briefly: its own messages repeat the whole value).
"""
from __future__ import annotations

import functools
import json

import numpy as np

from .errors import SqccError

_STR = {"type": "string"}
_NUM = {"type": "number"}
_NUMS = {"type": "array", "items": _NUM}
_HEX = {"type": "string", "pattern": "^[0-9a-f]{64}$", "description": "a lowercase hex sha256"}
_SHAPE = {"type": ["array", "null"]}


def _obj(required=(), props=None, **more) -> dict:
    """An object with ``required`` keys, typed by ``props``; other keys are allowed, so a package of
    a newer sqcc with more keys still loads."""
    return {"type": "object", "required": list(required), "properties": dict(props or {}), **more}


def _tensor() -> dict:
    return _obj(["name", "shape", "dtype"], {
        "name": _STR, "dtype": {"type": "string", "format": "dtype", "description": "a numeric numpy dtype name"},
        # ints, or strings for symbolic dimensions
        "shape": {"type": "array", "items": {"type": ["integer", "string"], "minimum": 0}}})


def _quant() -> dict:
    qp = {"type": ["object", "null"], "required": ["scale", "zero_point"],
          "properties": {"scale": {"type": ["number", "array"]}, "zero_point": {"type": ["number", "array"]}}}
    return {"type": ["object", "null"], "properties": {"inputs": {"type": "array", "items": qp},
                                                       "outputs": {"type": "array", "items": qp}}}


def _preprocess() -> dict:
    # No required keys: Preprocess.from_json fills in defaults.
    return {"type": ["object", "null"], "properties": {
        "mode": _STR, "size": {"type": "array", "items": {"type": "integer"}, "minItems": 2, "maxItems": 2},
        "resize": {"type": "integer"}, "mean": _NUMS, "std": _NUMS, "layout": _STR,
        "class_offset": {"type": "integer"}, "labels": {"type": ["string", "null"]}}}


def manifest_schema(kind: str = "package") -> dict:
    """The JSON schema of a manifest: ``kind`` "package" (a tar: members and their hashes
    required) or "micro" (a micro build directory). It requires what sqcc reads from a loaded
    manifest (Package, the CLI, bench, remote, fidelity), with the types that code assumes."""
    from .targets import FAMILIES

    families = sorted(FAMILIES) if kind == "micro" else sorted(f for f in FAMILIES if f != "micro")
    props = {
        "format": _STR, "format_version": {"type": "integer"},
        "model": _obj(["name", "format", "sha256"], {"name": _STR, "format": {"enum": ["onnx", "tflite"]},
                                                     "sha256": _HEX, "path": {"type": ["string", "null"]}}),
        "target": _obj(["name", "family"], {"name": _STR, "family": {"enum": families},
                                            "preset": {"type": ["string", "null"]}}),
        "passes": {"type": "array", "items": _obj(["spec"], {"spec": _STR})},
        "inputs": {"type": "array", "items": _tensor(), "minItems": 1},
        "outputs": {"type": "array", "items": _tensor(), "minItems": 1},
        "preprocess": _preprocess(), "quant": _quant(),
        "members": {"type": "object", "additionalProperties": _HEX},
        "member_bytes": {"type": "object", "additionalProperties": {"type": "integer", "minimum": 0}},
    }
    required = ["format", "format_version", "model", "target", "passes", "inputs", "outputs"]
    return _obj(required + (["members"] if kind == "package" else []), props)


def report_schema() -> dict:
    """The parts of report.json that ``sqcc inspect`` and ``sqcc bench`` read: the layer tables
    before/after the passes (``before`` is always written) and the size report. Loose: only what a
    reader indexes is required."""
    count = {"type": "number"}
    layer = _obj(["name", "op", "in_shape", "out_shape", "params", "macs", "weight_bytes"], {
        "name": _STR, "op": _STR, "in_shape": _SHAPE, "out_shape": _SHAPE, "params": count, "macs": count,
        "weight_bytes": count, "fused": {"type": "array", "items": _STR},
        "attrs": _obj((), {"kernel": {"type": "array", "minItems": 2}, "strides": {"type": "array", "minItems": 1},
                           "groups": count},
                      # layer_table reads strides and groups whenever there is a kernel
                      dependentRequired={"kernel": ["strides", "groups"]})})
    totals = ["layers", "params", "macs", "weight_bytes"]
    stage = _obj(["layers", "totals"], {"layers": {"type": "array", "items": layer},
                                        "totals": _obj(totals, {k: count for k in totals})})
    size_keys = ["params", "density", "dense_bytes", "csr_bytes", "shared_bytes", "huffman_bytes"]
    size_layer = _obj(["layer", "kind", "value_bits", *size_keys],
                      {"layer": _STR, "kind": _STR, "value_bits": {"type": ["number", "null"]},
                       **{k: count for k in size_keys}})
    total_keys = ["params", "density", "bias_bytes", "compression",
                  *(f"{k}_total_bytes" for k in ("dense", "csr", "shared", "huffman"))]
    size = _obj(["layers", "totals"], {"layers": {"type": "array", "items": size_layer},
                                       "totals": _obj(total_keys, {k: count for k in total_keys}),
                                       "paper": {"type": ["object", "null"]}})
    return _obj(["before"], {"before": stage, "after": stage, "size": size})


@functools.cache
def _validator(kind: str):
    import jsonschema

    formats = jsonschema.FormatChecker(formats=())

    @formats.checks("dtype", raises=(TypeError, ValueError))
    def _is_dtype(s):  # a dtype numpy does not know (or a string, object...) fails only at run time otherwise
        return not isinstance(s, str) or np.dtype(s).kind in "biufc"

    schema = report_schema() if kind == "report" else manifest_schema(kind)
    return jsonschema.Draft202012Validator(schema, format_checker=formats)


def validate(where: str, doc, kind: str) -> None:
    """One SqccError ``where: field: what is wrong`` for the most relevant schema violation."""
    from jsonschema.exceptions import best_match

    err = best_match(_validator(kind).iter_errors(doc))
    if err is not None:
        field, what = _describe(err)
        raise SqccError(f"{where}: {field + ': ' if field else ''}{what}")


_KINDS = {dict: "an object", list: "an array", str: "a string", bool: "a boolean", int: "an integer",
          float: "a number", type(None): "null"}
_TYPES = {"object": "an object", "array": "an array", "string": "a string", "boolean": "a boolean",
          "integer": "an integer", "number": "a number", "null": "null"}


def _describe(err) -> tuple[str, str]:
    """(JSON path, what is wrong) of a jsonschema error, short: its own message repeats the value."""
    where, v, inst = list(err.absolute_path), err.validator, err.instance
    if v in ("required", "dependentRequired"):
        need = err.validator_value if v == "required" else \
            [k for key, keys in err.validator_value.items() if key in inst for k in keys]
        return _json_path(where + [next(k for k in need if k not in inst)]), "missing"
    if v == "type":
        want = err.validator_value if isinstance(err.validator_value, list) else [err.validator_value]
        return _json_path(where), (f"is {_KINDS.get(type(inst), type(inst).__name__)}, expected "
                                   f"{' or '.join(_TYPES.get(w, w) for w in want)}")
    if v == "enum":
        return _json_path(where), f"{short(inst)} is not one of {', '.join(map(short, err.validator_value))}"
    if "description" in err.schema:
        return _json_path(where), f"{short(inst)} is not {err.schema['description']}"
    if v in ("minItems", "maxItems"):
        most = "at least" if v == "minItems" else "at most"
        return _json_path(where), f"has {len(inst)} item(s), {most} {err.validator_value} expected"
    msg = " ".join(err.message.split())
    return _json_path(where), msg if len(msg) <= 100 else msg[:99] + "…"


def _json_path(parts) -> str:
    out = ""
    for p in parts:
        if isinstance(p, int):
            out += f"[{p}]"
        elif str(p).isidentifier():
            out += f".{p}" if out else str(p)
        else:  # keys like "lib.so" would read as a path
            out += f"[{json.dumps(p)}]"
    return out


def short(x) -> str:
    """A value as JSON, cut to 40 characters (a message stays one short line)."""
    s = " ".join(json.dumps(x, default=str).split())
    return s if len(s) <= 40 else s[:39] + "…"


def parse_json(where: str, data: bytes):
    try:
        return json.loads(data)
    except json.JSONDecodeError as e:
        raise SqccError(f"{where}: is not valid JSON (line {e.lineno} column {e.colno}: {e.msg}); "
                        "tampered with or corrupt") from None
    except UnicodeDecodeError:
        raise SqccError(f"{where}: is not valid JSON (not UTF-8 text); tampered with or corrupt") from None
    except (ValueError, RecursionError):  # nested too deeply, an integer of 5000 digits
        raise SqccError(f"{where}: is not JSON sqcc can read (nested too deeply or numbers too long)") from None


def parse_report(where: str, data: bytes | None) -> dict:
    if data is None:
        return {}  # a package without a report still runs
    report = parse_json(where, data)
    validate(where, report, "report")
    return report
