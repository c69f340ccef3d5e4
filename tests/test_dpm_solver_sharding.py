"""A batch sharded over 8 simulated CPU devices gives the single-device samples (fixed steps to float
precision, adaptive steps to the solver's tolerance).

The devices must exist before jax initialises, so the check runs in a subprocess with
XLA_FLAGS=--xla_force_host_platform_device_count=8; it blocks on every result (async dispatch of
collectives on simulated CPU devices can deadlock, see ../shared/design/ENVIRONMENT.md).
"""

import json
import os
import subprocess
import sys

from tests import helpers

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_SCRIPT = r'''
import json
import jax, jax.numpy as jnp, numpy as np
from common import mesh as mesh_lib
from dpm.gmm import default_mixture
from dpm.schedules import linear_betas
from dpm.solver import DPMSolver, NoiseScheduleVP, model_wrapper

assert jax.device_count() == 8, jax.devices()
gmm = default_mixture(4)
ns = NoiseScheduleVP("discrete", betas=linear_betas(1000))
model = lambda x, t: gmm.eps(x.reshape(x.shape[0], -1), ns.marginal_alpha(t),
                             ns.marginal_std(t)).reshape(x.shape)
x = jax.random.normal(jax.random.PRNGKey(0), (32, 2, 2, 1))        # image-shaped [B, H, W, C]
mesh = mesh_lib.make_mesh()
x_sharded = jax.device_put(x, mesh_lib.batch_sharding(mesh))
x_single = jax.device_put(x, jax.devices()[0])
cases = {
    "multistep3_thresholding": (dict(algorithm_type="dpmsolver++",
                                     correcting_x0_fn="dynamic_thresholding"),
                                dict(steps=10, order=3, method="multistep")),
    "adaptive3": (dict(algorithm_type="dpmsolver"), dict(order=3, method="adaptive")),
}
out = {}
for name, (init, kwargs) in cases.items():
    solver = DPMSolver(model_wrapper(model, ns), ns, **init)
    a, nfe_a = jax.block_until_ready(solver.sample(x_sharded, return_nfe=True, **kwargs))
    b, nfe_b = jax.block_until_ready(solver.sample(x_single, return_nfe=True, **kwargs))
    out[name] = dict(diff=float(np.max(np.abs(np.asarray(a) - np.asarray(b)))),
                     finite=bool(np.all(np.isfinite(np.asarray(a)))),
                     nfe=[int(nfe_a), int(nfe_b)],
                     devices=len(a.sharding.device_set),
                     sharded=not a.sharding.is_fully_replicated)
print("RESULT" + json.dumps(out))
'''


def test_sharded_batch_matches_single_device():
  env = dict(os.environ, XLA_FLAGS=helpers.xla_flags(8),
             JAX_PLATFORMS="cpu", PYTHONPATH=ROOT)
  proc = subprocess.run([sys.executable, "-c", _SCRIPT], cwd=ROOT, env=env, capture_output=True,
                        text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  line = [l for l in proc.stdout.splitlines() if l.startswith("RESULT")][-1]
  results = json.loads(line[len("RESULT"):])
  for name, r in results.items():
    assert r["finite"] and r["devices"] == 8 and r["sharded"], (name, r)
  fixed = results["multistep3_thresholding"]
  assert fixed["nfe"] == [10, 10] and fixed["diff"] < 1e-5, fixed
  # Adaptive steps accept when a batch-wide error E <= 1; the sharded and single-device programs are
  # compiled differently, and ULP-level differences can flip a decision taken at E ~ 1, so the two
  # runs agree to the solver's tolerance (atol = 0.0078), not bit for bit.
  adaptive = results["adaptive3"]
  assert adaptive["diff"] < 0.0078 and abs(adaptive["nfe"][0] - adaptive["nfe"][1]) <= 6, adaptive
