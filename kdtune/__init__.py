"""kdtune: knowledge-distillation sweeps over temperature and alpha for image classifiers.

Data flows one way: `data` -> `teacher` (store and logit cache) -> `train`
(one loop for teacher, student and distillation) -> `tune` (Ray Tune sweeps)
-> `results` -> `report`.  Use it as the `kdtune` command (`kdtune.cli`) or from Python
(`kdtune.api`).
"""

__version__ = "0.1.0"
