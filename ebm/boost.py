"""The cascaded-boosting runner (issue 16): meta-models trained greedily, each a stage of the loop.

Stage k (config.boost.stack[k-1], a kind of ebm.meta.META) is a `common.train.Stage` named
`stage<k>_<kind>` under the workdir, trained on the codes of stage k-1 on the training set (stage 1
on the binarised data): config.boost.codes = 'mean' passes up mean-field codes (an RBM's
p(h = 1 | v), a VAE's posterior mean), 'sample' one fixed draw per example. The stages are grown
one at a time through `common.train.fit_stages` (a rerun skips the finished ones, "Already
trained"); after stage k >= 2 is trained its increment Delta_k (ebm.cascade) is measured on the
selection set (the training examples, up to eval.num_select), and the stage is kept only while
Delta_k > boost.threshold (the stopping rule, ebm.cascade.accept); the first refused stage ends
the stack (it stays in its directory, reported, and out of the bound).

Evaluation on the test set, with q over BINARY latents for RBMs whatever codes were passed up:
the decomposable bound and each stage's increment (exact where ebm.cascade can enumerate, Monte
Carlo with standard errors otherwise), the exact log-likelihood of the boosted model where it can
be enumerated, the first stage alone as the single-model baseline, the IWAE bound when the top is a
VAE. Outputs (common.io, main process):
- workdir/results.json: `bound`, `exact_log_likelihood` (or null), `stages` [{stage, kind,
  num_latent, increment, increment_stderr, increment_exact, select_increment, accepted, log_z,
  bound, exact_log_likelihood} for stages 1.. (the bound and log-likelihood of the stack cut at
  that stage)], `num_stages` (kept), and the settings;
- workdir/stack.npz (when every kept stage is an RBM, pinned): W{k} [n_{k-1}, n_k], b{k} [n_{k-1}],
  c{k} [n_k] of E(v, h) = -b^T v - c^T h - v^T W h for k = 1..num_stages;
- workdir/samples_stage<k>.png: ancestral samples of the stack cut at stage k (kept stages).

Extensions, each switched on by its config block (absent in the plain configs):
- config.semisup.num_labels non-empty (ebm.semisup): semi-supervised boosting. After the stack is
  grown, a labelled Gaussian mixture p(h_n, y) per label budget is fitted on the last kept stage's
  codes by semi-supervised EM (stages `top_l<n>`, and `top_l<n>_labelled_only`, the control), and
  the test inputs are classified by p(y | x) under the boosted joint model, by importance
  sampling; results.json's `semisup` block (`test_error` per budget, the runs' details).
- config.product.enabled (ebm.product): the product of the kept stack's cuts with learned
  exponents (stage `product`), its log normaliser by importance sampling with a standard error
  (and by enumeration where the inputs are few); results.json's `product` block.

Data: `bars_stripes` (all 2^(n+1) - 2 distinct n x n bars-and-stripes patterns, {0, 1}; training
batches draw uniformly from them and the test set is each pattern once) or any common.data image
dataset binarised at data.threshold. Modes: train (default) and eval (restores every stage).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from ml_collections import ConfigDict

from common import checks, data as data_lib, io, optim, train as train_lib
from common.errors import ConfigError
from common.registry import Registry
from ebm import cascade, grbm, meta, product, semisup
from ebm.experiment import make_mesh

MODES: Registry = Registry("boost mode")
RESULTS, STACK = "results.json", "stack.npz"
BARS = "bars_stripes"


# ---------------------------------------------------------------------------------------------
# Data.


def bars_and_stripes(n: int) -> np.ndarray:
  """All distinct n x n bars-and-stripes images, [2^(n+1) - 2, n * n] in {0, 1} (float32).

  Stripes are rows set from an n-bit code, bars columns; the all-off and all-on images are both,
  so they are kept once. Order: stripes by code 0..2^n - 1, then bars without those two.
  """
  codes = ((np.arange(2 ** n)[:, None] >> np.arange(n)) & 1).astype(np.float32)     # [2^n, n]
  stripes = np.repeat(codes[:, :, None], n, axis=2)                                 # rows
  bars = np.repeat(codes[:, None, :], n, axis=1)[1:-1]                              # columns
  return np.concatenate([stripes, bars]).reshape(-1, n * n)


@dataclasses.dataclass
class BinaryData:
  train: np.ndarray          # [N, d] in {0, 1}
  test: np.ndarray           # [N', d]
  image_shape: tuple[int, int, int]


def load_data(config) -> BinaryData:
  """The binary training and test sets of config.data (limited by num_train / num_test > 0)."""
  d = config.data
  if d.name == BARS:
    patterns = bars_and_stripes(int(d.size))
    train, test, shape = patterns, patterns, (int(d.size), int(d.size), 1)
  else:
    ds = data_lib.get_dataset(d)
    if not ds.is_image:
      raise ConfigError(f"data.name={d.name!r} is invalid: boosting binarises images; expected "
                        f"{BARS!r} or an image dataset")
    binarise = lambda src: (np.asarray(src[np.arange(len(src))], np.float32)
                            / (ds.num_levels - 1) > d.threshold).astype(np.float32)
    train, test, shape = binarise(ds.train), binarise(ds.test), tuple(ds.shape)
    train, test = train.reshape(len(train), -1), test.reshape(len(test), -1)
  cut = lambda x, n: x[:n] if n else x
  return BinaryData(cut(train, d.num_train), cut(test, d.num_test), shape)


def index_stream(n: int, batch_size: int, seed: int, stage: int, start: int):
  """Row indices [batch_size] drawn uniformly with replacement, a pure function of the step."""
  step = start
  while True:
    yield np.random.default_rng([seed, stage, step]).integers(0, n, batch_size).astype(np.int32)
    step += 1


# ---------------------------------------------------------------------------------------------
# Config.


def stage_field(config, name: str, k: int) -> Any:
  """boost.<name> of stage k (0-based): a tuple per stage, or one value for all."""
  values = tuple(config.boost[name])
  return values[k] if len(values) > 1 else values[0]


def _check_tuple(config, name: str, kinds, allow_empty: bool) -> None:
  values = config.boost[name]
  field = f"boost.{name}"
  if not isinstance(values, (tuple, list)) or (not values and not allow_empty):
    raise ConfigError(f"{field}={values!r} is invalid: expected a tuple of positive integers")
  if len(values) not in (0, 1, len(kinds)) or (len(values) == 0 and not allow_empty):
    raise ConfigError(f"{field}={tuple(values)!r} is invalid: expected one value or one per stage "
                      f"of boost.stack ({len(kinds)})")
  for v in values:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
      raise ConfigError(f"{field}={tuple(values)!r} is invalid: expected positive integers")


def validate(config) -> None:
  """Rejects bad values at start, naming the field."""
  train_lib.validate(config)
  if int(config.train.get("num_seeds", 1)) != 1:
    raise ConfigError(f"train.num_seeds={config.train.num_seeds} is invalid: a boosted stack is "
                      "trained one seed at a time (expected 1)")
  kinds = tuple(config.boost.stack)
  meta.validate_stack(kinds)
  _check_tuple(config, "num_latent", kinds, allow_empty=False)
  _check_tuple(config, "num_steps", kinds, allow_empty=True)
  checks.one_of(config, "boost.codes", meta.CODES)
  checks.positive(config, "boost.threshold", allow_zero=True)
  if config.data.name != BARS:
    data_lib.DATASETS.get(config.data.name, field="data.name")
  else:
    checks.integer(config, "data.size")
  checks.in_range(config, "data.threshold", 0.0, 1.0)
  checks.integer(config, "data.batch_size")
  for field in ("data.num_train", "data.num_test", "eval.num_select", "eval.num_images"):
    checks.positive(config, field, allow_zero=True)
  for field in ("eval.batch_size", "eval.num_samples", "eval.ais_chains", "eval.gibbs_steps",
                "eval.iw_samples"):
    checks.integer(config, field)
  checks.one_of(config, "eval.exact_likelihood", (True, False))
  checks.in_range(config, "eval.max_exact", 1, grbm.MAX_EXACT_HIDDEN)
  checks.in_range(config, "eval.max_exact_joint", 1, 2 * grbm.MAX_EXACT_HIDDEN)
  checks.in_range(config, "eval.ais_betas", 2, 10 ** 7)
  for kind in set(kinds):
    _validate_kind(config, kind)
  checks.positive(config, "num_devices", allow_zero=True)
  if semisup_enabled(config):
    semisup.validate(config)
  if product_enabled(config):
    product.validate(config)


def semisup_enabled(config) -> bool:
  """Whether the run adds the semi-supervised tops (config.semisup.num_labels non-empty)."""
  block = config.get("semisup")
  return block is not None and len(tuple(block.get("num_labels", ()))) > 0


def product_enabled(config) -> bool:
  """Whether the run learns the product of the stack's cuts (config.product.enabled)."""
  block = config.get("product")
  if block is None:
    return False
  checks.one_of(config, "product.enabled", (True, False))
  return bool(block.enabled)


