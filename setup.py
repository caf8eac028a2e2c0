"""Packages of the wheel: every ``raykd*`` package, plus ``raykd.search_spaces``, which is the
top-level ``search_spaces/`` folder (pyproject.toml maps it; its package finder cannot add a
mapped package). Everything else is configured in pyproject.toml."""

from setuptools import find_namespace_packages, setup

setup(packages=[*find_namespace_packages(include=["raykd*"]), "raykd.search_spaces"])
