"""Templates, the independent validator, solver agreement, the flow ablation and alternatives."""

import copy

import numpy as np
import pytest

from configs.netdesign import base
from netdesign import checker, experiment, model, solvers, templates
from netdesign import spec as spec_lib


def test_grid_template_counts():
  tpl = templates.grid(5, 4, 2.0)
  assert tpl.num_vertices == 20 and len(tpl.edges) == 4 * 4 + 5 * 3
  np.testing.assert_allclose(tpl.lengths, 2.0)


def test_hole_removes_interior_vertex_and_crossing_edges():
  hole = np.array([[1.5, 1.5], [2.5, 1.5], [2.5, 2.5], [1.5, 2.5]])
  tpl = templates.quad(5, 5, 1.0, holes=[hole])
  assert tpl.num_vertices == 24 and len(tpl.edges) == 40 - 4
  mids = tpl.vertices[tpl.edges].mean(axis=1)
  assert not ((abs(mids[:, 0] - 2) < 0.4) & (abs(mids[:, 1] - 2) < 0.4)).any()


def test_triangle_mesh_is_equilateral():
  tpl = templates.triangle(6, 5, 1.0)
  np.testing.assert_allclose(tpl.lengths, 1.0, atol=1e-9)
  deg = np.bincount(tpl.edges.ravel())
  assert deg.max() == 6 and deg.min() >= 2
  assert templates.triangle(6, 5, 1.0, domain=np.array([[0, 0], [5, 0], [0, 4.0]])).num_vertices


def _net(config):
  inst = spec_lib.from_config(config)
  built = model.build(inst)
  return inst, built


def _small():
  c = base.get_config()
  c.template.nx, c.template.ny = 4, 3  # HiGHS needs ~10 s here on a busy 2-core machine
  c.sinks.points = [[0.0, 0.0], [3.0, 2.0]]
  c.model.travel_weight = 0.1
  c.spec.features.dead_end.mode, c.spec.features.dead_end.weight = "soft", 0.3
  c.solver.time_limit = 60.0
  c.solver.threads = 2  # the suite runs on 2 cores
  return c


def test_solvers_agree_and_pass_validator():
  inst, built = _net(_small())
  objs = {}
  for name in ("cpsat", "highs", "portfolio"):
    res = solvers.solve(name, built.lm, solvers.Options(time_limit=60, threads=2))
    assert res.status == "optimal", res.summary()
    assert res.bound == pytest.approx(res.objective) and res.gap == pytest.approx(0.0)
    assert checker.check(experiment.network_json(inst, built, res)).ok
    objs[name] = res.objective
  assert objs["cpsat"] == pytest.approx(objs["highs"]) == pytest.approx(objs["portfolio"])


def test_flow_ablation_matches_labels_on_length():
  c = _small()
  c.model.travel_weight = 0.0
  labels = solvers.solve("cpsat", _net(c)[1].lm, solvers.Options(time_limit=60, threads=2))
  c.model.connectivity = "flow"
  inst, built = _net(c)
  flow = solvers.solve("cpsat", built.lm, solvers.Options(time_limit=60, threads=2))
  assert labels.status == flow.status == "optimal"
  assert flow.objective == pytest.approx(labels.objective)
  assert checker.check(experiment.network_json(inst, built, flow)).ok


def test_cpsat_params_reach_the_solver():
  """solver.cpsat_params are merged into CP-SAT's parameters: a zero deterministic time budget
  stops the solve before any solution, which the defaults prove optimal."""
  _, built = _net(_small())
  plain = solvers.solve("cpsat", built.lm, solvers.Options(time_limit=60, threads=2))
  stopped = solvers.solve("cpsat", built.lm, solvers.Options(
      time_limit=60, threads=2, cpsat_params="max_deterministic_time:0"))
  assert plain.status == "optimal" and stopped.status == "timeout", (plain, stopped)


def test_highs_accepts_cpsat_warm_start():
  inst, built = _net(_small())
  first = solvers.solve("cpsat", built.lm, solvers.Options(time_limit=60, threads=2))
  assert built.lm.is_feasible(first.values)
  res = solvers.solve("highs", built.lm, solvers.Options(time_limit=60, threads=2),
                      hint=first.values)
  assert res.status == "optimal" and res.objective == pytest.approx(first.objective)


def test_nogood_alternatives_are_distinct_valid_and_not_better():
  inst, built = _net(_small())
  opt = solvers.Options(time_limit=60, threads=2)
  first = solvers.solve("cpsat", built.lm, opt)
  seen = [model.selected_edges(built, first.values)]
  for _ in range(2):
    model.add_nogood(built, seen[-1], 3)
    alt = solvers.solve("cpsat", built.lm, opt)
    assert alt.status == "optimal" and alt.objective >= first.objective - 1e-9
    net = experiment.network_json(inst, built, alt)
    assert checker.check(net).ok
    for prev in seen:
      assert len(set(prev) ^ set(net["selected"])) >= 3
    seen.append(net["selected"])


@pytest.fixture(scope="module")
def solved():
  inst, built = _net(_small())
  res = solvers.solve("cpsat", built.lm, solvers.Options(time_limit=60, threads=2))
  return experiment.network_json(inst, built, res)


