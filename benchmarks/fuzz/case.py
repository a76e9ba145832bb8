"""What one fuzz case is: the inputs a generator wrote into its scratch directory, the sqcc command
line (or Python API call) that consumes them, and what a correct sqcc must do with them."""
from __future__ import annotations

import random
from dataclasses import asdict, dataclass, field
from pathlib import Path


@dataclass
class Case:
    """One case. Paths in ``argv`` are relative to the scratch directory the case runs in."""

    generator: str  # "family.name", e.g. "onnx.input_dim"
    mutation: str  # what was changed, in words (enough to recognise the input)
    argv: list | None = None  # sqcc's argv (sqcc.cli.main(argv))
    api: dict | None = None  # {"call": NAME, ...}: a Python API call (see child.API_CALLS)
    expect: str | None = None  # "success": the input is valid, so a rejection is a wrong result
    reference: dict | None = None  # a result to check after exit 0 (see classify.check_reference)
    canary: str | None = None  # a file that appears only if a payload in the input was executed
    inputs: list = field(default_factory=list)  # files the generator wrote (relative to scratch)
    id: str = ""
    index: int = -1

    def to_json(self) -> dict:
        return asdict(self)

    def command(self) -> str:
        """The case as a shell-ish line, for reports."""
        if self.argv is not None:
            return "sqcc " + " ".join(_quote(a) for a in self.argv)
        return f"python API {self.api}"


def _quote(s: str) -> str:
    import shlex

    s = str(s)
    return shlex.quote(s) if len(s) <= 200 else shlex.quote(s[:60]) + f"...({len(s)} chars)"


@dataclass
class Ctx:
    """What a generator gets: its own RNG (from the campaign seed and the case index), the scratch
    directory to write inputs into, and the shared assets (seed models, base packages)."""

    rng: random.Random
    dir: Path
    assets: object  # assets.Assets
    seed: int
    index: int
    written: list = field(default_factory=list)

    def write(self, name: str, data: bytes) -> str:
        """Write an input file into the scratch directory; returns its relative path."""
        p = self.dir / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
        self.written.append(name)
        return name

    def np_rng(self):
        import numpy as np

        return np.random.default_rng([self.seed, self.index])


def case_rng(seed: int, index: int) -> random.Random:
    """The RNG of case ``index`` in campaign ``seed`` (str seeds hash deterministically)."""
    return random.Random(f"sqcc-fuzz/{seed}/{index}")
