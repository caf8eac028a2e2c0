"""Registry of KD methods: ``@register_kd_method("at")`` on a :class:`KDMethod` subclass, and
:func:`build_kd_method` to build one by name.

Adding a method is one file: every module of the :mod:`raykd.distill` package is imported when
the package is (:func:`import_builtin_methods`), and methods outside the package are loaded
from ``RAYKD_KD_PLUGINS`` (module names or ``.py`` paths, separated by commas) and from the
``raykd.kd_methods`` entry-point group (:func:`load_kd_plugins`). A method declares its
canonical weight on its class (``KDMethod.canonical_weight``).
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import pkgutil
import sys
from importlib.metadata import entry_points
from pathlib import Path

from raykd.distill.base import KDMethod
from raykd.errors import ConfigError
from raykd.models.base import BlockNet

PLUGINS_ENV = "RAYKD_KD_PLUGINS"
ENTRY_POINT_GROUP = "raykd.kd_methods"
_NOT_METHODS = {"base", "registry"}  # the package's own machinery, no method in them

_REGISTRY: dict[str, type[KDMethod]] = {}


def register_kd_method(name: str):
    def decorator(cls: type[KDMethod]) -> type[KDMethod]:
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ValueError(f"KD method '{name}' registered twice")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return decorator


def unregister_kd_method(name: str) -> None:
    """Forget a method (tests that register a toy one clean up with it)."""
    _REGISTRY.pop(name, None)


def import_builtin_methods() -> None:
    """Import every module of :mod:`raykd.distill`: importing a module registers its methods."""
    package = importlib.import_module("raykd.distill")
    for info in pkgutil.iter_modules(package.__path__):
        if info.name not in _NOT_METHODS and not info.name.startswith("_"):
            importlib.import_module(f"raykd.distill.{info.name}")


def load_kd_plugins(spec: str | None = None) -> list[str]:
    """Import user modules that register methods; return the names they added.

    ``spec``: module names or ``.py`` paths separated by commas (default: ``$RAYKD_KD_PLUGINS``);
    then every ``raykd.kd_methods`` entry point of the installed distributions. The variable
    reaches Ray workers with the other ``RAYKD_*`` ones, so they register the same methods.
    """
    before = set(_REGISTRY)
    spec = os.environ.get(PLUGINS_ENV, "") if spec is None else spec
    for item in (s.strip() for s in spec.split(",")):
        if item:
            _import_plugin(item)
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            ep.load()
        except Exception as exc:
            raise ConfigError(f"KD plugin entry point '{ep.name}' failed to load: {exc}") from exc
    return sorted(set(_REGISTRY) - before)


def _import_plugin(item: str) -> None:
    try:
        if item.endswith(".py"):
            path = Path(item).expanduser().resolve()
            if not path.is_file():
                raise ConfigError(f"{PLUGINS_ENV}: no file {path}")
            name = f"raykd_kd_plugin_{path.stem}"
            if name in sys.modules:
                return
            module_spec = importlib.util.spec_from_file_location(name, path)
            assert module_spec is not None and module_spec.loader is not None
            module = importlib.util.module_from_spec(module_spec)
            sys.modules[name] = module
            try:
                module_spec.loader.exec_module(module)
            except BaseException:
                del sys.modules[name]
                raise
        else:
            importlib.import_module(item)
    except ConfigError:
        raise
    except Exception as exc:
        raise ConfigError(f"KD plugin '{item}' failed to import: {exc}") from exc


def available_kd_methods() -> list[str]:
    return sorted(_REGISTRY)


def get_kd_method(name: str) -> type[KDMethod]:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ConfigError(
            f"unknown KD method '{name}'; expected one of {sorted(_REGISTRY)}"
        ) from None


def canonical_kd_weight(name: str) -> float:
    """The method's published weight (its class's ``canonical_weight``); 1.0 if unknown."""
    cls = _REGISTRY.get(name)
    return float(cls.canonical_weight) if cls is not None else 1.0


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
