"""Semi-supervised cascaded boosting: a joint model of data and labels on top of a boosted stack.

The unsupervised stack m_1 .. m_n (ebm.boost, trained greedily on all training inputs) is topped by
a labelled Gaussian mixture on the codes h_n of its last stage: C classes, `components_per_class`
full-covariance components each, component k belonging to class k // components_per_class, so

  p(h_n, y) = sum_{k in class y} w_k N(h_n; mu_k, Sigma_k),
  p(x, y)   = sum/int over h_1..h_n of p_1(x | h_1) ... p_n(h_{n-1} | h_n) p(h_n, y).

The top is fitted by semi-supervised EM (Nigam et al. 2000, the generative semi-supervised
classifier; McLachlan & Peel 2000, ch. 2.19) on the codes of all training examples: a labelled
example's responsibilities are restricted to its class's components, an unlabelled one's label is
marginalised, so each EM step increases

  sum_{labelled} log p(h_n, y) + sum_{unlabelled} log p(h_n).

One EM iteration over the whole table is one step of the shared loop (`common.train.fit`), one
stage per number of labels (`top_l<n>`, plus `top_l<n>_labelled_only`, the same top fitted on the
labelled codes alone: the control that shows what the unlabelled data add).

Classification of a test input by p(y | x) under the boosted joint model, estimated by importance
sampling with the stack's own posterior chain as proposal (s = semisup.num_samples draws of
h_1 ~ q_1(. | x), h_2 ~ q_2(. | h_1), ...):

  w_s(y) = p(h_n^s, y) prod_k p_k(h_{k-1}^s | h_k^s) / q_k(h_k^s | h_{k-1}^s),
  p(y | x) ~= sum_s w_s(y) / sum_{s, y'} w_s(y'),      log p(x) ~= log mean_s sum_y w_s(y),

the second an importance-weighted lower bound in expectation (Burda et al. 2016). The plug-in rule
argmax_y p(y | E[h_n | x]) (mean codes passed up) is reported beside it. The top's marginal over y
is a plain mixture (ebm.meta.FittedGMM), so the decomposable bound of the stack with it on top is
reported too (ebm.cascade).

The labelled examples are balanced: n / C per class (the first n mod C classes one more), drawn
without replacement by seed from the training set (Kingma et al. 2014 also balance the labels).
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from common import checks, data as data_lib, train as train_lib
from common.errors import ConfigError
from ebm import meta


# ---------------------------------------------------------------------------------------------
# Labels.


def choose_labelled(labels: np.ndarray, num_labels: int, num_classes: int, seed: int
                    ) -> np.ndarray:
  """Indices [num_labels] of a class-balanced labelled subset of `labels` [N], sorted."""
  rng = np.random.default_rng([seed, num_labels])
  per = [num_labels // num_classes + (c < num_labels % num_classes) for c in range(num_classes)]
  chosen = []
  for c, n in enumerate(per):
    pool = np.flatnonzero(labels == c)
    if len(pool) < n:
      raise ConfigError(f"semisup.num_labels={num_labels} is invalid: class {c} has only "
                        f"{len(pool)} training examples (needs {n})")
    chosen.append(rng.choice(pool, n, replace=False))
  return np.sort(np.concatenate(chosen))


def partial_labels(labels: np.ndarray, labelled: np.ndarray) -> np.ndarray:
  """labels [N] with every example outside `labelled` set to -1 (unlabelled)."""
  out = np.full(len(labels), -1, np.int32)
  out[labelled] = labels[labelled]
  return out


def label_log_mask(y: np.ndarray, num_classes: int, per_class: int) -> np.ndarray:
  """[N, C * per_class]: 0 where component k may explain example n (k in class y_n, or y_n = -1),
  -inf elsewhere."""
  comp_class = np.arange(num_classes * per_class) // per_class
  allowed = (y[:, None] < 0) | (comp_class[None] == y[:, None])
  return np.where(allowed, 0.0, -np.inf).astype(np.float32)


# ---------------------------------------------------------------------------------------------
# The labelled mixture.


def class_log_joint(p: dict, h: jax.Array, num_classes: int) -> jax.Array:
  """log p(h, y) for every class, [B, C]: components grouped by class, k // per_class."""
  comp = meta.gmm_log_prob(p, h)[1]                                              # [B, K]
  return jax.nn.logsumexp(comp.reshape(comp.shape[0], num_classes, -1), axis=-1)


