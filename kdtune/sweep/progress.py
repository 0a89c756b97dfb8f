"""What a sweep prints on the driver: the progress of each phase's trial epochs and one line per trial that ends.

Tune's own console output (`verbose=1`) prints a status table every 30 s and a box of some 30 lines
each time a trial starts or ends: over a thousand lines for the quick preset.  The experiment runs with
`verbose=0` and this Tune callback instead; Tune's TensorBoard, CSV and JSON logs are unchanged.  The
progress is a live bar on a terminal and a few plain lines in a log (kdtune.engine.progress).
"""

from __future__ import annotations

from ray import tune

from kdtune.engine.progress import progress_bar


class SweepProgress(tune.Callback):
    """The progress of the epochs the phase's trials report (up to `total_epochs`), and one line per trial."""

    def __init__(self, phase: str, total_epochs: int, full_epochs: int):
        self.phase, self.total_epochs, self.full_epochs = phase, total_epochs, full_epochs
        self.bar = None  # made in setup(): Tune pickles its callbacks with the experiment, a bar cannot be

    def setup(self, **info):
        # bar.write keeps the trial lines off a live bar.
        self.bar = progress_bar(True, self.total_epochs, f"{self.phase}: trial epochs", unit="epoch")

    def on_trial_result(self, iteration, trials, trial, result, **info):
        self.bar.update(1)

    def on_trial_complete(self, iteration, trials, trial, **info):
        result = trial.last_result or {}
        if result.get("diverged"):
            outcome = "diverged"
        else:
            outcome = "finished" if result.get("epoch", 0) >= self.full_epochs else "stopped early"
        if "epoch" in result:
            outcome += f" after {result['epoch']} epochs: val {result['val_acc']:.2%}"
            if "test_acc" in result:  # the test set is evaluated after the last epoch only
                outcome += f", test {result['test_acc']:.2%}"
        self.bar.write(f"{self.who(trial)}: {outcome}")

    def on_trial_recover(self, iteration, trials, trial, **info):
        self.bar.write(f"{self.who(trial)}: failed, retrying from its last checkpoint")

    def on_trial_error(self, iteration, trials, trial, **info):
        self.bar.write(f"{self.who(trial)}: errored (see {trial.path}/error.txt)")

    def on_experiment_end(self, trials, **info):
        self.bar.close()

    def who(self, trial) -> str:
        """'sweep T=4 alpha=0.5 seeds 0, 1, 2' or 'baseline T=1 alpha=0 seeds 0, 1, 2' (a trial is a pack of seeds;
        the mean over them is shown), with the method when it is not plain KD; a --pack N trial of mixed
        configurations: 'sweep pack of 8 students'."""
        if "members" in trial.config:
            return f"{self.phase} pack of {len(trial.config['members'])} students (mean over them)"
        values = {**trial.config, **(trial.last_result or {})}
        seeds = values.get("seeds", [values.get("seed", "?")])
        method = values.get("method", "kd")
        phase = values.get("phase", self.phase)  # the baseline's trial in the sweep's experiment names its own
        return f"{phase} {'' if method == 'kd' else method + ' '}" \
               f"T={values.get('temperature', float('nan')):g} alpha={values.get('alpha', float('nan')):g} " \
               f"seed{'s' * (len(seeds) > 1)} {', '.join(map(str, seeds))}"
