"""Game level: paths between spawn points and the goal on a triangle mesh around rocks, with loops.

Command:   python main.py --config=configs/netdesign/game.py --workdir=runs/nd_game
           wanted dead ends instead of loops (hidden rooms):
           python main.py --config=configs/netdesign/game.py --workdir=runs/nd_game_de \
             --config.spec.features.dead_end.mode=at_least --config.spec.features.dead_end.count=2
Hardware:  2-core CPU container (shared); 60 s portfolio solve per network (3 networks).
Spec:      equilateral triangle mesh (spacing 1) of a 9 x 6 arena with two rocks; the goal is the
           sink; three spawn points joined pairwise by traffic paths (detour <= 1.5x the shortest
           template path, weight 0.2); dead ends forbidden, so the level has loops; every vertex
           within 2; two diverse alternatives (Hamming distance >= 4) by no-good cuts.
Expected:  three valid, different levels; measured numbers in netdesign/README.md.
Paper:     game levels were solved in seconds to minutes with a commercial MIP solver.
Variant:   `:smoke` (4 x 2.6 arena, one rock, two spawns, one alternative) proves optimality,
           objective 11.8.
"""

from configs.netdesign import base


def get_config(arg=None):
  c = base.get_config()
  c.template.kind = "triangle"
  c.template.domain = [[0, 0], [9, 0], [9, 6.1], [0, 6.1]]
  c.template.holes = [[[2.2, 1.6], [4.2, 1.6], [3.2, 3.5]], [[5.4, 3.0], [7.3, 3.0], [6.4, 4.8]]]
  c.sinks.points = [[8.5, 6.06]]   # goal
  spawns = [[0.0, 0.0], [0.5, 6.06], [8.0, 0.0]]
  c.spec.required_points = spawns
  c.spec.traffic.pairs = [[spawns[0], spawns[1]], [spawns[1], spawns[2]], [spawns[0], spawns[2]]]
  c.spec.traffic.weight = 0.2
  c.spec.traffic.max_detour = 1.5
  c.spec.coverage.range = 2.0
  c.spec.features.dead_end.mode = "forbid"
  c.alternatives.count = 2
  if arg == "smoke":
    c.template.domain = [[0, 0], [4, 0], [4, 2.6], [0, 2.6]]
    c.template.holes = [[[1.6, 0.6], [2.6, 0.6], [2.1, 1.5]]]
    c.sinks.points = [[3.5, 2.6]]
    spawns = [[0.0, 0.0], [4.0, 0.0]]
    c.spec.required_points = spawns
    c.spec.traffic.pairs = [[spawns[0], spawns[1]]]
    c.spec.coverage.range = 1.0
    c.alternatives.count = 1
    c.solver.time_limit = 10.0
  elif arg:
    raise ValueError(f"unknown variant {arg!r} of game.py: expected '' or 'smoke'")
  return c