def _validate_kind(config, kind: str) -> None:
  checks.integer(config, f"{kind}.num_steps")
  if kind == "rbm":
    checks.integer(config, "rbm.cd_steps")
    checks.positive(config, "rbm.init_std")
    checks.one_of(config, "rbm.persistent", (True, False))
    checks.one_of(config, "rbm.init", ("random", "transpose"))
  elif kind == "vae":
    checks.integer(config, "vae.hidden")
    checks.integer(config, "vae.depth")
    checks.one_of(config, "vae.decoder", ("auto", "bernoulli", "gaussian"))
    checks.positive(config, "vae.sigma")
    checks.in_range(config, "vae.kl_weight", 1e-6, 1.0)
  else:
    checks.integer(config, "gmm.num_components")
    checks.positive(config, "gmm.reg")
  if kind != "gmm":
    optim.validate(config, f"{kind}.optim")


def batch_sizes(config) -> tuple[int, ...]:
  return (config.data.batch_size,)


# ---------------------------------------------------------------------------------------------
# The stack: specs, stage inputs (codes), fitted stages.


def stage_name(k: int, kind: str) -> str:
  return f"stage{k + 1}_{kind}"


class Stack:
  """The stages of a run and what is derived from their states, computed once and cached."""

  def __init__(self, config, data: BinaryData):
    self.config, self.data = config, data
    self.kinds = tuple(config.boost.stack)
    self.names = [stage_name(k, kind) for k, kind in enumerate(self.kinds)]
    self.specs, dim, binary = [], data.train.shape[1], True
    for k, kind in enumerate(self.kinds):
      n = int(stage_field(config, "num_latent", k))
      spec = meta.META.get(kind, field="boost.stack")(config[kind], dim, n, binary)
      self.specs.append(spec)
      dim, binary = n, spec.latent_binary
    self._inputs = {0: data.train}
    self._fitted: dict[int, Any] = {}
    self.key = jax.random.key(config.seed)

  def num_steps(self, k: int) -> int:
    if len(self.config.boost.num_steps):
      return int(stage_field(self.config, "num_steps", k))
    return int(self.config[self.kinds[k]].num_steps)

  def fitted(self, k: int, done) -> Any:
    if k not in self._fitted:
      key = jax.random.fold_in(self.key, 7919 + k)
      self._fitted[k] = self.specs[k].load(done[self.names[k]], key, self.config.eval)
      info = getattr(self._fitted[k], "log_z_info", None)
      if info:
        logging.info("%s: log Z = %.4f (%s)", self.names[k], info["log_z"], info["method"])
    return self._fitted[k]

  def inputs(self, k: int, done) -> np.ndarray:
    """Stage k's training table: the codes of stage k-1 on stage k-1's table."""
    if k not in self._inputs:
      below, fitted = self.inputs(k - 1, done), self.fitted(k - 1, done)
      if k >= 2 and self.config.boost.codes == "resample":   # a table of posteriors: its means
        below = np.asarray(self.fitted(k - 2, done).table_mean(jnp.asarray(below)))
      key, bs = jax.random.fold_in(self.key, 104729 + k), self.config.eval.batch_size
      codes = [np.asarray(fitted.encode(jnp.asarray(below[i:i + bs]), jax.random.fold_in(key, i),
                                        self.config.boost.codes))
               for i in range(0, len(below), bs)]
      self._inputs[k] = np.concatenate(codes).astype(np.float32)
    return self._inputs[k]

  def stage(self, k: int) -> train_lib.Stage:
    cfg, batch = self.config, self.config.data.batch_size

    def build(done):
      below = self.fitted(k - 1, done) if k else None
      draw = below.draw if below is not None and cfg.boost.codes == "resample" else None
      return self.specs[k].program(self.inputs(k, done), self.num_steps(k), batch, below, draw)

    def data(start, i):
      n = len(self._inputs[k])       # set by build, which fit calls first
      return index_stream(n, batch, cfg.seed + i, k, start)

    return train_lib.Stage(self.names[k], build, data, train={"num_steps": self.num_steps(k)})


