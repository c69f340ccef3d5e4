"""Multi-host: two processes (one CPU device each, joined by jax.distributed over localhost) train
like one process with two devices: same batches, same parameters, one shared workdir.

One device per process: simulated CPU devices inside a loaded process can miss XLA's 40 s
collective rendezvous and abort (see ENVIRONMENT notes); across processes gloo has no such limit."""

import os
import socket
import subprocess
import sys

import jax
import numpy as np

from tests import helpers
from tests.test_dpm_main import _final_params

ARGS = ["--config=configs/dpm/ddpm_mnist.py:smoke", *helpers.TINY_DPM,
        "--config.train.num_steps=6", "--config.train.ckpt_every=6", "--config.train.eval_every=6",
        "--config.train.log_every=2"]


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _cause(stderr: str) -> str:
  """The log lines before Python's crash dump (whose module list would fill the message)."""
  return stderr.split("Fatal Python error")[0][-4000:]


def test_two_processes_train_like_one_process(tmp_path):
  multi, single = str(tmp_path / "multi"), str(tmp_path / "single")
  port = _free_port()
  procs = []
  for pid in range(2):
    env = helpers.env(devices=1)
    env.update(JAX_COORDINATOR_ADDRESS=f"localhost:{port}", JAX_NUM_PROCESSES="2",
               JAX_PROCESS_ID=str(pid))
    procs.append(subprocess.Popen(
        [sys.executable, os.path.join(helpers.ROOT, "main.py"), *ARGS, f"--workdir={multi}",
         "--multihost"], cwd=helpers.ROOT, env=env, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True))
  outs = [p.communicate(timeout=500) for p in procs]
  for p, (out, err) in zip(procs, outs):
    assert p.returncode == 0, f"rc={p.returncode}\n{_cause(err)}"
  assert "Training steps 0..6 on 2 device(s)" in outs[0][1]
  result = helpers.run_main(*ARGS, f"--workdir={single}", devices=2)
  assert result.returncode == 0, helpers.describe(result)
  step_a, params_a = _final_params(multi)
  step_b, params_b = _final_params(single)
  assert step_a == step_b == 6
  for a, b in zip(jax.tree.leaves(params_a), jax.tree.leaves(params_b)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  assert os.path.exists(os.path.join(multi, "samples", "step_0000006.png"))
