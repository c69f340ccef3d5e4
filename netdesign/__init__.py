"""Network design from functional specifications by integer programming (Peng et al. 2016).

Roles: templates (candidate meshes), spec (the functional specification), linear (solver-neutral
IP), model (the paper's IP), solvers (CP-SAT / HiGHS / portfolio), checker (independent validator),
draw (pictures), experiment (run / validate). See netdesign/README.md.
"""

from netdesign.experiment import run, validate

__all__ = ["run", "validate"]