# ---------------------------------------------------------------------------------------------
# Evaluation.


def evaluate_terms(fitted, x: np.ndarray, key: jax.Array, eval_cfg) -> list[dict[str, Any]]:
  """Per-stage bound terms of the stack on x, summarised over examples (ebm.cascade)."""
  bs = eval_cfg.batch_size
  batches = [cascade.bound_terms(fitted, jnp.asarray(x[i:i + bs]), jax.random.fold_in(key, i),
                                 eval_cfg) for i in range(0, len(x), bs)]
  return cascade.summarise_terms(batches)


def exact_mean(fitted, x: np.ndarray, eval_cfg) -> float | None:
  """The mean exact log-likelihood of the boosted stack on x, or None if not enumerable (or
  eval.exact_likelihood is off: it costs B 2^{n_1} d multiply-adds per stack)."""
  if not eval_cfg.exact_likelihood or not cascade.exact_possible(fitted, eval_cfg):
    return None
  bs = eval_cfg.batch_size
  vals = [np.asarray(cascade.exact_log_likelihood(fitted, jnp.asarray(x[i:i + bs])), np.float64)
          for i in range(0, len(x), bs)]
  return float(np.concatenate(vals).mean())


def select_increment(stack: Stack, fitted, key: jax.Array) -> dict[str, Any]:
  """The increment of the top of `fitted` on the selection set (training examples)."""
  n = stack.config.eval.num_select
  x = stack.data.train[:n] if n else stack.data.train
  return evaluate_terms(fitted, x, key, stack.config.eval)[-1]


