"""Machinery shared by every family: config checks, registries, data, devices, training, I/O."""
