"""The `checkerboard` toy: uniform on the cells (i, j), i + j even, of an n x n grid over [0, 1]^2.

Truths: every point lies in an even cell; the cells are equally likely; the marginals are uniform
(for even n every column and row holds n / 2 even cells); within a cell the position is uniform.
Chi-square tests at fixed seeds with a 1e-3 significance level.
"""

import ml_collections
import numpy as np
import pytest
from scipy import stats

from common.data import get_dataset
from common.errors import ConfigError


def draw(grid_size=None, n=40_000, seed=0):
  config = ml_collections.ConfigDict({"name": "checkerboard", "num_test": 1000})
  if grid_size is not None:
    config.grid_size = grid_size
  ds = get_dataset(config)
  return ds, ds.sampler(np.random.default_rng(seed), n)


@pytest.mark.parametrize("grid_size", [None, 2, 3, 4])
def test_points_fill_the_even_cells_uniformly(grid_size):
  ds, x = draw(grid_size)
  n = grid_size or 2
  assert ds.shape == (2,) and x.shape == (40_000, 2)
  assert np.all((x >= 0) & (x <= 1))
  cell = np.floor(x * n).astype(int)
  assert np.all((cell[:, 0] + cell[:, 1]) % 2 == 0)        # fraction in even cells is 1
  index = cell[:, 0] * n + cell[:, 1]
  even = [i * n + j for i in range(n) for j in range(n) if (i + j) % 2 == 0]
  counts = np.array([np.sum(index == k) for k in even])
  assert counts.sum() == len(x)
  assert stats.chisquare(counts).pvalue > 1e-3               # cells equally likely
  within = (x * n - cell).ravel()                             # offset inside the cell
  assert stats.chisquare(np.histogram(within, 10, (0, 1))[0]).pvalue > 1e-3
  if n % 2 == 0:
    for axis in range(2):                                     # uniform marginals
      hist = np.histogram(x[:, axis], 20, (0, 1))[0]
      assert stats.chisquare(hist).pvalue > 1e-3, (axis, hist)


def test_default_is_the_two_cell_board_of_density_two():
  _, x = draw()
  low = np.all(x < 0.5, 1)
  high = np.all(x >= 0.5, 1)
  assert np.all(low | high)
  assert abs(low.mean() - 0.5) < 4 * np.sqrt(0.25 / len(x))
  # Density 2 on half the square: the fraction in [0, 0.25]^2 is 2 * 1/16.
  assert abs(np.mean(np.all(x < 0.25, 1)) - 0.125) < 4 * np.sqrt(0.125 * 0.875 / len(x))


def test_test_split_is_fixed_and_bad_grid_size_names_the_field():
  a, _ = draw()
  b, _ = draw()
  np.testing.assert_array_equal(a.test, b.test)
  assert a.test.shape == (1000, 2)
  for bad in (0, 2.5, True):
    with pytest.raises(ConfigError, match="data.grid_size"):
      draw(bad)