def iwae_bound(fitted, x: np.ndarray, key, terms, eval_cfg) -> float | None:
  """The bound with the top VAE's ELBO replaced by its IWAE bound, Delta_top's MC chains
  reused (a valid bound: the top term only needs a lower bound on log p_n)."""
  top = fitted[-1]
  if top.kind != "vae":
    return None
  bs, s = eval_cfg.batch_size, int(eval_cfg.num_samples)
  vals = []
  for i in range(0, len(x), bs):
    xb = jnp.asarray(x[i:i + bs])
    h = jnp.broadcast_to(xb, (s,) + xb.shape).reshape(s * len(xb), -1)
    for k, f in enumerate(fitted[:-1]):
      h = f.posterior_sample(h, jax.random.fold_in(key, 2 * k + i))
    prior = fitted[-2].log_prior(h) if len(fitted) > 1 else 0.0
    vals.append(np.asarray(top.iwae(h, jax.random.fold_in(key, i), eval_cfg.iw_samples) - prior))
  below = sum(t["mean"] for t in terms[:-1])
  return float(below + np.concatenate(vals).mean())


def _log_line(k: int, row: dict[str, Any]) -> None:
  sel = row["select_increment"]
  logging.info("stage %d (%s): %s %+.4f +- %.4f (%s) on test, %s on the selection set, %s; "
               "bound with it %.4f, exact log-likelihood %s", k + 1, row["kind"],
               "ELBO_1" if k == 0 else "increment", row["increment"], row["increment_stderr"],
               "exact" if row["increment_exact"] else "Monte Carlo",
               "-" if sel is None else f"{sel:+.4f}", "kept" if row["accepted"] else "REFUSED",
               row["bound"], "n/a" if row["exact_log_likelihood"] is None
               else f"{row['exact_log_likelihood']:.4f}")


def evaluate_stack(stack: Stack, fitted: list, selection: list[dict]) -> dict[str, Any]:
  """results.json of the stages in `fitted` (the last may be refused: selection[-1])."""
  cfg, x = stack.config, stack.data.test
  key = jax.random.fold_in(stack.key, 15485863)
  terms = evaluate_terms(fitted, x, key, cfg.eval)
  rows, bound, var, num_kept = [], 0.0, 0.0, 0
  for k, (f, t) in enumerate(zip(fitted, terms)):
    accepted = selection[k]["accepted"]
    bound, var = bound + t["mean"], var + t["stderr"] ** 2
    row = {"stage": k + 1, "kind": f.kind, "num_latent": stack.specs[k].num_latent,
           "num_params": f.num_params(),
           "num_steps": stack.num_steps(k), "increment": t["mean"],
           "increment_stderr": t["stderr"], "increment_exact": t["exact"],
           "select_increment": selection[k]["increment"], "accepted": accepted,
           "log_z": getattr(f, "log_z_info", None), "bound": bound,
           "bound_stderr": float(np.sqrt(var)),
           "exact_log_likelihood": exact_mean(fitted[:k + 1], x, cfg.eval)}
    rows.append(row)
    _log_line(k, row)
    num_kept += accepted
  kept = rows[:num_kept]
  return {
      "bound": kept[-1]["bound"], "bound_stderr": kept[-1]["bound_stderr"],
      "bound_exact": all(r["increment_exact"] for r in kept),
      "exact_log_likelihood": kept[-1]["exact_log_likelihood"],
      "single_stage_bound": rows[0]["bound"],
      "single_stage_exact_log_likelihood": rows[0]["exact_log_likelihood"],
      "iwae_bound": iwae_bound(fitted[:num_kept], x, key, terms[:num_kept], cfg.eval),
      "increments": [r["increment"] for r in kept[1:]],
      "num_params": int(sum(r["num_params"] for r in kept)),
      "num_stages": num_kept, "stages": rows, "stack": list(stack.kinds),
      "threshold": float(cfg.boost.threshold), "codes": cfg.boost.codes,
      "dataset": cfg.data.name, "num_train": len(stack.data.train), "num_test": len(x),
      "units": "mean nats per test example",
  }


