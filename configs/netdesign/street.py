"""Street layout: a city block with a park and exits on the boundary (paper: street layouts).

Command:   python main.py --config=configs/netdesign/street.py --workdir=runs/nd_street
Hardware:  2-core CPU container (shared); 60 s portfolio solve (30 s CP-SAT, then HiGHS).
Spec:      10 x 8 grid of unit streets minus a 2 x 2 park, four exits, every vertex within 1 (along
           streets) of the network; objective = length + 0.05 travel proxy + 0.5 per dead end +
           0.25 per zig-zag.
Expected:  a valid network with a reported gap (this size is not proved optimal in 60 s here);
           measured objective / bound in netdesign/README.md.
Paper:     street layouts of 300-1200 candidate edges took seconds to over an hour (commercial MIP).
Variant:   `:smoke` (5 x 4 grid, 1-cell park, three exits) proves optimality, objective 7.45.
"""

from configs.netdesign import base


def get_config(arg=None):
  c = base.get_config()
  c.template.nx, c.template.ny = 10, 8
  c.template.holes = [[[3.5, 2.5], [5.5, 2.5], [5.5, 4.5], [3.5, 4.5]]]  # park
  c.sinks.points = [[0.0, 4.0], [9.0, 3.0], [4.0, 0.0], [6.0, 7.0]]
  c.model.travel_weight = 0.05
  c.spec.features.dead_end.mode, c.spec.features.dead_end.weight = "soft", 0.5
  c.spec.features.zigzag.mode, c.spec.features.zigzag.weight = "soft", 0.25
  if arg == "smoke":
    c.template.nx, c.template.ny = 5, 4
    c.template.holes = [[[1.5, 1.5], [2.5, 1.5], [2.5, 2.5], [1.5, 2.5]]]
    c.sinks.points = [[0.0, 2.0], [4.0, 1.0], [2.0, 0.0]]
    c.solver.time_limit = 10.0
  elif arg:
    raise ValueError(f"unknown variant {arg!r} of street.py: expected '' or 'smoke'")
  return c
