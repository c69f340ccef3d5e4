"""Street layout: a city block with a park, exits on the boundary (paper Section 7, Fig. street).

  python main.py --config=configs/netdesign/street.py --workdir=/tmp/nd_street
  python main.py --config=configs/netdesign/street.py:smoke --workdir=/tmp/nd_street_smoke

Hardware: 2-core CPU container. Spec: 10 x 8 grid of unit streets minus a 2 x 2 park, four exits,
every vertex within 1 (along streets) of the network, objective = length + 0.05 travel proxy +
0.5 per dead end + 0.25 per zig-zag. Expected (see netdesign/README.md for the measured figures): a
tree-like network with few dead ends; the full size ends 'feasible' with a gap after 60 s on this
machine, the smoke size proves optimality in about a second. Paper: comparable street layouts took
seconds to minutes with a commercial solver.
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
