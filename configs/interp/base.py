"""Base config of the neuron-consistency family (interp/); experiment configs override what differs.

Settings the papers (arXiv 1708.05493, 1901.09035) do not publish are chosen here and explained in
interp/README.md ("Settings chosen"). Images are attacked in [0, 1] (common.data's [-1, 1] mapped by
(x + 1) / 2); every budget below is in those units.
"""

from ml_collections import ConfigDict


def _attack(**kw) -> ConfigDict:
  """An attack block: interp.attacks.ATTACKS[name] on interp.training.ATTACK_LOSSES[loss]."""
  block = dict(name="pgd", loss="untargeted", eps=0.2, step_size=0.05, num_steps=7,
               random_start=True)
  block.update(kw)
  return ConfigDict(block)


def get_config() -> ConfigDict:
  c = ConfigDict()
  c.family = "interp"
  c.seed = 0
  c.data = ConfigDict(dict(name="digits", batch_size=64, seed=0, dequantize=False,
                           random_flip=False, tfds_data_dir=""))
  # channels=() / hidden=0: the preset of data.name (interp.models.PRESETS).
  c.model = ConfigDict(dict(channels=(), hidden=0, batch_norm=True,
                            layer="fc1"))      # phi of the consistent loss
  c.optim = ConfigDict(dict(name="adam", lr=3e-3, warmup_steps=100, schedule="cosine", b1=0.9,
                            b2=0.999, eps=1e-8, weight_decay=0.0, grad_clip=0.0))
  c.train = ConfigDict(dict(
      modes=("standard", "adversarial", "consistent"),  # one stage each: workdir/<mode>/
      num_seeds=3,          # independently initialised models per mode, vmapped in one program
      num_steps=2000, log_every=100, ckpt_every=500, ema_decay=0.99, keep_checkpoints=2,
      tensorboard=True))
  # x* made inside the training step (eval-mode batch statistics), for adversarial / consistent.
  c.attack = _attack()
  c.consistent = ConfigDict(dict(
      lambda_c=0.1,          # weight of the distance term
      distance="squared"))   # squared: ||phi(x) - phi(x*)||^2; normalized: of phi / ||phi||
  c.report = ConfigDict(dict(
      attack=_attack(eps=0.2, step_size=0.02, num_steps=20),  # white-box and transfer x*
      split="train",        # the probe pool whose top-k inputs define each neuron's consistency
      num_examples=0,       # 0: the whole split; else a random subset (report.seed)
      k=20,
      layers=("fc1", "conv2"),
      similarities=("identity", "features"),  # A: identity, 'file' (similarity_path), 'features'
      similarity_path="",
      reference_mode="standard",  # 'features': A from class means of this mode's seed-0 model
      batch_size=400,
      picture_neurons=4,
      picture_k=8,
      seed=1))
  return c


def smoke(c: ConfigDict) -> ConfigDict:
  """Shrinks any interp config to a seconds-long CPU run on the 8x8 digits (same code path).

  Data, model size, optimiser, budgets and sizes become the same for every config's smoke (the
  digits budgets, since the smoke runs on digits), so their programs are the same and the
  compilation cache serves all smokes after the first; modes, layers and similarities stay.
  """
  base = get_config()
  c.data = base.data
  c.data.batch_size = 16
  c.model.update(channels=(4, 8), hidden=16)
  c.optim = base.optim
  c.optim.warmup_steps = 1
  c.train.update(num_seeds=2, num_steps=3, log_every=3, ckpt_every=3, ema_decay=0.99)
  c.attack = _attack(num_steps=2)
  c.report.attack = _attack(eps=0.2, step_size=0.02, num_steps=2)
  c.report.update(num_examples=64, k=4, batch_size=32, picture_neurons=2, picture_k=3)
  return c
