"""The Flax FID Inception against pytorch-fid 0.3.0's FIDInceptionV3 with the same random weights.

Truth is pytorch-fid's own network (its InceptionV3 wrapper: resize, scaling, FID block variants)
run by torch in float64. The weights are random (the real file cannot be downloaded here): He-normal
convolutions keep activations at unit scale so that features depend on the input, and the batch-norm
running variances sit near the eps (0.001) so that a wrong eps changes every layer. The weights
travel the user's path: torch.save -> `python -m common.inception --convert` (in-process) -> .npz ->
`common.inception.load`.

torch, torchvision and pytorch-fid come from requirements-test.txt; if they cannot be imported the
tests fail rather than skip.
"""

import json
import os
import sys
import types

import numpy as np
import pytest

from common import inception
from common.errors import DataError
from tests import helpers

N_IMAGES, HEIGHT, WIDTH = 3, 32, 24  # non-square: rows and columns resize separately
# torch's own float32 forward of this network differs from its float64 one by ~4e-7 of the largest
# feature; features differ between images by ~3e-2 of it.
REL_TOL = 1e-5


def import_pytorch_fid():
  """pytorch_fid.inception, importable beside the CPU torch (docs/EVALUATION.md: torchvision)."""
  # torchvision's C ops do not load beside torch's CPU wheel; its Python model code needs none.
  sys.modules.setdefault("torchvision._meta_registrations",
                         types.ModuleType("torchvision._meta_registrations"))
  import torch  # noqa: F401  (an ImportError here is a test failure: CI installs it)
  from pytorch_fid import inception as pfi
  return pfi


def build_torch_fid_inception(pfi, seed):
  """pytorch-fid's InceptionV3([pool3]) and its inner Inception3 (fc included), random weights.

  fid_inception_v3() builds the network and then loads the downloaded weights; here the loader
  hands back the network's own random state dict instead.
  """
  import torch
  made = []

  def capture(*args, **kwargs):
    made.append(original(*args, **kwargs))
    return made[-1]
  original = pfi._inception_v3
  torch.manual_seed(seed)
  with pytest.MonkeyPatch.context() as mp:
    mp.setattr(pfi, "_inception_v3", capture)
    mp.setattr(pfi, "load_state_dict_from_url", lambda *a, **k: made[-1].state_dict())
    wrapper = pfi.InceptionV3([pfi.InceptionV3.BLOCK_INDEX_BY_DIM[2048]])
  return wrapper.double(), made[-1].double()


def randomise(net, generator):
  """He-normal conv weights, random batch norms whose variances sit near eps, random fc bias.

  A conv-BN-ReLU layer then keeps the scale of its input (He), every BN term is non-trivial, and
  the BN scale is set so that var + 0.001, not var alone, normalises: with eps 1e-5 instead of 1e-3
  each layer's output would change by ~40%.
  """
  import torch
  with torch.no_grad():
    for m in net.modules():
      if isinstance(m, torch.nn.Conv2d):
        fan_in = m.weight[0].numel()
        m.weight.normal_(0.0, (2.0 / fan_in) ** 0.5, generator=generator)
      elif isinstance(m, torch.nn.BatchNorm2d):
        m.running_var.uniform_(0.5e-3, 2e-3, generator=generator)
        m.running_mean.normal_(0.0, 0.1, generator=generator)
        m.weight.uniform_(0.8, 1.2, generator=generator).mul_(torch.sqrt(m.running_var + m.eps))
        m.bias.normal_(0.0, 0.1, generator=generator)
    net.fc.bias.normal_(0.0, 0.5, generator=generator)


def make_case(directory):
  """Random pytorch-fid network -> .pth -> our converter -> .npz; float64 torch outputs as truth."""
  import torch
  pfi = import_pytorch_fid()
  wrapper, net = build_torch_fid_inception(pfi, seed=0)
  generator = torch.Generator().manual_seed(1)
  randomise(net, generator)
  net.float().double()  # the truth uses exactly the float32 weights that the .pth carries
  wrapper.eval()
  images = torch.rand(N_IMAGES, 3, HEIGHT, WIDTH, generator=generator, dtype=torch.float64)
  with torch.no_grad():
    pool = wrapper(images)[0].flatten(1)
    logits = net.fc(pool)
  directory.mkdir(parents=True, exist_ok=True)
  torch.save(net.float().state_dict(), directory / "fid_inception.pth")
  assert inception.main(["--convert", str(directory / "fid_inception.pth"),
                         "--out", str(directory / "fid_inception.npz")]) == 0
  np.savez(directory / "truth.npz", pool=pool.numpy(), logits=logits.numpy(),
           fc_bias=net.fc.bias.detach().numpy(),
           images=images.permute(0, 2, 3, 1).numpy().astype(np.float32))


