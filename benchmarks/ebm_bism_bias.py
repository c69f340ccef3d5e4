"""BiSM's gradient bias against the exact score-matching gradient, as K and N grow (issue 14).

  PYTHONPATH=. python benchmarks/ebm_bism_bias.py [--replicas 256] [--out ebm/figures/bism_bias.png]

A GRBM with d = 2, m = 4 (the runner's initialisation, seed 0, with W scaled by 3 so that its
posterior is far from uniform) and a fixed batch of 100 checkerboard points (not the model's own
samples, where the expected gradient would vanish and the batch's gradient is only noise). Truth: the gradient
of Hyvarinen's objective mean_v [0.5 ||s(v)||^2 + tr grad_v s(v)] with the exact score, by autodiff
of the closed form. Estimate: BiSSM's theta-gradient (ebm.bism.bism_step_grads, Rademacher
projections, the linear Bernoulli posterior at temperature 0.1, which contains p(h | v)), averaged
over `replicas` independent draws, after K plain posterior steps from the posterior's fresh
initialisation (Adam, --lr 0.05, betas (0.9, 0.95)) and N unrolled ones. Relative bias
||mean g - g_exact|| / ||g_exact||, over all of theta and over b and log sigma only (the parameters
the exact posterior does not depend on, so their gradient needs no implicit term d phi*/d theta,
which for W and c only the unroll supplies, in part); the noise floor is
||standard error of the mean|| / ||g_exact||. Prints a table and saves the plot.
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

KS = (0, 1, 2, 5, 10, 20, 50, 100, 200)
# The exact posterior's logits c + W^T v do not involve b and sigma, so their gradient needs no
# implicit term d phi* / d theta; those of W and c do, and only the unroll (N > 0) supplies a part.
SUBSETS = ((("W", "b", "c", "log_sigma"), "all"), (("b", "log_sigma"), "b_sigma"))
NS = (0, 5, 10)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--replicas", type=int, default=256)
  parser.add_argument("--out", default="ebm/figures/bism_bias.png")
  parser.add_argument("--lr", type=float, default=0.05, help="the posterior's Adam step size")
  args = parser.parse_args(argv)

  import jax
  import jax.numpy as jnp
  import numpy as np
  import optax
  from flax import nnx
  from common import io
  from ebm import bism, grbm, posteriors

  model = grbm.GRBM(2, 4, rngs=nnx.Rngs(0))
  model.W[...] = 3.0 * model.W[...]
  model_def, theta = nnx.split(model)
  rng = np.random.default_rng(1)
  v = jnp.asarray((rng.integers(2, size=(100, 1)) + rng.uniform(size=(100, 2))) / 2, jnp.float32)
  q_def, phi0 = nnx.split(posteriors.LinearBernoulliPosterior(2, 4, rngs=nnx.Rngs(2)))
  tx = optax.adam(args.lr, b1=0.9, b2=0.95)

  def hyvarinen(theta):
    p = nnx.merge(model_def, theta).params()
    s = grbm.score(p, v)
    probs = grbm.posterior_probs(p, v)
    trace = jnp.sum(-1.0 / p.sigma ** 2) + jnp.sum((probs * (1 - probs)) @ (p.W ** 2).T, -1)
    return jnp.mean(0.5 * jnp.sum(s ** 2, -1) + trace)

  truth = jax.grad(hyvarinen)(theta)
  def flat(g, keep=("W", "b", "c", "log_sigma")):
    return jnp.concatenate([jnp.ravel(x) for path, x in jax.tree_util.tree_leaves_with_path(g)
                            if jax.tree_util.keystr(path).split("'")[1] in keep])

  @jax.jit
  def plain(phi, opt, rngs):
    cfg = {"method": "bissm", "inner_steps": 1, "unroll_steps": 0}
    one = lambda p, o, r: bism.bism_step_grads(model_def, theta, q_def, p, o, tx, v, r, cfg)[1:3]
    return jax.vmap(one)(phi, opt, rngs)

  def grads_fn(n):
    cfg = {"method": "bissm", "inner_steps": 0, "unroll_steps": n}
    one = lambda p, o, r: bism.bism_step_grads(model_def, theta, q_def, p, o, tx, v, r, cfg)[0]
    return jax.jit(jax.vmap(one))

  grads = {n: grads_fn(n) for n in NS}
  r = args.replicas
  phi = jax.tree.map(lambda x: jnp.broadcast_to(x, (r,) + x.shape), phi0)
  opt = jax.vmap(tx.init)(phi)
  rows, done = [], 0
  for k in KS:
    for i in range(done, k):
      phi, opt = plain(phi, opt, jax.random.split(jax.random.key(1000 + i), r))
    done = k
    for n in NS:
      g = grads[n](phi, opt, jax.random.split(jax.random.key(10_000 + 100 * k + n), r))
      row = {"K": k, "N": n}
      for keep, tag in SUBSETS:
        per = jax.vmap(lambda gi: flat(gi, keep))(g)
        t = flat(truth, keep)
        row[tag] = float(jnp.linalg.norm(per.mean(0) - t) / jnp.linalg.norm(t))
        row[tag + "_floor"] = float(jnp.linalg.norm(per.std(0) / np.sqrt(r)) / jnp.linalg.norm(t))
      rows.append(row)
      print(f"K={k:4d} N={n:3d}  bias(all) {row['all']:.4f} (floor {row['all_floor']:.4f})  "
            f"bias(b, log sigma) {row['b_sigma']:.4f} (floor {row['b_sigma_floor']:.4f})",
            flush=True)

  # Reference: q = p(h | v) exactly (A = W^T, a = c), N = 0: BiSM's score is then exact for every
  # relaxed h, so this row's bias must sit at its noise floor.
  exact_q = posteriors.LinearBernoulliPosterior(2, 4, rngs=nnx.Rngs(2))
  exact_q.set_exact(model.W[...], model.c[...])
  phi_x = jax.tree.map(lambda x: jnp.broadcast_to(x, (r,) + x.shape), nnx.split(exact_q)[1])
  g = grads[0](phi_x, jax.vmap(tx.init)(phi_x), jax.random.split(jax.random.key(99), r))
  exact_row = {}
  for keep, tag in SUBSETS:
    per, t = jax.vmap(lambda gi: flat(gi, keep))(g), flat(truth, keep)
    exact_row[tag] = float(jnp.linalg.norm(per.mean(0) - t) / jnp.linalg.norm(t))
    exact_row[tag + "_floor"] = float(jnp.linalg.norm(per.std(0) / np.sqrt(r))
                                      / jnp.linalg.norm(t))
  print(f"q = p(h | v) exact, N = 0: bias(all) {exact_row['all']:.4f} (floor "
        f"{exact_row['all_floor']:.4f})  bias(b, log sigma) {exact_row['b_sigma']:.4f} (floor "
        f"{exact_row['b_sigma_floor']:.4f})")

  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, axes = plt.subplots(1, 2, figsize=(9, 3.6), sharey=True)
  for ax, tag, title in ((axes[0], "all", "all of theta"), (axes[1], "b_sigma", "b and log sigma")):
    for n in NS:
      sel = [row for row in rows if row["N"] == n]
      ks = [max(row["K"], 0.5) for row in sel]
      ax.plot(ks, [row[tag] for row in sel], "o-", label=f"N = {n}")
    floor = [row[tag + "_floor"] for row in rows if row["N"] == 0]
    ax.plot([max(k, 0.5) for k in KS], floor, "k:", label="noise floor")
    ax.axhline(exact_row[tag], color="gray", ls="--", label="q = p(h | v), N = 0")
    ax.set_xscale("log"); ax.set_yscale("log")
    ax.set_xlabel("K (plain posterior steps; K = 0 drawn at 0.5)")
    ax.set_title(f"BiSSM gradient bias, {title}")
  axes[0].set_ylabel("||E g - g_exact|| / ||g_exact||")
  axes[0].legend()
  fig.tight_layout()
  io.atomic_save_figure(fig, args.out, dpi=120)
  io.atomic_write_json(os.path.splitext(args.out)[0] + ".json", {"rows": rows,
                                                                  "exact_q": exact_row})
  print(f"wrote {args.out}")


if __name__ == "__main__":
  main()
