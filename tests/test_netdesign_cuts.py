"""The strengthened coverage rows and the forest dominance keep the optimum (model.py, ours).

Oracles: every valid network on a 3 x 3 grid (all 4096 edge subsets, checked by the independent
validator) satisfies the coverage-cut rows; every valid forest with one sink per tree satisfies
the forest version; the shortest valid network is as short as the shortest such forest; and the
IP with the cuts on equals the IP with them off and brute force (tests/test_netdesign_bruteforce.py
runs its cases with the defaults, which switch both on).
"""

import copy

import numpy as np
import pytest

from common.sweep import apply_overrides
from configs.netdesign import base
from netdesign import checker, experiment, model, solvers
from netdesign import spec as spec_lib


def _config(sinks, **over):
  c = base.get_config()
  c.template.nx = c.template.ny = 3
  c.sinks.points = sinks
  c.solver.name, c.solver.time_limit, c.solver.threads = "cpsat", 60.0, 2
  return apply_overrides(c, over)


SPECS = {
    "one_sink_r1": _config([[0, 0]]),
    "two_sinks_r1": _config([[0, 0], [2, 2]]),
    "two_sinks_r2": _config([[0, 0], [2, 1]], **{"spec.coverage.range": 2.0}),
    "euclidean_r1.5": _config([[0, 0]], **{"spec.coverage.range": 1.5,
                                           "spec.coverage.metric": "euclidean"}),
    "all_vertices": _config([[0, 0], [1, 2]], **{"spec.coverage.range": 0.0}),
}


def _valid_networks(inst):
  """[(edge mask [E] bool, used [V] bool)] of every edge subset the validator accepts."""
  empty = solvers.Result("feasible", None, None, None, 0.0, "enumeration")
  base_net = experiment.network_json(inst, None, empty)
  n_e, out = len(inst.template.edges), []
  assert n_e <= 12, "2^E subsets: keep the enumeration to 3 x 3 grids"
  for mask in range(1 << n_e):
    chosen = [x for x in range(n_e) if mask >> x & 1]
    if checker.check({**base_net, "selected": chosen}).ok:
      on = np.zeros(n_e, bool)
      on[chosen] = True
      used = np.zeros(inst.template.num_vertices, bool)
      used[inst.template.edges[on].ravel()] = True
      out.append((on, used))
  return out


def _one_sink_forest(inst, on, used):
  """A forest whose every tree holds exactly one sink: #edges = #used non-sink vertices."""
  non_sink = used.copy()
  non_sink[inst.sinks] = False
  return on.sum() == non_sink.sum()


@pytest.fixture(scope="module", params=sorted(SPECS))
def enumerated(request):
  inst = spec_lib.from_config(SPECS[request.param])
  assert model.forest_is_optimal(inst)
  return inst, _valid_networks(inst)


def test_coverage_cuts_hold_on_every_valid_network(enumerated):
  inst, nets = enumerated
  assert nets
  for forest in (False, True):
    rows = model.coverage_cut_rows(inst, forest)
    for on, used in nets:
      if forest and not _one_sink_forest(inst, on, used):
        continue
      for w, f in rows:
        assert used[w].sum() - on[f].sum() >= 1, (forest, w, f, np.flatnonzero(on))


def test_forest_dominance_keeps_the_shortest_length(enumerated):
  inst, nets = enumerated
  length = [float(inst.template.lengths[on].sum()) for on, _ in nets]
  forests = [l for l, (on, used) in zip(length, nets) if _one_sink_forest(inst, on, used)]
  assert forests and min(forests) == pytest.approx(min(length))


def test_the_cuts_are_not_empty_words():
  """The forest rows really cut: some valid network violates them, and on 3 x 3 with range 2 the
  forest coverage rows have edges away from u (the stronger form)."""
  inst = spec_lib.from_config(SPECS["two_sinks_r1"])
  nets = _valid_networks(inst)
  assert not all(_one_sink_forest(inst, on, used) for on, used in nets)
  wide = spec_lib.from_config(SPECS["two_sinks_r2"])
  plain, strong = (model.coverage_cut_rows(wide, f) for f in (False, True))
  assert sum(len(f) for _, f in strong) > sum(len(f) for _, f in plain)


