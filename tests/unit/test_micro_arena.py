"""The micro target's pure parts: the arena planner and its checker on small, hand-made lifetimes,
the presets, and the C/linker/Makefile templates (package data). No model, no TVM build, no
toolchain; the end-to-end checks are tests/integration/test_micro.py."""
from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import numpy as np
import pytest

from sqcc.errors import SqccError
from sqcc.targets import micro
from sqcc.targets.micro.arena import ALIGN, align_up, arena_peak, check_plan, plan_arena
from sqcc.targets.micro.codegen import gen_linker, gen_makefile, main_c, render


def _buf(name, size, start, end, kind="act"):
    return {"name": name, "kind": kind, "size": size, "start": start, "end": end}


def _offsets(plan):
    return {b["name"]: b["offset"] for b in plan["buffers"]}


def test_plan_arena_random_and_check_detects_overlap():
    rng = np.random.default_rng(0)
    for _ in range(50):
        n = int(rng.integers(1, 30))
        bufs = []
        for i in range(n):
            s = int(rng.integers(-1, 20))
            bufs.append({"name": f"b{i}", "size": int(rng.integers(1, 5000)), "start": s,
                         "end": s + int(rng.integers(0, 6))})
        plan = plan_arena(bufs)
        check_plan(plan)
        assert plan["lower_bound"] <= plan["peak"] <= plan["no_reuse"]
    bad = {"peak": 64, "buffers": [{"name": "a", "size": 32, "start": 0, "end": 2, "offset": 0},
                                   {"name": "b", "size": 32, "start": 2, "end": 3, "offset": 16}]}
    with pytest.raises(SqccError, match="overlap"):
        check_plan(bad)


def test_plan_arena_overlaps_are_checked():
    bufs = [{"name": "a", "size": 512, "start": 0, "end": 1}, {"name": "b", "size": 1024, "start": 1, "end": 2}]
    plain = plan_arena(bufs)
    assert plain["peak"] == 1536 and not plain["overlaps"]
    over = plan_arena(bufs, overlaps=[{"out": "b", "in": "a", "d_max": -(512 + 7)}])
    check_plan(over)
    assert over["peak"] == 1024 + 16 and over["overlaps"][0]["d"] <= -(512 + 7)
    bad = dict(over, overlaps=[dict(over["overlaps"][0], d_max=-600)])  # b placed too high for that
    with pytest.raises(SqccError, match="overlap"):
        check_plan(bad)


def test_disjoint_lifetimes_share_bytes():
    """Buffers never live at the same step all start at 0: the arena is the largest of them."""
    plan = plan_arena([_buf("a", 100, 0, 1), _buf("b", 300, 2, 3), _buf("c", 50, 4, 4)])
    check_plan(plan)
    assert set(_offsets(plan).values()) == {0}
    assert plan["peak"] == plan["lower_bound"] == align_up(300)
    assert plan["no_reuse"] == align_up(100) + align_up(300) + align_up(50)


def test_chain_reaches_the_lower_bound():
    """x -> a -> b -> y: each buffer lives with its neighbours only, so x and b (and a and y) may
    share bytes; greedy by size reaches the most bytes live at one step."""
    bufs = [_buf("x", 1000, -1, 0, "input"), _buf("a", 4000, 0, 1), _buf("b", 1000, 1, 2),
            _buf("y", 400, 2, 3, "output")]
    plan = plan_arena(bufs)
    check_plan(plan)
    assert plan["lower_bound"] == align_up(4000) + align_up(1000)
    assert plan["peak"] == plan["lower_bound"] < plan["no_reuse"]
    off = _offsets(plan)
    assert off["a"] == 0  # the largest goes first, at the bottom
    assert off["x"] == off["b"] == align_up(4000)


def test_offsets_are_aligned_and_sizes_rounded():
    plan = plan_arena([_buf("a", 1, 0, 0), _buf("b", 17, 0, 0), _buf("c", 33, 0, 0)])
    check_plan(plan)
    assert all(b["offset"] % ALIGN == 0 for b in plan["buffers"])
    assert plan["peak"] == 16 + 32 + 48 == plan["lower_bound"] == plan["no_reuse"]


def test_empty_plan():
    plan = plan_arena([])
    check_plan(plan)
    assert plan["peak"] == plan["lower_bound"] == plan["no_reuse"] == 0 and plan["buffers"] == []


