"""Ray orchestration: the only package that imports ray.

- :mod:`~raykd.orchestration.train_fn`: the Ray Train worker loop (wraps the core Trainer).
- :mod:`~raykd.orchestration.runner`: run one stage as a ``TorchTrainer``, reusing finished stages.
- :mod:`~raykd.orchestration.grid`: the paper's grid with Ray Tune.
- :mod:`~raykd.orchestration.search`: Optuna searches through Tune.
- :mod:`~raykd.orchestration.cluster`: start/join Ray and size trials from the cluster.
"""
