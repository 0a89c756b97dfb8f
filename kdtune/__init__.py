"""kdtune: knowledge-distillation sweeps over temperature and alpha for image classifiers.

Four floors, imports pointing one way (tests/test_layers.py holds them to it):

    engine  <-  report  <-  sweep  <-  cli / api

* `kdtune.engine`: pure PyTorch, never Ray: data, models, losses, the training loop, packs and stacking,
  checkpoints, the teacher store and its exact logit cache.
* `kdtune.report`: reads experiment folders (the record, `kdtune.report.record`, and Tune's trial files):
  statistics, tables, figures; never starts Ray.
* `kdtune.sweep`: the Ray Tune wiring: settings and their defaults, presets, search spaces, the plan and its
  estimate, the runner, trainable, searchers, schedulers, resume, interrupts, progress, tracking.
* `kdtune.cli` (the `kdtune` command) and `kdtune.api` (the same as Python functions).
"""

__version__ = "0.2.0"
