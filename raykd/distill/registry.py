"""Registry of KD methods: ``@register_kd_method("at")`` on a :class:`KDMethod` subclass."""

from __future__ import annotations

from typing import TYPE_CHECKING

from raykd.errors import ConfigError

if TYPE_CHECKING:
    from raykd.distill.base import KDMethod

_REGISTRY: dict[str, type[KDMethod]] = {}


def register_kd_method(name: str):
    def decorator(cls: type[KDMethod]) -> type[KDMethod]:
        if name in _REGISTRY:
            raise ValueError(f"KD method '{name}' registered twice")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return decorator


def available_kd_methods() -> list[str]:
    _load_builtin()
    return sorted(_REGISTRY)


def get_kd_method(name: str) -> type[KDMethod]:
    _load_builtin()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ConfigError(
            f"unknown KD method '{name}'; expected one of {sorted(_REGISTRY)}"
        ) from None


def _load_builtin() -> None:
    # Importing the package registers the built-in methods (one module per method).
    import raykd.distill  # noqa: F401
