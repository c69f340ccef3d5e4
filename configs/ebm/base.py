"""Base config of the energy-based family; experiment configs override only what differs.

The defaults are the official Gaussian-RBM checkerboard setting (../shared/papers/sources/bism.md,
`grbm_toy.yml`): 4 hidden units, batch 100, Adam lr 1e-3 with betas (0.9, 0.95), DSM sigma 0.05,
MDSM geometric 0.05 -> 1.0 with sigma_0 = 0.05, BiSM K = 5, N = 5, Gumbel-softmax temperature 0.1,
NCE nu = 1, VNCE 5 particles; the official run is 100k iterations (configs shrink it to the CPU).
"""

from ml_collections import ConfigDict

from configs.variant import select


def adam(lr: float) -> ConfigDict:
  """The official optimiser: Adam with betas (0.9, 0.95), constant learning rate."""
  return ConfigDict(dict(name="adam", lr=lr, b1=0.9, b2=0.95, eps=1e-8, weight_decay=0.0,
                         schedule="constant", warmup_steps=0, grad_clip=0.0))


def get_config() -> ConfigDict:
  c = ConfigDict()
  c.family = "ebm"
  c.seed = 0                 # seeds seed .. seed + train.num_seeds - 1, vmapped
  c.method = "dsm"           # ebm/experiment.py METHODS: cd1 cd5 cd10 pcd1 ssm dsm mdsm nce
  #                            bissm bidsm bimdsm vnce; ml (exact maximum likelihood, reference)
  c.num_devices = 1          # devices the batch is sharded over (0: all)
  c.data = ConfigDict(dict(
      name="checkerboard",   # common/data.py: uniform on the even cells of a grid over [0, 1]^2
      grid_size=2,
      seed=0,                # the test set (and the training draws of num_fit) of this data seed
      batch_size=100,
      num_test=10_000,       # the official test set size
      num_fit=10_000,        # training draws for NCE's noise Gaussian and the Gaussian reference
  ))
  c.model = ConfigDict(dict(num_hidden=4))
  c.posterior = ConfigDict(dict(temperature=0.1))   # the linear Bernoulli q of BiSM / VNCE
  c.loss = ConfigDict(dict(
      sigma=0.05,                                    # dsm, bidsm
      sigma_begin=0.05, sigma_end=1.0, sigma_spacing="geometric", sigma0=0.05,   # mdsm, bimdsm
      projection="rademacher",                       # ssm, bissm
      nu=1,                                          # nce, vnce: noise samples per data point
      inner_steps=5,                                 # BiSM K (plain posterior steps)
      unroll_steps=5,                                # BiSM N (differentiated posterior steps)
      lower="kl",                                    # BiSM lower level: kl | fisher
      shared_noise=False,
      num_particles=5,                               # vnce
      vages_particles=2,                             # vages_*: L posterior draws (>= 2)
      bandwidth=0.1,                                 # vages_ksd: RBF kernel bandwidth h
  ))
  c.optim = adam(1e-3)
  c.posterior_optim = adam(1e-3)   # the official lower-level optimiser: the model's type and lr
  c.train = ConfigDict(dict(num_steps=100_000, log_every=1000, ckpt_every=10_000, num_seeds=1,
                            keep_checkpoints=2, tensorboard=False))
  c.eval = ConfigDict(dict(every=10_000, batch_size=10_000))
  return c


def smoke(c: ConfigDict) -> ConfigDict:
  """Shrinks any ebm config to a seconds-long CPU run (a few steps, a small test set, 2 seeds)."""
  c.data.update(batch_size=20, num_test=500, num_fit=500)
  c.loss.update(inner_steps=2, unroll_steps=2)
  c.train.update(num_steps=6, log_every=3, ckpt_every=3, num_seeds=2)
  c.eval.update(every=3, batch_size=500)
  return c


def variant(c: ConfigDict, arg: str | None, filename: str) -> ConfigDict:
  """The `:arg` suffix of an ebm config file: none, or 'smoke'."""
  return select(c, arg, filename, smoke=smoke)
