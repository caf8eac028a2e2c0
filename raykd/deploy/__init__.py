"""Deployment of trained networks: export (TorchScript, ONNX) and inference latency benchmarks.

This package builds and runs models (it imports ``raykd.train`` and ``raykd.models``); the
report never imports it and reads its benchmark runs from MLflow instead
(:mod:`raykd.report.benchmarks`).
"""
