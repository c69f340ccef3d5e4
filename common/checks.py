"""Small validators used by every family's `validate(config)`; each names the offending field."""

from __future__ import annotations

from typing import Any, Iterable

import numpy as np

from common.errors import ConfigError


def get_field(config: Any, field: str) -> Any:
  """Returns config.<dotted field>, or raises ConfigError if it is absent."""
  value = config
  for part in field.split("."):
    try:
      value = value[part]
    except (KeyError, TypeError, AttributeError):
      raise ConfigError(f"{field} is missing from the config") from None
  return value


def positive(config: Any, field: str, allow_zero: bool = False) -> None:
  value = get_field(config, field)
  bad = value < 0 if allow_zero else value <= 0
  if bad:
    bound = ">= 0" if allow_zero else "> 0"
    raise ConfigError(f"{field}={value!r} is invalid: expected a number {bound}")


def integer(config: Any, field: str, low: int = 1) -> None:
  """An int (not a bool) >= low."""
  value = get_field(config, field)
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
    raise ConfigError(f"{field}={value!r} is invalid: expected an integer >= {low}")


def in_range(config: Any, field: str, low: float, high: float) -> None:
  value = get_field(config, field)
  if not low <= value <= high:
    raise ConfigError(f"{field}={value!r} is invalid: expected a value in [{low}, {high}]")


def one_of(config: Any, field: str, choices: Iterable[Any]) -> None:
  value = get_field(config, field)
  choices = list(choices)
  if value not in choices:
    raise ConfigError(f"{field}={value!r} is invalid: expected one of {choices}")


def divisible(config: Any, field: str, divisor: int, why: str) -> None:
  value = get_field(config, field)
  if value % divisor:
    raise ConfigError(f"{field}={value!r} is invalid: it must be divisible by {divisor} ({why})")
