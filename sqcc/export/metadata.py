"""What an exported file says about itself: the package's preprocessing, passes and a report summary
(ONNX ``metadata_props``, TFLite ``metadata``), so the file explains itself without the package."""
from __future__ import annotations

import json


def _totals(report: dict, stage: str) -> dict | None:
    t = (report.get(stage) or {}).get("totals")
    return {k: t[k] for k in ("layers", "params", "macs", "weight_bytes") if k in t} if t else None


def _fidelity(report: dict) -> dict | None:
    f = report.get("fidelity")
    if not f:
        return None
    keys = ("reference", "inputs", "max_abs", "max_rel", "rel_l2", "top1_agreement", "top5_overlap")
    return {k: f[k] for k in keys if k in f}


def report_summary(report: dict) -> dict:
    """Totals before/after the rewrites, fidelity against the original, accuracy where measured, and
    one line per rewritten layer."""
    out = {"before": _totals(report, "before"), "after": _totals(report, "after"),
           "fidelity": _fidelity(report)}
    ev = report.get("evaluation")
    if ev:
        out["evaluation"] = {k: ev[k] for k in ("inputs", "ours_top1", "ref_top1", "ours_top5", "ref_top5",
                                                "top1_agreement") if k in ev}
    out["rewrites"] = [{k: r.get(k) for k in ("layer", "technique", "applied", "detail", "output_error")}
                       for r in report.get("passes") or []]
    return out


def metadata(pkg, form: str) -> dict[str, str]:
    """Key → text for an exported file of ``pkg`` (``form``: what the file holds, e.g. "float")."""
    m = pkg.manifest
    return {
        "sqcc.version": str(m.get("versions", {}).get("sqcc", "")),
        "sqcc.form": form,
        "sqcc.model": json.dumps({k: m["model"].get(k) for k in ("name", "format", "sha256")}),
        "sqcc.target": str(m["target"]["name"]),
        "sqcc.passes": json.dumps([p["spec"] for p in m.get("passes", [])]),
        "sqcc.preprocess": json.dumps(m.get("preprocess")),
        "sqcc.inputs": json.dumps(m["inputs"]),
        "sqcc.report": json.dumps(report_summary(pkg.report or {}), default=str),
    }


def doc_string(pkg, form: str) -> str:
    m = pkg.manifest
    passes = ", ".join(p["spec"] for p in m.get("passes", [])) or "none"
    return (f"{m['model']['name']} as compiled by sqcc {m.get('versions', {}).get('sqcc', '')} ({form}): "
            f"the graph after every rewrite and fold, before layout and scheduling; passes: {passes}")