def export(stack: Stack, fitted: list, results: dict, workdir: str) -> None:
  """results.json, stack.npz (all-RBM stacks) and the sample grids, on the main process."""
  kept = fitted[:results["num_stages"]]
  if all(f.kind == "rbm" for f in kept):
    arrays = {}
    for k, f in enumerate(kept, start=1):
      arrays.update({f"W{k}": np.asarray(f.p.W), f"b{k}": np.asarray(f.p.b),
                     f"c{k}": np.asarray(f.p.c)})
    io.on_main_process(os.path.join(workdir, STACK), lambda p: io.atomic_save_npz(p, **arrays))
  n = stack.config.eval.num_images
  for k in range(len(kept)) if n else ():
    images = cascade.ancestral_sample(kept[:k + 1], jax.random.fold_in(stack.key, 31 + k), n)
    images = np.asarray(images, np.float32).reshape((n,) + stack.data.image_shape)
    path = os.path.join(workdir, f"samples_stage{k + 1}.png")
    io.on_main_process(path, lambda p, im=images: io.save_image_grid(p, im, value_range=(0, 1)))
  io.on_main_process(os.path.join(workdir, RESULTS), lambda p: io.atomic_write_json(p, results))
  logging.info("boosted stack of %d stage(s) %s: bound %.4f, exact log-likelihood %s (first "
               "stage alone: %.4f); wrote %s", results["num_stages"], results["stack"],
               results["bound"], results["exact_log_likelihood"], results["single_stage_bound"],
               os.path.join(workdir, RESULTS))


# ---------------------------------------------------------------------------------------------
# Modes.


def _grow(stack: Stack, get_states) -> tuple[list, list[dict]]:
  """Stages 1, 2, ... through get_states(stage list) -> states, while the stopping rule allows."""
  fitted, selection = [], []
  threshold = float(stack.config.boost.threshold)
  for k in range(len(stack.kinds)):
    states = get_states([stack.stage(j) for j in range(k + 1)])
    fitted.append(stack.fitted(k, states))
    if k == 0:
      selection.append({"increment": None, "accepted": True})
      continue
    inc = select_increment(stack, fitted, jax.random.fold_in(stack.key, 7 + k))["mean"]
    selection.append({"increment": inc, "accepted": cascade.accept(inc, threshold)})
    if not selection[-1]["accepted"]:
      logging.info("%s: increment %.4f <= boost.threshold=%g on the selection set: stage refused, "
                   "the stack stops at %d stage(s).", stack.names[k], inc, threshold, k)
      break
  return fitted, selection


def _run(stack: Stack, get_states, workdir: str) -> dict[str, Any]:
  """Grows and evaluates the stack, then the extensions the config asks for (ebm.semisup: the
  labelled tops; ebm.product: the product of the kept cuts), and exports."""
  fitted, selection = _grow(stack, get_states)
  results = evaluate_stack(stack, fitted, selection)
  kept = results["num_stages"]
  if semisup_enabled(stack.config):
    results["semisup"] = semisup.run(stack, fitted, kept, get_states)
  if product_enabled(stack.config):
    results["product"] = product.run(stack, fitted[:kept], get_states)
  export(stack, fitted, results, workdir)
  return results


@MODES.register("train")
def train(config, workdir: str) -> dict[str, Any]:
  stack, mesh = Stack(config, load_data(config)), make_mesh(config)
  checks.divisible(config, "data.batch_size", mesh.size, f"the batch is split over {mesh.size} "
                   "devices")
  return _run(stack, lambda stages: train_lib.fit_stages(stages, config, workdir, mesh=mesh),
              workdir)


@MODES.register("eval")
def evaluate_mode(config, workdir: str) -> dict[str, Any]:
  stack, mesh = Stack(config, load_data(config)), make_mesh(config)

  def restore(stages):
    done = {}
    for s in stages:
      train_cfg = ConfigDict(config.train.to_dict())
      train_cfg.update(dict(s.train))
      done[s.name] = train_lib.restore(s.build(dict(done)), config,
                                       os.path.join(workdir, s.name), mesh, train=train_cfg)[0]
    return done

  return _run(stack, restore, workdir)


def run(config, workdir: str, mode: str = "train"):
  return MODES.get(mode, field="--mode")(config, workdir)
