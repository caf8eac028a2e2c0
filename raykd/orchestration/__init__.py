"""Ray orchestration: the only package that imports ray. What to run (presets, rows, stage
configs, search spaces) is planned without Ray in :mod:`raykd.plan`.

- :mod:`~raykd.orchestration.train_fn`: the Ray Train worker loop (wraps the core Trainer).
- :mod:`~raykd.orchestration.runner`: the stage graph's entry, reusing finished stages; the
  missing ones train as one chain (:mod:`~raykd.orchestration.chain`, one ``TorchTrainer``).
- :mod:`~raykd.orchestration.messages`: the typed values that cross process boundaries
  (driver → Tune trial → Train worker and back); nothing else is serialised between them.
- :mod:`~raykd.orchestration.grid`: the paper's grid as Ray Tune trials.
- :mod:`~raykd.orchestration.search`: Optuna searches driven through Tune.
- :mod:`~raykd.orchestration.cluster`: start/join Ray and size trials from the cluster.
"""
