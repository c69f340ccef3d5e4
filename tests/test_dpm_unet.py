"""The DDPM U-Net: shapes, the paper's parameter count, time conditioning, dropout."""

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from configs.dpm import ddpm_cifar10, ddpm_mnist
from dpm import experiment
from dpm.unet import UNet, count_params, timestep_embedding


def test_cifar10_configuration_has_35_7m_parameters():
  config = ddpm_cifar10.get_config()
  model = nnx.eval_shape(lambda: experiment.build_model(config, (32, 32, 3), 0))
  assert abs(count_params(model) - 35.7e6) / 35.7e6 < 0.01, count_params(model)
  out = jax.eval_shape(lambda m, x, t: m(x, t), model, jax.ShapeDtypeStruct((2, 32, 32, 3), jnp.float32),
                       jax.ShapeDtypeStruct((2,), jnp.float32))
  assert out.shape == (2, 32, 32, 3)


def test_mnist_model_shapes_and_time_dependence():
  config = ddpm_mnist.get_config("smoke")
  model = experiment.build_model(config, (28, 28, 1), 0)
  # Residual-branch and output convs are zero-initialised (as in DDPM), which makes the initial
  # network time-independent; give every parameter random values to see the conditioning.
  graphdef, params = nnx.split(model, nnx.Param)
  leaves, treedef = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.key(1), len(leaves))
  leaves = [0.2 * jax.random.normal(k, p.shape) for k, p in zip(keys, leaves)]
  model = nnx.merge(graphdef, jax.tree.unflatten(treedef, leaves))
  x = jax.random.normal(jax.random.key(0), (3, 28, 28, 1))
  forward = nnx.jit(lambda m, x, t: m(x, t))
  out0 = forward(model, x, jnp.array([0.0, 0.0, 0.0]))
  out1 = forward(model, x, jnp.array([0.0, 500.0, 999.0]))
  assert out0.shape == x.shape
  np.testing.assert_allclose(out0[0], out1[0], atol=1e-6)
  assert not np.allclose(out0[1], out1[1])


def test_dropout_only_in_training():
  model = UNet(image_size=8, channels=1, ch=8, ch_mult=(1, 2), num_res_blocks=1,
               attn_resolutions=(4,), dropout=0.5, num_groups=4, rngs=nnx.Rngs(0))
  for block in model.down:  # make the residual branch and the output matter (both zero-init)
    if hasattr(block, "res"):
      block.res.conv2.kernel[...] = jnp.ones_like(block.res.conv2.kernel[...])
  model.conv_out.kernel[...] = jnp.ones_like(model.conv_out.kernel[...])
  x, t = jnp.ones((2, 8, 8, 1)), jnp.zeros(2)
  forward = nnx.jit(lambda m, x, t, key, train: m(x, t, train=train, rngs=key), static_argnums=4)
  np.testing.assert_array_equal(forward(model, x, t, jax.random.key(1), False),
                                forward(model, x, t, jax.random.key(2), False))
  a = forward(model, x, t, jax.random.key(1), True)
  b = forward(model, x, t, jax.random.key(2), True)
  assert not np.allclose(a, b)


def test_timestep_embedding_matches_formula():
  emb = timestep_embedding(jnp.array([0.0, 10.0]), 8)
  freqs = np.exp(-np.log(10000) * np.arange(4) / 3)
  np.testing.assert_allclose(emb[1], np.concatenate([np.sin(10 * freqs), np.cos(10 * freqs)]),
                             rtol=1e-5)
