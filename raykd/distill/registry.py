"""Registry of KD methods: ``@register_kd_method("at")`` on a :class:`KDMethod` subclass, and
:func:`build_kd_method` to build one by name.

The built-in methods register themselves when :mod:`raykd.distill` is imported, which Python
always does before this module (it is the parent package), so lookups see every method.
"""

from __future__ import annotations

from raykd.distill.base import KDMethod
from raykd.errors import ConfigError
from raykd.models.base import BlockNet

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
    return sorted(_REGISTRY)


def get_kd_method(name: str) -> type[KDMethod]:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ConfigError(
            f"unknown KD method '{name}'; expected one of {sorted(_REGISTRY)}"
        ) from None


def build_kd_method(
    name: str,
    teacher: BlockNet,
    student: BlockNet,
    teacher_taps: list[str] | None = None,
    student_taps: list[str] | None = None,
    **options,
) -> KDMethod:
    cls = get_kd_method(name)
    try:
        return cls(teacher, student, teacher_taps, student_taps, **options)
    except TypeError as exc:
        raise ConfigError(f"KD method '{name}': bad options {options} ({exc})") from exc
