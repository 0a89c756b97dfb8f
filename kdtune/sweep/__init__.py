"""Sweeps: the Ray Tune wiring (settings, plan, runner, trainable, searchers, schedulers, resume, progress)."""
