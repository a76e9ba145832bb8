"""Targets: each family says how to build (TVM target, cross compiler), run and measure.

A target is named ``family[:preset]`` — ``host``, ``arm_cpu:rpi4``, ``cuda:sm_90``, ``micro:cortex-m4``.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import SqccError, one_line


@dataclass
class TargetSpec:
    name: str  # as the user wrote it, normalised: "host", "arm_cpu:rpi4", ...
    family: str
    preset: str | None
    description: str
    tvm_target: dict = field(default_factory=dict)
    runs_locally: bool = True
    device_type: str = "cpu"  # "cpu" | "cuda" | "micro": which device a runtime session uses
    cross_compiler: str | None = None  # e.g. "aarch64-linux-gnu-g++" (None: the host's compiler)
    toolchain_package: str | None = None  # the Debian package that installs cross_compiler
    rpc_key: str | None = None  # default key on the RPC tracker ("aarch64": the local emulated node)
    how_to_run: str = "locally"
    how_to_measure: str = "time_evaluator (median/min/max)"
    exporter: object = None  # callable(executable, path) -> path; None: executable.export_library(path)
    checker: object = None  # callable() raising SqccError when the toolchain is missing

    def tvm(self):
        import tvm

        return tvm.target.Target(self.tvm_target)

    def check_toolchain(self) -> None:
        """SqccError (naming the Debian package) when this target's cross toolchain is missing."""
        if self.checker is not None:
            self.checker()

    def export_library(self, executable, path):
        """Link a built executable into a shared library *for this target* (cross compiler if any)."""
        import os

        if self.exporter is not None:
            return self.exporter(executable, path)
        executable.export_library(os.fspath(path))
        return os.fspath(path)

    def to_json(self) -> dict:
        return {"name": self.name, "family": self.family, "preset": self.preset, "description": self.description,
                "tvm_target": self.tvm_target, "runs_locally": self.runs_locally, "device_type": self.device_type,
                "cross_compiler": self.cross_compiler, "toolchain_package": self.toolchain_package,
                "rpc_key": self.rpc_key, "how_to_run": self.how_to_run, "how_to_measure": self.how_to_measure}


def export_with(executable, path, what: str, **kwargs) -> str:
    """``executable.export_library(path, **kwargs)``; a failed link is one SqccError naming ``what``
    with the linker's last line."""
    import os

    path = os.fspath(path)
    try:
        executable.export_library(path, **kwargs)
    except Exception as e:  # TVM raises RuntimeError/TVMError with the linker output
        raise SqccError(f"linking {what} failed: {one_line(e)}") from e
    return path


def host_spec() -> TargetSpec:
    from . import host

    t = host.target()
    cpu = host.detect()
    return TargetSpec("host", "host", None, f"this machine: {cpu.model} ({cpu.mcpu}, {cpu.cores} cores, "
                      f"{'+'.join(cpu.features) or 'no SIMD features detected'})",
                      tvm_target=dict(t.export()) if hasattr(t, "export") else {"kind": "llvm"})


def arm_cpu_spec(preset: str | None = None) -> TargetSpec:
    from . import arm_cpu

    return arm_cpu.spec(preset)


def cuda_spec(preset: str | None = None) -> TargetSpec:
    from . import cuda

    return cuda.spec(preset)


def micro_spec(preset: str | None = None) -> TargetSpec:
    from . import micro

    return micro.spec(preset)


FAMILIES = {"host": host_spec, "arm_cpu": arm_cpu_spec, "cuda": cuda_spec, "micro": micro_spec}


def presets(family: str) -> list[str]:
    """The presets of a family ([] for host)."""
    if family == "host":
        return []
    import importlib

    mod = importlib.import_module(f"{__name__}.{family}")
    return list(mod.presets()) if hasattr(mod, "presets") else list(getattr(mod, "PRESETS", {}))


def all_targets() -> list[TargetSpec]:
    """Every family and preset, for `sqcc targets`."""
    out = []
    for fam in FAMILIES:
        names = presets(fam) or [None]
        for p in names:
            try:
                out.append(resolve(f"{fam}:{p}" if p else fam))
            except SqccError:
                continue
    return out


def resolve(name: str) -> TargetSpec:
    """``"host"`` / ``"arm_cpu:rpi4"`` → :class:`TargetSpec`, or a SqccError listing what exists."""
    if name is None:
        name = "host"
    if not isinstance(name, str) or not name.strip():
        raise SqccError(f"--target {name!r}: empty (known: {', '.join(sorted(FAMILIES))})")
    family, _, preset = name.partition(":")
    if family in ("llvm", "cpu", "x86"):
        family = "host"
    if family not in FAMILIES:
        raise SqccError(f"--target {name}: unknown target (known: {', '.join(sorted(FAMILIES))})")
    if family == "host" and preset:
        raise SqccError(f"--target {name}: the host target takes no preset")
    if family != "host" and preset and preset not in presets(family):
        raise SqccError(f"--target {name}: unknown {family} preset '{preset}' "
                        f"(known: {', '.join(presets(family))})")
    spec = FAMILIES[family]() if family == "host" else FAMILIES[family](preset or None)
    return spec


def format_targets(verbose: bool = True) -> str:
    """The text of `sqcc targets`: every target and preset, its TVM target, toolchain, how it runs and
    how it is measured."""
    import json
    import shutil

    lines = []
    for s in all_targets():
        lines.append(f"{s.name:<18} {s.description}")
        if not verbose:
            continue
        lines.append(f"{'':<18}   tvm target: {json.dumps(s.tvm_target, separators=(',', ':'), default=_jsonable)}")
        if s.cross_compiler:
            have = "installed" if shutil.which(s.cross_compiler) else f"MISSING: apt-get install {s.toolchain_package}"
            lines.append(f"{'':<18}   toolchain:  {s.cross_compiler} ({have})")
        else:
            lines.append(f"{'':<18}   toolchain:  the host C++ compiler (links lib.so)")
        lines.append(f"{'':<18}   runs:       {s.how_to_run}")
        lines.append(f"{'':<18}   measured:   {s.how_to_measure}")
    return "\n".join(lines)


def _jsonable(o):
    if isinstance(o, (str, bytes)):
        return str(o)
    try:
        return list(o)
    except TypeError:
        return str(o)


def default_records(target: "str | TargetSpec") -> str:
    """A per-target tuning database path: ``$SQCC_CACHE/tuning/<family>_<preset>.json``
    (default ``~/.cache/sqcc``), e.g. ``arm_cpu_rpi4.json``; records tuned on one board's key stay
    with that target."""
    import os
    from pathlib import Path

    spec = resolve(target) if isinstance(target, str) else target
    base = Path(os.environ.get("SQCC_CACHE") or Path.home() / ".cache" / "sqcc") / "tuning"
    return str(base / f"{spec.name.replace(':', '_')}.json")
