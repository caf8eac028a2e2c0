"""KD methods, one module each, registered by name.

Importing the package imports every module in it (each registers its methods) and the user
methods named by ``RAYKD_KD_PLUGINS`` or the ``raykd.kd_methods`` entry points.
"""

from raykd.distill.base import KDMethod
from raykd.distill.registry import (
    available_kd_methods,
    build_kd_method,
    canonical_kd_weight,
    get_kd_method,
    import_builtin_methods,
    load_kd_plugins,
    register_kd_method,
)

import_builtin_methods()
load_kd_plugins()

__all__ = [
    "KDMethod",
    "available_kd_methods",
    "build_kd_method",
    "canonical_kd_weight",
    "get_kd_method",
    "load_kd_plugins",
    "register_kd_method",
]
