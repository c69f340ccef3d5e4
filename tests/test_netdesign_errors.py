"""Bad config values fail with a message naming the field; an impossible spec reports infeasible."""

import json

import numpy as np
import pytest
from scipy.sparse import coo_matrix, csgraph

from common.errors import ConfigError
from configs.netdesign import base
import netdesign
from netdesign import model, solvers
from netdesign import spec as spec_lib


def _set(c, key, value):
  node = c
  *parts, last = key.split(".")
  for p in parts:
    node = node[p]
  node[last] = value


BAD = [
    ("template.kind", "hexagon"), ("template.nx", 1), ("template.spacing", 0.0),
    ("template.length_scale", 0), ("sinks.points", []), ("spec.coverage.range", -1.0),
    ("spec.coverage.metric", "manhattan"), ("spec.features.dead_end.mode", "never"),
    ("spec.features.zigzag.weight", -1.0), ("spec.features.branch.count", -2),
    ("spec.traffic.max_detour", 0.5), ("model.connectivity", "cuts"),
    ("model.travel_weight", -0.1), ("solver.name", "gurobi"), ("solver.time_limit", 0.0),
    ("solver.threads", 0), ("solver.cpsat_fraction", 1.5), ("alternatives.min_hamming", 0),
    ("output.formats", ["jpg"]), ("model.travel_term", "sum_of_labels"),
    ("spec.coverage.locations", "faces"), ("solver.cpsat_params", "no_such_parameter:3"),
]


@pytest.mark.parametrize("field,value", BAD, ids=[f for f, _ in BAD])
def test_bad_value_names_field(field, value):
  c = base.get_config()
  _set(c, field, value)
  with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
    netdesign.validate(c)


@pytest.mark.parametrize("flag", ["ball_cuts", "coverage_cuts", "forest_cuts"])
def test_cut_flags_must_be_booleans(flag):
  """ConfigDict already refuses a str for a bool field; validate also catches a config whose
  type check was bypassed (e.g. built by hand)."""
  c = base.get_config()
  with c.model.ignore_type():
    c.model[flag] = "yes"
  with pytest.raises(ConfigError, match=rf"model\.{flag}"):
    netdesign.validate(c)


def test_good_base_config_validates():
  netdesign.validate(base.get_config())


def test_flow_with_travel_weight_is_rejected():
  c = base.get_config()
  c.model.connectivity, c.model.travel_weight = "flow", 0.5
  with pytest.raises(ConfigError, match=r"model\.travel_weight"):
    netdesign.validate(c)


def test_proxy_travel_needs_labels():
  c = base.get_config()
  c.model.connectivity, c.model.travel_weight, c.model.travel_term = "tree", 0.5, "proxy"
  with pytest.raises(ConfigError, match=r"model\.travel_term"):
    netdesign.validate(c)
  c.model.travel_term = "mean_trip"
  netdesign.validate(c)


def test_point_off_template_names_field(tmp_path):
  c = base.get_config()
  c.spec.required_points = [[2.0, 2.0], [40.0, 1.0]]
  with pytest.raises(ConfigError, match=r"spec\.required_points\[1\]"):
    netdesign.run(c, str(tmp_path), "solve")


def test_unknown_mode_names_mode(tmp_path):
  with pytest.raises(ConfigError, match="mode="):
    netdesign.run(base.get_config(), str(tmp_path), "sample")


def _walled_config():
  """5 x 5 grid; the only sink (0, 0) sits in a 2 x 2 room closed by two walls."""
  c = base.get_config()
  c.template.nx = c.template.ny = 5
  c.template.holes = [[[1.4, -0.5], [1.6, -0.5], [1.6, 1.6], [1.4, 1.6]],
                      [[-0.5, 1.4], [1.6, 1.4], [1.6, 1.6], [-0.5, 1.6]]]
  c.sinks.points = [[0.0, 0.0]]
  c.solver.time_limit = 30.0
  c.solver.threads = 2  # the suite runs on 2 cores
  return c


def test_walls_really_cut_off_the_sink():
  """Independent truth for the next test: graph search over the template."""
  tpl = spec_lib.from_config(_walled_config()).template
  n = tpl.num_vertices
  adj = coo_matrix((np.ones(len(tpl.edges)), tuple(tpl.edges.T)), shape=(n, n))
  ncomp, comp = csgraph.connected_components(adj, directed=False)
  assert n == 25 and ncomp == 2 and np.bincount(comp).min() == 4


@pytest.mark.parametrize("solver", ["portfolio", "highs"])
def test_unreachable_sink_reports_infeasible(solver, tmp_path, capsys):
  c = _walled_config()
  c.solver.name = solver
  netdesign.validate(c)
  netdesign.run(c, str(tmp_path), "solve")
  with open(tmp_path / "network.json") as f:
    net = json.load(f)
  assert net["status"] == "infeasible" and net["selected"] == [] and net["objective"] is None
  with open(tmp_path / "results.json") as f:
    assert "obstacles separate" in json.load(f)["reason"]
  assert "INFEASIBLE" in capsys.readouterr().err


def test_without_coverage_the_walled_room_is_feasible():
  """Control: the same template with coverage off has a network (the walls alone are fine)."""
  c = _walled_config()
  c.spec.coverage.enabled = False
  inst = spec_lib.from_config(c)
  opt = solvers.Options(time_limit=30, threads=2)
  res = solvers.solve("cpsat", model.build(inst).lm, opt)
  assert res.status == "optimal" and res.objective == pytest.approx(1.0)