@pytest.fixture(scope="session")
def case(tmp_path_factory, worker_id):
  """The case, built once per test session even when pytest-xdist runs several workers."""
  if worker_id == "master":
    directory = tmp_path_factory.mktemp("fid_inception")
    make_case(directory)
  else:  # xdist workers share the session's base directory; the first one builds
    import filelock
    directory = tmp_path_factory.getbasetemp().parent / "fid_inception"
    with filelock.FileLock(str(directory) + ".lock"):
      if not (directory / "truth.npz").is_file():
        make_case(directory)
  with np.load(directory / "truth.npz") as f:
    case = {k: f[k] for k in f.files}
  return dict(case, npz=str(directory / "fid_inception.npz"), pth=directory / "fid_inception.pth")


@pytest.fixture(scope="session")
def state_dict(case):
  import torch
  return torch.load(case["pth"], map_location="cpu", weights_only=True)


def assert_close(ours, truth, what):
  ours, truth = np.asarray(ours, np.float64), np.asarray(truth, np.float64)
  assert ours.shape == truth.shape, what
  err, scale = np.abs(ours - truth).max(), np.abs(truth).max()
  assert err <= REL_TOL * scale, f"{what}: max error {err:.3g}, largest value {scale:.3g}"


def test_features_vary_with_the_input(case):
  # Otherwise the comparisons would be vacuous (random networks can map every input alike).
  pool = case["pool"]
  assert np.abs(pool[0] - pool[1]).max() > 100 * REL_TOL * np.abs(pool).max()


def test_pool_and_logits_match_pytorch_fid(case):
  pool, logits = inception.load(case["npz"])(case["images"])
  assert pool.shape == (N_IMAGES, 2048) and logits.shape == (N_IMAGES, 1008)
  assert_close(pool, case["pool"], "pool3 features")
  # Default logits are the TF Inception Score's: pool3 @ W without the fc bias.
  assert_close(logits, case["logits"] - case["fc_bias"], "logits without bias")


SHARDED = r"""
import json, sys
import jax, numpy as np
from common import inception, mesh
images, weights, out = IMAGES, WEIGHTS, OUT
apply = inception.load(weights, mesh=mesh.make_mesh(), logits_bias=True)
pool, logits = apply(np.load(images))
np.savez(out, pool=np.asarray(pool), logits=np.asarray(logits))
print(json.dumps({"devices": jax.device_count()}))
"""


def test_sharded_over_two_devices_with_bias(case, tmp_path):
  # 3 images over 2 devices: the batch is padded to 4 (or device_put fails) and trimmed back.
  images, out = tmp_path / "images.npy", tmp_path / "sharded.npz"
  np.save(images, case["images"])
  code = (SHARDED.replace("IMAGES", repr(str(images))).replace("WEIGHTS", repr(case["npz"]))
          .replace("OUT", repr(str(out))))
  result = helpers.run_python(code, devices=2, timeout=300)
  assert result.returncode == 0, helpers.describe(result)
  assert json.loads(result.stdout.strip().splitlines()[-1]) == {"devices": 2}
  with np.load(out) as f:
    assert_close(f["pool"], case["pool"], "sharded pool3 features")
    assert_close(f["logits"], case["logits"], "sharded logits with bias")


def test_resize_matches_torch_interpolate():
  import torch
  import torch.nn.functional as F
  rng = np.random.default_rng(0)
  for h, w in [(32, 24), (7, 13), (400, 350), (299, 299), (1, 2)]:
    x = rng.uniform(size=(2, h, w, 3)).astype(np.float32)
    ours = np.asarray(inception.resize_bilinear(x))
    theirs = F.interpolate(torch.from_numpy(x).permute(0, 3, 1, 2), size=(299, 299),
                           mode="bilinear", align_corners=False).permute(0, 2, 3, 1).numpy()
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-6, err_msg=f"{h}x{w}")


def test_pools_match_torch():
  import torch
  import torch.nn.functional as F
  x = np.random.default_rng(1).normal(size=(2, 9, 7, 5)).astype(np.float32)
  t = torch.from_numpy(x).permute(0, 3, 1, 2)
  nhwc = lambda y: y.permute(0, 2, 3, 1).numpy()
  np.testing.assert_allclose(
      np.asarray(inception.avg_pool_valid_only(x)),
      nhwc(F.avg_pool2d(t, 3, stride=1, padding=1, count_include_pad=False)), atol=1e-6)
  np.testing.assert_allclose(np.asarray(inception.max_pool(x, stride=1, padding=1)),
                             nhwc(F.max_pool2d(t, 3, stride=1, padding=1)), atol=0)
  np.testing.assert_allclose(np.asarray(inception.max_pool(x, stride=2)),
                             nhwc(F.max_pool2d(t, 3, stride=2)), atol=0)