_class_log_joint = jax.jit(class_log_joint, static_argnums=2)
_marginal = jax.jit(lambda p, h: meta.gmm_log_prob(p, h)[0])


def initial_mixture(x: np.ndarray, y: np.ndarray, num_classes: int, per_class: int, reg: float,
                    seed: int) -> dict:
  """Means: the class mean of the labelled codes, then (per_class > 1) random labelled codes of
  the class; every covariance the covariance of all codes; weights uniform."""
  rng = np.random.default_rng([seed, 17])
  dim, means = x.shape[1], []
  for c in range(num_classes):
    xc = x[y == c]
    means.append(xc.mean(0))
    means.extend(xc[rng.integers(0, len(xc), per_class - 1)])
  cov = np.cov(x.astype(np.float64), rowvar=False).reshape(dim, dim) + reg * np.eye(dim)
  k = num_classes * per_class
  chol = np.broadcast_to(np.linalg.cholesky(cov), (k, dim, dim))
  return {"weights": np.full((k,), 1.0 / k, np.float32),
          "means": np.asarray(means, np.float32), "chol": np.array(chol, np.float32)}


class FittedLabelledGMM(meta.FittedGMM):
  """A fitted labelled mixture: the FittedGMM of its marginal over y, plus the class terms."""
  kind = "lgmm"

  def __init__(self, p: dict, num_classes: int):
    super().__init__(p)
    self.num_classes = num_classes

  def elbo(self, v, key=None):
    """The marginal log p(h) = logsumexp_y log p(h, y), [B] (exact)."""
    return _marginal(self.p, v)

  def log_joint(self, h):
    return _class_log_joint(self.p, h, self.num_classes)

  def predict_log_proba(self, h):
    """log p(y | h), [B, C]."""
    lj = self.log_joint(h)
    return lj - jax.nn.logsumexp(lj, axis=-1, keepdims=True)


class LabelledGMMSpec:
  """The semi-supervised top: cfg = config.semisup (components_per_class, reg), labels y [N]
  with -1 for unlabelled rows of the input table."""
  kind, latent_binary = "lgmm", False

  def __init__(self, cfg, dim: int, num_classes: int, y: np.ndarray, seed: int):
    self.cfg, self.dim, self.num_classes, self.y, self.seed = cfg, dim, num_classes, y, seed
    self.per_class = int(cfg.components_per_class)

  def program(self, inputs: np.ndarray, num_steps: int, batch_size: int,
              below: Any = None, draw: Any = None) -> train_lib.Program:
    """One step = one semi-supervised EM iteration over the whole table (the batch is unused)."""
    reg = float(self.cfg.reg)
    start = initial_mixture(inputs, self.y, self.num_classes, self.per_class, reg, self.seed)
    consts = {"data": jnp.asarray(inputs, jnp.float32),
              "mask": jnp.asarray(label_log_mask(self.y, self.num_classes, self.per_class))}

    def init(key):
      return {k: jnp.asarray(v) for k, v in start.items()}

    def step(state, idx, key, consts):
      new, ll = meta.em_step(state, consts["data"], reg, consts["mask"])
      return new, {"loss": -ll}

    return train_lib.Program(init, step, consts=consts, finite=("loss",))

  def load(self, state, key=None, eval_cfg=None) -> FittedLabelledGMM:
    p = {k: jnp.asarray(v) for k, v in jax.device_get(state).items()}
    return FittedLabelledGMM(p, self.num_classes)


# ---------------------------------------------------------------------------------------------
# Classification under the boosted joint model.


def joint_log_weights(below: Sequence[Any], top: FittedLabelledGMM, x: jax.Array, key: jax.Array,
                      num_samples: int) -> jax.Array:
  """log w_s(y) of the module docstring, [s, B, C], proposals from the stack's posteriors."""
  s, b = num_samples, x.shape[0]
  v = jnp.broadcast_to(x, (s,) + x.shape).reshape(s * b, -1)
  log_w = jnp.zeros((s * b,))
  for k, f in enumerate(below):
    h = f.posterior_sample(v, jax.random.fold_in(key, k))
    log_w = log_w + f.log_conditional(v, h) - f.log_posterior(v, h)
    v = h
  return (log_w[:, None] + top.log_joint(v)).reshape(s, b, -1)


