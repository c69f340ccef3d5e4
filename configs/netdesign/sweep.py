"""Length vs travel trade-off: one block solved for a range of travel weights (get_sweep()).

Command:   python main.py --config=configs/netdesign/sweep.py --workdir=runs/nd_sweep  (w = 5)
           python -m common.sweep --config=configs/netdesign/sweep.py --workdir=runs/nd_sweeps
           PYTHONPATH=. python benchmarks/netdesign_trends.py --only sweep   (tables and figures)
           earlier README rows (half-edge proxy, w = 0 ... 1): the `:proxy` variant,
           PYTHONPATH=. python benchmarks/netdesign_trends.py --only sweep --variant proxy
Hardware:  2-core CPU container (shared); 60 s portfolio solve (trends script: 30 s CP-SAT).
Spec:      6 x 6 grid, exits at two opposite corners, coverage 1; objective = length + w * mean
           trip (over all 36 vertices: walk to the nearest network vertex, then along the network
           to the nearest exit), w from get_sweep().
Expected:  as w grows the network gets longer and the mean trip shorter: measured (all optimal,
           `tree` connectivity) 12 edges and mean trip 3.94 for w <= 5, 17 edges and 3.06 (the
           geodesic minimum) for w >= 6; table in netdesign/README.md.
Paper:     the weight sweep moves from tree-like minimum-length networks to denser low-travel ones.
Variants:  `:smoke` (4 x 4 grid, two exits, w = 5) proves optimality in seconds;
           `:proxy` (travel term = sum of half-edge labels, w = 0.1, the earlier README table).
"""

from configs.netdesign import base

TRAVEL_WEIGHTS = (0.0, 2.0, 5.0, 6.0, 10.0, 50.0)      # mean_trip: per unit of mean trip
PROXY_WEIGHTS = (0.0, 0.05, 0.1, 0.2, 0.5, 1.0)         # proxy: per unit of sum_h D_h


def get_config(arg=None):
  c = base.get_config()
  c.template.nx = c.template.ny = 6
  c.sinks.points = [[0.0, 0.0], [5.0, 5.0]]
  c.model.travel_term = "mean_trip"
  c.model.travel_weight = 5.0
  c.solver.time_limit = 60.0
  if arg == "smoke":
    c.template.nx = c.template.ny = 4
    c.sinks.points = [[1.0, 0.0], [3.0, 2.0]]
    c.solver.time_limit = 10.0
  elif arg == "proxy":
    c.model.travel_term = "proxy"
    c.model.travel_weight = 0.1
  elif arg:
    raise ValueError(f"unknown variant {arg!r} of sweep.py: expected '', 'smoke' or 'proxy'")
  return c


def get_sweep(arg=None):
  weights = PROXY_WEIGHTS if arg == "proxy" else TRAVEL_WEIGHTS
  if arg == "smoke":
    weights = (weights[0], weights[-1])
  return [{"model.travel_weight": w} for w in weights]
