"""Running a micro build under qemu-system-arm: outputs (:func:`run_micro`) and figures
(:func:`bench_micro`).

The cost figure is **instructions executed by the inference call**, measured under
``qemu-system-arm -icount shift=0`` (every instruction advances virtual time by 1 ns; SysTick counts
processor-clock ticks of that virtual time; the count is converted to instructions with a calibration
loop of 2,000,000 instructions run just before). QEMU is not cycle-accurate: this is an instruction
count, deterministic from run to run, not a cycle count of real silicon.

RAM = .data + .bss + arena (inputs, outputs, activations, workspaces) + stack.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import time

import numpy as np

from sqcc.errors import SqccError

from .boards import Preset, get_preset
from .toolchain import qemu_cmd, run_tool, which

QEMU_TIMEOUT_S = 900


def bench_fields(res: dict) -> dict:
    return {"instructions": res["instructions"], "run_ticks": res["run_ticks"],
            "calib_ticks": res["calib_ticks"], "stack_used": res["stack_used"]}


def ram_fields(fig: dict, stack_used: int) -> dict:
    """RAM in use = .data + .bss + arena (inputs, outputs, activations, workspaces) + stack used."""
    used = fig["data_bss_bytes"] + fig["arena_bytes"] + stack_used
    pk = fig.get("arena_peak") or {}
    live = ", ".join(f"{b['name']} {'×'.join(map(str, b['shape'] or []))} {b['dtype']} {b['bytes']:,} B"
                     for b in pk.get("live", []))
    ip = "".join(f"; {o['out']} written over {o['in']} in place" for o in pk.get("in_place", []))
    if pk.get("live"):
        live += f"{ip}: {pk.get('occupied_bytes', 0):,} B"
    text = (f"{used:,} B used = arena {fig['arena_bytes']:,} B (peak at step {pk.get('step')}: {live}) "
            f"+ stack {stack_used:,} B (of {fig['stack_reserved']:,} B reserved) + .data/.bss "
            f"{fig['data_bss_bytes']:,} B; reserved by the ELF: {fig['ram_bytes']:,} B")
    return {"ram_used_bytes": used, "ram_breakdown": {
        "arena": fig["arena_bytes"], "stack_used": stack_used, "stack_reserved": fig["stack_reserved"],
        "data_bss": fig["data_bss_bytes"], "total_used": used, "total_reserved": fig["ram_bytes"],
        "text": text}}


def _parse_run(text: str, returncode: int, p: Preset) -> dict:
    """The harness's ``sqcc_*=N`` lines as figures; the calibration loop converts ticks to instructions."""
    vals = dict(re.findall(r"(sqcc_\w+)=(\d+)", text))
    if returncode != 0 or "sqcc_done" not in text:
        raise SqccError(f"micro: the model failed under qemu-system-arm -M {p.machine} "
                        f"(exit {returncode}): {' | '.join(text.strip().splitlines()[-3:])[:300]}")
    calib_t, run_t = int(vals["sqcc_calib_ticks"]), int(vals["sqcc_run_ticks"])
    return {"run_ticks": run_t, "calib_ticks": calib_t,
            "instructions": int(round(run_t * int(vals["sqcc_calib_insns"]) / max(calib_t, 1))),
            "stack_used": int(vals["sqcc_stack_used"])}


def qemu_run(build_dir: str, p: Preset, input_path: str | None, keep_output=True) -> dict:
    """Run ``build_dir/model.elf`` once (in a scratch directory: semihosting opens files relative
    to qemu's cwd); its figures, and its output bytes if ``keep_output``."""
    qemu = which("qemu-system-arm")
    elf = os.path.join(build_dir, "model.elf")
    work = tempfile.mkdtemp(prefix="sqcc-micro-run-")
    try:
        if input_path is not None:
            shutil.copyfile(input_path, os.path.join(work, "input.bin"))
        cmd = qemu_cmd(p, elf=elf, inp="input.bin" if input_path else "", out="output.bin")
        if input_path is None:  # no arguments: main.c zeroes the inputs and writes no output
            cmd[cmd.index("-semihosting-config") + 1] = "enable=on,target=native,arg=model.elf"
        cmd[0] = qemu
        t = time.time()
        r = run_tool(cmd, work, f"qemu-system-arm -M {p.machine}", timeout=QEMU_TIMEOUT_S)
        wall = time.time() - t
        res = _parse_run(r.stdout + r.stderr, r.returncode, p)
        res["wall_s"] = round(wall, 2)
        if keep_output:
            with open(os.path.join(work, "output.bin"), "rb") as f:
                res["output"] = f.read()
        return res
    finally:
        shutil.rmtree(work, ignore_errors=True)


