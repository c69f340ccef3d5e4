"""Base config of the netdesign family (Peng et al. 2016, network design by integer programming).

Every scenario config derives from this one and sets only what differs. Run a scenario with
  python main.py --config=configs/netdesign/<scenario>.py[:smoke] --workdir=/tmp/nd
Hardware: a 2-core CPU is enough; the paper used a commercial MIP solver on a desktop.
"""

import ml_collections


def _feature(mode="allow", weight=0.0, count=0):
  return ml_collections.ConfigDict({"mode": mode, "weight": weight, "count": count})


def get_config(arg=None):
  del arg
  c = ml_collections.ConfigDict()
  c.family = "netdesign"

  # Template mesh M: 'grid' (nx x ny vertices), 'quad' or 'triangle' mesh of `domain` minus `holes`.
  c.template = ml_collections.ConfigDict()
  c.template.kind = "grid"
  c.template.nx = 6
  c.template.ny = 6
  c.template.spacing = 1.0
  c.template.domain = []          # outer polygon [[x, y], ...]; [] = the nx x ny rectangle
  c.template.holes = []           # obstacle polygons
  c.template.length_scale = 10    # lengths are rounded to 1/length_scale in the integer model

  # Sinks (exits / destinations), snapped to the nearest template vertex.
  c.sinks = ml_collections.ConfigDict()
  c.sinks.points = [[0.0, 0.0]]
  c.sinks.required = True         # every sink must be on the network

  c.spec = ml_collections.ConfigDict()
  c.spec.coverage = ml_collections.ConfigDict(
      {"enabled": True, "range": 1.0, "metric": "geodesic",
       # vertices (the paper's) | edges (also every point of every template edge)
       "locations": "vertices"})
  c.spec.required_points = []     # points the network must pass (room doors, spawn points)
  c.spec.traffic = ml_collections.ConfigDict(
      {"pairs": [], "weight": 0.0, "max_detour": 0.0})  # max_detour 0 = no limit
  # Local features: mode in allow | forbid | soft (weight per occurrence) | at_least (count).
  c.spec.features = ml_collections.ConfigDict({
      "dead_end": _feature(), "branch": _feature(), "zigzag": _feature(),
      "t_junction": _feature()})

  c.model = ml_collections.ConfigDict()
  # labels (paper) | tree (ours: parent arcs + vertex labels) | flow (ablation, no travel term)
  c.model.connectivity = "labels"
  c.model.ball_cuts = True         # valid geodesic-ball cut rows (ours): much tighter LP bounds
  # coverage rows minus the used edges at the vertex (ours, valid for every spec): tighter LP
  c.model.coverage_cuts = True
  # forest dominance (ours): where an optimal network is a forest with one sink per tree (length
  # objective, no features / traffic / travel, vertex coverage, sinks >= 3 edges apart), keep only
  # those; same optimum (model.forest_is_optimal decides; elsewhere it is a no-op)
  c.model.forest_cuts = True
  c.model.length_weight = 1.0
  c.model.travel_weight = 0.0      # weight of the travel term
  # proxy: sum_h D_h over used half-edges (the notes'; labels only) | mean_trip: mean over every
  # vertex of the walk to the nearest network vertex + network distance to an exit (paper's plots)
  c.model.travel_term = "proxy"

  c.solver = ml_collections.ConfigDict()
  c.solver.name = "portfolio"      # cpsat | highs | portfolio (CP-SAT incumbent, HiGHS bound)
  c.solver.time_limit = 60.0       # seconds per solve
  c.solver.threads = 8             # CP-SAT workers (8 on 2 cores, see ENVIRONMENT.md)
  c.solver.seed = 0
  c.solver.cpsat_fraction = 0.5    # portfolio: share of the time limit given to CP-SAT
  c.solver.rel_gap = 0.0           # 0 = prove optimality
  c.solver.cpsat_params = ""       # extra CP-SAT parameters (text format), e.g. "symmetry_level:4"

  c.alternatives = ml_collections.ConfigDict({"count": 0, "min_hamming": 4})
  c.output = ml_collections.ConfigDict({"draw": True, "formats": ["png", "svg"]})
  return c
