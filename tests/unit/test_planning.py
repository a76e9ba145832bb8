"""Unit tests of sqcc.planning on small in-memory data (no model files, no builds): the one budget
parser, technique checks, plan steps and their spec strings, the greedy allocation over made-up
priced layers, and the measures."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from sqcc import passes, planning
from sqcc.errors import SqccError
from sqcc.planning import allocation
from sqcc.planning.plan import Candidate, Plan, PlanEntry, format_spec, technique_step
from sqcc.planning.refinement import _Room
from sqcc.planning.spec import budget_target, check_fraction, parse_budget


# ------------------------------------------------------------------------------------------ spec

@pytest.mark.parametrize("given, want", [("macs=0.7", {"macs": 0.7}), (" params = 0.5 ", {"params": 0.5}),
                                         ("macs=1", {"macs": 1.0}), ({"macs": "0.25"}, {"macs": 0.25})])
def test_parse_budget_accepts(given, want):
    assert parse_budget(given) == want
    assert parse_budget(parse_budget(given)) == want  # the API parses what the CLI parsed: same result


@pytest.mark.parametrize("text, msg", [("macs=0", "out of range"), ("macs=-0.5", "out of range"),
                                       ("macs=1.5", "out of range"), ("flops=0.5", "exactly one of"),
                                       ("macs", "expected macs=F"), ("macs=abc", "expected a fraction"),
                                       ("macs=", "expected a fraction"), ("macs=0.5,params=0.5", "exactly one of"),
                                       ({}, "exactly one of")])
def test_parse_budget_refuses(text, msg):
    with pytest.raises(SqccError) as e:
        parse_budget(text)
    assert msg in str(e.value) and str(e.value).startswith("--budget ")


def test_budget_target_and_fraction():
    assert budget_target(macs=0.5) == ("macs", 0.5) and budget_target(params="0.3") == ("params", 0.3)
    for kw in ({}, {"macs": 0.5, "params": 0.5}):
        with pytest.raises(SqccError, match="exactly one of"):
            budget_target(**kw)
    with pytest.raises(SqccError, match=r"^budget macs=2 out of range"):
        check_fraction("macs", 2)


def test_check_techniques():
    assert planning.check_techniques(["lowrank:spatial", "dwsep"]) == ("lowrank:spatial", "dwsep")
    with pytest.raises(SqccError, match=r"unknown technique\(s\) pool \(available: lowrank, dwsep"):
        planning.check_techniques(["lowrank", "pool"])
    with pytest.raises(SqccError, match=r"\(none given\)"):
        planning.check_techniques([])


# ------------------------------------------------------------------------------------------ plan

def _entry(layer, tech, rank, before=100, after=60):
    return PlanEntry(layer, tech, rank, before, after, 10, 6, 0.1)


def test_plan_steps_group_layers_and_specs_are_the_pass_form():
    plan = Plan("macs", 0.7, "data", [_entry("a", "lowrank:channel", 4), _entry("b", "dwsep", 1.5),
                                      _entry("c", "lowrank:channel", 4), _entry("d", "flatten", 2),
                                      _entry("e", "poolhoist", 0)], 500, 300, 50, 30)
    assert plan.steps[0] == ("lowrank", {"scheme": "channel", "rank": 4, "fit": "data", "layers": ["a", "c"]})
    assert plan.pass_specs == ["lowrank:scheme=channel,rank=4,fit=data,layers=a,c",
                               "dwsep:multiplier=1.5,fit=data,layers=b",
                               "flatten:rank=2,iters=30,fit=data,layers=d",
                               "poolhoist:window=0,layers=e"]
    # every spec string parses back to its step (what --pass would apply is what the plan applies)
    for step, spec in zip(plan.steps, plan.pass_specs):
        assert passes.parse_spec(spec) == step
    assert plan.to_json()["passes"] == plan.pass_specs and abs(plan.fraction - 0.6) < 1e-12
    assert "map" in plan.table()  # the whole-map window


def test_steps_of_one_entry_and_candidate():
    assert _entry("x", "lowrank:spatial", 3).step("weight") == \
        ("lowrank", {"scheme": "spatial", "rank": 3, "fit": "weight", "layers": ["x"]})
    assert Candidate("dwsep", 2, 1, 1, 0.1).step("x", "data") == technique_step("dwsep", 2, "data", ["x"])
    assert technique_step("unknown", 1, "data", ["x"]) is None
    assert format_spec(("int8", {})) == "int8"


# ------------------------------------------------------------------------------------ allocation

def _priced():
    """Two layers of 100 MACs each (and 50 MACs no candidate rewrites): layer a loses little error
    per MAC saved, layer b a lot."""
    a = SimpleNamespace(name="a", macs=100, params=10)
    b = SimpleNamespace(name="b", macs=100, params=10)
    return [(a, [Candidate("lowrank:channel", 2, 40, 4, 0.1), Candidate("lowrank:channel", 4, 70, 7, 0.05)]),
            (b, [Candidate("dwsep", 1, 40, 4, 0.5), Candidate("dwsep", 2, 70, 7, 0.3)])]


@pytest.fixture
def totals(monkeypatch):
    monkeypatch.setattr(allocation, "model_totals", lambda mod: (250, 30))


def test_allocation_takes_least_error_per_mac_and_meets_budget(totals):
    plan = planning.allocate(None, macs=0.8, priced=_priced(), techniques=("lowrank", "dwsep"))
    assert plan.macs_after <= 0.8 * 250 and plan.fit == "weight"
    assert [(e.layer, e.rank) for e in plan.entries] == [("a", 2)]  # 60 MACs saved, error 0.1
    # a sensitive layer a shifts the choice to b
    plan = planning.allocate(None, macs=0.8, priced=_priced(), techniques=("lowrank", "dwsep"),
                             sensitivity={"a": 1000.0, "b": 1.0})
    assert [(e.layer, e.rank) for e in plan.entries] == [("b", 1)] and "sensitivity" in plan.error_measure


def test_allocation_finishing_step_and_techniques(totals):
    # 0.9 × 250 = 225: of the steps that reach it, a at rank 4 (saves 30) adds the least error
    plan = planning.allocate(None, macs=0.9, priced=_priced(), techniques=("lowrank", "dwsep"))
    assert [(e.layer, e.rank) for e in plan.entries] == [("a", 4)] and plan.macs_after == 220
    plan = planning.allocate(None, macs=0.8, priced=_priced(), techniques=("dwsep",))
    assert {e.technique for e in plan.entries} == {"dwsep"}


def test_allocation_fills_the_slack_a_big_last_step_leaves(monkeypatch):
    """a is cut in two small steps (95, then 90 MACs), then only b's big step (100 → 20) reaches the
    budget of 116 and leaves 110: the slack goes back to a (rank 2, 95 MACs) while the budget holds."""
    monkeypatch.setattr(allocation, "model_totals", lambda mod: (200, 20))
    a = SimpleNamespace(name="a", macs=100, params=10)
    b = SimpleNamespace(name="b", macs=100, params=10)
    priced = [(a, [Candidate("lowrank:channel", 1, 90, 9, 0.01), Candidate("lowrank:channel", 2, 95, 9, 0.005)]),
              (b, [Candidate("dwsep", 1, 20, 2, 0.3)])]
    plan = planning.allocate(None, macs=0.58, priced=priced, techniques=("lowrank", "dwsep"))
    assert [(e.layer, e.rank) for e in plan.entries] == [("a", 2), ("b", 1)] and plan.macs_after == 115


def test_allocation_unreachable_and_poolhoist_options(totals):
    with pytest.raises(SqccError, match=r"unreachable: .* smallest reachable is macs=0.520"):
        planning.allocate(None, macs=0.3, priced=_priced(), techniques=("lowrank", "dwsep"))
    priced = _priced()
    priced[1][1].append(Candidate("poolhoist", 0, 10, 10, 0.01))  # coarse and nearly free
    plan = planning.allocate(None, macs=0.7, priced=priced, techniques=planning.TECHNIQUES)
    assert [(e.layer, e.technique) for e in plan.entries] == [("b", "poolhoist")]
    assert allocation._hoist_options(priced) == [{}, {1: priced[1][1][-1]}]


def test_refinement_room_keeps_the_budget():
    priced = _priced()
    plan = Plan("macs", 0.8, "data", [_entry("a", "lowrank:channel", 2, 100, 40)], 250, 190, 30, 24)
    room = _Room(plan, {lf.name: cs for lf, cs in priced})
    # a may go up to 40 + (200 - 190) = 50 MACs: no dwsep candidate of a, no other technique
    assert room.alternative(plan.entries, 0, "dwsep") is None and room.queue(plan.entries) == []
    assert room.alternative(plan.entries, 0, "lowrank:channel").rank == 2  # rank 4 (70 MACs) would not fit


# -------------------------------------------------------------------------------------- measures

def test_mean_kl_and_split():
    z = np.array([[1.0, 2.0, 3.0], [0.0, 0.0, 5.0]])
    assert planning.mean_kl(z, z) == pytest.approx(0.0, abs=1e-12)
    assert planning.mean_kl(z, z + 7.0) == pytest.approx(0.0, abs=1e-12)  # softmax ignores a shift
    assert planning.mean_kl(z, z[:, ::-1]) > 0
    feeds = [{"x": np.full((1, 2), i, np.float32)} for i in range(6)]
    acts = {"c": np.arange(6)}
    fit, score = planning.split_activations(acts, feeds)
    assert fit["c"].tolist() == [0, 2, 4] and [int(f["x"][0, 0]) for f in score] == [1, 3, 5]
    assert planning.split_activations({"c": np.arange(5)}, feeds) is None  # not one row per feed
    assert planning.heldout_mask(feeds[:2], feeds).tolist() == [False, False] + [True] * 4
