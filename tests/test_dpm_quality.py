"""Thresholding in the DPM-Solver samplers and the reports' sample-quality columns.

Truths: the published DPM-Solver++ path for correcting data predictions (`DPMSolver(...,
correcting_x0_fn=...)`) for `samplers.thresholded`; the algebra of first-order steps (DPM-Solver-1
on the eps a clipped x0 implies is DPM-Solver++-1 on that x0, both DDIM); for the report columns,
each row's value recomputed here from an independent run of the same sampler on the same noise.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from common.errors import ConfigError
from configs.dpm import base, ddpm_mnist
from dpm import experiment, process, quality, reports, reverse, samplers
from dpm.solver import DPMSolver, model_wrapper

S = 2.0  # data std: most of x_0's predictions fall outside [-1, 1], so the clip matters


class _GaussianEps(nnx.Module):
  """The exact noise predictor of x_0 ~ N(0, S^2 I), called like the U-Net (discrete process)."""

  def __init__(self, p: process.Process):
    self.p = p
    self.log_s = nnx.Param(jnp.log(jnp.float32(S)))

  def __call__(self, x, t_in, train=False, rngs=None):
    ns = self.p.noise_schedule
    t = (t_in + 1.0) / self.p.num_steps
    alpha = ns.marginal_alpha(t).reshape((-1,) + (1,) * (x.ndim - 1))
    sigma = ns.marginal_std(t).reshape(alpha.shape)
    return sigma * x / (alpha ** 2 * jnp.exp(2 * self.log_s[...]) + sigma ** 2)


def _published(p, graphdef, state, x_T, nfe, order, correcting, algorithm="dpmsolver++"):
  ns = p.noise_schedule
  net = lambda x, t: nnx.merge(graphdef, state)(x, p.solver_input(t))
  solver = DPMSolver(model_wrapper(net, ns, model_type="noise"), ns, algorithm_type=algorithm,
                     correcting_x0_fn=correcting)
  return solver.sample(x_T, steps=nfe, order=order, method="multistep", skip_type="time_uniform")


@pytest.fixture(scope="module")
def gaussian():
  p = process.Process(num_steps=1000)
  graphdef, state = nnx.split(_GaussianEps(p))
  x_T = jax.random.normal(jax.random.key(0), (8, 4, 4, 1))
  return p, graphdef, state, x_T


@pytest.mark.parametrize("kind,correcting", [("static", lambda x0, t: jnp.clip(x0, -1.0, 1.0)),
                                             ("dynamic", "dynamic_thresholding")])
def test_thresholding_is_the_published_correcting_x0_fn_for_dpm_solver_pp(gaussian, kind,
                                                                           correcting):
  p, graphdef, state, x_T = gaussian
  ours = samplers.solve(samplers.solver_method("dpm_solver++_2m"), p, graphdef, 10,
                        thresholding=kind)(state, x_T)
  theirs = _published(p, graphdef, state, x_T, 10, 2, correcting)
  plain = samplers.solve(samplers.solver_method("dpm_solver++_2m"), p, graphdef, 10)(state, x_T)
  np.testing.assert_allclose(np.asarray(ours), np.asarray(theirs), rtol=1e-4, atol=1e-4)
  assert float(jnp.max(jnp.abs(ours - plain))) > 0.1  # the correction is not a no-op here


def test_noise_prediction_methods_integrate_the_eps_of_the_corrected_x0(gaussian):
  # First order, both algorithms are DDIM steps; given the same (x0', eps') pair they agree.
  p, graphdef, state, x_T = gaussian
  ours = samplers.solve(samplers.solver_method("dpm_solver_1"), p, graphdef, 12,
                        thresholding="static")(state, x_T)
  data = _published(p, graphdef, state, x_T, 12, 1, lambda x0, t: jnp.clip(x0, -1.0, 1.0))
  np.testing.assert_allclose(np.asarray(ours), np.asarray(data), rtol=1e-3, atol=1e-4)
  # and the final samples stay in (a small margin around) the data range the clip enforces
  assert float(jnp.max(jnp.abs(ours))) < 1.05 < float(jnp.max(jnp.abs(
      samplers.solve(samplers.solver_method("dpm_solver_1"), p, graphdef, 12)(state, x_T))))


def test_bad_thresholding_names_the_field():
  c = base.get_config()
  c.sample.update(sampler="dpm_solver++_2m", thresholding="clip")
  with pytest.raises(ConfigError, match="sample.thresholding"):
    experiment.validate(c)
  c = base.get_config()
  c.solver.thresholding = "bogus"
  with pytest.raises(ConfigError, match="solver.thresholding"):
    experiment.validate(c)
  c = base.get_config()
  c.analytic.quality_samples = -1
  with pytest.raises(ConfigError, match="analytic.quality_samples"):
    experiment.validate(c)


class _MeanScorer:
  """Stands in for quality.Scorer: the 'metric' is the mean pixel of the streamed samples."""
  name = "mean_pixel"

  def __init__(self, config, workdir, dataset):
    del config, workdir, dataset

  def __call__(self, batches):
    images = np.concatenate(list(batches))
    return dict(value=float(images.mean()), num_samples=len(images), floor=0.5, reference="stub",
                extra={"fraction_confident_0.9": 0.25})


@pytest.fixture(scope="module")
def smoke_setup():
  config = ddpm_mnist.get_config("smoke")
  config.analytic.update(quality_samples=6, quality_batch=4, quality_ks=(2, 3))
  config.solver.update(quality_samples=6, quality_batch=4, nfes=(3,))
  setup = experiment.Setup(config)
  return setup, setup.model


def test_solver_quality_rows_score_each_method_on_the_same_noise(smoke_setup, tmp_path,
                                                                  monkeypatch):
  monkeypatch.setattr(quality, "Scorer", _MeanScorer)
  setup, model = smoke_setup
  graphdef, state = nnx.split(model)
  rows = reports.solver_quality(setup, graphdef, state, 7, str(tmp_path), "static")
  cfg = setup.config.solver
  assert [(r["method"], r["steps"]) for r in rows] == [(m, 3) for m in cfg.methods]
  rng = jax.random.key(cfg.seed + 1)
  x_T = jnp.concatenate([jax.random.normal(jax.random.fold_in(rng, i), (n, 28, 28, 1))
                         for i, n in ((0, 4), (1, 2))])
  for r in rows:
    images = samplers.solve(samplers.solver_method(r["method"]), setup.process, graphdef, 3,
                            samplers.solver_end_time(setup.process, 3), "static")(state, x_T)
    assert r["num_samples"] == 6 and r["thresholding"] == "static"
    np.testing.assert_allclose(r["value"], float(jnp.mean(images)), rtol=1e-4, atol=1e-6)
  table = (tmp_path / "solver" / "quality_step_0000007.md").read_text()
  assert "| NFE=3 |" in table and f"{rows[0]['value']:.2f} (0.25)" in table and "0.50" in table


def test_analytic_quality_rows_match_an_independent_ddim_run(smoke_setup, tmp_path, monkeypatch):
  monkeypatch.setattr(quality, "Scorer", _MeanScorer)
  setup, model = smoke_setup
  config = setup.config
  eps = reports.eps_partial(model, setup.process)
  gamma = np.full(config.diffusion.num_steps, 0.5)
  rows = reports.analytic_quality(setup, eps, gamma, 7, str(tmp_path))
  labels = ["DDPM (beta_tilde)", "Analytic-DDPM", "DDIM (eta 0)", "Analytic-DDIM"]
  assert [(r["label"], r["steps"]) for r in rows] == [(l, k) for k in (2, 3) for l in labels]
  # DDIM (eta 0) is deterministic: recompute it from the same x_T of each batch
  rng = jax.random.key(config.analytic.quality_seed)
  x_T = jnp.concatenate([jax.random.normal(jax.random.fold_in(jax.random.fold_in(rng, i), 0),
                                           (n, 28, 28, 1)) for i, n in ((0, 4), (1, 2))])
  for k in (2, 3):
    traj = reverse.make_trajectory("even", k, config.diffusion.num_steps)
    images = reverse.sample(eps, x_T, jax.random.key(9), setup.process.alphas_cumprod, traj,
                            np.zeros(len(traj)), "ddim", 0.0, True)
    r = next(r for r in rows if r["label"] == "DDIM (eta 0)" and r["steps"] == k)
    np.testing.assert_allclose(r["value"], float(jnp.mean(images)), rtol=1e-4, atol=1e-6)
  ddpm = [r["value"] for r in rows if r["label"] == "DDPM (beta_tilde)"]
  ddim = [r["value"] for r in rows if r["label"] == "DDIM (eta 0)"]
  assert all(abs(a - b) > 1e-6 for a, b in zip(ddpm, ddim))  # the DDPM rows add noise per step
  assert (tmp_path / "analytic" / "quality_step_0000007.json").exists()


def test_fid_columns_without_inception_weights_fail_at_start():
  c = base.get_config()
  c.data.name = "synthetic"
  c.reports = ("solver",)
  c.solver.quality_samples = 10
  with pytest.raises(ConfigError, match="eval.inception_weights"):
    experiment.validate(c)
  c.eval.inception_weights = "/some/weights.npz"
  experiment.validate(c)  # the file itself is checked when the report loads it


def test_a_dp_trajectory_for_deterministic_ddim_is_refused_before_any_sampling():
  """The DP trajectory minimises the NLL bound, which DDIM with eta = 0 does not have: validate
  says so for sample.* and for each eval.samplers entry (not after the first rows are scored)."""
  c = base.get_config()
  c.sample.update(sampler="ddim", variance="analytic", trajectory="dp", eta=0.0)
  with pytest.raises(ConfigError, match="sample.eta > 0"):
    experiment.validate(c)
  c.sample.eta = 0.5
  experiment.validate(c)
  c = base.get_config()
  c.sample.update(trajectory="dp", eta=0.0)
  c.eval.samplers = ("ddpm:10:analytic", "ddim:10:analytic")
  with pytest.raises(ConfigError, match="sample.eta > 0"):
    experiment.eval_samplers(c)
