"""Cascaded boosting of two binary RBMs on 4x4 bars-and-stripes, evaluated exactly.

Command:   python main.py --config=configs/ebm/boost_bars.py --workdir=runs/boost_bars
           python main.py --config=configs/ebm/boost_bars.py:smoke --workdir=/tmp/boost_bars_smoke
Hardware:  2-core CPU container: 32 s measured (load from another agent's tests), a rerun 8 s.
Setting:   data: the 30 distinct 4x4 bars-and-stripes patterns, pixels in {0, 1}; training
           batches of 30 drawn uniformly from them, the test set is each pattern once. Stack:
           RBM(16 -> 20), then RBM(20 -> 20) trained on the first one's mean-field codes
           p(h = 1 | x) (the demo's choice); stopping threshold 0. The demo's RBM settings (CD-20,
           plain SGD lr 0.1; batch 256 there; ../shared/papers/sources/boosting.md) but: 10,000
           steps per stage with the learning rate decayed linearly to 0; RBM 1 starts at
           W = N(0, 0.01^2), b = logit of the pixel means, c = 0; RBM 2 starts as RBM 1 flipped
           (W^T, b <-> c, plus 4 zero columns: its visible marginal is then exactly RBM 1's hidden
           marginal, so its increment starts at 0; Hinton, Osindero & Teh 2006). From a random
           start CD-20 left the second increment negative (-0.09 nats in a 4,000-step,
           constant-lr trial; the stage was refused): RBM 1's hidden marginal was already within
           0.11 nats (KL from the aggregate posterior) of the best prior any stage 2 could be.
           Evaluation is exact: log Z by enumeration (2^16 visible states for RBM 1, 2^20 for
           RBM 2), the bound and the second stage's increment summed over the 2^20 binary states
           of h_1 under the exact factorial posterior, the boosted log-likelihood by enumeration
           of h_1.
Expected:  measured (seed 0, 2026-12-02, the command above): bound -3.516 nats per pattern (exact,
           no Monte Carlo), exact log-likelihood of the boosted stack -3.512, second-stage
           increment +0.033 (kept), RBM 1 alone -3.549; the optimum is -log 30 = -3.401. Seeds 1
           and 2: increments +0.019 and +0.044, bounds -3.547 and -3.520.
Paper:     no bars-and-stripes number in the paper or the demo (the demo runs MNIST stacks only);
           the issue pins the setting, not a value.
Variants:  `:smoke` (two RBMs of 6 hidden units, 30 CD-2 steps each; its second stage may be
           refused) runs in seconds.
"""

from ml_collections import ConfigDict

from configs.ebm import base
from configs.variant import select


def sgd(lr: float, momentum: float = 0.0) -> ConfigDict:
  return ConfigDict(dict(name="sgd", lr=lr, momentum=momentum, schedule="constant",
                         warmup_steps=0, grad_clip=0.0))


def get_config(arg=None):
  c = base.get_config()
  c.experiment = "boost"
  c.data = ConfigDict(dict(
      name="bars_stripes", size=4,   # ebm/boost.py: or any common.data image dataset, binarised
      threshold=0.5,                 # binarisation of image datasets (pixel / max > threshold)
      batch_size=30, num_train=0, num_test=0,   # 0: all examples
  ))
  c.boost = ConfigDict(dict(
      stack=("rbm", "rbm"),          # bottom-up kinds of ebm.meta.META: rbm, vae, gmm (top only)
      num_latent=(20,),              # per stage, or one value for all
      num_steps=(),                  # per stage, or () for each kind's num_steps
      threshold=0.0,                 # keep stage k >= 2 only if its increment > threshold
      codes="mean",                  # what is passed up for training: mean | sample
  ))
  c.rbm = ConfigDict(dict(
      num_steps=10_000, cd_steps=20, persistent=False,
      init="transpose",  # stage k >= 2 starts as the RBM below flipped (random: W = 0, b = logit)
      init_std=0.01,     # N(0, init_std^2) noise added to the initial W
      optim=sgd(0.1)))
  c.rbm.optim.schedule = "linear"
  c.vae = ConfigDict(dict(num_steps=20_000, hidden=500, depth=2, decoder="auto", sigma=0.5,
                          kl_weight=0.25, optim=base.adam(1e-3)))
  c.vae.optim.b2 = 0.999
  c.gmm = ConfigDict(dict(num_steps=200, num_components=10, reg=1e-4))
  c.train.update(num_steps=1, log_every=2000, ckpt_every=5000, keep_checkpoints=1)
  c.eval = ConfigDict(dict(
      batch_size=500,
      num_samples=16,                # Monte Carlo chains per example (increments not enumerated)
      exact_likelihood=True,         # enumerate the boosted p(x) where ebm.cascade can
      max_exact=20,                  # enumerate 2^n states up to n = max_exact (log Z, Delta_2)
      max_exact_joint=24,            # messages of the exact likelihood of deeper stacks
      ais_chains=500, ais_betas=5000, gibbs_steps=2000, iw_samples=100,
      num_select=0,                  # training examples the stopping rule uses (0: all)
      num_images=64,
  ))
  return select(c, arg, __file__, smoke=smoke)


def smoke(c: ConfigDict) -> ConfigDict:
  """Seconds on a CPU: RBMs of 6 hidden units, 30 CD-2 steps each (base.smoke is the GRBM's)."""
  c.boost.num_latent = (6,)
  c.rbm.update(num_steps=30, cd_steps=2)
  c.train.update(log_every=10, ckpt_every=30)
  c.eval.num_images = 16
  return c
