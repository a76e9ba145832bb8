"""A budget plan as data: the priced :class:`Candidate` rewrites of a layer, the chosen
:class:`PlanEntry` per rewritten layer, and the :class:`Plan` that realises them.

A plan's rewrites are typed *steps*, ``(pass name, params dict)`` — ``("lowrank", {"scheme":
"channel", "rank": 12, "fit": "data", "layers": ["conv3", "conv7"]})`` — which
:func:`sqcc.passes.create` takes as they are. The ``--pass`` spec string
(``lowrank:scheme=channel,rank=12,fit=data,layers=conv3,conv7``) is only written for the manifest,
the report and the command line (:func:`format_spec`), so a plan is reproducible from the CLI.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace

Step = tuple  # (pass name, {parameter: value}): one pass application, as sqcc.passes.create takes it


def technique_step(technique: str, rank, fit: str, layers: list) -> Step | None:
    """The pass step that applies ``technique`` at ``rank`` (rank, multiplier, or poolhoist's window)
    to ``layers``; None for a technique no pass realises."""
    if technique.startswith("lowrank:"):
        return "lowrank", {"scheme": technique.split(":")[1], "rank": rank, "fit": fit, "layers": list(layers)}
    if technique == "dwsep":
        return "dwsep", {"multiplier": rank, "fit": fit, "layers": list(layers)}
    if technique == "flatten":
        # 30 CP-ALS iterations: what the candidates were priced with (the pass's default is 100)
        return "flatten", {"rank": rank, "iters": 30, "fit": fit, "layers": list(layers)}
    if technique == "poolhoist":
        return "poolhoist", {"window": rank, "layers": list(layers)}
    return None


def format_spec(step: Step) -> str:
    """``("dwsep", {"multiplier": 2, "layers": ["a", "b"]})`` → ``"dwsep:multiplier=2,layers=a,b"``
    (the ``--pass`` form, parameters in the step's order)."""
    name, params = step
    parts = [f"{k}={','.join(str(x) for x in v) if isinstance(v, (list, tuple)) else v}"
             for k, v in params.items()]
    return f"{name}:{','.join(parts)}" if parts else name


@dataclass
class Candidate:
    technique: str  # lowrank:weight | lowrank:channel | lowrank:spatial | dwsep | flatten | poolhoist
    rank: int  # rank, multiplier, or poolhoist's window
    macs: int
    params: int
    error: float  # relative (output or weight) error of the layer

    def step(self, layer: str, fit: str) -> Step | None:
        """The pass step that applies this candidate to ``layer`` alone."""
        return technique_step(self.technique, self.rank, fit, [layer])


@dataclass
class PlanEntry:
    layer: str
    technique: str
    rank: int
    macs_before: int
    macs_after: int
    params_before: int
    params_after: int
    error: float

    def to_json(self):
        return asdict(self)

    def step(self, fit: str) -> Step | None:
        """This layer's pass step alone (a plan's steps group layers; refinement swaps them one by one)."""
        return technique_step(self.technique, self.rank, fit, [self.layer])


@dataclass
class Plan:
    metric: str  # "macs" | "params"
    target: float  # fraction of the original
    fit: str  # "data" | "weight"
    entries: list
    macs_before: int
    macs_after: int
    params_before: int
    params_after: int
    error_measure: str = ""
    seconds: float = 0.0
    sensitivity: dict | None = None  # {layer: s} when measured
    activations: dict | None = field(default=None, repr=False)  # calibration activations used (not saved)
    refinement: list | None = None  # refine_techniques' tries, when run

    @property
    def fraction(self) -> float:
        return (self.macs_after / self.macs_before) if self.metric == "macs" else \
            (self.params_after / self.params_before)

    @property
    def steps(self) -> list[Step]:
        """The pass steps that realise the plan (one per technique and rank, listing its layers)."""
        groups: dict[tuple, list] = {}
        for e in self.entries:
            groups.setdefault((e.technique, e.rank), []).append(e.layer)
        steps = [technique_step(tech, rank, self.fit, layers) for (tech, rank), layers in groups.items()]
        return [s for s in steps if s is not None]

    @property
    def pass_specs(self) -> list[str]:
        """:attr:`steps` as ``--pass`` spec strings (for the manifest, the report and the CLI)."""
        return [format_spec(s) for s in self.steps]

    def to_json(self):
        return {"metric": self.metric, "target": self.target, "fit": self.fit,
                "achieved": self.fraction, "macs_before": self.macs_before, "macs_after": self.macs_after,
                "params_before": self.params_before, "params_after": self.params_after,
                "error_measure": self.error_measure, "passes": self.pass_specs,
                "sensitivity": self.sensitivity, "refinement": self.refinement,
                "entries": [e.to_json() for e in self.entries], "seconds": self.seconds}

    def table(self) -> str:
        lines = [f"budget {self.metric}={self.target:g} ({self.fit} fit): MACs {self.macs_before:,} → "
                 f"{self.macs_after:,} ({self.macs_after / self.macs_before:.3f}), params "
                 f"{self.params_before:,} → {self.params_after:,} ({self.params_after / self.params_before:.3f})",
                 f"{'layer':<12} {'technique':<16} {'rank':>5} {'MACs before':>12} {'MACs after':>12} "
                 f"{'error':>8}"]
        for e in self.entries:
            rank = "map" if e.technique == "poolhoist" and e.rank == 0 else e.rank  # the whole-map window
            lines.append(f"{e.layer:<12} {e.technique:<16} {rank:>5} {e.macs_before:>12,} "
                         f"{e.macs_after:>12,} {e.error:>8.4f}")
        for t in self.refinement or []:
            lines.append(f"refined {t['layer']}: {t['from']} → {t['to']}: KL on held-out calibration inputs "
                         f"{t['kl_before']:.4f} → {t['kl']:.4f}, {'kept' if t['kept'] else 'not kept'}")
        return "\n".join(lines)


def with_entries(plan: Plan, entries: list, **changes) -> Plan:
    """``plan`` with other ``entries`` (same layers' originals), its MAC and parameter totals recounted."""
    macs_after = plan.macs_before - sum(e.macs_before - e.macs_after for e in entries)
    params_after = plan.params_before - sum(e.params_before - e.params_after for e in entries)
    return replace(plan, entries=entries, macs_after=macs_after, params_after=params_after, **changes)
