"""The `:arg` suffix of a config file (`--config=configs/x/y.py:smoke`), shared by every family."""

from typing import Callable

from ml_collections import ConfigDict


def select(c: ConfigDict, arg: str | None, filename: str,
           **variants: Callable[[ConfigDict], ConfigDict]) -> ConfigDict:
  """c unchanged for no suffix, else variants[arg](c); an unknown suffix names the choices."""
  if not arg:
    return c
  if arg not in variants:
    raise ValueError(f"unknown variant {arg!r} of {filename}: expected one of "
                     f"{sorted(variants)} or none")
  return variants[arg](c)
