"""Logging set-up: keep the progress lines readable by hiding libraries' INFO chatter."""

from __future__ import annotations

import logging as py_logging

_NOISY = ("/orbax/", "/jax/_src/xla_bridge", "/tensorstore/")


class _LibraryInfoFilter(py_logging.Filter):
  """Drops INFO-and-below records emitted from inside noisy libraries; warnings still pass."""

  def filter(self, record: py_logging.LogRecord) -> bool:
    if record.levelno >= py_logging.WARNING:
      return True
    return not any(part in record.pathname for part in _NOISY)


def quiet_library_logs() -> None:
  logger = py_logging.getLogger("absl")
  if not any(isinstance(f, _LibraryInfoFilter) for f in logger.filters):
    logger.addFilter(_LibraryInfoFilter())
