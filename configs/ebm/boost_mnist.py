"""Cascaded boosting on binarised MNIST (mnist_5k): the demo's stacks of RBMs and VAEs.

Command:   python main.py --config=configs/ebm/boost_mnist.py --workdir=runs/boost_mnist
               --config.boost.stack="('vae','vae','vae','vae')"   (or any stack of ebm.meta.META)
           python -m common.sweep --config=configs/ebm/boost_mnist.py --workdir=runs/boost_mnist
               (the stacks of get_sweep: [VAE x 4], [RBM, RBM, VAE x 2], [RBM x 4], VAE + GMM,
               and one VAE with as many parameters as [VAE x 4])
Hardware:  2-core CPU container: 1.5-3.5 min a stack (ebm/README.md), or one GPU.
Setting:   mnist_5k (4,500 train / 500 test, pixels binarised at 0.5), batch 256; the demo's models
           (../shared/papers/sources/boosting.md): RBM(784 -> 20) then RBM(20 -> 20), CD-20 with
           SGD lr 0.1, mean-field codes passed up; VAE-Bernoulli (MLP 2 x 500 ReLU, z 20, trained
           with KL weight 0.25, evaluated with the true ELBO), VAE-Gauss (20 -> 20, 2 x 500, sigma
           0.5) above a VAE; Adam lr 1e-3; a GMM (K = 10, full covariance) on VAE codes. Deviations:
           4 stages instead of 6, 2,000 steps per stage (about 110 epochs of 4,500) instead of 50
           to 100 epochs of 50,000, no BatchNorm, 10 EM iterations for the GMM instead of sklearn's
           default 100, RBM 2+ starts from the RBM below flipped where the sizes allow (stage 3 of
           [RBM x 4] on); the stopping threshold 0 (the demo's val-ELBO threshold is not used). The
           bound's RBM terms use log Z by enumeration of the 2^20 hidden states (exact), the
           second increment is enumerated over h_1, deeper ones are Monte Carlo (16 chains per
           test digit); the boosted model's exact log-likelihood is off here (500 x 2^20 x 784
           multiply-adds per stack).
Expected:  ebm/README.md's MNIST table (2026-12-03): bound -137.14 (RBM, RBM; exact), -136.44
           (VAE x 2), -134.76 (VAE + GMM) against -149.60 for one VAE with as many parameters;
           results.json gives `bound`, `increments` and `iwae_bound` per stack.
Paper:     the paper's table values were not found (notes: ../shared/papers/sources/boosting.md);
           the demo reports bounds on the full 10,000-digit MNIST test set, not on mnist_5k.
Variants:  `:smoke` (256 training digits, tiny models, 10 steps per stage) runs in seconds.
"""

from configs.ebm import boost_bars
from configs.variant import select

STACKS = {
    "vae_x4": ("vae", "vae", "vae", "vae"),
    "rbm_rbm_vae_vae": ("rbm", "rbm", "vae", "vae"),
    "rbm_x4": ("rbm", "rbm", "rbm", "rbm"),
    "vae_gmm": ("vae", "gmm"),
}
# One VAE (784 -> 2 x h -> 20) with as many parameters as [VAE x 4]: 2 h^2 + 1632 h + 824 =
# 1,316,824 + 3 x 552,060 = 2,973,004 gives h = 878.
BASELINE_HIDDEN = 878


def get_config(arg=None):
  c = boost_bars.get_config()
  c.data.update(name="mnist_5k", threshold=0.5, batch_size=256)
  c.boost.update(stack=STACKS["rbm_rbm_vae_vae"], num_latent=(20,))
  c.rbm.update(num_steps=2000)
  c.rbm.optim.schedule = "constant"
  c.vae.update(num_steps=2000)
  c.gmm.update(num_steps=10)
  c.train.update(log_every=500, ckpt_every=1000)
  c.eval.update(exact_likelihood=False, num_images=64)
  return select(c, arg, __file__, smoke=smoke)


def smoke(c):
  """256 training digits, 32 test digits, 8 latent units, 10 steps per stage."""
  c.data.update(num_train=256, num_test=32, batch_size=32)
  c.boost.update(stack=("rbm", "rbm", "vae"), num_latent=(8,))
  c.rbm.update(num_steps=10, cd_steps=2)
  c.vae.update(num_steps=10, hidden=32)
  c.train.update(log_every=5, ckpt_every=10)
  c.eval.update(num_samples=4, iw_samples=4, num_images=4)
  return c


def get_sweep(arg=None):
  """The paper's stacks and the single-VAE baseline of as many parameters."""
  runs = [{"boost.stack": s} for s in STACKS.values()]
  runs.append({"boost.stack": ("vae",), "vae.hidden": BASELINE_HIDDEN})
  return runs
