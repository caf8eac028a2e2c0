"""KD methods, one module each, registered by name."""

from raykd.distill.base import KDMethod, build_kd_method
from raykd.distill.registry import available_kd_methods, get_kd_method, register_kd_method

__all__ = [
    "KDMethod",
    "available_kd_methods",
    "build_kd_method",
    "get_kd_method",
    "register_kd_method",
]
