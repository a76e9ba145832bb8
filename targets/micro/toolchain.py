"""The external tools of the micro target: arm-none-eabi-gcc (+ newlib), arm-none-eabi-size and
qemu-system-arm; where to find them, the flags they are run with, and their command lines.

Debian packages: gcc-arm-none-eabi (brings binutils-arm-none-eabi), libnewlib-arm-none-eabi,
qemu-system-arm.
"""
from __future__ import annotations

import os
import shutil
import subprocess

from sqcc.errors import SqccError

from .boards import PRESETS, Preset

APT_PACKAGES = {
    "arm-none-eabi-gcc": "gcc-arm-none-eabi",
    "arm-none-eabi-size": "binutils-arm-none-eabi",
    "newlib": "libnewlib-arm-none-eabi",
    "qemu-system-arm": "qemu-system-arm",
}

CALIB_ITERS = 1_000_000  # main.c's calibration loop (-DCALIB_ITERS): 2 instructions per iteration (subs + bne)
OPT_FLAGS = ["-O2", "-funroll-loops"]  # unrolling the small conv/pool loops: ~3.6x fewer instructions
SOURCES = ["kernels.c", "model.c", "main.c", "weights.S"]


def which(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        pkg = APT_PACKAGES.get(tool, tool)
        raise SqccError(f"{tool} not found on PATH: install the Debian package {pkg} "
                        f"(apt-get install -y {pkg})")
    return path


def check_toolchain(preset: Preset | None = None, need_qemu: bool = False) -> dict:
    """Find arm-none-eabi-gcc (+ newlib for the preset's multilib) and, if asked, qemu-system-arm."""
    tools = {"gcc": which("arm-none-eabi-gcc")}
    size = shutil.which("arm-none-eabi-size")
    if size is None:
        raise SqccError("arm-none-eabi-size not found on PATH: install the Debian package "
                        "binutils-arm-none-eabi (comes with gcc-arm-none-eabi)")
    tools["size"] = size
    cflags = list((preset or PRESETS["cortex-m4"]).cflags)
    try:
        libc = subprocess.run([tools["gcc"], *cflags, "-print-file-name=libc.a"], capture_output=True,
                              text=True, timeout=60).stdout.strip()
    except (OSError, subprocess.SubprocessError) as e:
        raise SqccError(f"arm-none-eabi-gcc does not run ({e}): reinstall gcc-arm-none-eabi") from None
    # gcc prints the bare name back when the multilib's libc.a is not installed
    if not libc or not os.path.isabs(libc) or not os.path.exists(libc):
        raise SqccError("newlib for arm-none-eabi not found (arm-none-eabi-gcc cannot find libc.a): "
                        "install the Debian package libnewlib-arm-none-eabi")
    if need_qemu:
        tools["qemu"] = which("qemu-system-arm")
    return tools


def flags(p: Preset):
    """(cflags, ldflags, libs) for ``p``: what the build runs and what the Makefile writes."""
    # -fno-strict-aliasing: a kernel may write its output over an input it has finished reading
    # (arena overlap); the compiler must not move a load of one type past a store of another.
    cflags = list(p.cflags) + OPT_FLAGS + [
        "-fno-strict-aliasing", "-std=gnu11", "-ffunction-sections", "-fdata-sections",
        "-fno-common", "-Wall", "-Wno-unused-variable", "-Wno-unused-but-set-variable",
        "-Iinclude", "-I.", f"-DCALIB_ITERS={CALIB_ITERS}u"]
    ldflags = list(p.cflags) + ["-T", "link.ld", "-nostartfiles", "--specs=nano.specs",
                                "--specs=nosys.specs", "-Wl,--gc-sections", "-Wl,-Map=model.map"]
    return cflags, ldflags, ["-lm", "-lc", "-lgcc"]


def qemu_cmd(p: Preset, elf="@ELF@", inp="@INPUT@", out="@OUTPUT@") -> list:
    """qemu-system-arm's command line; the @...@ defaults are the Makefile's placeholders."""
    return ["qemu-system-arm", "-M", p.machine, "-nographic", "-monitor", "none", "-serial", "none",
            "-icount", "shift=0", "-semihosting-config",
            f"enable=on,target=native,arg=model.elf,arg={inp},arg={out}", "-kernel", elf]


def run_tool(cmd, cwd, what, timeout=600):
    try:
        r = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise SqccError(f"micro: {what} timed out after {timeout} s") from None
    return r


def first_error(text: str) -> str:
    """The first line of a tool's output that names an error (else its last line), for a one-line message."""
    for line in text.splitlines():
        if "error" in line.lower():
            return line.strip()[:300]
    return (text.strip().splitlines() or ["(no output)"])[-1][:300]


def section_sizes(size_tool: str, elf: str) -> dict:
    """{section: bytes} from ``arm-none-eabi-size -A``."""
    out = subprocess.run([size_tool, "-A", elf], capture_output=True, text=True, check=True).stdout
    secs = {}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[0].startswith(".") and parts[1].isdigit():
            secs[parts[0]] = int(parts[1])
    return secs
