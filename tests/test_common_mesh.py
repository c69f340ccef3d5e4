"""The default split of the CPU backend into simulated devices (main.py --cpu_devices)."""

from ml_collections import ConfigDict

from common import mesh


def _config(batch, samples=None):
  c = ConfigDict({"data": {"batch_size": batch}})
  if samples is not None:
    c.sample = ConfigDict({"num_samples": samples})
  return c


def test_default_cpu_devices_is_a_power_of_two_dividing_every_sharded_batch():
  assert mesh.default_cpu_devices(_config(64, 64), cores=2) == 4
  assert mesh.default_cpu_devices(_config(64, 64), cores=1) == 2
  assert mesh.default_cpu_devices(_config(64, 64), cores=64) == 8      # capped
  assert mesh.default_cpu_devices(_config(64, 6), cores=2) == 2        # 4 does not divide 6
  assert mesh.default_cpu_devices(_config(7), cores=2) == 1
  assert mesh.default_cpu_devices(ConfigDict({"family": "x"}), cores=2) == 4  # nothing sharded


def test_an_explicit_xla_flag_wins(monkeypatch):
  monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=1")
  assert mesh.set_cpu_devices(4) is False
