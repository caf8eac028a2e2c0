"""KD methods, one module each, registered by name."""

# Importing the method modules registers them with the registry.
from raykd.distill import at, cc, fitnets, fsp, ft, nst, pkt, sp  # noqa: F401
from raykd.distill.base import KDMethod
from raykd.distill.registry import (
    available_kd_methods,
    build_kd_method,
    get_kd_method,
    register_kd_method,
)

__all__ = [
    "KDMethod",
    "available_kd_methods",
    "build_kd_method",
    "get_kd_method",
    "register_kd_method",
]
