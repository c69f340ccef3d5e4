"""The SN/NPR second stage through the shared loop: a head trained on a Gaussian mixture reaches
the closed-form moments; the U-Net is frozen, warm-started and never differentiated; resume."""

import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from ml_collections import ConfigDict

from common import train as train_lib
from common.supervised import supervised
from configs.dpm import sn_npr_mnist
from dpm import experiment, gmm, process, samplers, schedules, second_stage
from dpm.unet import timestep_embedding
from tests import helpers


class MixtureHeads(nnx.Module):
  """A frozen, deliberately imperfect noise predictor (0.9 eps* of the mixture: no parameters)
  and MLP heads of (x_t, step n) for h and g: the two-part model of the stage-2 loss, small enough to
  train in seconds."""

  def __init__(self, mix: gmm.GaussianMixture, alphas_cumprod: np.ndarray, rngs: nnx.Rngs,
               step_of_time=lambda t: jnp.asarray(t, jnp.int32) + 1):
    self.mix, self.step_of_time = mix, step_of_time    # network time -> integer step n
    self.sa = jnp.asarray(np.sqrt(alphas_cumprod), jnp.float32)
    self.sb = jnp.asarray(np.sqrt(1 - alphas_cumprod), jnp.float32)
    d, width = mix.dim, 128
    mlp = lambda: nnx.Sequential(nnx.Linear(d + 32, width, rngs=rngs), nnx.silu,
                                 nnx.Linear(width, width, rngs=rngs), nnx.silu,
                                 nnx.Linear(width, d, rngs=rngs))
    self.head = nnx.Dict({"sn": mlp(), "npr": mlp()})

  def base(self, x, n):
    return 0.9 * self.mix.eps(x, self.sa[n], self.sb[n])

  def __call__(self, x, t, *, train=False, rngs=None):
    n = self.step_of_time(t)                            # discrete: the network time is n - 1
    feats = jnp.concatenate([x, timestep_embedding(n - 1.0, 32)], axis=-1)   # either time alike
    return jax.lax.stop_gradient(self.base(x, n)), {k: self.head[k](feats) for k in ("sn", "npr")}


@pytest.mark.parametrize("time", ["discrete", "continuous"])
def test_heads_trained_on_the_mixture_reach_the_closed_form_moments(tmp_path, time):
  """Discrete: a 100-step linear chain. Continuous: the linear VP-SDE's 100-step discretisation
  (alpha_bar_n = alpha_{t_n}^2, network time 999 t_n), as a continuous model's second stage sees it
  through Process.alphas_cumprod and Process.step_input."""
  n_steps = 100
  proc = process.Process(time=time, schedule="linear", num_steps=n_steps)
  ac = proc.alphas_cumprod
  if time == "continuous":
    # A chain of its own, not the discrete linear one (alpha_bar_80: 1.6e-3 vs 1.1e-3).
    assert not np.allclose(ac, schedules.get_alphas_cumprod("linear", n_steps), rtol=0.05)
  to_step = lambda t: jnp.asarray(jnp.rint(t / proc.step_input(1)) if time == "continuous"
                                  else t + 1, jnp.int32)
  mix = gmm.default_mixture(dim=2, seed=0)
  model = MixtureHeads(mix, ac, nnx.Rngs(0), to_step)
  loss = lambda m, x, r: second_stage.moment_loss(m, x, r, jnp.asarray(ac, jnp.float32),
                                                  proc.step_input, ("sn", "npr"))
  import optax
  steps = 800
  prog = supervised(model, loss, optax.adam(optax.cosine_decay_schedule(3e-3, steps)),
                    ema_decay=0.99, trainable=nnx.PathContains("head"))
  config = ConfigDict(dict(seed=0, data=dict(batch_size=512), train=dict(
      num_steps=steps, log_every=500, ckpt_every=steps, tensorboard=False)))
  data = lambda start, seed: (np.asarray(mix.sample(jax.random.fold_in(jax.random.key(seed), i),
                                                    512)) for i in range(start, steps))
  state = train_lib.fit(prog, config, str(tmp_path), data)
  trained = prog.model(state)
  for t in (10, 40, 80):
    x0 = mix.sample(jax.random.key(t), 4000)
    x_t = ac[t] ** 0.5 * x0 + (1 - ac[t]) ** 0.5 * jax.random.normal(jax.random.key(t + 1),
                                                                     x0.shape)
    a, s = ac[t] ** 0.5, (1 - ac[t]) ** 0.5
    eps_hat, moments = trained(x_t, jnp.full((len(x_t),), proc.step_input(t)))
    eps_star = mix.eps(x_t, a, s)
    h = mix.eps_second_moment(x_t, a, s)
    g = h - 2 * eps_hat * eps_star + eps_hat ** 2      # E[(eps - eps_hat)^2 | x_t]
    # SN's target varies a lot with the state: most of that variation is learnt. NPR's varies
    # little (g is about Var[eps | x_t] plus the mean's small error): its error is small relative
    # to its size.
    sn_rel = float(jnp.mean((moments["sn"] - h) ** 2) / jnp.var(h))
    npr_rel = float(jnp.mean((moments["npr"] - g) ** 2) / jnp.mean(g ** 2))
    assert sn_rel < 0.05 and npr_rel < 0.1, (t, sn_rel, npr_rel)


