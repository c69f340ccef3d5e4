"""Errors that main.py reports as one clear line instead of a traceback."""


class ConfigError(ValueError):
  """A config value is invalid; the message names the field and what was expected."""


class DataError(RuntimeError):
  """A dataset is missing or malformed; the message says how to prepare it."""


class CheckpointError(RuntimeError):
  """A checkpoint is corrupt, partial or incompatible; the message names its directory."""


class NonFiniteError(FloatingPointError):
  """Training produced a NaN/Inf; the message names the step and the last good checkpoint."""


USER_ERRORS = (ConfigError, DataError, CheckpointError, NonFiniteError)
