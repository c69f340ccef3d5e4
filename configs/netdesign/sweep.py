"""Length vs travel trade-off: the same street block solved for a range of travel weights.

  python main.py --config=configs/netdesign/sweep.py --workdir=/tmp/nd_sweep     # travel_weight 0.1
  PYTHONPATH=. python benchmarks/netdesign_trends.py                             # runs get_sweep()

Hardware: 2-core CPU container. Spec: 7 x 7 grid, four exits at the boundary midpoints, coverage 1,
objective = length + w * travel proxy with w from get_sweep(). Expected (paper Fig. on the weight
trade-off): as w grows the network gets longer and the mean distance to an exit falls; measured
values in netdesign/README.md.
"""

from configs.netdesign import base

TRAVEL_WEIGHTS = (0.0, 0.05, 0.1, 0.2, 0.5, 1.0)


def get_config(arg=None):
  c = base.get_config()
  c.template.nx = c.template.ny = 7
  c.sinks.points = [[3.0, 0.0], [6.0, 3.0], [3.0, 6.0], [0.0, 3.0]]
  c.model.travel_weight = 0.1
  c.solver.time_limit = 60.0
  if arg == "smoke":
    c.template.nx = c.template.ny = 4
    c.sinks.points = [[1.0, 0.0], [3.0, 2.0]]
    c.solver.time_limit = 10.0
  elif arg:
    raise ValueError(f"unknown variant {arg!r} of sweep.py: expected '' or 'smoke'")
  return c


def get_sweep():
  return [{"model.travel_weight": w} for w in TRAVEL_WEIGHTS]
