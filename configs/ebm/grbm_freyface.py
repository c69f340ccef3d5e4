"""Gaussian RBM (400 hidden units) on the Frey faces, test log-likelihood by AIS (issue 14).

Command:   python main.py --config=configs/ebm/grbm_freyface.py --workdir=runs/ebm_frey_bidsm \
               --config.data.path=/path/to/frey_rawface.mat        (or set FREY_FACE_PATH, or put
               the file at ~/.cache/jax-papers/frey_rawface.mat; --config.method=dsm, or
               --config.method=cd1 --config.eval.select=final)
           python -m common.sweep --config=configs/ebm/grbm_freyface.py --workdir=runs/ebm_frey
               (get_sweep: BiDSM's N in {0, 1, 5, 10} at K = 5 and K in {0, 1, 10} at N = 5, the
               official `freyface_exps.py`, and DSM and CD-1 at the same budget; CD-1 with
               --config.eval.select=final, as its loss is a surrogate, not a criterion)
Data:      the user's `frey_rawface.mat` (https://cs.nyu.edu/~roweis/data/frey_rawface.mat,
           variable 'ff', uint8 [560, 1965]); it is not on this machine and cannot be downloaded
           here, so the full config was not run (ebm/NOTES_frey.md).
Hardware:  one GPU is comfortable; on the 2-core CPU container expect tens of minutes per run
           (20,000 BiDSM steps of 100 x 560 x 400, then AIS over 2,000 chains x 2,000 betas twice:
           the selected and the final model).
Setting:   the official one (`grbm_freyface.yml`, `grbm_freyface_bidsm.yml`,
           `datasets/freyface.py` of baofff/BiSM; ../shared/papers/sources/bism.md): 1,965 faces
           28 x 20 scaled by 1/255, split in file order 1,400 / 300 / 265 (train / validation /
           test), flattened to 560, no noise and no standardising; GRBM with 400 hidden units and
           learned sigma; batch 100; 20,000 iterations; Adam lr 2e-4 constant, betas (0.9, 0.95),
           the posterior's optimiser the same; BiDSM sigma = 0.3, N = 5, K = 5, linear Bernoulli
           posterior with Gumbel-softmax temperature 0.1; DSM sigma 0.3. Evaluation: AIS for log Z
           with 2,000 chains and betas = linspace(0, 1, 2000) from the base GRBM with W = 0 and
           hidden bias 0 sharing b and sigma (ebm/ais.py); the model kept is the one of lowest
           validation loss (the method's own loss on the 300 validation faces) among the 10
           evaluations, every 2,000 steps (`eval.select = 'val_loss'`, the official "best model by
           val loss at 10 checkpoints"; CD and PCD, whose loss is a gradient surrogate, must use
           'final'). One seed, as the official code.
Expected:  not measured (no file here); results.json gives the AIS test log-likelihood with its
           standard error, the selected step and the final model's value.
Paper:     no Frey-face table in the official code or the accessible text (bism.md, "Reported
           numbers"); the paper's claim is that BiDSM is comparable to DSM with the exact free
           energy.
Variants:  `:smoke` does NOT read Frey faces (absent here): it runs the same image path (flattened
           pixels in [0, 1], AIS, validation selection) on the offline stand-in `digits`
           (scikit-learn's 8 x 8 digits, 64 pixels / 16; the last 200 training digits held out as
           validation), with 12 hidden units, so that log Z is also enumerated exactly beside AIS
           (results.json `log_z_exact`), 6 steps, 2 vmapped seeds, AIS 200 chains x 500 betas.
           It is a check that the path runs, not a Frey-face result.
"""

from configs.ebm import base
from configs.variant import select

NUM_UNROLL = (0, 1, 5, 10)     # official sweep of N at K = 5
NUM_INNER = (0, 1, 5, 10)      # official sweep of K at N = 5


def get_config(arg=None):
  c = base.get_config()
  c.method = "bidsm"
  # Image runs use whole splits: num_test and num_fit only document the Frey-face sizes here.
  c.data.update(name="frey_face", batch_size=100, num_test=265, num_fit=1400)
  c.data.path = ""        # "" = $FREY_FACE_PATH, else ~/.cache/jax-papers/frey_rawface.mat
  c.data.num_val = 0      # frey_face has its own 300-face validation split
  c.model.num_hidden = 400
  c.loss.update(sigma=0.3, inner_steps=5, unroll_steps=5)
  c.optim = base.adam(2e-4)
  c.posterior_optim = base.adam(2e-4)
  c.train.update(num_steps=20_000, log_every=500, ckpt_every=2000, num_seeds=1)
  c.eval.update(every=2000, batch_size=500)
  c.eval.select = "val_loss"
  c.eval.ais_chains = 2000
  c.eval.ais_betas = 2000
  return select(c, arg, __file__, smoke=smoke)


def smoke(c):
  """The Frey-face path on the offline stand-in `digits` (see the module docstring)."""
  c = base.smoke(c)
  c.data.update(name="digits", num_val=200)
  c.model.num_hidden = 12
  c.eval.update(ais_chains=200, ais_betas=500)
  return c


def get_sweep(arg=None):
  """The official BiDSM sweep (N at K = 5, K at N = 5; the shared N = K = 5 once), DSM and CD-1."""
  runs = [{"method": "bidsm", "loss.unroll_steps": n, "loss.inner_steps": 5} for n in NUM_UNROLL]
  runs += [{"method": "bidsm", "loss.unroll_steps": 5, "loss.inner_steps": k}
           for k in NUM_INNER if k != 5]
  return runs + [{"method": "dsm"}, {"method": "cd1", "eval.select": "final"}]