def test_tightest_allowance_wins_and_unused_ones_are_not_reported():
    bufs = [_buf("a", 512, 0, 1), _buf("b", 1024, 1, 2), _buf("c", 64, 5, 6)]
    plan = plan_arena(bufs, overlaps=[{"out": "b", "in": "a", "d_max": -100},
                                      {"out": "b", "in": "a", "d_max": -(512 + 7)},
                                      {"out": "c", "in": "a", "d_max": 0}])  # never live together
    check_plan(plan)
    off = _offsets(plan)
    assert off["b"] - off["a"] <= -(512 + 7)  # the stricter of the two allowances for (b, a)
    assert {(o["out"], o["in"]) for o in plan["overlaps"]} == {("b", "a")}  # (c, a): not live together
    assert plan["peak"] == 1024 + 16


def test_check_plan_rejects_outside_and_misaligned():
    with pytest.raises(SqccError, match="outside the arena"):
        check_plan({"peak": 32, "buffers": [{"name": "a", "size": 48, "start": 0, "end": 0, "offset": 0}]})
    with pytest.raises(SqccError, match="aligned"):
        check_plan({"peak": 64, "buffers": [{"name": "a", "size": 16, "start": 0, "end": 0, "offset": 8}]})
    with pytest.raises(SqccError, match="outside the arena"):
        check_plan({"peak": 64, "buffers": [{"name": "a", "size": 16, "start": 0, "end": 0, "offset": -16}]})


def test_arena_peak_names_the_fullest_step():
    """arena_peak only needs buffer shapes/dtypes and step kernels: a stand-in graph does."""
    bufs = [_buf("x", 64, -1, 0, "input"), _buf("a", 256, 0, 1), _buf("b", 128, 1, 2, "output"),
            _buf("ws1_k1", 32, 1, 1, "workspace")]
    plan = plan_arena(bufs)
    B = SimpleNamespace
    g = SimpleNamespace(
        bufs={"x": B(shape=(1, 16), dtype="float32"), "a": B(shape=(1, 256), dtype="int8"),
              "b": B(shape=(1, 128), dtype="uint8")},
        steps=[B(kernel="k0"), B(kernel="k1"), B(kernel="k2")])
    pk = arena_peak(plan, g)
    assert pk["step"] == 1 and pk["kernel"] == "k1"
    assert pk["occupied_bytes"] == 256 + 128 + 32
    assert {b["name"] for b in pk["live"]} == {"a", "b", "ws1_k1"}
    assert pk["live_bytes_by_kind"] == {"act": 256, "output": 128, "workspace": 32}
    assert pk["workspace_bytes_max"] == 32 and pk["in_place"] == []
    assert pk["dtypes"] == ["float32", "int8", "uint8"]
    assert pk["max_bytes_by_dtype"] == {"float32": 64, "int8": 256, "uint8": 128}
    assert pk["buffers_by_kind"] == {"input": 1, "act": 1, "output": 1, "workspace": 1}


def test_presets_are_real_boards():
    assert micro.PRESETS["cortex-m4"].machine == "mps2-an386"
    assert micro.PRESETS["cortex-m7"].machine == "mps2-an500"
    assert micro.PRESETS["cortex-m55"].machine == "mps3-an547"
    for name, p in micro.PRESETS.items():
        assert p.name == name
        assert "-mfloat-abi=hard" in p.cflags and any(f.startswith("-mcpu=") for f in p.cflags)
    with pytest.raises(dataclasses.FrozenInstanceError):
        micro.PRESETS["cortex-m4"].machine = "x"  # type: ignore[misc]
    assert micro.get_preset("micro:cortex-m7") is micro.PRESETS["cortex-m7"]
    with pytest.raises(SqccError, match=r"unknown micro preset 'cortex-m99'.*cortex-m4"):
        micro.get_preset("cortex-m99")


def test_templates_are_package_data_and_fully_filled():
    assert main_c().startswith("/* sqcc micro harness") and "sqcc_done" in main_c()
    m55 = gen_linker(micro.PRESETS["cortex-m55"], 2048)
    assert "VECT  (rx)  : ORIGIN = 0x10000000" in m55 and "} > VECT" in m55 and ". = . + 2048;" in m55
    m4 = gen_linker(micro.PRESETS["cortex-m4"], 1024)
    assert "VECT" not in m4 and "FLASH (rx)  : ORIGIN = 0x00000000, LENGTH = 4194304" in m4
    mk = gen_makefile(micro.PRESETS["cortex-m4"])
    assert "\t$(QEMU) -M mps2-an386 " in mk and "arg=$(INPUT),arg=$(OUTPUT) -kernel model.elf" in mk
    assert "-DCALIB_ITERS=1000000u" in mk and "OBJS = kernels.o model.o main.o weights.o" in mk
    for text in (m55, m4, mk):
        assert "@" not in text.replace("$@", "")  # no placeholder left behind
    with pytest.raises(KeyError, match="ALIGN_MASK"):
        render("runtime_stubs.c")
