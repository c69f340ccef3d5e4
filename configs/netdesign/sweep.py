"""Length vs travel trade-off: one block solved for a range of travel weights (get_sweep()).

Command:   python main.py --config=configs/netdesign/sweep.py --workdir=runs/nd_sweep  (w = 0.1)
           python -m common.sweep --config=configs/netdesign/sweep.py --workdir=runs/nd_sweeps
           PYTHONPATH=. python benchmarks/netdesign_trends.py   (the sweep plus tables and figures)
Hardware:  2-core CPU container (shared); 60 s portfolio solve (trends script: 30 s CP-SAT).
Spec:      6 x 6 grid, exits at two opposite corners, coverage 1; objective = length + w * travel
           proxy with w from get_sweep().
Expected:  as w grows the network gets longer and trips to an exit get shorter; measured table in
           netdesign/README.md.
Paper:     the weight sweep moves from tree-like minimum-length networks to denser low-travel ones.
Variant:   `:smoke` (4 x 4 grid, two exits) proves optimality, objective 5.8.
"""

from configs.netdesign import base

TRAVEL_WEIGHTS = (0.0, 0.05, 0.1, 0.2, 0.5, 1.0)


def get_config(arg=None):
  c = base.get_config()
  c.template.nx = c.template.ny = 6
  c.sinks.points = [[0.0, 0.0], [5.0, 5.0]]
  c.model.travel_weight = 0.1
  c.solver.time_limit = 60.0
  if arg == "smoke":
    c.template.nx = c.template.ny = 4
    c.sinks.points = [[1.0, 0.0], [3.0, 2.0]]
    c.solver.time_limit = 10.0
  elif arg:
    raise ValueError(f"unknown variant {arg!r} of sweep.py: expected '' or 'smoke'")
  return c


def get_sweep(arg=None):
  weights = (TRAVEL_WEIGHTS[0], TRAVEL_WEIGHTS[-1]) if arg == "smoke" else TRAVEL_WEIGHTS
  return [{"model.travel_weight": w} for w in weights]
