"""Explicit name -> object registries for everything a config chooses by string."""

from __future__ import annotations

from typing import Any, Callable, Generic, Iterator, TypeVar

from common.errors import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
  """A mapping from names to objects whose lookup error lists the valid names.

  Example:
    SCHEDULES = Registry("beta schedule")

    @SCHEDULES.register("linear")
    def linear(n): ...

    SCHEDULES.get("linear", field="model.schedule")
  """

  def __init__(self, kind: str):
    self.kind = kind
    self._items: dict[str, T] = {}

  def register(self, name: str) -> Callable[[T], T]:
    def decorator(obj: T) -> T:
      if name in self._items:
        raise ValueError(f"{self.kind} {name!r} is registered twice")
      self._items[name] = obj
      return obj
    return decorator

  def add(self, name: str, obj: T) -> None:
    self.register(name)(obj)

  def get(self, name: str, field: str | None = None) -> T:
    """Returns the object registered as `name`, or raises ConfigError naming `field`."""
    if name not in self._items:
      where = f"{field}=" if field else ""
      raise ConfigError(
          f"{where}{name!r} is not a known {self.kind}; "
          f"valid names: {', '.join(sorted(self._items))}")
    return self._items[name]

  def __getitem__(self, name: str) -> T:
    return self.get(name)

  def names(self) -> list[str]:
    return sorted(self._items)

  def __contains__(self, name: Any) -> bool:
    return name in self._items

  def __iter__(self) -> Iterator[str]:
    return iter(sorted(self._items))