def load_meta(out_dir: str) -> dict:
    path = os.path.join(out_dir, "micro.json")
    if not os.path.exists(path) or not os.path.exists(os.path.join(out_dir, "model.elf")):
        raise SqccError(f"{out_dir}: not a micro build (micro.json / model.elf missing)")
    with open(path) as f:
        return json.load(f)


def _input_blob(meta: dict, inputs: dict) -> bytes:
    """All inputs, checked against the build's specs, as raw bytes concatenated in main's order."""
    blob = bytearray()
    for s in meta["inputs"]:
        if s["name"] not in inputs:
            raise SqccError(f"micro: missing input '{s['name']}' (expected {s['shape']} {s['dtype']})")
        a = np.asarray(inputs[s["name"]])
        if tuple(a.shape) != tuple(s["shape"]):
            raise SqccError(f"micro: input '{s['name']}' has shape {list(a.shape)}, expected {s['shape']}")
        blob += np.ascontiguousarray(a.astype(s["dtype"], copy=False)).tobytes()
    extra = set(inputs) - {s["name"] for s in meta["inputs"]}
    if extra:
        raise SqccError(f"micro: unknown input(s) {', '.join(sorted(extra))}")
    return bytes(blob)


def run_micro(out_dir: str, inputs: dict) -> list:
    """Run the ELF in ``out_dir`` under qemu on ``inputs`` ({name: ndarray}); returns the outputs."""
    meta = load_meta(out_dir)
    p = get_preset(meta["preset"])
    if isinstance(inputs, (list, tuple)):
        inputs = {s["name"]: a for s, a in zip(meta["inputs"], inputs)}
    blob = _input_blob(meta, inputs)
    fd, path = tempfile.mkstemp(prefix="sqcc-micro-in-", suffix=".bin")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(blob)
        res = qemu_run(out_dir, p, path)
    finally:
        os.unlink(path)
    outs, off, data = [], 0, res["output"]
    for s in meta["outputs"]:
        n = int(np.prod(s["shape"])) * np.dtype(s["dtype"]).itemsize
        outs.append(np.frombuffer(data[off:off + n], dtype=s["dtype"]).reshape(s["shape"]).copy())
        off += n
    return outs


def bench_micro(out_dir: str) -> dict:
    """Instruction count (deterministic: fixed input, qemu -icount shift=0), flash and RAM."""
    meta = load_meta(out_dir)
    p = get_preset(meta["preset"])
    res = qemu_run(out_dir, p, os.path.join(out_dir, "bench_input.bin"), keep_output=False)
    keys = ["preset", "cpu", "board", "qemu_machine", "flash_bytes", "flash_capacity", "weights_bytes",
            "flash_text_bytes", "ram_bytes", "ram_capacity", "arena_bytes", "stack_reserved",
            "data_bss_bytes", "cost_metric"]
    out = {k: meta[k] for k in keys if k in meta}
    out.update(bench_fields(res))
    ram = ram_fields(meta, res["stack_used"])
    out["ram_used_bytes"] = ram["ram_used_bytes"]
    out["ram_breakdown"] = ram["ram_breakdown"]["text"]
    pk = meta.get("arena_peak") or {}
    if pk:
        out["arena_dtypes"] = ", ".join(pk.get("dtypes", []))
        out["workspace_bytes_max"] = pk.get("workspace_bytes_max", 0)
    out["qemu_wall_s"] = res["wall_s"]
    return out


def is_micro_build(path: str) -> bool:
    """True if ``path`` is a directory written by :func:`sqcc.targets.micro.compile_micro`."""
    return os.path.isdir(path) and os.path.exists(os.path.join(path, "micro.json")) and \
        os.path.exists(os.path.join(path, "model.elf"))