def _tiny_config(stage1_dir: str = ""):
  c = helpers.apply_overrides(sn_npr_mnist.get_config("smoke"))
  c.train.update(num_steps=3, ckpt_every=3, eval_every=1000)
  c.sn_npr.update(num_steps=3)
  c.reports = ()
  if stage1_dir:
    c.sn_npr.init_from = stage1_dir
  return c


def test_unet_is_frozen_warm_started_and_never_differentiated(tmp_path, caplog):
  stage1 = str(tmp_path / "stage1")
  config = _tiny_config()
  setup = experiment.Setup(config)
  train_lib.fit(setup.program, config, stage1, second_stage.batches(config, setup),
                mesh=setup.mesh, keys=experiment.keys)
  base = train_lib.load_part(stage1, "ema_params")

  config = _tiny_config(stage1)
  second_stage.validate(config)
  work = str(tmp_path / "stage2")
  second_stage.train(config, work)
  prog = second_stage.program(config, setup)
  state, consts, step = train_lib.restore(prog, config, second_stage.stage_dir(config, work),
                                          setup.mesh, keys=second_stage.keys,
                                          train=second_stage.head_train(config, work))
  assert step == 3
  # Only the heads have parameters, an optimiser state and an EMA in the state.
  names = lambda tree: [train_lib.path_name(p) for p, _ in jax.tree_util.tree_leaves_with_path(
      tree)]
  assert names(state.params) and all(n.startswith("head/") for n in names(state.params))
  assert not any("unet" in n for n in names(state.opt_state) + names(state.ema_params))
  fresh = jax.tree.leaves(prog.init(None).params)
  assert any(not np.allclose(a, b) for a, b in zip(jax.tree.leaves(state.params), fresh))
  # The U-Net in the consts is stage 1's EMA model, bit for bit, and the model's eps is its eps.
  frozen = train_lib._flat_named(consts["frozen"])
  for name, value in train_lib._flat_named(base).items():
    np.testing.assert_array_equal(np.asarray(frozen["unet/" + name]), value)
  model = prog.model(state, consts)
  stage1_model, _ = setup.restore(stage1)
  x = jax.random.normal(jax.random.key(0), (4,) + setup.data.shape)
  t = jnp.array([0.0, 10.0, 50.0, 99.0])
  eps, moments = model(x, t)
  np.testing.assert_allclose(eps, stage1_model(x, t), rtol=1e-6, atol=1e-6)
  assert set(moments) == {"sn", "npr"} and moments["sn"].shape == x.shape
  # The gradient of the stage-2 loss never reaches the U-Net: its backward is not even built.
  net = nnx.merge(prog.graphdef, state.params, consts["frozen"], state.extra)
  grads = nnx.grad(lambda m: second_stage.moment_loss(
      m, x, jax.random.key(1), jnp.asarray(setup.alphas_cumprod, jnp.float32),
      setup.process.step_input, ("sn", "npr"))[0])(net)
  unet_grads = jax.tree.leaves(nnx.state(grads.unet))
  assert unet_grads and all(float(jnp.max(jnp.abs(g))) == 0.0 for g in unet_grads)
  # A rerun of the same command does not train again.
  caplog.clear()
  with caplog.at_level("INFO"):
    second_stage.train(config, work)
  assert "Already trained to step 3" in caplog.text


def test_second_stage_step_is_cheaper_than_a_stage1_step():
  """XLA's own FLOP count of the compiled steps: the stage-2 step runs the U-Net forward only."""
  config = _tiny_config()
  setup = experiment.Setup(config)
  prog = second_stage.program(config, setup)
  batch = np.zeros((config.data.batch_size,) + setup.data.shape, np.float32)

  def flops(p):
    state = p.init(jax.random.key(0))
    compiled = jax.jit(p.step).lower(state, batch, jax.random.key(1), p.consts).compile()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return float(cost["flops"])

  ratio = flops(prog) / flops(setup.program)
  assert ratio < 0.6, ratio
  assert math.isfinite(ratio) and ratio > 0.2, ratio