def classify(below: Sequence[Any], top: FittedLabelledGMM, x: np.ndarray, key: jax.Array,
             num_samples: int, max_rows: int = 20_000) -> tuple[np.ndarray, np.ndarray]:
  """(log p(y | x) [N, C], the importance-weighted log p(x) [N]) by `joint_log_weights`."""
  bs = max(1, max_rows // num_samples)
  log_py, log_px = [], []
  for i in range(0, len(x), bs):
    lw = joint_log_weights(below, top, jnp.asarray(x[i:i + bs]), jax.random.fold_in(key, i),
                           num_samples)
    per_class = jax.nn.logsumexp(lw, axis=0)                                     # [B, C]
    total = jax.nn.logsumexp(per_class, axis=-1)
    log_py.append(np.asarray(per_class - total[:, None]))
    log_px.append(np.asarray(total - math.log(num_samples)))
  return np.concatenate(log_py), np.concatenate(log_px)


def mean_codes(below: Sequence[Any], x: np.ndarray, batch_size: int) -> np.ndarray:
  """E[h_n | x] passed up the stack by mean-field codes (the plug-in classifier's input)."""
  out = []
  for i in range(0, len(x), batch_size):
    h = jnp.asarray(x[i:i + batch_size])
    for f in below:
      h = f.encode(h, None, "mean")
    out.append(np.asarray(h))
  return np.concatenate(out)


def error(log_proba: np.ndarray, labels: np.ndarray) -> float:
  return float(np.mean(np.argmax(log_proba, axis=-1) != labels))


# ---------------------------------------------------------------------------------------------
# The runner's part (called by ebm.boost with the grown stack).


def validate(config) -> None:
  """config.semisup, checked when config.semisup.num_labels is non-empty."""
  s = config.semisup
  if tuple(config.boost.stack)[-1] != "vae":
    raise ConfigError(f"boost.stack={tuple(config.boost.stack)!r} is invalid with "
                      "semisup.num_labels: the labelled mixture models continuous codes, so the "
                      "last stage must be a 'vae'")
  if config.data.name == "bars_stripes":
    raise ConfigError("data.name='bars_stripes' is invalid with semisup.num_labels: it has no "
                      "class labels")
  values = tuple(s.num_labels)
  if any(isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1 for v in values):
    raise ConfigError(f"semisup.num_labels={values!r} is invalid: expected positive integers")
  checks.one_of(config, "boost.codes", ("mean", "sample"))   # the top fits codes, not tables
  checks.integer(config, "semisup.components_per_class")
  checks.integer(config, "semisup.num_steps")
  checks.integer(config, "semisup.num_samples")
  checks.positive(config, "semisup.reg")
  checks.one_of(config, "semisup.labelled_only", (True, False))


def _labels(config, n_train: int, n_test: int) -> tuple[np.ndarray, np.ndarray, int]:
  ds = data_lib.get_dataset(config.data)
  return ds.labels("train")[:n_train], ds.labels("test")[:n_test], int(ds.num_classes)


def _top_stage(stack, k_top: int, name: str, spec: LabelledGMMSpec,
               rows: np.ndarray | None) -> train_lib.Stage:
  """The stage fitting `spec` on the codes of stage k_top (only `rows` of them, if given)."""
  cfg = stack.config
  steps = int(cfg.semisup.num_steps)

  def build(done):
    codes = stack.inputs(k_top, done)
    return spec.program(codes if rows is None else codes[rows], steps, cfg.data.batch_size)

  def data(start, i):
    return _stream(cfg.data.batch_size, start)

  return train_lib.Stage(name, build, data, train={"num_steps": steps})


def _stream(batch_size: int, start: int):
  del start
  while True:                       # the EM step reads the whole table; the batch is a dummy
    yield np.zeros((batch_size,), np.int32)


def _tops(cfg, y_train: np.ndarray, num_classes: int, dim: int) -> list[tuple]:
  """(stage name, spec, labelled indices, rows fitted or None for all) per top of the run."""
  tops = []
  for n in cfg.semisup.num_labels:
    labelled = choose_labelled(y_train, int(n), num_classes, cfg.seed)
    y = partial_labels(y_train, labelled)
    tops.append((f"top_l{n}", LabelledGMMSpec(cfg.semisup, dim, num_classes, y, cfg.seed),
                 labelled, None))
    if cfg.semisup.labelled_only:
      only = LabelledGMMSpec(cfg.semisup, dim, num_classes, y[labelled], cfg.seed)
      tops.append((f"top_l{n}_labelled_only", only, labelled, labelled))
  return tops


def _evaluate_top(stack, below: list, top: FittedLabelledGMM, labelled: np.ndarray,
                  labels: tuple, codes: tuple, key: jax.Array) -> dict[str, Any]:
  """Test errors (importance-sampled p(y | x), plug-in), the unlabelled training digits' plug-in
  error, the IW log-likelihood and the decomposable bound of the stack with `top` on it."""
  from ebm import boost                                        # the runner imports this module
  cfg, (y_train, y_test), (train_codes, test_codes) = stack.config, labels, codes
  log_py, log_px = classify(below, top, stack.data.test, key, int(cfg.semisup.num_samples))
  plug_in = lambda h: np.asarray(top.predict_log_proba(jnp.asarray(h)))
  unl = np.setdiff1d(np.arange(len(y_train)), labelled)
  terms = boost.evaluate_terms(below + [top], stack.data.test, jax.random.fold_in(key, 99),
                               cfg.eval)
  return {"num_labels": len(labelled), "test_error": error(log_py, y_test),
          "test_error_plugin": error(plug_in(test_codes), y_test),
          "unlabelled_train_error_plugin": error(plug_in(train_codes[unl]), y_train[unl]),
          "iw_log_likelihood": float(log_px.mean()), "num_samples": int(cfg.semisup.num_samples),
          "bound": float(sum(t["mean"] for t in terms)), "top_increment": terms[-1]["mean"],
          "bound_stderr": float(math.sqrt(sum(t["stderr"] ** 2 for t in terms)))}


def run(stack, fitted: list, num_kept: int, get_states) -> dict[str, Any]:
  """Fits the labelled tops on the kept stack (through get_states: fit_stages or restore) and
  evaluates them; the results.json block `semisup`."""
  cfg = stack.config
  below = fitted[:num_kept]
  y_train, y_test, num_classes = _labels(cfg, len(stack.data.train), len(stack.data.test))
  tops = _tops(cfg, y_train, num_classes, stack.specs[num_kept - 1].num_latent)
  stages = [_top_stage(stack, num_kept, name, spec, rows) for name, spec, _, rows in tops]
  states = get_states([stack.stage(j) for j in range(num_kept)] + stages)
  codes = (stack.inputs(num_kept, states), mean_codes(below, stack.data.test,
                                                      cfg.eval.batch_size))
  key, rows_out = jax.random.fold_in(stack.key, 2718281), []
  for i, (name, spec, labelled, rows) in enumerate(tops):
    row = {"name": name, "labelled_only": rows is not None,
           **_evaluate_top(stack, below, spec.load(states[name]), labelled, (y_train, y_test),
                           codes, jax.random.fold_in(key, i))}
    rows_out.append(row)
    logging.info("semi-supervised %s (%d labels%s): test error %.4f (IS p(y | x), %d samples), "
                 "plug-in %.4f; bound %.3f, IW log-likelihood %.3f", name, row["num_labels"],
                 ", labelled codes only" if rows is not None else "", row["test_error"],
                 row["num_samples"], row["test_error_plugin"], row["bound"],
                 row["iw_log_likelihood"])
  return {"runs": rows_out, "num_classes": num_classes,
          "components_per_class": int(cfg.semisup.components_per_class),
          "test_error": {str(r["num_labels"]): r["test_error"] for r in rows_out
                         if not r["labelled_only"]},
          "stack": list(stack.kinds[:num_kept])}