def test_forest_dominance_needs_sinks_three_edges_apart():
  """Counterexample behind the sink-distance condition: two adjacent sinks on a 3 x 3 grid without
  coverage. The shortest network is the edge between them; a forest with one sink per tree needs
  one edge per sink. forest_is_optimal says no there, and yes once the sinks are 3 edges apart."""
  inst = spec_lib.from_config(_config([[0, 0], [1, 0]], **{"spec.coverage.enabled": False}))
  assert not model.forest_is_optimal(inst)
  nets = _valid_networks(inst)
  length = [float(inst.template.lengths[on].sum()) for on, _ in nets]
  forests = [l for l, (on, used) in zip(length, nets) if _one_sink_forest(inst, on, used)]
  assert min(length) < min(forests), (min(length), min(forests))
  far = spec_lib.from_config(_config([[0, 0], [2, 1]]))
  assert model.forest_is_optimal(far)


@pytest.mark.parametrize("over,expected", [
    ({}, True),
    ({"model.travel_weight": 0.5}, False),
    ({"spec.features.dead_end.mode": "forbid"}, False),
    ({"spec.features.branch.mode": "soft", "spec.features.branch.weight": 0.1}, False),
    ({"spec.traffic.pairs": [[[2, 0], [0, 2]]]}, False),
    ({"spec.coverage.locations": "edges"}, False),
    ({"spec.coverage.enabled": False}, True),
])
def test_forest_is_optimal_only_for_plain_length(over, expected):
  assert model.forest_is_optimal(spec_lib.from_config(_config([[0, 0]], **over))) is expected


@pytest.mark.parametrize("connectivity", ["labels", "tree", "flow"])
@pytest.mark.parametrize("spec_name", ["two_sinks_r1", "two_sinks_r2"])
def test_ip_with_cuts_equals_ip_without(connectivity, spec_name):
  """4 x 4 versions of the specs: the optimum is the same with and without the new rows."""
  objs = {}
  for cuts in (False, True):
    c = apply_overrides(copy.deepcopy(SPECS[spec_name]), {  # apply_overrides works in place
        "template.nx": 4, "template.ny": 4, "model.connectivity": connectivity,
        "model.coverage_cuts": cuts, "model.forest_cuts": cuts})
    inst = spec_lib.from_config(c)
    built = model.build(inst)
    res = solvers.solve("cpsat", built.lm, experiment.options(c))
    assert res.status == "optimal", res.summary()
    assert checker.check(experiment.network_json(inst, built, res)).ok
    objs[cuts] = res.objective
  assert objs[True] == pytest.approx(objs[False])


def test_cuts_lift_the_lp_bound():
  """The LP relaxation (HiGHS, integrality dropped) of the 6 x 6 street block rises with the new
  rows: 8.5 -> 10.3 with the forest connectivity (optimum 11)."""
  highspy = pytest.importorskip("highspy")

  def lp(cuts):
    c = base.get_config()
    c.sinks.points = [[2.0, 0.0], [5.0, 2.0], [3.0, 5.0], [0.0, 3.0]]
    c.model.connectivity = "tree"
    c.model.coverage_cuts = c.model.forest_cuts = cuts
    lm = model.build(spec_lib.from_config(c)).lm
    relaxed = solvers._highs_lp(lm)  # noqa: SLF001  (the solver's own translation)
    relaxed.integrality_ = [highspy.HighsVarType.kContinuous] * lm.num_vars
    h = highspy.Highs()
    h.setOptionValue("output_flag", False)
    h.passModel(relaxed)
    h.run()
    return h.getInfo().objective_function_value / lm.obj_scale

  plain, strong = lp(False), lp(True)
  assert plain < 9.0 < 10.0 < strong <= 11.0 + 1e-9, (plain, strong)


def test_grid_benchmark_defaults_prove_a_small_block():
  """benchmarks/netdesign_grid.py with its defaults (tree + cuts): both solvers prove 5 x 5 and
  6 x 6 optimal and agree, and every network passes the validator (the script asserts it)."""
  import importlib.util
  import os
  path = os.path.join(os.path.dirname(os.path.dirname(__file__)), "benchmarks",
                      "netdesign_grid.py")
  spec = importlib.util.spec_from_file_location("netdesign_grid", path)
  bench = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(bench)
  rows = bench.main(["--sizes", "5,6", "--threads", "2", "--time-limit", "30"])
  assert {r["status"] for r in rows} == {"optimal"}, rows
  for n in (5, 6):
    objs = {r["solver"]: r["objective"] for r in rows if r["n"] == n}
    assert objs["cpsat"] == pytest.approx(objs["highs"]), objs
  assert [r["objective"] for r in rows if r["n"] == 6][0] == pytest.approx(11.0)
