"""The default split of the CPU backend into simulated devices (main.py --cpu_devices)."""

from common import mesh


def test_default_cpu_devices_is_a_power_of_two_dividing_every_sharded_batch():
  assert mesh.default_cpu_devices((64, 64), cores=2) == 4
  assert mesh.default_cpu_devices((64, 64), cores=1) == 2
  assert mesh.default_cpu_devices((64, 64), cores=64) == 8      # capped
  assert mesh.default_cpu_devices((64, 6), cores=2) == 2        # 4 does not divide 6
  assert mesh.default_cpu_devices((7,), cores=2) == 1
  assert mesh.default_cpu_devices((), cores=2) == 4             # nothing sharded


def test_the_dpm_family_names_its_sharded_sizes():
  from configs.dpm import ddpm_mnist
  import dpm
  config = ddpm_mnist.get_config()
  assert dpm.batch_sizes(config) == (64, 64)


def test_an_explicit_xla_flag_wins(monkeypatch):
  monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=1")
  assert mesh.set_cpu_devices(4) is False