def test_validate_names_the_field():
  from common.errors import ConfigError
  config = sn_npr_mnist.get_config("smoke")
  config.sn_npr.kinds = ("npr",)
  with pytest.raises(ConfigError, match="sn_npr.variances"):
    second_stage.validate(config)  # 'sn' rows without an SN head
  config = sn_npr_mnist.get_config("smoke")
  config.sn_npr.nll_eta = 0.0
  with pytest.raises(ConfigError, match="sn_npr.nll_eta"):
    second_stage.validate(config)
  config = sn_npr_mnist.get_config("smoke")
  config.sn_npr.head = "huge"
  with pytest.raises(ConfigError, match="light"):
    second_stage.validate(config)
  config = sn_npr_mnist.get_config("smoke")
  config.sn_npr.init_from = "/nonexistent"
  with pytest.raises(ConfigError, match="sn_npr.init_from"):
    experiment.validate(config)
  config = sn_npr_mnist.get_config("smoke")
  config.eval.samplers = ("ddim:10:bogus",)
  with pytest.raises(ConfigError, match="sample.variance"):
    experiment.validate(config)
  config = sn_npr_mnist.get_config("smoke")
  config.sn_npr.kinds = ("npr",)
  config.sn_npr.update(variances=("analytic", "npr"), dp_variances=("npr",))
  config.sample.variance = "sn"
  with pytest.raises(ConfigError, match="sample.variance"):
    experiment.validate(config)  # no SN head to sample with
  config = sn_npr_mnist.get_config("smoke")
  config.sample.update(sampler="ddim", variance="sn")
  experiment.validate(config)  # a state-dependent sample.variance is fine in either form
  assert samplers.isotropic_config(config).sample.variance == "ddim"
  config.sample.sampler = "ddpm"
  assert samplers.isotropic_config(config).sample.variance == "beta_tilde"
  assert os.path.basename(second_stage.stage_dir(config, "/w")) == "sn_npr"
  config.eval.samplers = ("ddim:10:sn", "ddpm:25", "dpm_solver++_2m:10")
  assert experiment.eval_samplers(config) == [("ddim", 10, "sn"), ("ddpm", 25, "sn"),
                                              ("dpm_solver++_2m", 10, "sn")]


def test_two_stage_run_report_and_sampling_through_the_experiment(tmp_path):
  """--mode=train with sn_npr.enabled: stage 1, the heads, the 'sn_npr' report; its isotropic
  rows are the Analytic-DPM NLL of the stage-1 model computed independently (dpm.nll.nll_bpd on
  the same keys); --mode=sample with a state-dependent variance in the DDIM form."""
  from dpm import analytic, nll, reports, reverse
  config = _tiny_config()
  config.reports = ("sn_npr",)
  config.sn_npr.update(enabled=True, ks=(2, 4), forms=("ddpm",), trajectories=("even", "dp"),
                       variances=("beta_tilde", "analytic", "npr", "sn", "npr_avg"),
                       dp_variances=("npr",), grid_ks=(), nll_examples=8, nll_batch=8,
                       moment_examples=8, moment_batch=8)
  experiment.validate(config)
  work = str(tmp_path)
  result = experiment.run(config, work, "train")["sn_npr"]
  assert os.path.isdir(os.path.join(work, "checkpoints", "3"))
  assert os.path.isdir(os.path.join(work, "sn_npr", "checkpoints", "3"))
  rows = {(r["form"], r["trajectory"], r["variance"], r["K"]): r for r in result["rows"]}
  want = {("ddpm", "even", v, k) for k in (2, 4)
          for v in ("beta_tilde", "analytic", "npr", "sn", "npr_avg")}
  want |= {("ddpm", "dp", "npr", k) for k in (2, 4)}
  assert set(rows) == want
  assert all(math.isfinite(r["bpd"]) for r in rows.values())
  # The analytic DDPM row, recomputed from the stage-1 model and the report's own Gamma.
  setup = experiment.Setup(config)
  model, _ = setup.restore(work)
  with open(os.path.join(work, "sn_npr", "report", "moments.json")) as f:
    gamma = np.asarray(__import__("json").load(f)["moments"]["gamma"])
  traj = reverse.make_trajectory("even", 4, config.diffusion.num_steps)
  sigma2 = analytic.reverse_variance("analytic", setup.alphas_cumprod, traj, "ddpm", 0.0, gamma,
                                     reports.clip_range_of(config))
  x0 = reports._subset(setup.data, "test", 8, config.sn_npr.seed)
  direct = nll.nll_bpd_dataset(reports.eps_partial(model, setup.process), setup.alphas_cumprod,
                               traj, sigma2, x0, jax.random.key(config.sn_npr.seed + 1),
                               batch_size=8, num_bins=setup.data.num_levels)
  np.testing.assert_allclose(rows[("ddpm", "even", "analytic", 4)]["bpd"], direct.mean(),
                             rtol=1e-4)
  # Sampling with SN-DDIM from the heads.
  config.sample.update(sampler="ddim", variance="sn", num_steps=3)
  images = experiment.run(config, work, "sample")
  assert images.shape == (config.sample.num_samples,) + setup.data.shape
  assert np.all(np.isfinite(images))