def _edge(net, i, j):
  return net["edges"].index(sorted([i, j]))


def test_validator_rejects_island(solved):
  net = copy.deepcopy(solved)
  far = [x for x, (i, j) in enumerate(net["edges"]) if i not in net["sinks"]
         and j not in net["sinks"]]
  net["selected"] = far[:1]
  rep = checker.check(net)
  assert not rep.ok and any("islands" in v for v in rep.violations)


def test_validator_rejects_coverage_gap(solved):
  net = copy.deepcopy(solved)
  net["selected"] = net["selected"][:1]
  assert any("farther than" in v for v in checker.check(net).violations)


def test_validator_rejects_forbidden_dead_end_and_wrong_objective(solved):
  net = copy.deepcopy(solved)
  net["spec"]["features"]["dead_end"]["mode"] = "forbid"
  rep = checker.check(net)
  assert rep.metrics["dead_end"] > 0 and any("dead_end" in v for v in rep.violations)
  net = copy.deepcopy(solved)
  net["objective"] += 0.5
  assert any("objective" in v for v in checker.check(net).violations)


def test_validator_counts_features_on_a_hand_drawn_network():
  # 3 x 3 grid, vertex k = (k % 3, k // 3). Staircase 0-1-4-5-8 and a spur 4-3.
  V = [[k % 3, k // 3] for k in range(9)]
  E = sorted([sorted(e) for e in [(0, 1), (1, 2), (3, 4), (4, 5), (6, 7), (7, 8), (0, 3), (3, 6),
                                  (1, 4), (4, 7), (2, 5), (5, 8)]])
  sel = [E.index(sorted(e)) for e in [(0, 1), (1, 4), (4, 5), (5, 8)]]
  c = checker.count_features(V, E, sel, {0})
  assert c == {"dead_end": 1, "branch": 0, "t_junction": 0, "zigzag": 2}
  c = checker.count_features(V, E, sel + [E.index([3, 4])], {0})
  assert c == {"dead_end": 2, "branch": 1, "t_junction": 1, "zigzag": 0}


def _row_network(r, metric, locations):
  """3 x 2 grid; the network is the bottom row (0,0)-(1,0)-(2,0), exit at (0, 0)."""
  tpl = templates.grid(3, 2, 1.0)
  verts = tpl.vertices.tolist()
  edges = tpl.edges.tolist()
  bottom = [x for x, (i, j) in enumerate(edges) if verts[i][1] == verts[j][1] == 0]
  spec = {"sinks_required": True, "required": [],
          "traffic": {"pairs": [], "weight": 0.0, "max_detour": 0.0},
          "coverage": {"enabled": True, "range": r, "metric": metric, "locations": locations},
          "features": {}, "weights": {"length": 1.0, "travel": 0.0}, "length_scale": 10}
  sink = verts.index([0.0, 0.0])
  return {"vertices": verts, "edges": edges, "selected": bottom, "sinks": [sink], "spec": spec,
          "objective": 2.0, "bound": 2.0, "status": "optimal"}


@pytest.mark.parametrize("metric", ["geodesic", "euclidean"])
def test_validator_checks_points_on_edges(metric):
  """Hand computation: the top edges' midpoints are 1.5 (geodesic) or sqrt(1.25) (straight) from
  the network, the top vertices only 1; the vertical edges are within 1 everywhere."""
  assert checker.check(_row_network(1.0, metric, "vertices")).ok
  report = checker.check(_row_network(1.0, metric, "edges"))
  assert not report.ok and report.violations[0].startswith("2 template edges")
  assert checker.check(_row_network(1.5 if metric == "geodesic" else 1.12, metric, "edges")).ok
  assert not checker.check(_row_network(1.11, metric, "edges")).ok


def test_edge_coverage_rows_match_sampling():
  """model.edge_cover_sets against dense sampling of points on a triangle mesh (both metrics):
  the inclusion-minimal covering sets agree, so the rows say the same as the samples."""
  for metric in ("geodesic", "euclidean"):
    c = base.get_config()
    c.template.kind, c.template.nx, c.template.ny = "triangle", 4, 3
    c.spec.coverage.metric, c.spec.coverage.range = metric, 1.3
    inst = spec_lib.from_config(c)
    tpl = inst.template
    rows = {}
    for x, cover in model.edge_cover_sets(inst):
      rows.setdefault(x, set()).add(cover)
    geo, r = tpl.geodesic(), 1.3
    for x, (a, b) in enumerate(tpl.edges):
      L = tpl.lengths[x]
      sampled = set()
      for s in np.linspace(0, L, 2001)[1:-1]:
        p = tpl.vertices[a] + (tpl.vertices[b] - tpl.vertices[a]) * s / L
        d = (np.minimum(s + geo[a], L - s + geo[b]) if metric == "geodesic"
             else np.linalg.norm(tpl.vertices - p, axis=1))
        sampled.add(frozenset(np.flatnonzero(d <= r + 1e-9).tolist()))
      assert _minimal(rows[x]) == _minimal(sampled), (metric, x)  # the same constraints


def _minimal(sets):
  return {s for s in sets if not any(t < s for t in sets)}
