"""Floorplan: corridors reaching every room door and the exits of an L-shaped building.

Command:   python main.py --config=configs/netdesign/floorplan.py --workdir=runs/nd_floor
Hardware:  2-core CPU container (shared); 60 s portfolio solve.
Spec:      quad mesh (unit spacing) of an L-shaped building with a stairwell hole, two exits
           (sinks), six room doors that must be on the corridor network, every point within 2 of a
           corridor; objective = length + 0.1 travel proxy (evacuation distance); zig-zags
           forbidden.
Expected:  a corridor tree joining the doors to the exits; measured numbers in netdesign/README.md.
Paper:     floorplans were solved in seconds to minutes with a commercial MIP solver.
Variant:   `:smoke` (small L, two doors, one exit) proves optimality, objective 17.0.
"""

from configs.netdesign import base


def get_config(arg=None):
  c = base.get_config()
  c.template.kind = "quad"
  c.template.domain = [[0, 0], [9, 0], [9, 4], [5, 4], [5, 8], [0, 8]]
  c.template.holes = [[[1.5, 1.5], [3.5, 1.5], [3.5, 2.5], [1.5, 2.5]]]  # stairwell
  c.sinks.points = [[0.0, 4.0], [9.0, 2.0]]
  c.spec.required_points = [[8, 4], [6, 0], [1, 8], [4, 6], [5, 3], [2, 0]]
  c.spec.coverage.range = 2.0
  c.model.travel_weight = 0.1
  c.spec.features.zigzag.mode = "forbid"
  if arg == "smoke":
    c.template.domain = [[0, 0], [4, 0], [4, 2], [2, 2], [2, 4], [0, 4]]
    c.template.holes = []
    c.sinks.points = [[0.0, 0.0]]
    c.spec.required_points = [[4, 1], [1, 4]]
    c.solver.time_limit = 10.0
  elif arg:
    raise ValueError(f"unknown variant {arg!r} of floorplan.py: expected '' or 'smoke'")
  return c