def test_converter_rejects_other_networks(state_dict):
  state = dict(state_dict)
  aux = {"AuxLogits.conv0.conv.weight": np.zeros((128, 768, 1, 1))}  # torchvision's full model
  with pytest.raises(DataError, match="AuxLogits"):
    inception.convert_state_dict({**state, **aux})
  state_1000 = {**state, "fc.weight": np.zeros((1000, 2048)), "fc.bias": np.zeros(1000)}
  with pytest.raises(DataError, match=r"has shape \(1000"):
    inception.convert_state_dict(state_1000)
  del state["Mixed_7c.branch_pool.bn.running_var"]
  with pytest.raises(DataError, match="missing"):
    inception.convert_state_dict(state)


def test_converter_layout(state_dict):
  weights = inception.convert_state_dict(state_dict)
  np.testing.assert_array_equal(weights["fc/kernel"], state_dict["fc.weight"].numpy().T)
  torch_kernel = state_dict["Mixed_6b.branch7x7_2.conv.weight"].numpy()  # [O, I, 1, 7]
  ours = weights["Mixed_6b/branch7x7_2/conv/kernel"]  # [1, 7, I, O]
  assert ours.shape == (1, 7, 128, 128)
  np.testing.assert_array_equal(ours[0, 3, 5, 9], np.float32(torch_kernel[9, 5, 0, 3]))


def test_missing_weight_files(tmp_path, capsys):
  missing = str(tmp_path / "inception_fid.npz")
  with pytest.raises(DataError, match="not found.*--convert") as info:
    inception.load(missing)
  assert missing in str(info.value) and "\n" not in str(info.value)
  pth = str(tmp_path / "pt_inception-2015-12-05-6726825d.pth")
  assert inception.main(["--convert", pth, "--out", missing]) == 2
  err = capsys.readouterr().err
  assert pth in err and inception.FID_WEIGHTS_URL in err
  assert not os.path.exists(missing)


def test_features_stats_streams_batches():
  from common import fid
  rng = np.random.default_rng(2)
  batches = [rng.uniform(size=(b, 4, 4, 3)) for b in (5, 1, 7)]
  projection = rng.normal(size=(48, 2048))

  def fake_apply(images):  # a stand-in network: deterministic features of each image
    flat = np.asarray(images).reshape(len(images), -1)
    return flat @ projection, flat[:, :3] * 10.0
  mu, sigma, logits = inception.features_stats(fake_apply, iter(batches))
  all_pool, all_logits = fake_apply(np.concatenate(batches))
  mu_ref, sigma_ref = fid.feature_stats(all_pool)
  np.testing.assert_allclose(mu, mu_ref, rtol=1e-12, atol=1e-12)
  np.testing.assert_allclose(sigma, sigma_ref, rtol=1e-10, atol=1e-10)
  np.testing.assert_allclose(logits, all_logits, rtol=1e-6)
  assert inception.features_stats(fake_apply, iter(batches), keep_logits=False)[2] is None


def test_stats_command_writes_reference_statistics(tmp_path, monkeypatch):
  from common import fid
  rng = np.random.default_rng(3)
  images = rng.integers(0, 256, size=(7, 5, 5, 1), dtype=np.uint8)  # a dataset cache's layout
  np.savez(tmp_path / "images.npz", images=images, labels=np.zeros(7))
  projection = rng.normal(size=(25, 2048))
  seen = []

  def fake_load(path):
    seen.append(path)
    return lambda x: (np.asarray(x).reshape(len(x), -1) @ projection, None)
  monkeypatch.setattr(inception, "load", fake_load)  # the network is tested above
  out = str(tmp_path / "ref.npz")
  assert fid.main(["stats", "--weights", "w.npz", "--images", str(tmp_path / "images.npz"),
                   "--out", out, "--batch-size", "3"]) == 0
  scaled = images.astype(np.float32) / 255.0  # one channel: the network itself reads it as RGB
  mu, sigma = fid.feature_stats(scaled.reshape(7, -1) @ projection)
  mu2, sigma2 = fid.load_stats(out)
  assert seen == ["w.npz"]
  np.testing.assert_allclose(mu2, mu, rtol=1e-10)
  np.testing.assert_allclose(sigma2, sigma, rtol=1e-9, atol=1e-9)
