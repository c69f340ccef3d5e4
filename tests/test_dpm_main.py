"""main.py end to end on the DDPM runner: resume after a kill, clear errors for bad input, modes."""

import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

import main
from common.checkpoint import Checkpointer
from configs.dpm import ddpm_mnist
from tests import helpers

CONFIG = "--config=configs/dpm/ddpm_mnist.py:smoke"
RESUME_ARGS = [CONFIG, *helpers.TINY_DPM, "--config.train.num_steps=20",
               "--config.train.ckpt_every=10", "--config.train.eval_every=1000",
               "--config.train.log_every=10"]


def _final_params(workdir):
  ckpt = Checkpointer(os.path.join(workdir, "checkpoints"))
  step = ckpt.latest_step()
  # Restore the raw arrays of the params subtree onto this process's first device, whatever
  # devices (or processes) saved them.
  import orbax.checkpoint as ocp
  path = os.path.join(ckpt.step_dir(step), "state")
  one = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=one),
                        ocp.StandardCheckpointer().metadata(path).item_metadata)
  restored = ocp.StandardCheckpointer().restore(path, target)
  return step, restored["params"]


def test_killed_run_resumes_to_the_same_parameters(tmp_path):
  full, killed = str(tmp_path / "full"), str(tmp_path / "killed")
  result = helpers.run_main(*RESUME_ARGS, f"--workdir={full}")
  assert result.returncode == 0, helpers.describe(result)

  proc = subprocess.Popen([sys.executable, os.path.join(helpers.ROOT, "main.py"), *RESUME_ARGS,
                           f"--workdir={killed}"], cwd=helpers.ROOT, env=helpers.env(None),
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  ckpt = Checkpointer(os.path.join(killed, "checkpoints"))
  deadline = time.time() + 400
  while not (os.path.isdir(ckpt.step_dir(10)) and ckpt.is_finalized(10)) and proc.poll() is None \
      and time.time() < deadline:
    time.sleep(0.02)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  steps = sorted(int(d) for d in os.listdir(os.path.join(killed, "checkpoints")) if d.isdigit())
  assert 10 in steps and 20 not in steps, f"the run was not stopped mid-way: {steps}"

  result = helpers.run_main(*RESUME_ARGS, f"--workdir={killed}")  # the same command again
  assert result.returncode == 0, helpers.describe(result)
  assert "Restored checkpoint" in result.stderr and "4 device(s)" in result.stderr
  step_a, params_a = _final_params(full)
  step_b, params_b = _final_params(killed)
  assert step_a == step_b == 20
  for a, b in zip(jax.tree.leaves(params_a), jax.tree.leaves(params_b)):
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)

  # The other modes reuse the latest checkpoint of the workdir. They run in this process through
  # main.launch (the command line itself is exercised above and below).
  def config(**sample):
    c = helpers.apply_overrides(ddpm_mnist.get_config("smoke"))
    c.sample.update(sample)
    return c

  for sampler in ("ddpm", "dpm_solver++_2m"):
    main.launch(config(sampler=sampler, nfe=4), killed, "sample")
  samples = sorted(f for f in os.listdir(os.path.join(killed, "samples")) if f.endswith(".npy"))
  assert samples == ["step_0000020_ddpm_beta_even_K3.npy", "step_0000020_dpm_solver++_2m_nfe4.npy"]
  for name in samples:
    assert np.isfinite(np.load(os.path.join(killed, "samples", name))).all()
  main.launch(config(), killed, "eval")
  assert os.path.exists(os.path.join(killed, "eval_step_0000020.json"))
  reports = config()
  reports.reports = ("analytic", "solver")
  main.launch(reports, killed, "report")
  assert os.path.exists(os.path.join(killed, "analytic", "nll_step_0000020.json"))
  assert os.path.exists(os.path.join(killed, "solver", "error_step_0000020.json"))


def test_a_report_is_redone_when_its_config_or_checkpoints_change(tmp_path):
  from dpm import experiment
  config = ddpm_mnist.get_config("smoke")
  key = experiment.report_key(config, str(tmp_path))
  assert experiment.report_key(config, str(tmp_path)) == key
  os.makedirs(tmp_path / "checkpoints" / "6")
  with_ckpt = experiment.report_key(config, str(tmp_path))
  assert with_ckpt != key
  config.analytic.ks = (2,)
  assert experiment.report_key(config, str(tmp_path)) != with_ckpt


@pytest.mark.parametrize("override,message", [
    ("--config.optim.lr=-0.001", "optim.lr=-0.001 is invalid: expected a number > 0"),
    ("--config.data.name=mnist_6k", "data.name='mnist_6k' is not a known dataset; valid names:"),
    ("--config.diffusion.schedule=sqrt", "diffusion.schedule='sqrt' is not a known beta schedule"),
    ("--config.sample.num_steps=5000", "sample.num_steps=5000 is invalid"),
    ("--config.optim.no_such_key=1", "bad config override"),
])
def test_bad_config_fails_at_start_naming_the_field(tmp_path, override, message):
  result = helpers.run_main(CONFIG, override, f"--workdir={tmp_path}")
  assert result.returncode != 0
  assert message in result.stderr, helpers.describe(result)
  assert "Traceback" not in result.stderr, helpers.describe(result)
  assert not os.path.exists(tmp_path / "checkpoints")


def test_sample_without_checkpoint_is_a_clear_error(tmp_path):
  result = helpers.run_main(CONFIG, *helpers.TINY_DPM, f"--workdir={tmp_path}", "--mode=sample")
  assert result.returncode == 1
  assert "no checkpoint in" in result.stderr and "Traceback" not in result.stderr
